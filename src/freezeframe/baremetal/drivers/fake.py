"""The ``fake-hardware`` interfaces: nothing is driven, what was asked is remembered.

Ironic's fake power keeps nothing and reports ``node.power_state``; ours also remembers, per
node id in this process, what it was last told (so a reboot is visible as a power-on count), and
falls back to the conductor's recorded ``power_state`` (``NodeInfo.power_state``) after a
restart. The fake boot checks the kernel parameters as a real one does and remembers them, for
tests to read.

Test knobs in driver_info (a real node never has them): ``fake_power_error`` /
``fake_boot_error`` make every call but ``validate`` fail with that message.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from freezeframe.baremetal.drivers.base import (
    POWER_OFF, POWER_ON, REBOOT, BootInterface, DriverError, NodeInfo, PowerInterface, check_power_target,
    kernel_cmdline,
)


@dataclass
class _Power:
    state: str
    boots: int = 0              # power-on transitions, reboots included


class FakePower(PowerInterface):
    name = "fake"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._nodes: dict[str, _Power] = {}

    def validate(self, node: NodeInfo) -> None:
        return None

    def get_power_state(self, node: NodeInfo) -> str:
        _fail(node, "fake_power_error")
        with self._lock:
            known = self._nodes.get(node.id)
            if known is not None:
                return known.state
        return node.power_state if node.power_state in (POWER_ON, POWER_OFF) else POWER_OFF

    def set_power_state(self, node: NodeInfo, state: str, timeout: float | None = None) -> None:
        check_power_target(state)
        _fail(node, "fake_power_error")
        current = self.get_power_state(node)
        with self._lock:
            rec = self._nodes.setdefault(node.id, _Power(current))
            if state == REBOOT or (state == POWER_ON and rec.state == POWER_OFF):
                rec.boots += 1
            rec.state = POWER_OFF if state == POWER_OFF else POWER_ON

    def reboot(self, node: NodeInfo, timeout: float | None = None) -> None:
        self.set_power_state(node, REBOOT, timeout)

    def boots(self, node_id: str) -> int:
        """How many times this process powered the node on (reboots included)."""
        with self._lock:
            rec = self._nodes.get(node_id)
            return rec.boots if rec else 0


class FakeBoot(BootInterface):
    name = "fake"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._prepared: dict[str, dict[str, str]] = {}

    def validate(self, node: NodeInfo) -> None:
        return None

    def prepare_ramdisk(self, node: NodeInfo, params: dict[str, str]) -> None:
        _fail(node, "fake_boot_error")
        kernel_cmdline(params)
        with self._lock:
            self._prepared[node.id] = {str(k): str(v) for k, v in params.items()}

    def clean_up_ramdisk(self, node: NodeInfo) -> None:
        _fail(node, "fake_boot_error")
        with self._lock:
            self._prepared.pop(node.id, None)

    def prepared(self, node_id: str) -> dict[str, str] | None:
        """The kernel parameters of the prepared agent boot, or None."""
        with self._lock:
            params = self._prepared.get(node_id)
            return dict(params) if params is not None else None


def _fail(node: NodeInfo, knob: str) -> None:
    message = node.driver_info.get(knob)
    if message:
        raise DriverError(str(message))
