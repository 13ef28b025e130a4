"""Typed settings, built once at start-up and passed down.

Precedence: defaults < TOML file (``--config``) < environment (``FREEZEFRAME_<SECTION>__<KEY>``)
< command-line flags. There is no module-level configuration object: ``load()`` returns a frozen
tree that the caller hands to whatever needs it.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

ENV_PREFIX = "FREEZEFRAME_"


class SettingsError(ValueError):
    """A configuration value is missing, unknown or of the wrong type."""


def default_data_dir() -> Path:
    """/var/lib/freezeframe for root (a system service; QEMU, which may run unprivileged, can
    reach disks there), else $XDG_DATA_HOME/freezeframe."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/var/lib/freezeframe")
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "freezeframe"


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 9292
    # Seconds to let in-flight requests finish on SIGTERM/SIGINT — and, first, for the
    # conductor to pause its running workflows (a step that cannot be interrupted in time ends
    # the process as kill -9 would: never reverted, resumed at the next start).
    graceful_timeout: float = 30.0
    # Largest request header block accepted (bytes); bigger ones get 431.
    max_header_bytes: int = 16384
    # Requests in flight at once (the health check aside); more are answered 503 + Retry-After
    # at once. An eighth is kept for services finishing work already accepted.
    max_in_flight: int = 512
    log_level: str = "info"
    # "text" (the default: one readable line per event) or "json" (one JSON object per line:
    # time, level, logger, message, request_id, and workflow_id where there is one).
    log_format: str = "text"


@dataclass(frozen=True)
class DatabaseSettings:
    # Empty means the embedded default: SQLite (WAL) in the data directory.
    url: str = ""


@dataclass(frozen=True)
class StoreSettings:
    # Empty means <data_dir>/images.
    path: str = ""
    # fsync image data before an image becomes active (durability over speed).
    fsync: bool = True
    # Write image data with O_DIRECT where the filesystem takes it (not tmpfs): new data does not
    # go through the page cache, whose fresh pages cost ~2 CPU-seconds per GiB on this kind of
    # VM (a buffered 1 GiB write + fdatasync: 3.0 s; direct: 0.5 s).
    direct_io: bool = True


@dataclass(frozen=True)
class ImageSettings:
    # Largest image accepted, bytes (413 above it). 1 TiB by default, like Glance.
    max_size: int = 1 << 40
    # Multihash algorithm recorded as os_hash_algo (hashlib name).
    hash_algo: str = "sha512"
    # Legacy md5 `checksum`; off for a FIPS-friendly profile.
    legacy_md5: bool = True
    # Bytes handed to the hashing/writing threads at once.
    chunk_size: int = 4 << 20
    max_properties: int = 128
    max_tags: int = 128
    max_members: int = 128
    list_limit_max: int = 1000
    list_limit_default: int = 25
    # How often an upload records its progress in the database (seconds).
    progress_interval: float = 2.0


@dataclass(frozen=True)
class MetricsSettings:
    """``GET /metrics`` (Prometheus text format; docs/operations.md, "Metrics")."""
    enabled: bool = True
    # False (the default): only an admin token may scrape (the counts of images, workflows and
    # conductors are not for every user). True: no token needed — for a Prometheus that sends
    # none; keep the port then on a network only operators reach.
    public: bool = False


@dataclass(frozen=True)
class ReaperSettings:
    enabled: bool = True
    interval: float = 60.0
    # A queued image with no live owning workflow is killed after this long (seconds).
    queued_timeout: float = 86400.0
    # A saving image whose upload made no progress for this long is killed (seconds).
    saving_timeout: float = 600.0
    # A killed image is deleted (record and data) after this long (seconds).
    killed_grace: float = 3600.0


@dataclass(frozen=True)
class AuthSettings:
    # "tokens": the tokens file and the tokens issued by this identity service ([identity]);
    # "keystone": the tokens file and tokens validated against an existing Keystone (below);
    # "noauth": development only.
    mode: str = "tokens"
    # Empty means <data_dir>/tokens.json, created with fresh tokens on first start.
    tokens_file: str = ""
    # An operator's oslo.policy file (YAML or JSON) overriding the default rules; empty means
    # <data_dir>/policy.yaml when it exists. `freezeframe policy` prints the defaults.
    policy_file: str = ""
    # mode "keystone": the Keystone that issues the users' tokens (its v3 URL, e.g.
    # http://keystone:5000/v3) and the service user that validates them (role "service").
    keystone_url: str = ""
    keystone_user: str = ""
    keystone_password: str = ""
    keystone_project: str = "service"
    keystone_user_domain: str = "Default"
    keystone_project_domain: str = "Default"
    # A validated token is remembered this long (at most 300 s, never past its expiry);
    # a refused one is not remembered.
    keystone_cache_ttl: float = 300.0
    keystone_timeout: float = 10.0


