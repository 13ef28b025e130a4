"""Assembling the services from the settings: shared by `serve` and `conductor`."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from dataclasses import dataclass
from typing import Callable

from freezeframe.compute.drivers.base import VirtDriver
from freezeframe.compute.service import ComputeService
from freezeframe.conductor.engine import Conductor
from freezeframe.conductor.liveness import Liveness, backend_url
from freezeframe.conductor.model import Workflow
from freezeframe.conductor.runtime import Runtime
from freezeframe.conductor.runtime import install as install_runtime
from freezeframe.conductor.states import TERMINAL, WorkflowState, parse
from freezeframe.db.engine import make_engine, make_sessionmaker
from freezeframe.db.migrate import upgrade
from freezeframe.db.session import Database
from freezeframe.common.context import Actor
from freezeframe.common.policy import Policy
from freezeframe.http.auth import Authenticator, acting_headers, load_tokens, service_token, write_default_tokens
from freezeframe.http.inprocess import InProcess
from freezeframe.images.client import GlanceClient
from freezeframe.images.data import ImageData
from freezeframe.images.drivers.file import FileStore
from freezeframe.images.members import MemberService
from freezeframe.images.reaper import Reaper
from freezeframe.images.service import ImageService
from freezeframe.settings import Settings, SettingsError

LOG = logging.getLogger(__name__)


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
    conductor: Conductor | None = None
    compute: ComputeService | None = None
    liveness: Liveness | None = None


def build_services(settings: Settings) -> Services:
    engine = make_engine(settings.database_url)
    upgrade(engine)
    db = Database(engine, make_sessionmaker(engine))
    store = FileStore(settings.store_path, fsync=settings.store.fsync)
    policy = Policy(settings.policy_path)
    return Services(
        db=db,
        store=store,
        images=ImageService(db, store, settings.images, policy),
        data=ImageData(db, store, settings.images, policy),
        members=MemberService(db, settings.images, policy),
        reaper=Reaper(db, store, settings.reaper),
        policy=policy,
        inprocess=InProcess(),
    )


def service_image_client(settings: Settings, authenticator: Authenticator,
                         inprocess: InProcess | None = None) -> Callable[[Actor], GlanceClient]:
    """How the other services (and the workflows) reach the image API: acting for a user, with
    that user's rights, their own service credential beside it (X-Service-Token). In ``serve``
    the calls go through the same application in process; elsewhere over HTTP."""
    host = "127.0.0.1" if settings.server.host in ("0.0.0.0", "::") else settings.server.host
    url = settings.conductor.image_url or f"http://{host}:{settings.server.port}/image"
    if authenticator.mode == "noauth":
        credential = {"X-Service-Roles": "service"}
    else:
        token = settings.conductor.service_token or service_token(authenticator.tokens)
        if not token:
            raise SettingsError("conductor.service_token: no token with role 'service' in the tokens file; add "
                                "one (the services act for users with it) or set conductor.service_token")
        credential = {"X-Service-Token": token}
    local = inprocess is not None and not settings.conductor.image_url

    def client(actor: Actor) -> GlanceClient:
        headers = {**credential, **acting_headers(actor)}
        if local and inprocess.bound:
            return GlanceClient("http://freezeframe.internal/image", extra_headers=headers,
                                transport=inprocess.transport())
        return GlanceClient(url, extra_headers=headers)
    return client


def build_runtime(settings: Settings, db, driver: VirtDriver, images) -> Runtime:
    """What the workflows of this process run with (conductor.runtime)."""
    kill_at = frozenset(s.strip() for s in settings.conductor.fault_kill_at.split(",") if s.strip())
    return Runtime(db=db, driver=driver, image_client=images, workdir=settings.instances_path / "_snapshots",
                   upload_rate=settings.conductor.upload_rate, upload_chunk=settings.conductor.upload_chunk,
                   kill_at=kill_at, pause_seconds=settings.conductor.fault_pause_seconds,
                   pause_at=frozenset(s.strip() for s in settings.conductor.fault_pause_at.split(",") if s.strip()))


def build_driver(settings: Settings) -> VirtDriver:
    if settings.compute.driver == "fake":
        from freezeframe.compute.drivers.base import DriverError
        from freezeframe.compute.drivers.fake import PersistentFakeDriver
        steps = [step.strip() for step in settings.compute.fake_fail_on.split(",") if step.strip()]
        return PersistentFakeDriver(settings.data_dir / "fake-host.json",
                                    fail_on={step: DriverError(f"injected failure at {step}") for step in steps},
                                    copy_delay=settings.compute.fake_copy_delay,
                                    read_delay=settings.compute.fake_read_delay)
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
    """The compute service and, in the embedded default, the conductor that runs its snapshots.
    Without a local conductor, workflows wait (owner None) for a `freezeframe conductor`."""
    try:
        driver = build_driver(settings)
    except Exception as exc:  # e.g. libvirt-python missing: the image service still runs
        LOG.warning("compute disabled: the %s driver is unavailable: %s", settings.compute.driver, exc)
        return
    images = service_image_client(settings, authenticator, services.inprocess)
    install_runtime(build_runtime(settings, services.db, driver, images))
    role = "conductor" if with_conductor else "api"
    services.liveness = Liveness(backend_url(settings.conductor.coordination_url, settings.data_dir),
                                 conductor_id(settings, role))
    submit: Callable[[str], None] = lambda _workflow_id: None
    if with_conductor:
        services.conductor = Conductor(services.db, services.liveness, database_url=settings.database_url,
                                       max_workers=settings.conductor.workers,
                                       scan_interval=settings.conductor.scan_interval)
        submit = services.conductor.submit
    services.reaper.owner_alive = workflow_owner_alive(services.db, services.liveness)
    services.compute = ComputeService(services.db, driver, images, settings.instances_path, submit=submit,
                                      policy=services.policy,
                                      max_concurrent_snapshots=settings.compute.max_concurrent_snapshots)


def workflow_owner_alive(db: Database, liveness: Liveness) -> Callable[[str], bool]:
    """For the reaper: is the conductor running this workflow alive (or will one pick it up)?"""
    def alive(workflow_id: str) -> bool:
        wf = db.run_sync(lambda s: s.get(Workflow, workflow_id))
        if wf is None or WorkflowState(parse(wf.state)[0]) in TERMINAL:
            return False
        return wf.owner is None or liveness.is_alive(wf.owner)
    return alive


def build_authenticator(settings: Settings) -> Authenticator:
    if settings.auth.mode == "noauth":
        LOG.warning("authentication is OFF (--auth noauth): every caller is an admin. Development only.")
        return Authenticator("noauth")
    path = settings.tokens_path
    if not settings.auth.tokens_file:
        if not path.exists():
            write_default_tokens(path)
        write_clouds_yaml(settings, load_tokens(path))
    return Authenticator("tokens", load_tokens(path))


def write_clouds_yaml(settings: Settings, tokens: dict) -> None:
    """With the generated tokens, also write a clouds.yaml so clients work at once:
    ``OS_CLIENT_CONFIG_FILE=<data-dir>/clouds.yaml OS_CLOUD=freezeframe``."""
    import os

    import yaml

    host = "127.0.0.1" if settings.server.host in ("0.0.0.0", "::") else settings.server.host
    url = f"http://{host}:{settings.server.port}/image"
    clouds = {}
    for token, ident in tokens.items():
        name = ("freezeframe-service" if "service" in ident.roles else
                "freezeframe" if "admin" in ident.roles else f"freezeframe-{ident.project_id}")
        clouds[name] = {"auth_type": "admin_token", "auth": {"endpoint": url, "token": token},
                        "image_endpoint_override": url, "image_api_version": "2"}
    target = settings.data_dir / "clouds.yaml"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        yaml.safe_dump({"clouds": clouds}, fh, sort_keys=True)
    LOG.info("client configuration: export OS_CLIENT_CONFIG_FILE=%s OS_CLOUD=freezeframe", target)


