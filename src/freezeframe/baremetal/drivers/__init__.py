"""The hardware types and interfaces, registered by name and enabled by configuration (Ironic's
model): a node's ``driver`` names a hardware type, which lists the power, boot and snapshot
interfaces it supports (the first enabled one is the default); ``[baremetal] enabled_*`` say
which of them this deployment may use.

``Interfaces`` is built once from the settings and hands out one instance per interface name;
``check`` is what the API runs on a node's create and patch.
"""

from __future__ import annotations

import importlib
import inspect
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from freezeframe.baremetal.drivers.base import BootInterface, DriverError, NodeInfo, PowerInterface

__all__ = ["HARDWARE_TYPES", "FAMILIES", "HardwareType", "Interfaces", "DriverError", "NodeInfo"]

FAMILIES = ("power", "boot", "snapshot")


@dataclass(frozen=True)
class HardwareType:
    name: str
    power: tuple[str, ...]          # supported interface names, the preferred first
    boot: tuple[str, ...]
    snapshot: tuple[str, ...]

    def supported(self, family: str) -> tuple[str, ...]:
        return getattr(self, family)


HARDWARE_TYPES: dict[str, HardwareType] = {
    "fake-hardware": HardwareType("fake-hardware", power=("fake",), boot=("fake",),
                                  snapshot=("fake", "no-snapshot", "agent")),
    "redfish": HardwareType("redfish", power=("redfish",), boot=("redfish-virtual-media",),
                            snapshot=("agent", "no-snapshot")),
}

# Implementations by family and name, imported when first used ("module:Class").
IMPLEMENTATIONS: dict[str, dict[str, str]] = {
    "power": {"fake": "freezeframe.baremetal.drivers.fake:FakePower",
              "redfish": "freezeframe.baremetal.drivers.redfish:RedfishPower"},
    "boot": {"fake": "freezeframe.baremetal.drivers.fake:FakeBoot",
             "redfish-virtual-media": "freezeframe.baremetal.drivers.redfish:RedfishVirtualMediaBoot"},
    "snapshot": {"fake": "freezeframe.baremetal.drivers.snapshot:FakeSnapshot",
                 "no-snapshot": "freezeframe.baremetal.drivers.snapshot:NoSnapshot",
                 "agent": "freezeframe.baremetal.drivers.snapshot:AgentSnapshot"},
}


