"""The processes of a split deployment (``serve`` runs them all in one: ``server.py``).

- ``freezeframe api``: the APIs, stateless, several worker processes (uvicorn's), any number of
  hosts behind a load balancer. No conductor, no hypervisor: a server's host-bound steps go to
  its host's compute process.
- ``freezeframe compute --host NAME``: one per hypervisor host. Owns that host's libvirt, serves
  the host API (``compute/hostapi.py``) to the other roles, heartbeats into the database
  (``compute/hosts.py``).
- ``freezeframe conductor``: any number, anywhere (``run_conductor``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
from typing import AsyncIterator
from urllib.parse import urlsplit

import uvicorn
from starlette.applications import Starlette
from starlette.routing import Route

from freezeframe.common import logs
from freezeframe.conductor.engine import exit_like_kill_9
from freezeframe.settings import Settings

LOG = logging.getLogger(__name__)
SETTINGS_ENV = "FFROLE_SETTINGS"     # (not FREEZEFRAME_*: those are settings)     # how uvicorn's worker processes get the settings


def host_url(settings: Settings) -> str:
    """Where the other roles reach this compute host's API (compute.url, else the listen address)."""
    if settings.compute.url:
        return settings.compute.url.rstrip("/")
    host = settings.server.host
    if host in ("0.0.0.0", "::", ""):
        raise SystemExit("freezeframe compute: listening on every address: set compute.url (--url) to the "
                         "address the other hosts reach this one at")
    return f"http://{host}:{settings.server.port}"


def compute_app(settings: Settings) -> Starlette:
    """The host API of one compute host, with its heartbeat."""
    from freezeframe.assembly import build_authenticator, build_driver, service_image_client
    from freezeframe.common.policy import Policy
    from freezeframe.common.web.errors import HANDLERS
    from freezeframe.common.web.mount import PublicPaths
    from freezeframe.blockdata import nbdexport
    from freezeframe.compute.drivers.locked import LockedDriver
    from freezeframe.compute.hostapi import HostAPI
    from freezeframe.compute.hosts import Heartbeat, HostRegistry
    from freezeframe.compute.conductor_hooks import LeftoverSweep
    from freezeframe.compute.hostside import Hosts, LocalHost
    from freezeframe.conductor.registry import Scan
    from freezeframe.conductor.service import Workflows
    from freezeframe.db.engine import make_engine, make_sessionmaker
    from freezeframe.db.migrate import upgrade
    from freezeframe.db.session import Database
    from freezeframe.http.middleware import EdgeMiddleware

    engine = make_engine(settings.database_url)
    upgrade(engine, compute_host=settings.compute.host)
    db = Database(engine, make_sessionmaker(engine))
    authenticator = build_authenticator(settings)
    driver = LockedDriver(build_driver(settings), timeout=settings.compute.lock_timeout)
    host = LocalHost(settings.compute.host, driver, service_image_client(settings, authenticator),
                     settings.instances_path)
    url = host_url(settings)
    advertise = settings.compute.export_address or urlsplit(url).hostname or "127.0.0.1"
    bind = settings.compute.export_bind or advertise

    def export(source, workdir, name: str) -> dict:
        return nbdexport.start_export(source, workdir=workdir / nbdexport.EXPORT_DIR, bind=bind, advertise=advertise,
                                      export_name=name, tls=settings.compute.export_tls).to_dict()

    def unexport(workdir) -> None:
        nbdexport.stop_export(workdir / nbdexport.EXPORT_DIR)

    api = HostAPI(host, Policy(settings.policy_path), settings.instances_path / "_snapshots", export, unexport)
    heartbeat = Heartbeat(HostRegistry(db, down_after=settings.compute.host_down_after), settings.compute.host,
                          url, driver.name, settings.compute.heartbeat_interval)
    # What finished snapshots still hold here (a point in time, its export): released at start
    # and every minute — e.g. after this process was killed while a workflow ended elsewhere.
    sweep = LeftoverSweep(db, Hosts(host), settings.instances_path / "_snapshots")
    stopping = threading.Event()

    def sweeper() -> None:
        while True:
            try:
                sweep(Scan(conductor_id=f"compute-{settings.compute.host}", running=frozenset(), hosts=None,
                           workflows=Workflows(db)))
            except Exception as exc:     # the database away: next time
                LOG.warning("compute host %s: leftover sweep failed: %s", settings.compute.host, exc)
            if stopping.wait(60):
                return

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        heartbeat.start()
        threading.Thread(target=sweeper, name="leftover-sweep", daemon=True).start()
        LOG.info("compute host %s (%s driver) serving its host API at %s; NBD exports on %s (%s)",
                 settings.compute.host, driver.name, url, bind, "TLS" if settings.compute.export_tls else
                 "plain TCP: a trusted network")
        try:
            yield
        finally:
            stopping.set()
            heartbeat.stop()
            db.close()

    async def alive(_request):
        from starlette.responses import PlainTextResponse
        return PlainTextResponse("OK")

    host_api = api.mounted()
    app = Starlette(routes=[Route("/healthcheck", alive, methods=["GET", "HEAD"]), *host_api.routes()],
                    exception_handlers=HANDLERS, lifespan=lifespan)
    app.add_middleware(EdgeMiddleware, authenticator=authenticator, max_header_bytes=settings.server.max_header_bytes,
                       public=PublicPaths([host_api]))
    return app


