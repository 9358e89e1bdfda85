"""`driftseg serve`: the HTTP service on uvicorn. Every setting of service/settings.py is a flag
(kebab-case) as well as a DRIFTSEG_* environment variable; flags win. `--help` lists them all."""
import socket
import sys


def check_port_free(host: str, port: int) -> None:
    """ValueError unless `host:port` can be listened on now: checked before the model loads (uvicorn
    binds only after the start-up, minutes later with --compile). The probe sets SO_REUSEADDR as
    uvicorn does, so that a port whose last connections linger in TIME_WAIT, which uvicorn can bind,
    is not taken for one in use; a port another process listens on still fails to bind."""
    if port == 0:
        return  # any free port: the system picks one
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ValueError(f"cannot listen on {host}:{port}: {e.strerror}: set --host or DRIFTSEG_HOST") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as e:
            raise ValueError(f"cannot listen on {host}:{port} ({e.strerror}): another process may be using the "
                             "port; pick another with --port or DRIFTSEG_PORT") from None


def main(argv: list[str] | None = None) -> None:
    from driftseg.service.settings import PROG, load_settings  # no torch import before the settings need it

    try:
        settings = load_settings(args=sys.argv[1:] if argv is None else argv)
        check_port_free(settings.host, settings.port)
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
