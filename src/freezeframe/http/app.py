"""Build the ASGI application: every service mounted under its path, one edge, one error map."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import AsyncIterator

from sqlalchemy import text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route

from freezeframe.db.engine import make_engine, make_sessionmaker, redact
from freezeframe.db.migrate import upgrade
from freezeframe.db.session import Database
from freezeframe.http.auth import Authenticator, load_tokens, write_default_tokens
from freezeframe.http.errors import HANDLERS
from freezeframe.http.middleware import EdgeMiddleware
from freezeframe.images import states
from freezeframe.images.api import ImageAPI
from freezeframe.images.data import ImageData
from freezeframe.images.drivers.file import FileStore
from freezeframe.images.members import MemberService
from freezeframe.images.reaper import Reaper
from freezeframe.images.service import ImageService
from freezeframe.settings import Settings

LOG = logging.getLogger(__name__)


@dataclass
class Services:
    db: Database
    store: FileStore
    images: ImageService
    data: ImageData
    members: MemberService
    reaper: Reaper


def build_services(settings: Settings) -> Services:
    engine = make_engine(settings.database_url)
    upgrade(engine)
    db = Database(engine, make_sessionmaker(engine))
    store = FileStore(settings.store_path, fsync=settings.store.fsync)
    return Services(
        db=db,
        store=store,
        images=ImageService(db, store, settings.images),
        data=ImageData(db, store, settings.images),
        members=MemberService(db, settings.images),
        reaper=Reaper(db, store, settings.reaper),
    )


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
        name = "freezeframe" if "admin" in ident.roles else f"freezeframe-{ident.project_id}"
        clouds[name] = {"auth_type": "admin_token", "auth": {"endpoint": url, "token": token},
                        "image_endpoint_override": url, "image_api_version": "2"}
    target = settings.data_dir / "clouds.yaml"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        yaml.safe_dump({"clouds": clouds}, fh, sort_keys=True)
    LOG.info("client configuration: export OS_CLIENT_CONFIG_FILE=%s OS_CLOUD=freezeframe", target)


def build_app(settings: Settings) -> Starlette:
    services = build_services(settings)
    authenticator = build_authenticator(settings)
    LOG.info("database %s, store %s", redact(settings.database_url), settings.store_path)

    async def healthcheck(request: Request) -> Response:
        try:
            await services.db.run(lambda s: s.execute(text("SELECT 1")))
        except Exception as exc:
            return PlainTextResponse(f"database unavailable: {exc}", status_code=503)
        if "detailed" in request.query_params:
            return JSONResponse({"status": "OK", "image_transitions": dict(states.COUNTS),
                                 "reaper": dict(services.reaper.counts)})
        return PlainTextResponse("OK")

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        services.reaper.start()
        try:
            yield
        finally:
            await services.reaper.stop()
            await services.data.close()
            services.db.close()

    app = Starlette(
        routes=[
            Route("/healthcheck", healthcheck, methods=["GET", "HEAD"]),
            Mount("/image", app=ImageAPI(services.images, services.data, services.members).router()),
        ],
        exception_handlers=HANDLERS,
        lifespan=lifespan,
    )
    app.state.services = services
    app.add_middleware(EdgeMiddleware, authenticator=authenticator,
                       max_header_bytes=settings.server.max_header_bytes)
    return app