@dataclass(frozen=True)
class IdentitySettings:
    # Serve the identity v3 API at /identity (auth.mode "tokens"): password and application
    # credential authentication against the identity file, tokens kept in the database.
    enabled: bool = True
    # Projects, users (password hashes), role assignments, application credentials. Empty:
    # <data_dir>/identity.yaml, generated on first start (an admin, a demo member, the service
    # user, random passwords written to <data_dir>/clouds.yaml only).
    file: str = ""
    # Seconds an issued token is valid.
    token_expiration: float = 3600.0
    # Seconds each process remembers a token it validated: a token revoked through another
    # process stops working here within this time (at once through this process).
    cache_ttl: float = 10.0


@dataclass(frozen=True)
class EndpointSettings:
    """The endpoint catalog: where each API is, for clients (the identity service's catalog)
    and for the services reaching one another. Empty: this very process,
    http://<server.host>:<server.port>/image (/compute/v2.1, /identity); volume and baremetal
    are listed only when set."""
    image: str = ""
    compute: str = ""
    volume: str = ""
    baremetal: str = ""
    identity: str = ""
    # Freezeframe's own workflow API (catalog type ``freezeframe-workflow``, not Mistral's
    # ``workflow``), where the openstack CLI plugin's ``openstack workflow ...`` goes.
    workflow: str = ""
    region: str = "RegionOne"


@dataclass(frozen=True)
class ComputeSettings:
    enabled: bool = True
    # "libvirt" (the real driver) or "fake" (workflow tests only).
    driver: str = "libvirt"
    # Empty: libvirt's embedded mode under <data_dir>/libvirt (no daemon needed).
    libvirt_uri: str = ""
    # Empty means <data_dir>/instances.
    instances_path: str = ""
    # Snapshots and backups running at once on one compute host; more are a 409.
    max_concurrent_snapshots: int = 5
    # The name of this compute host: its servers record it, and host-bound work on them goes to
    # a conductor that serves it (conductor.hosts).
    host: str = field(default_factory=socket.gethostname)
    # The conductor's reconcile repairs a server left in spawning / powering-* / deleting with
    # no live operation once that task_state is this old (seconds); at once for one left by an
    # earlier run of this very `serve` (compute/reconcile.py).
    task_timeout: float = 3600.0
    # `freezeframe compute`: where the other roles reach this host's API (empty:
    # http://<server.host>:<server.port>), its heartbeat, and when a host counts as down.
    url: str = ""
    heartbeat_interval: float = 5.0
    host_down_after: float = 30.0
    # At most one host-bound operation per server at a time; another waits this long, then 409.
    lock_timeout: float = 30.0
    # A point in time read from another host: NBD on TCP, TLS with credentials made for each
    # export. export_tls = false is plain TCP: only on a network the operator trusts.
    export_tls: bool = True
    export_address: str = ""     # the address conductors connect to (empty: compute.url's host)
    export_bind: str = ""        # the address qemu-nbd listens on (empty: export_address)


@dataclass(frozen=True)
class VolumeSettings:
    # The volume service (Cinder v3 at /volume/v3) in `serve`, with its driver on this host.
    enabled: bool = True
    # "qcow2file" (volume files and qcow2 overlays on a share directory, RemoteFS style) or
    # "fake" (workflow tests only).
    driver: str = "qcow2file"
    # The share the qcow2file driver keeps volumes on (empty: <data_dir>/volumes). Compute
    # hosts open attached volumes at the same path (a split deployment mounts it there).
    share_path: str = ""
    # The name of this volume host (volumes record it; their file work runs here).
    host: str = field(default_factory=socket.gethostname)
    availability_zone: str = "nova"
    default_type: str = "__DEFAULT__"
    # How long the volume manager waits for compute's part of an assisted snapshot (seconds;
    # Cinder's 600 and 7200): past it, the snapshot ends error (create) / error_deleting
    # (delete) with the reason, and what the begin made is removed.
    assisted_create_timeout: float = 600.0
    assisted_delete_timeout: float = 7200.0
    # While waiting, the workflow is looked at again this often even without a wake-up (a
    # report from another process wakes it at once in the same process; else at this pace).
    assisted_recheck: float = 2.0
    # The largest volume (GiB) a request may ask for (ext4's largest file is 16 TiB - 4 KiB: a
    # share on ext4 cannot hold a 16384 GiB volume file).
    max_size: int = 16383


