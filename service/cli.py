"""`driftseg serve`: the HTTP service on uvicorn. Flags override DRIFTSEG_* environment variables."""
import argparse
import copy
import sys

SETTINGS_FLAGS = ("checkpoint", "method", "device", "engine", "onnx_model", "host", "port", "state_dir", "max_streams")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="driftseg serve",
        description="Serve segmentation over HTTP, adapting per stream (settings: DRIFTSEG_* environment "
                    "variables, see service/settings.py; flags win).")
    p.add_argument("--checkpoint", help="checkpoint file (default: $DRIFTSEG_CHECKPOINT or the bundled one)")
    p.add_argument("--method", help="method spec (default: $DRIFTSEG_METHOD or auto)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default: $DRIFTSEG_DEVICE or auto")
    p.add_argument("--engine", choices=["torch", "onnx"], help="what runs the adapted function (default: $DRIFTSEG_ENGINE or torch)")
    p.add_argument("--onnx-model", help="the file `driftseg export onnx` wrote, for --engine onnx (default: exported at start-up)")
    p.add_argument("--host", help="default: $DRIFTSEG_HOST or 127.0.0.1")
    p.add_argument("--port", type=int, help="default: $DRIFTSEG_PORT or 8000")
    p.add_argument("--state-dir", help="stream snapshots (default: $DRIFTSEG_STATE_DIR or ~/.cache/driftseg/state)")
    p.add_argument("--max-streams", type=int, help="stream states held in memory (default: $DRIFTSEG_MAX_STREAMS or 64)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from driftseg.service.settings import load_settings  # after --help, which needs no torch import

    try:
        settings = load_settings(**{k: getattr(args, k) for k in SETTINGS_FLAGS if getattr(args, k) is not None})
    except ValueError as e:
        print(f"driftseg serve: {e}", file=sys.stderr)
        raise SystemExit(2) from None

    import uvicorn

    from driftseg.service.app import create_app

    # the service's own log lines (start-up, snapshots, shutdown) through uvicorn's handler and format
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    log_config["loggers"]["driftseg"] = {"handlers": ["default"], "level": args.log_level.upper(), "propagate": False}
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=args.log_level,
                log_config=log_config)


if __name__ == "__main__":
    main()
