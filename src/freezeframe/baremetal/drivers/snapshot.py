"""The snapshot interface of a node (seed 004's ``snapshot_interface``): how a node's root disk
gets into the WebDAV area. The conductor's workflow (``baremetal/workflows/snapshot.py``) drives
it; the area, its checks and the upload are the workflow's, the same for every implementation.

- ``agent``: boots the node into the agent image (the boot interface's ``prepare_ramdisk`` with
  the kernel parameters the agent reads, then a power reboot), and once the agent heartbeats,
  commands ``snapshot.stream_image`` and follows the command; at the end the ramdisk is cleaned
  up and the node rebooted to its disk.
- ``fake``: no agent; writes the chunks and manifest of a small deterministic disk
  (``driver_info["fake_disk_size"]``, default 8 MiB) into the area itself — fast workflow tests.
- ``no-snapshot``: the node cannot be snapshotted (``validate`` says so).

Each call is idempotent (a workflow resumed after a crash calls it again).
"""

from __future__ import annotations

import abc
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from freezeframe.baremetal.agent_client import FAILED, RUNNING, SUCCEEDED, AgentClient, command_error
from freezeframe.baremetal.drivers.base import (POWER_OFF, BootInterface, DriverError, NodeInfo, PowerInterface,
                                                 kernel_cmdline)

STREAM_COMMAND = "snapshot.stream_image"
FAKE_DISK_SIZE = 8 << 20


@dataclass(frozen=True)
class Hardware:
    """The node's own power and boot interfaces (as its row names them)."""
    power: PowerInterface
    boot: BootInterface
    power_timeout: float | None = None


@dataclass(frozen=True)
class StreamTarget:
    """Where and how the disk is streamed: the operation's collection (URL and directory) and
    its credential."""
    url: str                        # ends with "/"
    username: str
    password: str
    chunk_size: int
    directory: Path
    image_name: str = ""
    root_device_hints: dict[str, Any] | None = None


@dataclass(frozen=True)
class StreamStatus:
    state: str                      # RUNNING | SUCCEEDED | FAILED
    reason: str = ""
    result: dict[str, Any] | None = None


class SnapshotInterface(abc.ABC):
    name: str
    needs_agent: bool = False

    def __init__(self, interfaces: Any = None) -> None:
        self.interfaces = interfaces

    @abc.abstractmethod
    def validate(self, node: NodeInfo) -> None:
        """DriverError when this node cannot be snapshotted by this interface."""

    @abc.abstractmethod
    def prepare(self, node: NodeInfo, hw: Hardware, *, api_url: str) -> None:
        """Get the node ready to stream (the agent: boot it into the agent image)."""

    @abc.abstractmethod
    def start_stream(self, node: NodeInfo, target: StreamTarget, agent: AgentClient | None) -> str:
        """Start streaming the root disk into ``target``; returns the command's id."""

    @abc.abstractmethod
    def stream_status(self, node: NodeInfo, target_dir: Path, agent: AgentClient | None,
                      command_id: str | None) -> StreamStatus:
        """Where the stream is."""

    @abc.abstractmethod
    def finish(self, node: NodeInfo, hw: Hardware) -> None:
        """The node boots from its own disk again (success, abort)."""

    @abc.abstractmethod
    def tear_down(self, node: NodeInfo, hw: Hardware) -> None:
        """deleted: the node powered off, the agent image gone."""


class NoSnapshot(SnapshotInterface):
    name = "no-snapshot"

    def validate(self, node: NodeInfo) -> None:
        raise DriverError("snapshot is not supported by snapshot_interface no-snapshot")

    def prepare(self, node, hw, *, api_url):
        self.validate(node)

    def start_stream(self, node, target, agent):
        self.validate(node)
        return ""

    def stream_status(self, node, target_dir, agent, command_id):
        self.validate(node)
        return StreamStatus(FAILED, "snapshot is not supported by snapshot_interface no-snapshot")

    def finish(self, node, hw):
        return None

    def tear_down(self, node, hw):
        hw.power.set_power_state(node, POWER_OFF, hw.power_timeout)


def fake_disk_size(node: NodeInfo) -> int:
    try:
        size = int(node.driver_info.get("fake_disk_size", FAKE_DISK_SIZE))
    except (TypeError, ValueError):
        raise DriverError("driver_info fake_disk_size must be a number of bytes") from None
    if size < 0 or size > 1 << 30 or size % 512:
        raise DriverError("driver_info fake_disk_size must be a multiple of 512 bytes, at most 1 GiB")
    return size