@dataclass(frozen=True)
class BaremetalSettings:
    # The bare-metal service (Ironic v1 subset at /baremetal) in `serve`: nodes, ports, their
    # provision states, the agent's lookup and heartbeat, node snapshots (seed 004).
    enabled: bool = True
    # What may be used, comma-separated (Ironic's enabled_*): a node's driver (hardware type)
    # and each of its interfaces must be enabled here and supported by its hardware type.
    enabled_hardware_types: str = "fake-hardware,redfish"
    enabled_power_interfaces: str = "fake,redfish"
    enabled_boot_interfaces: str = "fake,redfish-virtual-media"
    enabled_snapshot_interfaces: str = "fake,no-snapshot,agent"
    # The WebDAV area node snapshots stream into (empty: <data_dir>/baremetal-transfers), and
    # the host that serves it: the snapshots' host-bound work runs on a conductor there.
    transfer_path: str = ""
    transfer_host: str = field(default_factory=socket.gethostname)
    # Where this conductor's WebDAV server listens ("": none here), and the area's URL as agents
    # reach it (empty: http://<webdav_bind>).
    webdav_bind: str = "127.0.0.1:6387"
    webdav_url: str = ""
    # The bare-metal API root as agents reach it, e.g. http://10.0.2.2:8080/baremetal (empty:
    # the endpoint catalog's baremetal endpoint).
    api_url: str = ""
    # The agent ISO (scripts/build-agent-image; empty: ~/.cache/freezeframe/agent/out/agent.iso)
    # and where a BMC downloads a node's copy from (empty: http://<webdav_bind>/_boot, the
    # address the WebDAV server listens on, as a BMC on the conductor's side reaches it; with
    # a wildcard bind (0.0.0.0, [::]) or no server here, <webdav_url>/_boot).
    agent_iso: str = ""
    agent_iso_url: str = ""
    # Told to the agent at lookup: it heartbeats every 0.3-0.6 x this (seconds).
    heartbeat_timeout: float = 30.0
    # snapshot wait: the agent's first heartbeat must come within this (seconds, Ironic's 1800).
    agent_wait_timeout: float = 1800.0
    # snapshotting: no heartbeat for this long means the agent died (the snapshot fails).
    agent_lost_after: float = 90.0
    # The stream's chunk (bytes): a retry after a broken stream re-sends at most one.
    chunk_size: int = 16 << 20
    # The reaper removes an intermediate copy whose node is no longer in snapshot failed after
    # this long (seconds).
    transfer_grace: float = 86400.0
    # A power action's limit (seconds).
    power_timeout: float = 60.0


@dataclass(frozen=True)
class ConductorSettings:
    # Run the conductor inside `serve` (the embedded default).
    enabled: bool = True
    # Stable id of this conductor; empty: <hostname>-<data dir hash>.
    id: str = ""
    # Coordination backend for liveness: empty = file backend in the data dir; or redis://...
    coordination_url: str = ""
    # The image API the workflows upload to; empty = this server's own /image.
    image_url: str = ""
    # Token with role "service" for that API; empty = taken from the tokens file.
    service_token: str = ""
    workers: int = 5
    scan_interval: float = 5.0
    # Where conductors find work, by URL: empty = the database (embedded; conductors poll it);
    # redis://host:port/db[?namespace=...] = taskflow's Redis jobboard (several conductors).
    jobboard_url: str = ""
    # A conductor's lease on a workflow (seconds): renewed every third of it; a conductor that
    # dies is taken over about this long after its last renewal.
    lease_ttl: float = 10.0
    # The hosts whose host-bound work (a server's snapshot) this conductor claims, comma-
    # separated, "*" for any. Empty: any in `serve`, compute.host for `freezeframe conductor`.
    hosts: str = ""
    # A workflow whose state has not changed for this long is shown as stalled.
    stall_timeout: float = 300.0
    # Upload bandwidth limit per snapshot, bytes/s (0: none), to spare a busy host's network.
    upload_rate: int = 0
    # A snapshot is uploaded in parts of this many bytes, each kept by the image service before
    # the next is sent: a crash re-sends at most one part.
    upload_chunk: int = 16 << 20


