"""freezeframe: the server and the client commands.

Exit codes: 0 success; 1 the request failed (the server said no, or the operation failed);
2 usage or configuration error; 3 could not reach the service; 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys

from freezeframe import __version__

from freezeframe.cli.exitcodes import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE  # noqa: F401


def _load_settings(config: str | None, flags: dict):
    """The settings tree, or None after printing why the configuration is wrong."""
    from freezeframe import settings as settings_mod

    try:
        return settings_mod.load(config, flags=flags)
    except settings_mod.SettingsError as exc:
        print(f"freezeframe: configuration error: {exc}", file=sys.stderr)
        return None


def _serve(args: argparse.Namespace) -> int:
    from freezeframe.server import serve

    flags = {
        "data_dir": args.data_dir,
        "server.port": args.port,
        "server.host": args.host,
        "auth.mode": args.auth,
        "auth.tokens_file": args.tokens_file,
        "database.url": args.database_url,
        "server.log_level": args.log_level,
        "server.log_format": args.log_format,
    }
    settings = _load_settings(args.config, flags)
    if settings is None:
        return EXIT_USAGE
    serve(settings)
    return EXIT_OK


def _conductor(args: argparse.Namespace) -> int:
    from freezeframe.roles import run_conductor as run

    flags = {"data_dir": args.data_dir, "database.url": args.database_url, "auth.mode": args.auth,
             "auth.tokens_file": args.tokens_file, "server.log_level": args.log_level,
             "server.log_format": args.log_format, "conductor.image_url": args.image_url,
             "conductor.coordination_url": args.coordination_url,
             "conductor.id": args.id, "conductor.jobboard_url": args.jobboard_url, "conductor.hosts": args.hosts}
    settings = _load_settings(args.config, flags)
    if settings is None:
        return EXIT_USAGE
    run(settings)
    return EXIT_OK


def _common_flags(args: argparse.Namespace) -> dict:
    return {"data_dir": args.data_dir, "server.port": args.port, "server.host": args.host,
            "auth.mode": args.auth, "auth.tokens_file": args.tokens_file, "database.url": args.database_url,
            "server.log_level": args.log_level, "server.log_format": args.log_format}


def _api(args: argparse.Namespace) -> int:
    from freezeframe import settings as settings_mod
    from freezeframe.roles import run_api

    flags = _common_flags(args)
    if _load_settings(args.config, flags) is None:
        return EXIT_USAGE
    try:
        run_api(args.config, flags, args.workers)
    except settings_mod.SettingsError as exc:
        print(f"freezeframe: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def _compute(args: argparse.Namespace) -> int:
    from freezeframe.roles import run_compute

    flags = {**_common_flags(args), "compute.host": args.compute_host, "compute.url": args.url,
             "compute.driver": args.driver, "endpoints.image": args.image_url,
             "compute.export_tls": False if args.trusted_network else None}
    settings = _load_settings(args.config, flags)
    if settings is None:
        return EXIT_USAGE
    run_compute(settings)
    return EXIT_OK


def _role_options(parser: argparse.ArgumentParser, port_help: str, *, listen: str = "--host") -> None:
    parser.add_argument("--config", help="TOML settings file (also FREEZEFRAME_CONFIG)")
    parser.add_argument("--data-dir", help="where this process keeps its files")
    parser.add_argument(listen, dest="host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help=port_help)
    parser.add_argument("--database-url", help="the deployment's database (PostgreSQL when split over hosts)")
    parser.add_argument("--auth", choices=["tokens", "keystone", "noauth"], help="authentication mode")
    parser.add_argument("--tokens-file", help="the deployment's tokens file (the services' own token in it)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-format", choices=["text", "json"],
                        help="log lines as readable text (default) or one JSON object per line")


def _policy(_args: argparse.Namespace) -> int:
    from freezeframe.common.policy import sample
    print(sample())
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="freezeframe", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--version", action="version", version=f"freezeframe {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run every API, the reaper and the conductor in one process")
    serve.add_argument("--config", help="TOML settings file (also FREEZEFRAME_CONFIG)")
    serve.add_argument("--data-dir", help="where the database, image store and tokens live")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 9292)")
    serve.add_argument("--auth", choices=["tokens", "keystone", "noauth"],
                       help="authentication mode (default tokens: the tokens file and the identity service; "
                            "keystone: tokens of an existing Keystone, see [auth] keystone_*)")
    serve.add_argument("--tokens-file", help="JSON file mapping tokens to {user_id, project_id, roles}")
    serve.add_argument("--database-url", help="SQLAlchemy URL (default: SQLite in the data dir)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--log-format", choices=["text", "json"],
                       help="log lines as readable text (default) or one JSON object per line")
    serve.set_defaults(func=_serve)

    cond = sub.add_parser("conductor", help="run a conductor on its own (scale-out); serve with "
                                            "FREEZEFRAME_CONDUCTOR__ENABLED=false then")
    cond.add_argument("--config", help="TOML settings file (also FREEZEFRAME_CONFIG)")
    cond.add_argument("--data-dir", help="local work area (snapshots in progress); share the database")
    cond.add_argument("--database-url", help="the API's database (PostgreSQL for several hosts)")
    cond.add_argument("--image-url", help="the image API the snapshots upload to")
    cond.add_argument("--coordination-url", help="liveness backend shared with the API, e.g. redis://host:6379")
    cond.add_argument("--id", help="this conductor's stable id (default: host + data dir)")
    cond.add_argument("--jobboard-url", help="where conductors find work: redis://host:port/db (default: the "
                                             "database)")
    cond.add_argument("--hosts", help="the compute hosts whose snapshots this conductor takes, comma-separated, "
                                      "'*' for any (default: this host)")
    cond.add_argument("--auth", choices=["tokens", "keystone", "noauth"], help="how to reach the image API")
    cond.add_argument("--tokens-file", help="tokens file holding a token with role 'service'")
    cond.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    cond.add_argument("--log-format", choices=["text", "json"],
                      help="log lines as readable text (default) or one JSON object per line")
    cond.set_defaults(func=_conductor)

    api = sub.add_parser("api", help="run the APIs only (split deployment): stateless, several worker "
                                     "processes; conductors and compute hosts run apart")
    _role_options(api, "port to listen on (default 9292)")
    api.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    api.set_defaults(func=_api)

    comp = sub.add_parser("compute", help="run one hypervisor host's compute process (split deployment): "
                                          "its libvirt, the host-bound steps, a heartbeat")
    _role_options(comp, "port of this host's API (default 9292)", listen="--listen")
    comp.add_argument("--host", dest="compute_host", metavar="NAME",
                      help="this compute host's name (servers record it; default the machine's host name)")
    comp.add_argument("--url", help="where the other roles reach this host's API (default http://HOST:PORT)")
    comp.add_argument("--driver", choices=["libvirt", "fake"], help="virt driver (default libvirt)")
    comp.add_argument("--image-url", help="the image API (boots fetch their images from it)")
    comp.add_argument("--trusted-network", action="store_true",
                      help="export points in time over plain TCP (no TLS): only on a network you trust")
    comp.set_defaults(func=_compute)

    pol = sub.add_parser("policy", help="print the default policy (every rule, as an oslo.policy YAML file "
                                        "to copy into auth.policy_file and change)")
    pol.set_defaults(func=_policy)

    from freezeframe.cli import baremetal, identity, image
    from freezeframe.cli import server, volume, workflow

    baremetal.register(sub)
    identity.register(sub)
    image.register(sub)
    server.register(sub)
    volume.register(sub)
    workflow.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
