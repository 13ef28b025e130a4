"""The Glance v2 image API (thin: parse the request, call the service, shape the response)."""

from __future__ import annotations

import re
import time
from typing import Any, AsyncIterator, Callable
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, Router

from freezeframe.common import errors
from freezeframe.common.pools import BoundedPool
from freezeframe.common.strict import INT64_MAX, MAX_DIGITS
from freezeframe.common.web.mount import Mounted, Public
from freezeframe.common.web.errors import error_response
from freezeframe.common.web.request import content_length, ctx_of, header_uint, json_body
from freezeframe.images import patch, schema
from freezeframe.images.data import IMPORT_METHODS, ImageData, Resume
from freezeframe.images.members import MemberService
from freezeframe.images.metadef_api import MetadefAPI
from freezeframe.images.metadef_schemas import SCHEMAS as METADEF_SCHEMAS
from freezeframe.images.metadefs import MetadefService
from freezeframe.images.tasks import TaskService
from freezeframe.images.service import ImageService

READ_SIZE = 2 << 20
STREAM_WAIT = 10.0   # seconds a download's next block may wait for a store thread
VERSIONS = ["2.17", "2.16", "2.15", "2.13", "2.12", "2.11", "2.10", "2.9", "2.8", "2.7", "2.6", "2.5",
            "2.4", "2.3", "2.2", "2.1", "2.0"]
_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)")  # ASCII digits only: \d would take any script's


def check_data_media_type(request: Request) -> None:
    ctype = request.headers.get("content-type", "application/octet-stream").split(";")[0].strip().lower()
    if ctype not in ("application/octet-stream", ""):
        raise errors.UnsupportedMediaType(
            f"Unsupported Content-Type {ctype!r} for image data: send application/octet-stream"
        )