def fake_disk_read(node_id: str, size: int):
    """The fake node's disk: ``read(offset, length)``. Deterministic from the node id: a header
    at 0, a 100 KiB block at 3 MiB + 4 KiB, the last 4 KiB — zeros elsewhere (holes)."""
    seed = hashlib.sha256(node_id.encode()).digest()
    pieces = [(0, (b"FREEZEFRAME FAKE DISK " + node_id.encode() + b"\n") * 50),
              (3 * 2**20 + 4096, (seed * (102400 // len(seed) + 1))[:102400]),
              (max(0, size - 4096), b"\xee" * 4096)]

    def read(offset: int, length: int) -> bytes:
        out = bytearray(length)
        for at, data in pieces:
            start, end = max(offset, at), min(offset + length, at + len(data), size)
            if start < end:
                out[start - offset:end - offset] = data[start - at:end - at]
        return bytes(out)
    return read


class FakeSnapshot(SnapshotInterface):
    """No agent: the conductor writes a deterministic small disk's stream itself."""
    name = "fake"

    def validate(self, node: NodeInfo) -> None:
        fake_disk_size(node)

    def prepare(self, node, hw, *, api_url):
        self.validate(node)

    def start_stream(self, node, target, agent):
        from freezeframe.baremetal.transfer import write_stream
        error = node.driver_info.get("fake_snapshot_error")
        if error:
            raise DriverError(str(error))
        size = fake_disk_size(node)
        write_stream(Path(target.directory), fake_disk_read(node.id, size), size, target.chunk_size)
        return "fake"

    def stream_status(self, node, target_dir, agent, command_id):
        from freezeframe.baremetal.transfer import MANIFEST
        if (Path(target_dir) / MANIFEST).is_file():
            return StreamStatus(SUCCEEDED)
        return StreamStatus(FAILED, "the fake stream left no manifest")

    def finish(self, node, hw):
        return None

    def tear_down(self, node, hw):
        hw.power.set_power_state(node, POWER_OFF, hw.power_timeout)


def append_params(node: NodeInfo) -> dict[str, str]:
    """Ironic's ``driver_info["kernel_append_params"]``: more kernel parameters for the agent's
    boot ("key=value key2=value2 flag"), added to the agent image's own (not replacing them),
    e.g. ``ipa-advertise-host=... ipa-advertise-port=...`` where the node's agent is reached
    through a NAT. The boot interface checks each word."""
    text = node.driver_info.get("kernel_append_params")
    if text is None or text == "":
        return {}
    if not isinstance(text, str):
        raise DriverError("driver_info kernel_append_params must be a string of kernel parameters")
    out: dict[str, str] = {}
    for word in text.split():
        key, _, value = word.partition("=")
        out[key] = value
    return out


class AgentSnapshot(SnapshotInterface):
    """The node's agent streams its root disk (seed 004)."""
    name = "agent"
    needs_agent = True

    def validate(self, node: NodeInfo) -> None:
        kernel_cmdline(append_params(node))   # (the boot interface's validate says what else booting needs)

    def prepare(self, node, hw, *, api_url):
        if not api_url:
            raise DriverError("no bare-metal API URL for the agent (set [baremetal] api_url)")
        hw.boot.validate(node)
        params = {**append_params(node), "ipa-api-url": api_url, "ipa-node-uuid": node.id}
        hw.boot.prepare_ramdisk(node, params)
        hw.power.reboot(node, hw.power_timeout)

    def start_stream(self, node, target, agent):
        if agent is None:
            raise DriverError("the agent has not heartbeated: there is no agent to command")
        hints = target.root_device_hints
        if hints is None:
            hints = node.instance_info.get("root_device") or node.properties.get("root_device") or None
        doc = agent.run(STREAM_COMMAND, {
            "url": target.url, "username": target.username, "password": target.password,
            "chunk_size": target.chunk_size, "root_device_hints": hints, "image_name": target.image_name})
        if doc.get("command_status") == FAILED:
            raise DriverError(f"the agent's {STREAM_COMMAND} failed: {command_error(doc)}")
        return str(doc.get("id") or "")

    def stream_status(self, node, target_dir, agent, command_id):
        if agent is None:
            return StreamStatus(FAILED, "the agent is gone")
        doc = agent.command(command_id, attempts=1) if command_id else agent.last(STREAM_COMMAND, attempts=1)
        if doc is None:
            return StreamStatus(FAILED, f"the agent has no {STREAM_COMMAND} command")
        status = doc.get("command_status")
        if status == SUCCEEDED:
            return StreamStatus(SUCCEEDED, result=doc.get("command_result") or {})
        if status == FAILED:
            return StreamStatus(FAILED, f"the agent's stream failed: {command_error(doc)}")
        return StreamStatus(RUNNING)

    def finish(self, node, hw):
        hw.boot.clean_up_ramdisk(node)
        hw.power.reboot(node, hw.power_timeout)

    def tear_down(self, node, hw):
        hw.power.set_power_state(node, POWER_OFF, hw.power_timeout)
        hw.boot.clean_up_ramdisk(node)
