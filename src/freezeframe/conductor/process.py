"""`freezeframe conductor`: a conductor in its own process (scale-out).

It shares the database (and the coordination backend, for liveness) with the API processes,
claims every workflow that has no live owner — new ones and those of dead conductors — and
runs them. Stop it with SIGTERM/SIGINT: running flows finish their current step and are
resumed by a live conductor (or this one, restarted).
"""

from __future__ import annotations

import logging
import signal
import threading

from freezeframe.assembly import (build_authenticator, build_driver, build_runtime, build_services, conductor_id,
                                  service_image_client)
from freezeframe.common import logs
from freezeframe.conductor.engine import Conductor
from freezeframe.conductor.liveness import Liveness, backend_url
from freezeframe.conductor.runtime import install as install_runtime
from freezeframe.settings import Settings

LOG = logging.getLogger(__name__)


def run(settings: Settings) -> None:
    logs.setup(settings.server.log_level)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    services = build_services(settings)
    authenticator = build_authenticator(settings)
    driver = build_driver(settings)
    install_runtime(build_runtime(settings, services.db, driver, service_image_client(settings, authenticator)))
    liveness = Liveness(backend_url(settings.conductor.coordination_url, settings.data_dir), conductor_id(settings))
    conductor = Conductor(services.db, liveness, database_url=settings.database_url,
                          max_workers=settings.conductor.workers, scan_interval=settings.conductor.scan_interval)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    conductor.start()
    LOG.info("conductor %s running (image API %s)", conductor.id,
             settings.conductor.image_url or f"http://127.0.0.1:{settings.server.port}/image")
    stop.wait()
    LOG.info("conductor %s stopping", conductor.id)
    conductor.stop()
    services.db.close()