@dataclass(frozen=True)
class TestingSettings:
    """Knobs for the project's own tests and benchmarks, never for production: any of them set
    without ``enabled = true`` (FREEZEFRAME_TESTING__ENABLED=true) is refused at start."""
    __test__ = False    # not a test class (pytest collects Test* names)
    enabled: bool = False
    # Fake virt driver (compute.driver = "fake"): steps that fail
    # ("begin_snapshot,copy,open_snapshot"), seconds to sleep per MiB while taking the point in
    # time, and after each read of it.
    fake_fail_on: str = ""
    fake_copy_delay: float = 0.0
    fake_read_delay: float = 0.0
    # Crash tests: SIGKILL the process right after a workflow enters one of these states
    # (comma-separated, e.g. "PENDING,UPLOAD_30_COMPLETE").
    fault_kill_at: str = ""
    # Stop tests: a workflow entering one of these states waits there (interruptibly) for
    # fault_pause_seconds, so a test can stop the process in that state.
    fault_pause_at: str = ""
    fault_pause_seconds: float = 60.0

    def knobs_set(self) -> list[str]:
        """The knobs that differ from their defaults (``enabled`` aside)."""
        default = TestingSettings()
        return [f.name for f in dataclasses.fields(self)
                if f.name != "enabled" and getattr(self, f.name) != getattr(default, f.name)]

    @staticmethod
    def states(value: str) -> frozenset[str]:
        """A comma-separated list of names (fake_fail_on, fault_kill_at, fault_pause_at)."""
        return frozenset(part.strip() for part in value.split(",") if part.strip())


# Settings that moved: a configuration still naming the old place gets told the new one.
MOVED = {f"{section}.{name}": f"testing.{name}" for section, names in (
    ("compute", ("fake_fail_on", "fake_copy_delay", "fake_read_delay")),
    ("conductor", ("fault_kill_at", "fault_pause_at", "fault_pause_seconds"))) for name in names}