class ImageAPI:
    def __init__(self, images: ImageService, data: ImageData, members: MemberService) -> None:
        self.images = images
        self.data = data
        self.members = members
        # The metadata definitions and the tasks listing: their own module, these same routes.
        self.metadef_api = MetadefAPI(MetadefService(images.db, images.policy), TaskService(images.db, images.policy),
                                      images.settings)

    def mounted(self) -> Mounted:
        """The image API (Glance v2) at /image; its version documents need no token."""
        return Mounted("image", "/image", self.router(), public=(Public(""), Public("/versions")))

    def router(self) -> Router:
        r = "/v2/images/{image_id}"
        return Router(routes=[
            Route("/", self.versions, methods=["GET"]),
            Route("/versions", self.versions, methods=["GET"]),
            Route("/v2/images", self.list_images, methods=["GET"]),
            Route("/v2/images", self.create_image, methods=["POST"]),
            Route(r, self.show_image, methods=["GET"]),
            Route(r, self.update_image, methods=["PATCH"]),
            Route(r, self.delete_image, methods=["DELETE"]),
            Route(r + "/file", self.upload, methods=["PUT"]),
            Route(r + "/file", self.download, methods=["GET"]),
            Route(r + "/stage", self.stage, methods=["PUT"]),
            Route(r + "/import", self.import_image, methods=["POST"]),
            Route(r + "/tasks", self.tasks, methods=["GET"]),
            Route(r + "/actions/deactivate", self.deactivate, methods=["POST"]),
            Route(r + "/actions/reactivate", self.reactivate, methods=["POST"]),
            # Freezeframe extensions for the snapshot workflows (role "service"):
            Route(r + "/actions/kill", self.kill, methods=["POST"]),
            Route(r + "/uploads/{upload_id}", self.upload_offset, methods=["GET"]),
            Route(r + "/uploads/{upload_id}", self.discard_upload, methods=["DELETE"]),
            Route(r + "/tags/{tag}", self.add_tag, methods=["PUT"]),
            Route(r + "/tags/{tag}", self.delete_tag, methods=["DELETE"]),
            Route(r + "/members", self.list_members, methods=["GET"]),
            Route(r + "/members", self.add_member, methods=["POST"]),
            Route(r + "/members/{member_id}", self.show_member, methods=["GET"]),
            Route(r + "/members/{member_id}", self.update_member, methods=["PUT"]),
            Route(r + "/members/{member_id}", self.delete_member, methods=["DELETE"]),
            Route("/v2/schemas/{name}", self.schemas, methods=["GET"]),
            Route("/v2/info/import", self.import_info, methods=["GET"]),
            Route("/v2/info/stores", self.stores_info, methods=["GET"]),
            *(getattr(self, "metadef_api", None) or MetadefAPI(None, None, None)).routes(),
        ])

    # -- discovery ---------------------------------------------------------------------------

    async def versions(self, request: Request) -> Response:
        base = f"{request.url.scheme}://{request.url.netloc}{request.scope.get('root_path', '')}"
        docs = [{"id": f"v{v}", "status": "CURRENT" if i == 0 else "SUPPORTED",
                 "links": [{"rel": "self", "href": f"{base}/v2/"}]} for i, v in enumerate(VERSIONS)]
        status = 200 if request.url.path.rstrip("/").endswith("versions") else 300
        return JSONResponse({"versions": docs}, status_code=status)

    async def schemas(self, request: Request) -> Response:
        docs = {"image": schema.IMAGE_SCHEMA, "images": schema.IMAGES_SCHEMA,
                "member": schema.MEMBER_SCHEMA, "members": schema.MEMBERS_SCHEMA,
                "task": METADEF_SCHEMAS["task"], "tasks": METADEF_SCHEMAS["tasks"]}
        name = request.path_params["name"]
        if name not in docs:
            raise errors.NotFound(f"No schema named {name!r}")
        return JSONResponse(docs[name])

    async def import_info(self, request: Request) -> Response:
        return JSONResponse({"import-methods": {"description": "Import methods available.",
                                                "type": "array", "value": list(IMPORT_METHODS)}})

    async def stores_info(self, request: Request) -> Response:
        # "default" is the string "true", as Glance's discovery API sends it (its api-ref says
        # boolean; clients read either).
        return JSONResponse({"stores": [{"id": self.images.store.name, "default": "true",
                                         "description": "Local filesystem store"}]})

    # -- images ------------------------------------------------------------------------------

    def _image_headers(self, image_id: str) -> dict[str, str]:
        return {"Location": f"/v2/images/{image_id}",
                "OpenStack-Image-Import-Methods": ",".join(IMPORT_METHODS),
                "OpenStack-Image-Store-IDs": self.images.store.name}

    async def create_image(self, request: Request) -> Response:
        view = await self.images.create(ctx_of(request), await json_body(request))
        headers = self._image_headers(view["id"])
        headers["Location"] = str(request.url).split("?")[0].rstrip("/") + "/" + view["id"]
        return JSONResponse(view, status_code=201, headers=headers)

    async def list_images(self, request: Request) -> Response:
        params = list(request.query_params.multi_items())
        images, more = await self.images.list(ctx_of(request), params)
        body: dict[str, Any] = {"images": images, "first": "/v2/images", "schema": "/v2/schemas/images"}
        if more and images:
            kept = [(k, v) for k, v in params if k != "marker"] + [("marker", images[-1]["id"])]
            body["next"] = "/v2/images?" + urlencode(kept)
        return JSONResponse(body)

    async def show_image(self, request: Request) -> Response:
        return JSONResponse(await self.images.show(ctx_of(request), request.path_params["image_id"]))

    async def update_image(self, request: Request) -> Response:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in patch.MEDIA_TYPES:
            return error_response(415, f"Unsupported Content-Type {ctype!r} for PATCH: use "
                                       f"{' or '.join(patch.MEDIA_TYPES)}",
                                  {"Accept-Patch": ", ".join(patch.MEDIA_TYPES)})
        changes = patch.parse(ctype, await json_body(request, media_types=patch.MEDIA_TYPES))
        view = await self.images.update(ctx_of(request), request.path_params["image_id"], changes)
        return JSONResponse(view)

    async def delete_image(self, request: Request) -> Response:
        await self.images.delete(ctx_of(request), request.path_params["image_id"])
        return Response(status_code=204)

    async def deactivate(self, request: Request) -> Response:
        await self.images.deactivate(ctx_of(request), request.path_params["image_id"])
        return Response(status_code=204)

    async def reactivate(self, request: Request) -> Response:
        await self.images.reactivate(ctx_of(request), request.path_params["image_id"])
        return Response(status_code=204)

    async def add_tag(self, request: Request) -> Response:
        await self.images.add_tag(ctx_of(request), request.path_params["image_id"], request.path_params["tag"])
        return Response(status_code=204)

    async def delete_tag(self, request: Request) -> Response:
        await self.images.delete_tag(ctx_of(request), request.path_params["image_id"], request.path_params["tag"])
        return Response(status_code=204)

    # -- data --------------------------------------------------------------------------------

    async def upload(self, request: Request) -> Response:
        check_data_media_type(request)
        kept = await self.data.upload(ctx_of(request), request.path_params["image_id"], request.stream(),
                                      content_length(request), resume_of(request))
        if kept is not None:    # one part of a resumable upload: kept, more to come
            return Response(status_code=202, headers={"X-Image-Upload-Offset": str(kept)})
        return Response(status_code=204)

    async def upload_offset(self, request: Request) -> Response:
        p = request.path_params
        offset = await self.data.upload_offset(ctx_of(request), p["image_id"], p["upload_id"])
        return JSONResponse({"upload_id": p["upload_id"], "offset": offset})

    async def discard_upload(self, request: Request) -> Response:
        p = request.path_params
        await self.data.discard_upload(ctx_of(request), p["image_id"], p["upload_id"])
        return Response(status_code=204)

    async def kill(self, request: Request) -> Response:
        await self.images.kill(ctx_of(request), request.path_params["image_id"])
        return Response(status_code=204)

    async def stage(self, request: Request) -> Response:
        check_data_media_type(request)
        await self.data.stage(ctx_of(request), request.path_params["image_id"], request.stream(),
                              content_length(request))
        return Response(status_code=204)

    async def import_image(self, request: Request) -> Response:
        await self.data.import_image(ctx_of(request), request.path_params["image_id"], await json_body(request))
        return Response(status_code=202)

    async def tasks(self, request: Request) -> Response:
        return JSONResponse({"tasks": await self.data.tasks(ctx_of(request), request.path_params["image_id"])})

    async def download(self, request: Request) -> Response:
        found = await self.data.download(ctx_of(request), request.path_params["image_id"])
        if found.reader is None:
            return Response(status_code=204)
        size, reader = found.size, found.reader
        start, end, status = 0, size - 1, 200
        headers = {"Accept-Ranges": "bytes"}
        spec = request.headers.get("range")
        if spec:
            try:
                start, end = parse_range(spec, size)
            except errors.RangeNotSatisfiable as exc:
                reader.close()
                return error_response(416, exc.message, {"Content-Range": f"bytes */{size}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        elif found.checksum:
            headers["Content-MD5"] = found.checksum
        headers["Content-Length"] = str(end - start + 1)
        return StreamingResponse(stream(reader, start, end + 1, self.data.store.io, self.data.db.metrics.transfer),
                                 status_code=status, headers=headers, media_type="application/octet-stream")

    # -- members -----------------------------------------------------------------------------

    async def list_members(self, request: Request) -> Response:
        members = await self.members.list(ctx_of(request), request.path_params["image_id"])
        return JSONResponse({"members": members, "schema": "/v2/schemas/members"})

    async def add_member(self, request: Request) -> Response:
        return JSONResponse(await self.members.add(ctx_of(request), request.path_params["image_id"],
                                                   await json_body(request)))

    async def show_member(self, request: Request) -> Response:
        p = request.path_params
        return JSONResponse(await self.members.show(ctx_of(request), p["image_id"], p["member_id"]))

    async def update_member(self, request: Request) -> Response:
        p = request.path_params
        return JSONResponse(await self.members.update(ctx_of(request), p["image_id"], p["member_id"],
                                                      await json_body(request)))

    async def delete_member(self, request: Request) -> Response:
        p = request.path_params
        await self.members.delete(ctx_of(request), p["image_id"], p["member_id"])
        return Response(status_code=204)


_UPLOAD_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def resume_of(request: Request) -> Resume | None:
    """``X-Image-Upload-Id`` (a UUID) + ``X-Image-Upload-Offset`` (+ ``X-Image-Upload-Final:
    false`` for a part that does not end the data): a resumable upload."""
    upload_id = request.headers.get("x-image-upload-id")
    if upload_id is None:
        return None
    if not _UPLOAD_ID.match(upload_id):
        raise errors.Invalid("X-Image-Upload-Id must be a lower-case UUID")
    offset = header_uint(request, "X-Image-Upload-Offset", "0")
    final = request.headers.get("x-image-upload-final", "true").lower()
    if final not in ("true", "false"):
        raise errors.Invalid(f"Invalid X-Image-Upload-Final {final!r}: true or false")
    return Resume(upload_id=upload_id, offset=offset, final=final == "true")


def parse_range(spec: str, size: int) -> tuple[int, int]:
    """One ``bytes=a-b`` / ``a-`` / ``-n`` range to inclusive offsets; 416 if unsatisfiable."""
    match = _RANGE.fullmatch(spec.strip())
    if not match or match.groups() == ("", ""):
        raise errors.RangeNotSatisfiable(f"Unsupported Range header {spec[:64]!r}: use one 'bytes=start-end' range")
    first, last = match.groups()
    if first == "":
        length = _offset(last)
        if length == 0:
            raise errors.RangeNotSatisfiable(f"Range {spec[:64]!r} selects no bytes")
        return max(size - length, 0), size - 1
    start = _offset(first)
    end = min(_offset(last), size - 1) if last else size - 1
    if start >= size or start > end:
        raise errors.RangeNotSatisfiable(f"Range {spec[:64]!r} is outside the image's {size} bytes")
    return start, end


def _offset(digits: str) -> int:
    """A Range offset: past any image's size if longer than a 64-bit number (never int() of
    thousands of digits)."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= MAX_DIGITS else INT64_MAX


async def stream(reader, start: int, stop: int, pool: BoundedPool,
                 count: Callable[[str, int, float], None] | None = None) -> AsyncIterator[bytes]:
    """Read on the store's pool; once the headers are sent a block may wait (boundedly) for a
    thread rather than cut the download short. ``count``: told the bytes sent and the seconds."""
    offset = start
    began = time.monotonic()
    try:
        while offset < stop:
            block = await pool.run(reader.read, offset, min(READ_SIZE, stop - offset), wait=STREAM_WAIT)
            if not block:
                break
            offset += len(block)
            yield block
    finally:
        reader.close()
        if count is not None:
            count("download", offset - start, time.monotonic() - began)
