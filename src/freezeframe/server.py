"""Run the all-in-one server with uvicorn: graceful shutdown on SIGTERM/SIGINT.

The conductor's life is fitted around the HTTP server's (``Server``):

- start: the lifespan (database, reaper, in-process transport), then the port is bound, and
  only then the conductor starts — the flows it resumes at once call this very API;
- SIGTERM/SIGINT: the conductor pauses first — it takes no new work, its running steps stop
  at their next interruption point (never reverted: an interrupted flow is not a failed one)
  and its claims are released — while the API still answers (the flows' last calls, clients);
  then the HTTP server stops (uvicorn's graceful shutdown) and the lifespan closes the rest.
  Each phase gets ``server.graceful_timeout``. A step that cannot be interrupted in time, or a
  second signal during the pause, ends the process as kill -9 would; either way the next start
  (or another conductor) resumes every flow from the step it was in.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import signal
import socket
from types import FrameType

import uvicorn

from freezeframe.common import logs
from freezeframe.common.errors import FreezeframeError
from freezeframe.conductor.engine import Conductor, exit_like_kill_9
from freezeframe.app import build_app
from freezeframe.common.web.mount import Mounted
from freezeframe.common.web.openapi import PATH as OPENAPI_PATH
from freezeframe.http.metrics import PATH as METRICS_PATH
from freezeframe.http.health import PATH as HEALTH_PATH
from freezeframe.settings import Settings

LOG = logging.getLogger(__name__)
EXIT_STARTUP_FAILED = 3
# How the start announces each mounted API (Mounted.name): its name for people, and the
# versioned path below its mount that clients are given (the catalog's, for the OpenStack ones).
API_LABELS = {
    "image": ("image API (Glance v2)", ""),
    "compute": ("compute API (Nova v2.1)", "/v2.1"),
    "volume": ("volume API (Cinder v3)", "/v3"),
    "baremetal": ("bare-metal API (Ironic v1)", ""),
    "workflows": ("workflow API", "/workflows"),
    "identity": ("identity API (Keystone v3)", ""),
}


def announcement(host: str, port: int, mounted: list[Mounted], metrics: bool = False) -> list[str]:
    """The lines the start logs: where this process serves, then every API's URL (and the
    health check's, the OpenAPI documents', and the metrics' when served), one per line."""
    base = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    urls = []
    for m in mounted:
        label, suffix = API_LABELS.get(m.name, (f"{m.name} API", ""))
        urls.append((label, base + m.path + suffix))
    urls.append(("health check", base + HEALTH_PATH))
    urls.append(("OpenAPI documents", base + OPENAPI_PATH))
    if metrics:
        urls.append(("Prometheus metrics", base + METRICS_PATH))
    width = max(len(label) for label, _ in urls)
    return [f"freezeframe serving on {base}:"] + [f"  {label.ljust(width)}  {url}" for label, url in urls]


class Server(uvicorn.Server):
    """uvicorn's server with the conductor started after the bind and paused before the stop."""

    def __init__(self, config: uvicorn.Config, conductor: Conductor | None, graceful_timeout: float,
                 announce: list[str] | None = None) -> None:
        super().__init__(config)
        self.announce = announce or []
        self.conductor = conductor
        self.graceful_timeout = graceful_timeout
        self.conductor_running = False
        self.pausing = False
        self.exit_code = 0

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)      # lifespan startup, then the port is bound
        if self.should_exit or not self.started:
            return
        for line in self.announce:      # once the port is bound: every URL said here answers
            LOG.info("%s", line)
        if self.conductor is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.conductor.start)
        except FreezeframeError as exc:       # a known cause: its message says what to do
            LOG.error("the conductor could not start: %s; stopping", exc.message)
            self.exit_code = EXIT_STARTUP_FAILED
            self.should_exit = True
            return
        except Exception:
            LOG.exception("the conductor could not start: stopping")
            self.exit_code = EXIT_STARTUP_FAILED
            self.should_exit = True
            return
        self.conductor_running = True

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.pausing:
            exit_like_kill_9(f"{signal.Signals(sig).name} again while the conductor was pausing its workflows")
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.conductor is not None and self.conductor_running:
            self.pausing = True
            LOG.info("stopping: the conductor pauses its workflows first (at most %gs; the API answers meanwhile, "
                     "a second signal ends the process at once)", self.graceful_timeout)
            paused = await asyncio.get_running_loop().run_in_executor(None, self.conductor.stop,
                                                                      self.graceful_timeout)
            if not paused:
                exit_like_kill_9(f"a workflow step could not be interrupted within {self.graceful_timeout:g}s")
            self.pausing = False
            self.conductor_running = False
        await super().shutdown(sockets=sockets)


def tune_malloc() -> None:
    """Keep freed upload blocks (4 MiB) in the heap instead of handing them back to the kernel
    and faulting fresh pages in for the next block: glibc's defaults cost ~40,000 page faults
    per GB uploaded here; these settings make it a handful. The free heap kept is bounded: two
    arenas (glibc keeps up to the trim threshold free in *each* arena, and a bare-metal
    snapshot's 4-16 MiB buffers pass through many threads — WebDAV workers, verify, chunk
    readers, hash and write threads — which each got one: serve grew by ~70 MB per snapshot,
    bench/baremetal_bench.py T3) and 64 MiB kept free in each."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8
    libc.mallopt(m_arena_max, 2)
    libc.mallopt(m_mmap_threshold, 64 << 20)
    libc.mallopt(m_trim_threshold, 64 << 20)


def serve(settings: Settings) -> None:
    logs.setup(settings.server.log_level, settings.server.log_format)
    tune_malloc()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = build_app(settings)
    services = app.state.services
    conductor = services.conductor
    if conductor is not None:
        app.state.conductor_run_by_server = True     # the lifespan leaves it to Server
    # Everything imported and built so far lives as long as the process: keep it out of the
    # cyclic GC's generations so collections stay short under load.
    gc.collect()
    gc.freeze()
    config = uvicorn.Config(
        app,
        host=settings.server.host,
        port=settings.server.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=settings.server.graceful_timeout,
        h11_max_incomplete_event_size=settings.server.max_header_bytes,
        server_header=False,
    )
    # uvicorn re-raises the signal that stopped it once the graceful shutdown is done; with
    # these (no-op) handlers in place that re-raise is harmless and a clean stop exits 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server = Server(config, conductor, settings.server.graceful_timeout,
                    announcement(settings.server.host, settings.server.port, app.state.mounted,
                                 metrics=settings.metrics.enabled))
    server.run()
    if server.exit_code:
        raise SystemExit(server.exit_code)
    LOG.info("freezeframe stopped")
