"""The agent's commands, by name ("extension.command", as ironic-python-agent names them).

A command validates its params at once (bad params: 400) and then runs: `asynchronous`
commands in a thread (the command API answers RUNNING), the others inline.
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit

from . import AGENT_VERSION, rootdev, stream


class InvalidParams(ValueError):
    """The command's params are wrong (400)."""


class CommandFailed(Exception):
    """The command ran and failed; `kind` names the error type reported in command_error."""

    def __init__(self, message: str, kind: str = "CommandExecutionError"):
        super().__init__(message)
        self.kind = kind


class Context:
    """What commands may use: the agent's settings, the lookup's node, the stop flag, the progress."""

    def __init__(self, *, disks=(), node: dict | None = None, insecure: bool = False,
                 retry_backoff: float = stream.BACKOFF, retry_tries: int = stream.TRIES,
                 sys_block: str = "/sys/block"):
        self.disks = tuple(disks)
        self.node = node
        self.insecure = insecure
        self.retry_backoff = retry_backoff
        self.retry_tries = retry_tries
        self.sys_block = sys_block
        self.started_at = time.time()
        self.progress: stream.Progress | None = None
        self.stop = stream.StopFlag()

    def devices(self) -> list[rootdev.BlockDevice]:
        return rootdev.list_devices(self.disks, self.sys_block)


class Command:
    name: str
    asynchronous = False

    def validate(self, params: dict) -> dict:
        return params

    def run(self, ctx: Context, params: dict, command_id: str) -> dict:
        raise NotImplementedError


class GetStatus(Command):
    """system.get_status: version, disks and the root device the agent would choose."""

    name = "system.get_status"

    def validate(self, params: dict) -> dict:
        hints = params.get("root_device_hints")
        try:
            rootdev.parse_hints(hints)
        except rootdev.InvalidHints as exc:
            raise InvalidParams(str(exc)) from None
        return params

    def run(self, ctx: Context, params: dict, command_id: str) -> dict:
        devices = ctx.devices()
        hints = params.get("root_device_hints") or rootdev.hints_from_node(ctx.node)
        try:
            root, error = rootdev.choose_root_device(devices, hints).name, None
        except (rootdev.DeviceNotFound, rootdev.InvalidHints) as exc:
            root, error = None, str(exc)
        return {
            "version": AGENT_VERSION,
            "started_at": ctx.started_at,
            "disks": [d.as_dict() for d in devices],
            "root_device_hints": hints,
            "root_device": root,
            "root_device_error": error,
        }


class StreamImage(Command):
    """snapshot.stream_image: the root disk to the operation's WebDAV collection."""

    name = "snapshot.stream_image"
    asynchronous = True

    def validate(self, params: dict) -> dict:
        url = params.get("url")
        if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https") or not url.endswith("/"):
            raise InvalidParams("url must be the http(s) URL of a WebDAV collection, ending with /")
        for key in ("username", "password"):
            if not isinstance(params.get(key), str):
                raise InvalidParams(f"{key} must be a string")
        chunk_size = params.get("chunk_size", stream.DEFAULT_CHUNK_SIZE)
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or not (
            4096 <= chunk_size <= stream.MAX_CHUNK_SIZE and chunk_size % 512 == 0
        ):
            raise InvalidParams(
                f"chunk_size must be a multiple of 512 between 4096 and {stream.MAX_CHUNK_SIZE}"
            )
        hints = params.get("root_device_hints")
        try:
            rootdev.parse_hints(hints)
        except rootdev.InvalidHints as exc:
            raise InvalidParams(str(exc)) from None
        image_name = params.get("image_name")
        if image_name is not None and not isinstance(image_name, str):
            raise InvalidParams("image_name must be a string")
        return dict(params, chunk_size=chunk_size)

    def run(self, ctx: Context, params: dict, command_id: str) -> dict:
        hints = params.get("root_device_hints") or rootdev.hints_from_node(ctx.node)
        try:
            device = rootdev.choose_root_device(ctx.devices(), hints)
        except rootdev.DeviceNotFound as exc:
            raise CommandFailed(str(exc), "DeviceNotFound") from None
        progress = stream.Progress(command_id)
        ctx.progress = progress
        try:
            return stream.stream_image(
                device.path,
                stream.StreamParams(
                    url=params["url"],
                    username=params["username"],
                    password=params["password"],
                    chunk_size=params["chunk_size"],
                    image_name=params.get("image_name"),
                ),
                progress=progress,
                stop=ctx.stop,
                tries=ctx.retry_tries,
                backoff=ctx.retry_backoff,
                insecure=ctx.insecure,
            )
        except stream.Stopped as exc:
            raise CommandFailed(str(exc), "Stopped") from None
        except stream.StreamError as exc:
            raise CommandFailed(str(exc), "StreamError") from None
        except OSError as exc:
            raise CommandFailed(f"{device.path}: {exc}", "DeviceError") from None


REGISTRY: dict[str, Command] = {c.name: c for c in (StreamImage(), GetStatus())}


def find(name: str) -> Command | None:
    return REGISTRY.get(name)
