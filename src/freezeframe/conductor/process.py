"""`freezeframe conductor`: a conductor in its own process (scale-out).

It shares the database (and the coordination backend, for liveness, and the jobboard) with the
API processes, claims every workflow the jobboard offers it — new ones and those of conductors
whose lease ran out, only for the hosts it serves (``conductor.hosts``, default this host) — and
runs them. Stop it with SIGTERM/SIGINT: a pause, not a failure — it takes no new work, the
running steps stop at their next interruption point (never reverted) and its claims are
released, within ``server.graceful_timeout``; any live conductor (or this one, restarted)
resumes them as it resumes a crashed conductor's. A step that cannot be interrupted in time,
or a second signal, ends the process as kill -9 would — resumed all the same.
"""

from __future__ import annotations

import logging
import signal
import threading

from freezeframe.assembly import build_authenticator, build_conductor, build_driver, build_services, service_image_client
from freezeframe.common import logs
from freezeframe.conductor.engine import exit_like_kill_9
from freezeframe.settings import Settings

LOG = logging.getLogger(__name__)


def run(settings: Settings) -> None:
    logs.setup(settings.server.log_level)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    services = build_services(settings, role="conductor")
    authenticator = build_authenticator(settings)
    driver = build_driver(settings)
    conductor = build_conductor(settings, services, driver, service_image_client(settings, authenticator),
                                embedded=False)
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
