"""`driftseg serve`: the HTTP service on uvicorn. Every setting of service/settings.py is a flag
(kebab-case) as well as a DRIFTSEG_* environment variable; flags win. `--help` lists them all."""
import copy
import sys


def main(argv: list[str] | None = None) -> None:
    from driftseg.service.settings import PROG, load_settings  # no torch import before the settings need it

    try:
        settings = load_settings(args=sys.argv[1:] if argv is None else argv)
    except ValueError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        raise SystemExit(2) from None

    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    from driftseg.service.app import create_app

    # the service's own log lines (start-up, snapshots, shutdown) through uvicorn's handler and format
    log_config = copy.deepcopy(LOGGING_CONFIG)
    log_config["loggers"]["driftseg"] = {"handlers": ["default"], "level": settings.log_level.upper(), "propagate": False}
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level,
                log_config=log_config)


if __name__ == "__main__":
    main()