@dataclass(frozen=True)
class Settings:
    data_dir: Path = field(default_factory=default_data_dir)
    server: ServerSettings = field(default_factory=ServerSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    images: ImageSettings = field(default_factory=ImageSettings)
    reaper: ReaperSettings = field(default_factory=ReaperSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    identity: IdentitySettings = field(default_factory=IdentitySettings)
    endpoints: EndpointSettings = field(default_factory=EndpointSettings)
    compute: ComputeSettings = field(default_factory=ComputeSettings)
    volume: VolumeSettings = field(default_factory=VolumeSettings)
    baremetal: BaremetalSettings = field(default_factory=BaremetalSettings)
    conductor: ConductorSettings = field(default_factory=ConductorSettings)
    testing: TestingSettings = field(default_factory=TestingSettings)

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{self.data_dir / 'freezeframe.db'}"

    @property
    def store_path(self) -> Path:
        return Path(self.store.path) if self.store.path else self.data_dir / "images"

    @property
    def instances_path(self) -> Path:
        return Path(self.compute.instances_path) if self.compute.instances_path else self.data_dir / "instances"

    @property
    def volumes_path(self) -> Path:
        return Path(self.volume.share_path) if self.volume.share_path else self.data_dir / "volumes"

    @property
    def policy_path(self) -> Path:
        return Path(self.auth.policy_file) if self.auth.policy_file else self.data_dir / "policy.yaml"

    @property
    def tokens_path(self) -> Path:
        return Path(self.auth.tokens_file) if self.auth.tokens_file else self.data_dir / "tokens.json"

    @property
    def identity_path(self) -> Path:
        return Path(self.identity.file) if self.identity.file else self.data_dir / "identity.yaml"

    @property
    def local_url(self) -> str:
        """This process's root URL as a client on this host reaches it."""
        host = self.server.host
        host = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.server.port}"

    def endpoint(self, service: str) -> str:
        """A service's URL from the endpoint catalog: the configured one, else this process's
        (image, compute, identity); "" for a service that is not configured."""
        configured = getattr(self.endpoints, service)
        if configured or service not in LOCAL_PATHS:
            return configured.rstrip("/")
        return self.local_url + LOCAL_PATHS[service]


# Where `serve` mounts each API (the endpoint catalog's defaults).
LOCAL_PATHS = {"image": "/image", "compute": "/compute/v2.1", "identity": "/identity", "volume": "/volume/v3",
               "baremetal": "/baremetal", "workflow": "/v1"}


def _coerce(value: Any, typ: Any, where: str) -> Any:
    """Convert a value from a file or the environment to the declared type."""
    if typ is Path:
        return Path(os.path.expanduser(str(value)))
    if typ is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{where}: expected a boolean, got {value!r}")
    if typ in (int, float):
        if isinstance(value, bool):
            raise SettingsError(f"{where}: expected a number, got {value!r}")
        try:
            return typ(value)
        except (TypeError, ValueError):
            raise SettingsError(f"{where}: expected {typ.__name__}, got {value!r}") from None
    if typ is str:
        if not isinstance(value, (str, int, float)):
            raise SettingsError(f"{where}: expected a string, got {value!r}")
        return str(value)
    raise SettingsError(f"{where}: unsupported type {typ!r}")


def _apply(obj: Any, overrides: Mapping[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(type(obj))
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        name = key.replace("-", "_")
        if name not in hints:
            here = f"{where}.{key}" if where else key
            if f"{where}.{name}" in MOVED:
                new = MOVED[f"{where}.{name}"]
                raise SettingsError(f"{here}: moved to {new} ([testing] section, env FREEZEFRAME_"
                                    f"{new.upper().replace('.', '__')}; needs testing.enabled = true)")
            known = ", ".join(sorted(hints))
            raise SettingsError(f"{where}.{key}: unknown setting (known: {known})")
        typ = hints[name]
        here = f"{where}.{key}" if where else key
        if dataclasses.is_dataclass(typ):
            if not isinstance(value, Mapping):
                raise SettingsError(f"{here}: expected a table of settings")
            changes[name] = _apply(getattr(obj, name), value, here)
        else:
            if isinstance(typ, types.UnionType):
                typ = next(t for t in typing.get_args(typ) if t is not type(None))
            changes[name] = _coerce(value, typ, here)
    return dataclasses.replace(obj, **changes)


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX) or key == ENV_PREFIX + "CONFIG":
            continue
        parts = key[len(ENV_PREFIX):].lower().split("__")
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return tree


def load(
    config_file: str | os.PathLike | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the settings tree: defaults < file < environment < flags.

    ``flags`` uses dotted keys (``{"server.port": 9300, "data_dir": "/srv/ff"}``); None values
    are ignored so unset command-line options do not override anything.
    """
    environ = os.environ if environ is None else environ
    settings = Settings()
    config_file = config_file or environ.get(ENV_PREFIX + "CONFIG")
    if config_file:
        try:
            with open(config_file, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise SettingsError(f"config file {config_file} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"config file {config_file}: {exc}") from None
        settings = _apply(settings, data, "")
    settings = _apply(settings, _env_overrides(environ), "")
    tree: dict[str, Any] = {}
    for dotted, value in (flags or {}).items():
        if value is None:
            continue
        parts = dotted.split(".")
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    settings = _apply(settings, tree, "")
    return validate(settings)


def validate(settings: Settings) -> Settings:
    import hashlib

    if settings.server.log_format not in ("text", "json"):
        raise SettingsError(f"server.log_format: must be 'text' or 'json', got {settings.server.log_format!r}")
    if settings.auth.mode not in ("tokens", "noauth", "keystone"):
        raise SettingsError(f"auth.mode: must be 'tokens', 'keystone' or 'noauth', got {settings.auth.mode!r}")
    if settings.auth.mode == "keystone":
        missing = [f"auth.{k}" for k in ("keystone_url", "keystone_user", "keystone_password")
                   if not getattr(settings.auth, k)]
        if missing:
            raise SettingsError(f"auth.mode 'keystone' needs {', '.join(missing)} (the Keystone and the "
                                "service user that validates tokens)")
    if not 0 <= settings.auth.keystone_cache_ttl <= 300:
        raise SettingsError("auth.keystone_cache_ttl: must be between 0 and 300 seconds")
    if settings.identity.token_expiration <= 0 or settings.identity.cache_ttl < 0:
        raise SettingsError("identity.token_expiration must be positive and identity.cache_ttl not negative")
    for name in ("image", "compute", "volume", "baremetal", "identity", "workflow"):
        url = getattr(settings.endpoints, name)
        if url and not url.startswith(("http://", "https://")):
            raise SettingsError(f"endpoints.{name}: {url!r} must start with http:// or https://")
    if settings.images.hash_algo not in hashlib.algorithms_available:
        raise SettingsError(f"images.hash_algo: unknown hash algorithm {settings.images.hash_algo!r}")
    if not 0 < settings.server.port < 65536:
        raise SettingsError(f"server.port: {settings.server.port} is not a TCP port")
    if settings.compute.driver not in ("libvirt", "fake"):
        raise SettingsError(f"compute.driver: must be 'libvirt' or 'fake', got {settings.compute.driver!r}")
    if settings.images.chunk_size < 65536:
        raise SettingsError("images.chunk_size: must be at least 65536")
    if settings.conductor.upload_chunk < 65536:
        raise SettingsError("conductor.upload_chunk: must be at least 65536")
    if not 0.5 <= settings.conductor.lease_ttl <= 3600:
        raise SettingsError("conductor.lease_ttl: must be between 0.5 and 3600 seconds")
    if settings.conductor.jobboard_url and not settings.conductor.jobboard_url.startswith("redis://"):
        raise SettingsError(f"conductor.jobboard_url: {settings.conductor.jobboard_url!r}: empty (the database) "
                            "or redis://host:port/db")
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$", settings.compute.host):
        raise SettingsError(f"compute.host: {settings.compute.host!r} must be a host name (letters, digits, '.', "
                            "'_' and '-')")
    if settings.compute.url and not settings.compute.url.startswith(("http://", "https://")):
        raise SettingsError(f"compute.url: {settings.compute.url!r} must start with http:// or https://")
    if not 0 < settings.compute.heartbeat_interval < settings.compute.host_down_after:
        raise SettingsError("compute.heartbeat_interval must be positive and below compute.host_down_after")
    if not 0 <= settings.compute.lock_timeout <= 3600:
        raise SettingsError("compute.lock_timeout: must be between 0 and 3600 seconds")
    if settings.volume.driver not in ("qcow2file", "fake"):
        raise SettingsError(f"volume.driver: must be 'qcow2file' or 'fake', got {settings.volume.driver!r}")
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$", settings.volume.host):
        raise SettingsError(f"volume.host: {settings.volume.host!r} must be a host name (letters, digits, '.', "
                            "'_' and '-')")
    for name in ("assisted_create_timeout", "assisted_delete_timeout", "assisted_recheck"):
        if not 0 < getattr(settings.volume, name) <= 86400:
            raise SettingsError(f"volume.{name}: must be between 0 and 86400 seconds")
    validate_baremetal(settings.baremetal)
    knobs = settings.testing.knobs_set()
    if knobs and not settings.testing.enabled:
        raise SettingsError(f"testing.{knobs[0]}: a test-only knob (fault injection, fake driver delays), "
                            "refused unless testing.enabled = true (FREEZEFRAME_TESTING__ENABLED=true); "
                            "never set it in production")
    fake_knobs = [k for k in knobs if k.startswith("fake_")]
    if fake_knobs and settings.compute.driver != "fake":
        raise SettingsError(f"testing.{fake_knobs[0]}: applies to the fake virt driver only "
                            f"(compute.driver = 'fake', not {settings.compute.driver!r})")
    return settings


def validate_baremetal(bm: BaremetalSettings) -> None:
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$", bm.transfer_host):
        raise SettingsError(f"baremetal.transfer_host: {bm.transfer_host!r} must be a host name (letters, digits, "
                            "'.', '_' and '-')")
    for name in ("enabled_hardware_types", "enabled_power_interfaces", "enabled_boot_interfaces",
                 "enabled_snapshot_interfaces"):
        if not [n for n in getattr(bm, name).split(",") if n.strip()]:
            raise SettingsError(f"baremetal.{name}: name at least one")
    for name in ("webdav_url", "api_url", "agent_iso_url"):
        url = getattr(bm, name)
        if url and not url.startswith(("http://", "https://")):
            raise SettingsError(f"baremetal.{name}: {url!r} must start with http:// or https://")
    if bm.webdav_bind and not re.match(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9._-]+):[0-9]{1,5}$", bm.webdav_bind):
        raise SettingsError(f"baremetal.webdav_bind: {bm.webdav_bind!r} must be host:port (or empty: no server)")
    for name in ("heartbeat_timeout", "agent_wait_timeout", "agent_lost_after", "transfer_grace", "power_timeout"):
        if not 0 < getattr(bm, name) <= 30 * 86400:
            raise SettingsError(f"baremetal.{name}: must be between 0 and 2592000 seconds")
    if not 1 << 16 <= bm.chunk_size <= 1 << 30 or bm.chunk_size % 4096:
        raise SettingsError("baremetal.chunk_size: must be a multiple of 4096 between 64 KiB and 1 GiB")