def _names(value: str | Iterable[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else value
    return tuple(dict.fromkeys(s.strip() for s in items if s and s.strip()))


def _cache_dir() -> Path:
    return Path(os.environ.get("FREEZEFRAME_CACHE") or Path.home() / ".cache" / "freezeframe")


class Interfaces:
    """The enabled hardware types and interfaces of one deployment.

    ``settings`` is ``Settings.baremetal`` (or anything with its attributes). The virtual-media
    boot publishes per-node ISOs in ``boot_dir`` (default ``<transfer area>/_boot``: pass
    ``data_dir`` when ``transfer_path`` is empty), downloaded by BMCs from ``boot_url`` (default
    ``agent_iso_url``, else ``http://<webdav_bind>/_boot``: a BMC reaches the conductor's side,
    the address the WebDAV server listens on; ``<webdav_url>/_boot`` when the bind is a wildcard
    or there is no server here).
    """

    def __init__(self, settings: Any, *, data_dir: Path | str | None = None, boot_dir: Path | str | None = None,
                 boot_url: str | None = None) -> None:
        self.settings = settings
        self.enabled: dict[str, tuple[str, ...]] = {
            "hardware": _names(getattr(settings, "enabled_hardware_types", ",".join(HARDWARE_TYPES))),
            **{family: _names(getattr(settings, f"enabled_{family}_interfaces", ",".join(IMPLEMENTATIONS[family])))
               for family in FAMILIES},
        }
        for name in self.enabled["hardware"]:
            if name not in HARDWARE_TYPES:
                raise DriverError(f"enabled_hardware_types names an unknown hardware type {name!r}: "
                                  f"known are {', '.join(HARDWARE_TYPES)}.")
        for family in FAMILIES:
            for name in self.enabled[family]:
                if name not in IMPLEMENTATIONS[family]:
                    raise DriverError(f"enabled_{family}_interfaces names an unknown {family} interface "
                                      f"{name!r}: known are {', '.join(IMPLEMENTATIONS[family])}.")
        self.boot_dir, self.boot_url = self._boot_place(data_dir, boot_dir, boot_url)
        self._lock = threading.Lock()
        self._instances: dict[tuple[str, str], Any] = {}

    def _boot_place(self, data_dir: Any, boot_dir: Any, boot_url: str | None) -> tuple[Path | None, str | None]:
        s = self.settings
        if boot_dir is None:
            area = getattr(s, "transfer_path", "") or (Path(data_dir) / "baremetal-transfers" if data_dir else None)
            boot_dir = Path(area) / "_boot" if area else None
        if boot_url is None:
            boot_url = getattr(s, "agent_iso_url", "") or None
            if boot_url is None:
                # A BMC is on the conductor's side: it reaches the address the WebDAV server is
                # bound to (webdav_url is the agents' side, e.g. 10.0.2.2 from a user-mode NIC).
                # A wildcard bind names no host: then webdav_url, else this machine (loopback).
                bind = getattr(s, "webdav_bind", "") or ""
                host, _, port = bind.rpartition(":")
                wildcard = host in ("0.0.0.0", "[::]", "")
                if bind and not (wildcard and getattr(s, "webdav_url", "")):
                    root = f"http://{'127.0.0.1' if wildcard else host}:{port}"
                else:
                    root = getattr(s, "webdav_url", "") or ""
                boot_url = root.rstrip("/") + "/_boot" if root else None
        return (Path(boot_dir) if boot_dir else None), boot_url

    # -- the registry ---------------------------------------------------------------------------
    def hardware_type(self, driver: str) -> HardwareType:
        if driver not in HARDWARE_TYPES or driver not in self.enabled["hardware"]:
            raise DriverError(f"Hardware type {driver!r} is not supported or not enabled: enabled hardware "
                              f"types are {', '.join(self.enabled['hardware']) or 'none'}.")
        return HARDWARE_TYPES[driver]

    def defaults(self, driver: str) -> dict[str, str]:
        """``{"power_interface": ..., "boot_interface": ..., "snapshot_interface": ...}``: for each
        family the first interface the hardware type supports that is enabled."""
        hw = self.hardware_type(driver)
        out = {}
        for family in FAMILIES:
            usable = [n for n in hw.supported(family) if n in self.enabled[family]]
            if not usable:
                raise DriverError(f"No {family} interface is enabled for hardware type {driver!r}: it supports "
                                  f"{', '.join(hw.supported(family))}; enabled {family} interfaces are "
                                  f"{', '.join(self.enabled[family]) or 'none'}.")
            out[f"{family}_interface"] = usable[0]
        return out

    def check(self, driver: str, names: dict[str, str | None] | None = None) -> dict[str, str]:
        """The node's interfaces with defaults filled in (None or missing: the default); DriverError
        when the driver or an interface is unknown, not enabled or not supported by the driver."""
        hw = self.hardware_type(driver)
        names = names or {}
        unknown = sorted(set(names) - {f"{f}_interface" for f in FAMILIES})
        if unknown:
            raise DriverError(f"Unknown interface field(s) {', '.join(unknown)}.")
        out = {}
        for family in FAMILIES:
            field = f"{family}_interface"
            name = names.get(field)
            if name is None:
                out[field] = self.defaults(driver)[field]
                continue
            supported = hw.supported(family)
            enabled = self.enabled[family]
            if name not in supported or name not in enabled:
                why = "is not enabled" if name in supported else f"is not supported by hardware type {driver!r}"
                raise DriverError(f"{field} {name!r} {why}: hardware type {driver!r} supports "
                                  f"{', '.join(supported)}; enabled {family} interfaces are "
                                  f"{', '.join(enabled) or 'none'}.")
            out[field] = name
        return out

    # -- instances --------------------------------------------------------------------------------
    def power(self, name: str) -> PowerInterface:
        return self._get("power", name)

    def boot(self, name: str) -> BootInterface:
        return self._get("boot", name)

    def snapshot(self, name: str) -> Any:
        return self._get("snapshot", name)

    def _get(self, family: str, name: str) -> Any:
        if name not in self.enabled[family]:
            raise DriverError(f"{family.capitalize()} interface {name!r} is not enabled: enabled {family} "
                              f"interfaces are {', '.join(self.enabled[family]) or 'none'}.")
        with self._lock:
            inst = self._instances.get((family, name))
            if inst is None:
                inst = self._instances[(family, name)] = self._make(family, name)
            return inst

    def _make(self, family: str, name: str) -> Any:
        module, _, attr = IMPLEMENTATIONS[family][name].partition(":")
        cls = getattr(importlib.import_module(module), attr)
        s = self.settings
        if family == "power" and name == "redfish":
            return cls(timeout=float(getattr(s, "power_timeout", 60.0)))
        if family == "boot" and name == "redfish-virtual-media":
            iso = getattr(s, "agent_iso", "") or _cache_dir() / "agent" / "out" / "agent.iso"
            return cls(agent_iso=Path(iso), boot_dir=self.boot_dir, boot_url=self.boot_url)
        if family == "snapshot" and _takes_argument(cls):
            return cls(self)          # the agent flow drives the node's power and boot interfaces
        return cls()


def _takes_argument(cls: type) -> bool:
    try:
        params = list(inspect.signature(cls).parameters.values())
    except (TypeError, ValueError):
        return False
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)
