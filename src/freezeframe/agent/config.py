"""Agent settings: the kernel command line (ipa-* parameters, as Ironic passes them) and CLI flags.

A CLI flag overrides the same setting from /proc/cmdline.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex

DEFAULT_LISTEN_PORT = 9999
LOOKUP_TIMEOUT = 300.0  # ironic-python-agent's lookup_timeout


@dataclasses.dataclass(frozen=True)
class DiskSpec:
    """A candidate disk named on the command line (--disk PATH[,key=value...])."""

    path: str
    name: str | None = None  # the name hints match against; default the path
    model: str | None = None
    serial: str | None = None
    vendor: str | None = None
    wwn: str | None = None
    rotational: bool | None = None
    size: int | None = None  # bytes; default the size found by seeking to the end


_DISK_KEYS = {"name", "model", "serial", "vendor", "wwn", "rotational", "size"}
_TRUE = {"1", "t", "true", "on", "y", "yes"}
_FALSE = {"0", "f", "false", "off", "n", "no"}


def parse_bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"not a boolean: {text!r}")


def parse_disk(text: str) -> DiskSpec:
    path, *pairs = text.split(",")
    if not path:
        raise ValueError(f"--disk {text!r}: the path is missing")
    values: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or key not in _DISK_KEYS:
            raise ValueError(f"--disk {text!r}: {pair!r} is not one of {sorted(_DISK_KEYS)} as key=value")
        if key == "rotational":
            values[key] = parse_bool(value)
        elif key == "size":
            values[key] = parse_size(value)
        else:
            values[key] = value
    return DiskSpec(path=path, **values)


def parse_size(text: str) -> int:
    """Bytes, with an optional K/M/G/T suffix (binary units)."""
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = 1
    if value and value[-1] in "KMGT":
        mult = 1024 ** ("KMGT".index(value[-1]) + 1)
        value = value[:-1]
    size = int(value) * mult
    if size <= 0:
        raise ValueError(f"size must be positive: {text!r}")
    return size


def parse_cmdline(text: str) -> dict[str, str]:
    """The ipa-* key=value parameters of a kernel command line."""
    params: dict[str, str] = {}
    try:
        words = shlex.split(text)
    except ValueError:
        words = text.split()
    for word in words:
        key, sep, value = word.partition("=")
        if sep and key.startswith("ipa-"):
            params[key] = value
    return params


def read_cmdline(path: str = "/proc/cmdline") -> dict[str, str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return parse_cmdline(f.read())
    except OSError:
        return {}


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    api_url: str | None  # the bare-metal API root, e.g. http://10.0.2.2:8080/baremetal
    node_uuid: str | None
    listen_host: str = "0.0.0.0"
    listen_port: int = DEFAULT_LISTEN_PORT
    advertise_host: str | None = None  # callback_url host; default the listen host or the route to the API
    advertise_port: int | None = None  # default the bound port
    advertise_url: str | None = None  # overrides host and port
    insecure: bool = False  # no TLS certificate checks (API and WebDAV)
    disks: tuple[DiskSpec, ...] = ()
    heartbeat_timeout: float | None = None  # overrides what lookup says
    lookup_timeout: float = LOOKUP_TIMEOUT
    agent_token: str | None = None  # standalone mode (no API): the token the command API expects
    retry_backoff: float = 10.0  # seconds between tries of one chunk (Ironic's standby: 10)
    log_level: str = "INFO"


def _split_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        raise ValueError(f"--listen {text!r}: expected HOST:PORT")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="freezeframe-agent",
        description="Freezeframe's on-node agent: looks the node up, heartbeats, and streams the "
        "root disk to a WebDAV area when the conductor asks. Settings come from /proc/cmdline "
        "(ipa-api-url, ipa-node-uuid, ipa-advertise-host, ipa-advertise-port, ipa-listen-port, "
        "ipa-insecure); these flags override them.",
    )
    p.add_argument("--api-url", help="bare-metal API root, e.g. http://10.0.2.2:8080/baremetal")
    p.add_argument("--node-uuid", help="the node's UUID (else lookup by this machine's MAC addresses)")
    p.add_argument("--listen", metavar="HOST:PORT", help=f"command API address (default 0.0.0.0:{DEFAULT_LISTEN_PORT})")
    p.add_argument("--advertise-url", help="callback_url sent in heartbeats (default from the listen address)")
    p.add_argument(
        "--disk",
        action="append",
        default=[],
        metavar="PATH[,name=,model=,serial=,vendor=,wwn=,rotational=,size=]",
        help="a candidate disk (repeatable); without any, the disks of /sys/block",
    )
    p.add_argument("--heartbeat-timeout", type=float, help="override the heartbeat_timeout lookup returns")
    p.add_argument("--lookup-timeout", type=float, help=f"give up lookup after this many seconds (default {LOOKUP_TIMEOUT:g})")
    p.add_argument("--insecure", action="store_true", default=None, help="do not verify TLS certificates")
    p.add_argument(
        "--agent-token",
        help="standalone mode for tests: no lookup or heartbeats; the command API expects this token (>= 32 chars)",
    )
    p.add_argument("--retry-backoff", type=float, help="seconds between tries of one chunk (default 10)")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--cmdline", default="/proc/cmdline", help=argparse.SUPPRESS)
    return p


def load(argv: list[str] | None = None) -> AgentConfig:
    parser = build_parser()
    args = parser.parse_args(argv)
    kernel = read_cmdline(args.cmdline)
    try:
        disks = tuple(parse_disk(d) for d in args.disk)
        if args.listen:
            listen_host, listen_port = _split_hostport(args.listen)
        else:
            listen_host, listen_port = "0.0.0.0", int(kernel.get("ipa-listen-port") or DEFAULT_LISTEN_PORT)
        adv_port = kernel.get("ipa-advertise-port")
        insecure = args.insecure if args.insecure is not None else parse_bool(kernel.get("ipa-insecure", "0") or "0")
    except ValueError as exc:
        parser.error(str(exc))
    if args.agent_token is not None and len(args.agent_token) < 32:
        parser.error("--agent-token must be at least 32 characters")
    api_url = args.api_url or kernel.get("ipa-api-url")
    if not api_url and not args.agent_token:
        parser.error("no API URL: pass --api-url or ipa-api-url= on the kernel command line")
    return AgentConfig(
        api_url=api_url.rstrip("/") if api_url else None,
        node_uuid=args.node_uuid or kernel.get("ipa-node-uuid") or None,
        listen_host=listen_host,
        listen_port=listen_port,
        advertise_host=kernel.get("ipa-advertise-host") or None,
        advertise_port=int(adv_port) if adv_port else None,
        advertise_url=args.advertise_url.rstrip("/") if args.advertise_url else None,
        insecure=bool(insecure),
        disks=disks,
        heartbeat_timeout=args.heartbeat_timeout,
        lookup_timeout=args.lookup_timeout if args.lookup_timeout is not None else LOOKUP_TIMEOUT,
        agent_token=args.agent_token,
        retry_backoff=args.retry_backoff if args.retry_backoff is not None else 10.0,
        log_level=args.log_level,
    )
