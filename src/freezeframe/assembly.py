"""Assembling the services from the settings: shared by `serve` and `conductor`."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from freezeframe.common.timeutil import utcnow
from freezeframe.compute import conductor_hooks as compute_hooks
from freezeframe.compute.drivers.base import VirtDriver
from freezeframe.compute.drivers.locked import LockedDriver
from freezeframe.compute.hostclient import RemoteHost
from freezeframe.compute.hosts import HostRegistry
from freezeframe.compute.hostside import Hosts, LocalHost
from freezeframe.compute.service import ComputeService
from freezeframe.conductor import jobboard
from freezeframe.conductor.engine import Conductor
from freezeframe.conductor.lease import Leases
from freezeframe.conductor.liveness import Liveness, backend_url
from freezeframe.conductor.registry import Registry
from freezeframe.conductor.runtime import Runtime
from freezeframe.conductor.runtime import install as install_runtime
from freezeframe.conductor.service import Workflows
from freezeframe.db.engine import make_engine, make_sessionmaker
from freezeframe.db.migrate import upgrade
from freezeframe.db.session import Database
from freezeframe.common.context import Actor
from freezeframe.common.policy import Policy
from freezeframe.http.auth import Authenticator, acting_headers, load_tokens, service_token, write_default_tokens
from freezeframe.http.inprocess import InProcess
from freezeframe.identity.catalog import Catalog
from freezeframe.identity.service import IdentityService
from freezeframe.images.client import GlanceClient
from freezeframe.images.data import ImageData
from freezeframe.images.drivers.file import FileStore
from freezeframe.images.members import MemberService
from freezeframe.images.reaper import Reaper
from freezeframe.images.service import ImageService
from freezeframe.volumes.client import CinderClient
from freezeframe.settings import Settings, SettingsError

if TYPE_CHECKING:
    from freezeframe.baremetal.service import BaremetalService
    from freezeframe.volumes.service import VolumeService

LOG = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Services:
    db: Database
    store: FileStore
    images: ImageService
    data: ImageData
    members: MemberService
    reaper: Reaper
    policy: Policy
    inprocess: InProcess
    # The conductor's side every process has: the registry of kinds and hooks, the conductor's
    # API for services (submit, ...), and liveness (who is alive).
    registry: Registry
    workflows: Workflows
    liveness: Liveness
    conductor: Conductor | None = None
    compute: ComputeService | None = None
    # The volume service (Cinder v3) and the manager its workflows run with (volume.enabled).
    volume: "VolumeService | None" = None
    volume_manager: Any = None
    # Compute's way to the volume API, acting for a user (attachments, assisted snapshot reports).
    volumes_for: Callable[[Actor], Any] | None = None
    # The bare-metal service (Ironic v1) and the manager its workflows run with (baremetal.enabled).
    baremetal: "BaremetalService | None" = None
    baremetal_manager: Any = None


def build_services(settings: Settings, *, role: str | None = None) -> Services:
    """``role``: "conductor" when this process runs a conductor (its liveness id is then the
    conductor's), "api" otherwise; by default what `serve` runs with these settings."""
    if settings.testing.enabled:
        LOG.warning("[testing] is enabled (test-only knobs: %s): never in production",
                    ", ".join(f"{k}={getattr(settings.testing, k)!r}" for k in settings.testing.knobs_set()) or "none")
    engine = make_engine(settings.database_url)
    upgrade(engine, compute_host=settings.compute.host)
    db = Database(engine, make_sessionmaker(engine))
    store = FileStore(settings.store_path, fsync=settings.store.fsync, direct_io=settings.store.direct_io)
    policy = Policy(settings.policy_path)
    role = role or ("conductor" if settings.compute.enabled and settings.conductor.enabled else "api")
    registry = Registry()
    liveness = Liveness(backend_url(settings.conductor.coordination_url, settings.data_dir),
                        conductor_id(settings, role))
    board = jobboard.fetch(settings.conductor.jobboard_url, db=db, registry=registry,
                           ttl=settings.conductor.lease_ttl, name=f"freezeframe-{liveness.member_id}")
    workflows = Workflows(db, registry, board, owner_alive=liveness.is_alive, lease_ttl=settings.conductor.lease_ttl)
    return Services(
        db=db,
        store=store,
        images=ImageService(db, store, settings.images, policy),
        data=ImageData(db, store, settings.images, policy),
        members=MemberService(db, settings.images, policy),
        reaper=Reaper(db, store, settings.reaper, owner_alive=workflows.owner_alive),
        policy=policy,
        inprocess=InProcess(),
        registry=registry,
        workflows=workflows,
        liveness=liveness,
    )


def service_image_client(settings: Settings, authenticator: Authenticator,
                         inprocess: InProcess | None = None) -> Callable[[Actor], GlanceClient]:
    """How the other services (and the workflows) reach the image API, acting for a user."""
    return acting_client(settings, authenticator, inprocess, GlanceClient, "/image",
                         settings.conductor.image_url or settings.endpoint("image"),
                         in_process=not settings.conductor.image_url)


def service_volume_client(settings: Settings, authenticator: Authenticator,
                          inprocess: InProcess | None = None) -> Callable[[Actor], CinderClient]:
    """How compute (and its workflows) reach the volume API, acting for a user (in its project).
    ``inprocess`` only where this process mounts the volume API (``serve`` with volume.enabled)."""
    return acting_client(settings, authenticator, inprocess, CinderClient, "/volume/v3", settings.endpoint("volume"),
                         per_actor=lambda actor: {"project_id": actor.project_id or ""})


def service_baremetal_client(settings: Settings, authenticator: Authenticator,
                             inprocess: InProcess | None = None) -> Callable[[Actor], Any]:
    """How compute reaches the bare-metal API, acting for a user (bare-metal servers: adopt,
    createImage, delete). ``inprocess`` only where this process mounts it (baremetal.enabled)."""
    from freezeframe.compute.baremetal_ops import BaremetalClient
    return acting_client(settings, authenticator, inprocess, BaremetalClient, "/baremetal",
                         settings.endpoint("baremetal"))


def acting_client(settings: Settings, authenticator: Authenticator, inprocess: InProcess | None, cls: type[T],
                  local_path: str, url: str, *, in_process: bool = True,
                  per_actor: Callable[[Actor], dict[str, Any]] | None = None) -> Callable[[Actor], T]:
    """How a service (or a workflow) reaches another service's API: acting for a user, with
    that user's rights, its own service credential beside it (X-Service-Token). In ``serve``
    the calls go through the same application in process (``local_path``: where it mounts that
    API); elsewhere over HTTP to ``url`` (the endpoint catalog's)."""
    if authenticator.mode == "noauth":
        credential = {"X-Service-Roles": "service"}
    else:
        token = settings.conductor.service_token or service_token(authenticator.tokens)
        if not token:
            raise SettingsError("conductor.service_token: no token with role 'service' in the tokens file; add "
                                "one (the services act for users with it) or set conductor.service_token")
        credential = {"X-Service-Token": token}
    local = inprocess is not None and in_process

    def client(actor: Actor) -> T:
        headers = {**credential, **acting_headers(actor)}
        extra = per_actor(actor) if per_actor is not None else {}
        if local and inprocess.bound:
            return cls(f"http://freezeframe.internal{local_path}", extra_headers=headers,  # type: ignore[call-arg]
                       transport=inprocess.transport(), **extra)
        if not url:
            raise SettingsError(f"no endpoint is configured for {local_path.strip('/').split('/')[0]} "
                                "([endpoints] in the settings)")
        return cls(url, extra_headers=headers, **extra)  # type: ignore[call-arg]
    return client


def build_runtime(settings: Settings, db, images, *, leases: Leases | None = None,
                  local: dict | None = None) -> Runtime:
    """What the workflows of this process run with (conductor.runtime); the fault injection
    points come from [testing] (refused unless testing.enabled)."""
    testing = settings.testing
    return Runtime(db=db, image_client=images, workdir=settings.instances_path / "_snapshots",
                   upload_rate=settings.conductor.upload_rate, upload_chunk=settings.conductor.upload_chunk,
                   kill_at=testing.states(testing.fault_kill_at), pause_at=testing.states(testing.fault_pause_at),
                   pause_seconds=testing.fault_pause_seconds, leases=leases, local=local or {})


def conductor_hosts(settings: Settings, hosts: Hosts, *,
                    extra: frozenset[str] = frozenset()) -> Callable[[], frozenset[str] | None]:
    """The hosts whose host-bound work a conductor claims, asked at every claim: of
    conductor.hosts (comma-separated; empty or "*": any), those it can reach now — its own
    host, and every registered compute host that is up and answers from here — plus ``extra``
    (what this process itself serves: the bare-metal transfer area's host) where wanted."""
    names = frozenset(h.strip() for h in settings.conductor.hosts.split(",") if h.strip())
    wanted = None if not names or "*" in names else names
    own = extra if wanted is None else extra & wanted
    return lambda: hosts.serving(wanted) | own


def host_credentials(settings: Settings, authenticator: Authenticator) -> tuple[dict, Callable[[Actor], dict]]:
    """The headers of a call to another host's compute process: the services' own credential
    (a call for no user), and for a user (the credential beside the user's identity)."""
    if authenticator.mode == "noauth":
        return {}, lambda actor: {"X-Service-Roles": "service", **acting_headers(actor)}
    token = settings.conductor.service_token or service_token(authenticator.tokens)
    if not token:
        raise SettingsError("conductor.service_token: no token with role 'service' in the tokens file; add one "
                            "(the services act for users with it) or set conductor.service_token")
    return {"X-Auth-Token": token}, lambda actor: {"X-Service-Token": token, **acting_headers(actor)}


def build_hosts(settings: Settings, db: Database, authenticator: Authenticator, images, *,
                local: bool) -> Hosts:
    """How this process reaches each server's host: its own (``local``: it runs the hypervisor
    of compute.host, behind the per-server lock) and every other over its host API."""
    local_host = None
    if local:
        try:
            driver = LockedDriver(build_driver(settings), timeout=settings.compute.lock_timeout)
        except Exception as exc:  # e.g. libvirt-python missing: the image service still runs
            LOG.warning("no hypervisor here: the %s driver is unavailable: %s", settings.compute.driver, exc)
        else:
            local_host = LocalHost(settings.compute.host, driver, images, settings.instances_path)
    own, acting = host_credentials(settings, authenticator)
    return Hosts(local_host, HostRegistry(db, down_after=settings.compute.host_down_after),
                 connect=lambda view: RemoteHost(view.name, view.url, own=own, acting=acting))


def register_work(settings: Settings, services: Services, hosts: Hosts, images, *,
                  leases: Leases | None, api_started_at) -> None:
    """The services' kinds of work and reconcile hooks, and the runtime their workflows use."""
    compute_hooks.register(services.registry, db=services.db, hosts=hosts,
                           workdir=settings.instances_path / "_snapshots", task_timeout=settings.compute.task_timeout,
                           api_started_at=api_started_at)
    local = compute_hooks.local_api(services.policy, hosts, volumes_for=services.volumes_for)
    if services.volume_manager is not None:
        from freezeframe.volumes import conductor_hooks as volume_hooks
        volume_hooks.register(services.registry)
        local.update(volume_hooks.local_api(services.volume_manager))
    if services.baremetal_manager is not None:
        from freezeframe.baremetal import conductor_hooks as baremetal_hooks
        baremetal_hooks.register(services.registry)
        local.update(baremetal_hooks.local_api(services.baremetal_manager))
    install_runtime(build_runtime(settings, services.db, images, leases=leases, local=local))


def build_conductor(settings: Settings, services: Services, hosts: Hosts, images, *,
                    api_started_at=None) -> Conductor:
    """A conductor for this process: its leases, the work it runs (registered), its jobboard."""
    leases = Leases(services.db, services.liveness.member_id, settings.conductor.lease_ttl,
                    services.registry.terminal_states)
    register_work(settings, services, hosts, images, leases=leases, api_started_at=api_started_at)
    companions, extra_hosts = [], frozenset()
    if services.baremetal_manager is not None:
        # The bare-metal transfer area is served by this conductor (unless baremetal.webdav_bind is
        # empty): it is then the designated host (baremetal.transfer_host) whose area-bound work
        # (snapshot, abort, teardown) it claims.
        from freezeframe.baremetal.webdav import area_server
        webdav = area_server(services.baremetal_manager)
        if webdav is not None:
            companions.append(webdav)
            extra_hosts = frozenset({settings.baremetal.transfer_host})
    return Conductor(services.db, services.liveness, database_url=settings.database_url, registry=services.registry,
                     leases=leases, board=services.workflows.board,
                     hosts=conductor_hosts(settings, hosts, extra=extra_hosts),
                     max_workers=settings.conductor.workers, scan_interval=settings.conductor.scan_interval,
                     workflows=services.workflows, companions=companions)


def build_driver(settings: Settings) -> VirtDriver:
    if settings.compute.driver == "fake":
        from freezeframe.compute.drivers.base import DriverError
        from freezeframe.compute.drivers.fake import PersistentFakeDriver
        testing = settings.testing     # test knobs: refused unless testing.enabled
        steps = sorted(testing.states(testing.fake_fail_on))
        return PersistentFakeDriver(settings.data_dir / "fake-host.json",
                                    fail_on={step: DriverError(f"injected failure at {step}") for step in steps},
                                    copy_delay=testing.fake_copy_delay, read_delay=testing.fake_read_delay)
    from freezeframe.compute.drivers.libvirt import LibvirtDriver
    consoles = settings.instances_path / "_consoles"   # each server's serial console log
    consoles.mkdir(parents=True, exist_ok=True)
    return LibvirtDriver(settings.compute.libvirt_uri or f"qemu:///embed?root={settings.data_dir / 'libvirt'}",
                         console_dir=settings.instances_path / "_consoles")


def conductor_id(settings: Settings, role: str = "conductor") -> str:
    """Stable across restarts of the same process role on the same host and data dir, so a
    restarted conductor finds (and resumes) its own workflows at once."""
    if settings.conductor.id and role == "conductor":
        return settings.conductor.id
    digest = hashlib.sha1(str(settings.data_dir.absolute()).encode()).hexdigest()[:8]
    suffix = "" if role == "conductor" else f"-{role}-{os.getpid()}"
    return f"{socket.gethostname()}-{digest}{suffix}"


def build_compute(settings: Settings, services: Services, authenticator: Authenticator, *,
                  with_conductor: bool) -> None:
    """The compute service — with this host's hypervisor when compute.enabled, and every other
    host's over its host API — and, in the embedded default, the conductor that runs its
    snapshots. Without a local conductor, workflows wait (owner None) for a `freezeframe conductor`."""
    images = service_image_client(settings, authenticator, services.inprocess)
    hosts = build_hosts(settings, services.db, authenticator, images, local=settings.compute.enabled)
    services.volumes_for = service_volume_client(settings, authenticator,
                                                 services.inprocess if services.volume is not None else None)
    # The compute API of this process starts now: an operation begun before belonged to a
    # process that is gone (the reconcile hook repairs it at once).
    api_started_at = utcnow()
    if with_conductor and hosts.local is not None:
        services.conductor = build_conductor(settings, services, hosts, images, api_started_at=api_started_at)
    else:       # workflows wait (owner None) for a `freezeframe conductor`
        register_work(settings, services, hosts, images, leases=None, api_started_at=api_started_at)
    # Bare-metal servers: the bare-metal API of this process (build_baremetal ran first), or the
    # one endpoints.baremetal names; None: createImage/adopt of a node are a 409.
    local_bm = services.baremetal is not None
    baremetal_for = service_baremetal_client(settings, authenticator, services.inprocess if local_bm else None) \
        if local_bm or settings.endpoints.baremetal else None
    services.compute = ComputeService(services.db, hosts, images, services.workflows, policy=services.policy,
                                      max_concurrent_snapshots=settings.compute.max_concurrent_snapshots,
                                      volumes_for=services.volumes_for, baremetal_for=baremetal_for)


def build_volume(settings: Settings, services: Services, authenticator: Authenticator) -> None:
    """The volume service (Cinder v3) and its manager, with this host's volume driver: the
    workflows it hands to the conductor run the driver here (the share is mounted here)."""
    if not settings.volume.enabled:
        return
    from freezeframe.volumes.compute_assist import AssistClient, ComputeAssist
    from freezeframe.volumes.manager import VolumeManager
    from freezeframe.volumes.service import VolumeService

    compute_for = acting_client(settings, authenticator, services.inprocess, AssistClient, "/compute/v2.1",
                                settings.endpoint("compute"))
    images = service_image_client(settings, authenticator, services.inprocess)
    services.volume_manager = VolumeManager(services.db, build_volume_driver(settings), settings.volume,
                                            ComputeAssist(compute_for), images_for=images)
    services.volume = VolumeService(services.db, services.workflows, policy=services.policy, settings=settings.volume,
                                    manager=services.volume_manager)


def build_baremetal(settings: Settings, services: Services, authenticator: Authenticator) -> None:
    """The bare-metal service (Ironic v1) and its manager, with the enabled hardware types and
    interfaces: the workflows it hands to the conductor run the interfaces here (the snapshot's
    host-bound steps where the transfer area is: baremetal.transfer_host)."""
    if not settings.baremetal.enabled:
        return
    from freezeframe.baremetal.drivers import Interfaces
    from freezeframe.baremetal.manager import BaremetalManager
    from freezeframe.baremetal.service import BaremetalService

    bm = settings.baremetal
    interfaces = Interfaces(bm, data_dir=settings.data_dir)
    images = service_image_client(settings, authenticator, services.inprocess)
    services.baremetal_manager = BaremetalManager(services.db, interfaces, bm, images_for=images,
                                                  data_dir=settings.data_dir,
                                                  api_url=bm.api_url or settings.endpoint("baremetal"))
    services.baremetal = BaremetalService(services.db, services.workflows, policy=services.policy, settings=bm,
                                          manager=services.baremetal_manager, interfaces=interfaces,
                                          host=f"{services.liveness.member_id}-api")


def build_volume_driver(settings: Settings):
    if settings.volume.driver == "fake":
        from freezeframe.volumes.drivers.fake import FakeVolumeDriver
        return FakeVolumeDriver(settings.data_dir / "fake-volumes", assisted=True)
    from freezeframe.volumes.drivers.qcow2file import Qcow2FileDriver
    settings.volumes_path.mkdir(parents=True, exist_ok=True)
    return Qcow2FileDriver(settings.volumes_path)


def build_identity(settings: Settings, db: Database) -> IdentityService | None:
    """The identity v3 service of `serve` (auth.mode "tokens" with identity.enabled): the
    identity file (generated on first start unless identity.file names one), tokens in ``db``."""
    if settings.auth.mode != "tokens" or not settings.identity.enabled:
        return None
    return IdentityService.open(settings.identity_path, db, generate=not settings.identity.file,
                                token_expiration=settings.identity.token_expiration,
                                cache_ttl=settings.identity.cache_ttl)


def build_catalog(settings: Settings, services: Services) -> Catalog:
    """The service catalog the identity service hands out, from the endpoint catalog."""
    local = {"identity", "image"} | ({"compute"} if services.compute is not None else set()) | \
        ({"volume"} if services.volume is not None else set()) | \
        ({"baremetal"} if services.baremetal is not None else set()) | \
        ({"workflow"} if services.compute is not None else set())     # served beside compute
    configured = {name: getattr(settings.endpoints, name) for name in ("identity", "image", "compute", "volume",
                                                                      "baremetal", "workflow")}
    return Catalog(configured, frozenset(local), settings.endpoints.region)


def build_authenticator(settings: Settings, identity: IdentityService | None = None, *,
                        serving: bool = False) -> Authenticator:
    """The tokens file (generated on first start unless auth.tokens_file names one) and, for a
    process that serves the APIs (``serving``), the token validators the mode asks for (the
    identity service's tokens, or an existing Keystone's) and <data_dir>/clouds.yaml for what
    was generated. Elsewhere (a conductor) it only holds the services' own credential."""
    if settings.auth.mode == "noauth":
        LOG.warning("authentication is OFF (--auth noauth): every caller is an admin. Development only.")
        return Authenticator("noauth")
    path = settings.tokens_path
    if not settings.auth.tokens_file and not path.exists():
        try:
            write_default_tokens(path)
        except FileExistsError:        # another process of the same start made it first
            pass
    tokens = load_tokens(path)
    validators: list = []
    if serving and settings.auth.mode == "keystone":
        from freezeframe.identity.keystone import KeystoneValidator
        auth = settings.auth
        validators.append(KeystoneValidator(auth.keystone_url, user=auth.keystone_user, password=auth.keystone_password,
                                            project=auth.keystone_project, user_domain=auth.keystone_user_domain,
                                            project_domain=auth.keystone_project_domain,
                                            cache_ttl=auth.keystone_cache_ttl, timeout=auth.keystone_timeout))
        LOG.info("tokens validated against Keystone at %s (and the tokens file %s)", auth.keystone_url, path)
    elif serving and identity is not None:
        validators.append(identity.tokens)
    if serving:
        write_clouds_yaml(settings, tokens if not settings.auth.tokens_file else {}, identity)
    return Authenticator(settings.auth.mode, tokens, validators)


def write_clouds_yaml(settings: Settings, tokens: dict, identity: IdentityService | None = None) -> None:
    """A clouds.yaml for what was generated, so clients work at once:
    ``OS_CLIENT_CONFIG_FILE=<data-dir>/clouds.yaml OS_CLOUD=freezeframe``.

    With the generated identity file: one cloud per generated user (``freezeframe`` the admin,
    ``freezeframe-demo`` the member, ``freezeframe-service``), password auth through
    ``/identity``, no endpoint overrides (the catalog has them). Their passwords exist only
    here: later starts carry them over from the clouds.yaml they find. With the generated
    tokens file: one ``admin_token`` cloud per token (``freezeframe-token``,
    ``freezeframe-token-demo``, ...; plain ``freezeframe``... when there is no identity cloud)."""
    import fcntl

    target = settings.data_dir / "clouds.yaml"
    # Several processes of one start (API workers) may write it at once: read and replace
    # under a lock, so each keeps the passwords another one just wrote.
    with open(settings.data_dir / ".clouds.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _write_clouds_locked(settings, target, tokens, identity)


def _write_clouds_locked(settings: Settings, target: Path, tokens: dict, identity: IdentityService | None) -> None:

    import yaml

    from freezeframe.identity.config import DEFAULT_USERS

    try:
        previous = (yaml.safe_load(target.read_text()) or {}).get("clouds") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        previous = {}
    clouds: dict = {}
    if identity is not None and identity.generated:
        users = identity.file.current().users
        for user_id, project, _roles, name in DEFAULT_USERS:
            old = previous.get(name) if isinstance(previous.get(name), dict) else {}
            password = identity.passwords.get(user_id) or (old.get("auth") or {}).get("password")
            if user_id not in users:
                continue
            if not password:
                LOG.warning("clouds.yaml: no cloud for user %s (its password is not known here; give it a new "
                            "password_hash made with `freezeframe identity hash`)", user_id)
                continue
            clouds[name] = {"auth_type": "password", "region_name": settings.endpoints.region,
                            "identity_api_version": 3,
                            "auth": {"auth_url": settings.endpoint("identity"), "username": user_id,
                                     "password": password, "project_name": project,
                                     "user_domain_name": "Default", "project_domain_name": "Default"}}
    image_url = settings.endpoint("image")
    prefix = "freezeframe-token" if clouds else "freezeframe"
    for token, ident in tokens.items():
        name = (f"{prefix}-service" if "service" in ident.roles else
                prefix if "admin" in ident.roles else f"{prefix}-{ident.project_id}")
        clouds[name] = {"auth_type": "admin_token", "auth": {"endpoint": image_url, "token": token},
                        "image_endpoint_override": image_url, "image_api_version": "2"}
        if settings.auth.mode == "tokens" and settings.identity.enabled:
            # (openstackclient's list commands ask an identity v3 endpoint even on a token cloud)
            clouds[name]["identity_endpoint_override"] = settings.endpoint("identity")
        if settings.compute.enabled:
            clouds[name]["compute_endpoint_override"] = settings.endpoint("compute")
        if settings.volume.enabled:
            clouds[name]["block_storage_endpoint_override"] = settings.endpoint("volume")
            clouds[name]["block_storage_api_version"] = "3"
        if settings.baremetal.enabled:
            clouds[name]["baremetal_endpoint_override"] = settings.endpoint("baremetal")
    if not clouds:
        return
    partial = target.with_name(f".{target.name}.{os.getpid()}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        yaml.safe_dump({"clouds": clouds}, fh, sort_keys=True)
    os.replace(partial, target)
    LOG.info("client configuration: export OS_CLIENT_CONFIG_FILE=%s OS_CLOUD=freezeframe", target)


