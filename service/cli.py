"""`driftseg serve`: the HTTP service on uvicorn. Every setting of service/settings.py is a flag
(kebab-case) as well as a DRIFTSEG_* environment variable; flags win. `--help` lists them all."""
import sys


def main(argv: list[str] | None = None) -> None:
    from driftseg.service.settings import PROG, load_settings  # no torch import before the settings need it

    try:
        settings = load_settings(args=sys.argv[1:] if argv is None else argv)
    except ValueError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        raise SystemExit(2) from None

    import uvicorn

    from driftseg.service.app import create_app
    from driftseg.service.server import log_config, protocol

    key = settings.api_key.get_secret_value() if settings.api_key is not None else None
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level,
                log_config=log_config(settings.log_level, key), http=protocol(settings.header_timeout, settings.body_timeout),
                limit_concurrency=settings.max_connections)


if __name__ == "__main__":
    main()