def run_compute(settings: Settings) -> None:
    logs.setup(settings.server.log_level, settings.server.log_format)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = compute_app(settings)
    uvicorn.run(app, host=settings.server.host, port=settings.server.port, loop="uvloop", http="httptools",
                log_config=None, access_log=False, timeout_graceful_shutdown=settings.server.graceful_timeout,
                server_header=False)


def api_app() -> Starlette:
    """uvicorn's factory for `freezeframe api` (each worker process builds its own app)."""
    from freezeframe import settings as settings_mod
    from freezeframe.app import build_app

    doc = json.loads(os.environ[SETTINGS_ENV])
    settings = settings_mod.load(doc.get("config"), flags=doc.get("flags") or {})
    logs.setup(settings.server.log_level, settings.server.log_format)
    return build_app(settings)


def run_api(config: str | None, flags: dict, workers: int) -> None:
    """`freezeframe api`: the APIs only (no conductor, no local hypervisor), ``workers`` processes."""
    from freezeframe import settings as settings_mod

    flags = {**flags, "compute.enabled": False, "conductor.enabled": False}
    settings = settings_mod.load(config, flags=flags)       # checked once, before any worker starts
    logs.setup(settings.server.log_level, settings.server.log_format)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    from freezeframe.db.engine import make_engine
    from freezeframe.db.migrate import upgrade
    engine = make_engine(settings.database_url)
    upgrade(engine, compute_host=settings.compute.host)      # once, not in every worker at once
    engine.dispose()
    os.environ[SETTINGS_ENV] = json.dumps({"config": config, "flags": {k: v for k, v in flags.items()
                                                                        if v is not None}})
    LOG.info("freezeframe api: %d worker(s) on http://%s:%d", workers, settings.server.host, settings.server.port)
    uvicorn.run("freezeframe.roles:api_app", factory=True, workers=workers, host=settings.server.host,
                port=settings.server.port, loop="uvloop", http="httptools", log_config=None, access_log=False,
                timeout_graceful_shutdown=settings.server.graceful_timeout,
                h11_max_incomplete_event_size=settings.server.max_header_bytes, server_header=False)


# -- `freezeframe conductor` -------------------------------------------------------------------
# `freezeframe conductor`: a conductor in its own process (scale-out).
# 
# It shares the database (and the coordination backend, for liveness, and the jobboard) with the
# API processes, claims every workflow the jobboard offers it — new ones and those of conductors
# whose lease ran out, only for the hosts it reaches (of ``conductor.hosts``, default any) — and
# runs them. Stop it with SIGTERM/SIGINT: a pause, not a failure — it takes no new work, the
# running steps stop at their next interruption point (never reverted) and its claims are
# released, within ``server.graceful_timeout``; any live conductor (or this one, restarted)
# resumes them as it resumes a crashed conductor's. A step that cannot be interrupted in time,
# or a second signal, ends the process as kill -9 would — resumed all the same.
# In a split deployment it drives every server's host-bound steps through that host's compute
# process (compute.enabled = false: no hypervisor of its own); with compute.enabled (the
# default) it also runs compute.host's hypervisor itself, as `serve` does.

def run_conductor(settings: Settings) -> None:
    from freezeframe.assembly import (build_authenticator, build_baremetal, build_conductor, build_hosts, build_services,
                                      build_volume, service_image_client, service_volume_client)

    logs.setup(settings.server.log_level, settings.server.log_format)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    services = build_services(settings, role="conductor")
    authenticator = build_authenticator(settings)
    images = service_image_client(settings, authenticator)
    hosts = build_hosts(settings, services.db, authenticator, images, local=settings.compute.enabled)
    build_volume(settings, services, authenticator)       # its workflows run the volume driver here
    build_baremetal(settings, services, authenticator)    # and the bare-metal interfaces (+ the transfer area)
    services.volumes_for = service_volume_client(settings, authenticator)
    conductor = build_conductor(settings, services, hosts, images)
    stop = threading.Event()

    def on_signal(sig: int, _frame) -> None:
        if stop.is_set():
            exit_like_kill_9(f"{signal.Signals(sig).name} again while the conductor was pausing its workflows")
        LOG.info("%s: conductor %s stopping", signal.Signals(sig).name, conductor.id)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    conductor.start()
    LOG.info("conductor %s running (image API %s)", conductor.id,
             settings.conductor.image_url or f"http://127.0.0.1:{settings.server.port}/image")
    while not stop.wait(1.0):       # (a timed wait: the signal handler runs promptly)
        pass
    timeout = settings.server.graceful_timeout
    LOG.info("conductor %s pausing its workflows (at most %gs; a second signal ends the process at once)",
             conductor.id, timeout)
    if not conductor.stop(timeout):
        exit_like_kill_9(f"a workflow step could not be interrupted within {timeout:g}s")
    services.db.close()
