"""The hardware interfaces of a bare-metal node (Ironic's, as ``abc`` classes): power and boot
here, snapshot in ``snapshot.py``. Every implementation of a family passes one conformance suite
(``tests/unit/baremetal/test_interfaces_power.py``, ``..._boot.py``).

An interface is stateless about nodes: what it needs comes in a ``NodeInfo`` (a frozen copy of
the node's row), and what the conductor must remember (the power state it read, an error) it
keeps from the return values and exceptions. Methods are synchronous (the conductor's workers
call them) and idempotent: a workflow resumed after a crash may call them again.

Errors: ``DriverError`` says what is wrong in words an operator can act on (a missing
driver_info key, the BMC's own message); the API shows it as a 400, a workflow as last_error.
"""

from __future__ import annotations

import abc
import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from freezeframe.common import errors

if TYPE_CHECKING:
    from freezeframe.baremetal.model import Node

POWER_ON = "power on"
POWER_OFF = "power off"
REBOOT = "rebooting"
POWER_STATES = (POWER_ON, POWER_OFF)
POWER_TARGETS = (POWER_ON, POWER_OFF, REBOOT)
# What a boot loader's kernel line carries unquoted (the agent reads /proc/cmdline).
_PARAM = re.compile(r"^[A-Za-z0-9_.\-]+$")
_VALUE = re.compile(r"^[^\s\"'\\]*$")
CMDLINE_MAX = 2000          # the x86 kernel's limit is 2048, with the image's own parameters


class DriverError(errors.Invalid):
    """A hardware interface cannot do what was asked (its message says why)."""


@dataclass(frozen=True)
class NodeInfo:
    """A node as its hardware interfaces see it."""
    id: str
    name: str | None
    driver: str
    driver_info: dict[str, Any] = field(default_factory=dict)
    properties: dict[str, Any] = field(default_factory=dict)
    instance_info: dict[str, Any] = field(default_factory=dict)
    driver_internal_info: dict[str, Any] = field(default_factory=dict)
    # The power state the conductor last recorded (node.power_state): the fake power interface
    # reports it, as Ironic's fake does, when this process has not set one itself.
    power_state: str | None = None

    @classmethod
    def from_row(cls, node: Node) -> NodeInfo:
        return cls(id=node.id, name=node.name, driver=node.driver,
                   driver_info=_load(node.driver_info_json), properties=_load(node.properties_json),
                   instance_info=_load(node.instance_info_json),
                   driver_internal_info=_load(node.driver_internal_info_json),
                   power_state=node.power_state)

    @property
    def ident(self) -> str:
        """How messages name the node."""
        return self.name or self.id


def _load(text: str | None) -> dict[str, Any]:
    return json.loads(text) if text else {}


class PowerInterface(abc.ABC):
    name: str

    @abc.abstractmethod
    def validate(self, node: NodeInfo) -> None:
        """Raise DriverError when the node's driver_info cannot drive its power."""

    @abc.abstractmethod
    def get_power_state(self, node: NodeInfo) -> str:
        """``"power on"`` or ``"power off"``, as the hardware reports it now."""

    @abc.abstractmethod
    def set_power_state(self, node: NodeInfo, state: str, timeout: float | None = None) -> None:
        """Hard power on, hard power off, or ``"rebooting"`` (= ``reboot``); returns when the
        hardware reports the target (``timeout`` seconds at most: DriverError after)."""

    @abc.abstractmethod
    def reboot(self, node: NodeInfo, timeout: float | None = None) -> None:
        """Hard reset when on, power on when off; returns once the node is on again."""


class BootInterface(abc.ABC):
    name: str

    @abc.abstractmethod
    def validate(self, node: NodeInfo) -> None:
        """Raise DriverError when the node cannot be booted into the agent by this interface."""

    @abc.abstractmethod
    def prepare_ramdisk(self, node: NodeInfo, params: dict[str, str]) -> None:
        """Make the node's next boot start the agent image with these kernel parameters
        (``ipa-api-url``, ``ipa-node-uuid``...). Does not power or reboot the node."""

    @abc.abstractmethod
    def clean_up_ramdisk(self, node: NodeInfo) -> None:
        """Undo ``prepare_ramdisk``: the agent image is gone and the node's next boot is from its
        disk. No error when nothing was prepared."""


def check_power_target(state: str) -> None:
    if state not in POWER_TARGETS:
        raise DriverError(f"Invalid power state {state!r}: expected one of {', '.join(POWER_TARGETS)}.")


def kernel_cmdline(params: dict[str, str]) -> str:
    """The agent's kernel parameters as one line of ``key=value`` words (a bare ``key`` for an
    empty value); DriverError for what a boot loader or the kernel would split or truncate.
    Every boot interface checks them, the fake too (so fast tests catch what a real one refuses)."""
    words = []
    for key, value in params.items():
        key, value = str(key), "" if value is None else str(value)
        if not _PARAM.match(key) or not _VALUE.match(value):
            raise DriverError(f"Invalid kernel parameter {key}={value!r}: names are letters, digits, "
                              f"'_', '.', '-'; values have no spaces, quotes or backslashes.")
        words.append(f"{key}={value}" if value else key)
    line = " ".join(words)
    if len(line) > CMDLINE_MAX:
        raise DriverError(f"The agent's kernel parameters are {len(line)} characters: at most {CMDLINE_MAX}.")
    return line
