"""Run the all-in-one server with uvicorn: graceful shutdown on SIGTERM/SIGINT."""

from __future__ import annotations

import ctypes
import gc
import logging
import signal

import uvicorn

from freezeframe.common import logs
from freezeframe.http.app import build_app
from freezeframe.settings import Settings

LOG = logging.getLogger(__name__)


def tune_malloc() -> None:
    """Keep freed upload blocks (4 MiB) in the heap instead of handing them back to the kernel
    and faulting fresh pages in for the next block: glibc's defaults cost ~40,000 page faults
    per GB uploaded here; these settings make it a handful."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 64 << 20)
    libc.mallopt(m_trim_threshold, 256 << 20)


def serve(settings: Settings) -> None:
    logs.setup(settings.server.log_level)
    tune_malloc()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = build_app(settings)
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
    LOG.info("freezeframe serving on http://%s:%d (image API at /image)", settings.server.host,
             settings.server.port)
    # uvicorn re-raises the signal that stopped it once the graceful shutdown is done; with
    # these (no-op) handlers in place that re-raise is harmless and a clean stop exits 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    uvicorn.Server(config).run()
    LOG.info("freezeframe stopped")
