"""The ``redfish`` hardware type: power through a BMC's Redfish API, and the
``redfish-virtual-media`` boot, which attaches the agent image to the system's virtual CD drive.
Both speak to the BMC with ``sushy`` (Ironic's Redfish client).

driver_info (Ironic's keys): ``redfish_address`` (required; ``https://`` is assumed without a
scheme), ``redfish_system_id`` (the System's path, ``/redfish/v1/Systems/<id>``, or just its
id; optional when the BMC has one system), ``redfish_username``, ``redfish_password``,
``redfish_verify_ca`` (true/false or a CA bundle path; default true), ``redfish_auth_type``
(basic, session or auto; default auto, as Ironic).

Power follows Ironic's mapping: power on = ``On``, power off = ``ForceOff``, reboot =
``ForceRestart`` when on (``On`` when off); a request for the state the system is already in
sends nothing; each call returns once the BMC reports the target state.

Virtual media (Ironic's redfish-virtual-media): ``prepare_ramdisk`` remasters the base agent
ISO (``[baremetal] agent_iso``, built by scripts/build-agent-image) into a per-node ISO whose
boot configuration (``/isolinux/*.cfg`` ``append`` lines, ``grub.cfg`` ``linux`` lines) carries
the node's kernel parameters, writes it as ``<boot_dir>/<node uuid>.iso`` where the BMC can
download it (``<boot_url>/<node uuid>.iso``), ejects what the CD drive holds, inserts the new
ISO and sets a one-time boot override to ``Cd``. ``clean_up_ramdisk`` ejects it, sets the boot
device to ``Hdd`` and removes the file. The ISO holds no secret (the agent gets its token at
lookup): the area's server may hand ``/_boot/`` out without credentials, as BMCs expect.

``sushy`` is imported where it is used: a deployment of fake hardware never loads it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar
from urllib.parse import urlsplit

from freezeframe.baremetal.drivers.base import (
    POWER_OFF, POWER_ON, REBOOT, BootInterface, DriverError, NodeInfo, PowerInterface, check_power_target,
    kernel_cmdline,
)

T = TypeVar("T")

REQUIRED_KEYS = ("redfish_address",)
OPTIONAL_KEYS = ("redfish_system_id", "redfish_username", "redfish_password", "redfish_verify_ca",
                 "redfish_auth_type")
AUTH_TYPES = ("basic", "session", "auto")
POLL_INTERVAL = 0.5
DEFAULT_POWER_TIMEOUT = 60.0
# Boot configuration files of the agent ISO whose kernel lines get the node's parameters.
_ISOLINUX = re.compile(r"^(?:/isolinux|/syslinux|/boot/isolinux|/boot/syslinux)/[^/]+\.cfg$")
_GRUB = re.compile(r"^(?:/boot/grub|/EFI/BOOT|/EFI/boot|/efi/boot)/grub\.cfg$")


@dataclass(frozen=True)
class RedfishInfo:
    address: str
    system_id: str | None
    username: str | None
    password: str | None
    verify: bool | str
    auth_type: str


def parse_driver_info(node: NodeInfo) -> RedfishInfo:
    """Ironic's checks of the redfish driver_info, with its wording."""
    info = node.driver_info
    missing = [key for key in REQUIRED_KEYS if not info.get(key)]
    if missing:
        raise DriverError(f"Missing the following Redfish properties in node {node.ident} driver_info: "
                          f"{', '.join(missing)}.")
    address = str(info["redfish_address"]).strip()
    if "://" not in address:
        address = "https://" + address
    parts = urlsplit(address)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise DriverError(f"Invalid Redfish address {info['redfish_address']} set in "
                          f"driver_info/redfish_address on node {node.ident}.")
    system_id = info.get("redfish_system_id") or None
    if system_id is not None:
        system_id = str(system_id).strip()
        path = urlsplit(system_id).path
        if not path or path == "/":
            raise DriverError(f"Invalid value {system_id!r} set in driver_info/redfish_system_id on node "
                              f"{node.ident}: expected the System's path, e.g. /redfish/v1/Systems/1.")
        system_id = path if path.startswith("/") else "/redfish/v1/Systems/" + path
    verify = _verify_ca(node, info.get("redfish_verify_ca", True))
    auth_type = str(info.get("redfish_auth_type") or "auto").lower()
    if auth_type not in AUTH_TYPES:
        raise DriverError(f"Invalid value {info.get('redfish_auth_type')!r} set in driver_info/"
                          f"redfish_auth_type on node {node.ident}: expected one of {', '.join(AUTH_TYPES)}.")
    username, password = info.get("redfish_username"), info.get("redfish_password")
    return RedfishInfo(address=f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}",
                       system_id=system_id, username=str(username) if username else None,
                       password=str(password) if password else None, verify=verify, auth_type=auth_type)


def _verify_ca(node: NodeInfo, value: Any) -> bool | str:
    if isinstance(value, bool):
        return value
    text = str(value).strip()
    if text.lower() in ("true", "yes", "on", "1", "y", "t"):
        return True
    if text.lower() in ("false", "no", "off", "0", "n", "f"):
        return False
    if os.path.exists(text):
        return text
    raise DriverError(f"Invalid value type set in driver_info/redfish_verify_ca on node {node.ident}. "
                      f"The value should be a Boolean or the path to a file/directory, not {text!r}.")


class Redfish:
    """The BMC connections of one interface instance, cached per endpoint and credential (a new
    session per call would exhaust a real BMC's few session slots)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conns: dict[RedfishInfo, Any] = {}

    def system(self, node: NodeInfo, action: str) -> Any:
        info = parse_driver_info(node)
        return self.call(node, action, lambda: self._get_system(info))

    def _get_system(self, info: RedfishInfo) -> Any:
        import sushy
        with self._lock:
            conn = self._conns.get(info)
        if conn is None:
            auth = {"basic": sushy.auth.BasicAuth, "session": sushy.auth.SessionAuth,
                    "auto": sushy.auth.SessionOrBasicAuth}[info.auth_type](info.username, info.password)
            conn = sushy.Sushy(info.address, verify=info.verify, auth=auth, server_side_retries=3,
                               server_side_retries_delay=1, connect_timeout=10)
            with self._lock:
                if len(self._conns) > 256:
                    self._conns.clear()
                self._conns[info] = conn
        try:
            return conn.get_system(info.system_id)
        except Exception:
            with self._lock:                      # a dead session or a BMC reset: start afresh next time
                self._conns.pop(info, None)
            raise

    @staticmethod
    def call(node: NodeInfo, action: str, fn: Callable[[], T]) -> T:
        """Run ``fn``; a sushy error (or the connection's) becomes a DriverError with the BMC's words."""
        from sushy import exceptions as sushy_errors
        try:
            return fn()
        except DriverError:
            raise
        except sushy_errors.UnknownDefaultError as exc:
            raise DriverError(f"Redfish {action} failed for node {node.ident}: the BMC does not have exactly "
                              f"one System; set driver_info/redfish_system_id ({exc}).") from exc
        except sushy_errors.SushyError as exc:
            raise DriverError(f"Redfish {action} failed for node {node.ident}: {exc}") from exc
        except OSError as exc:
            raise DriverError(f"Redfish {action} failed for node {node.ident}: {exc}") from exc


_POWER_STATES = {"On": POWER_ON, "PoweringOn": POWER_ON, "Off": POWER_OFF, "PoweringOff": POWER_OFF}


class RedfishPower(PowerInterface):
    name = "redfish"

    def __init__(self, timeout: float = DEFAULT_POWER_TIMEOUT) -> None:
        self.timeout = timeout
        self._redfish = Redfish()

    def validate(self, node: NodeInfo) -> None:
        parse_driver_info(node)

    def get_power_state(self, node: NodeInfo) -> str:
        return self._state(node, self._redfish.system(node, "get power state"))

    def _state(self, node: NodeInfo, system: Any) -> str:
        value = system.power_state
        raw = getattr(value, "value", value)
        state = _POWER_STATES.get(raw)
        if state is None:
            raise DriverError(f"Redfish get power state failed for node {node.ident}: the BMC reports "
                              f"power state {raw!r}.")
        return state

    def set_power_state(self, node: NodeInfo, state: str, timeout: float | None = None) -> None:
        check_power_target(state)
        if state == REBOOT:
            return self.reboot(node, timeout)
        import sushy
        system = self._redfish.system(node, f"set power state to {state}")
        if self._state(node, system) == state:
            return
        reset = sushy.ResetType.ON if state == POWER_ON else sushy.ResetType.FORCE_OFF
        Redfish.call(node, f"set power state to {state}", lambda: system.reset_system(reset))
        self._wait(node, system, state, timeout)

    def reboot(self, node: NodeInfo, timeout: float | None = None) -> None:
        import sushy
        system = self._redfish.system(node, "reboot")
        reset = sushy.ResetType.FORCE_RESTART if self._state(node, system) == POWER_ON else sushy.ResetType.ON
        Redfish.call(node, "reboot", lambda: system.reset_system(reset))
        self._wait(node, system, POWER_ON, timeout)

    def _wait(self, node: NodeInfo, system: Any, target: str, timeout: float | None) -> None:
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            Redfish.call(node, "get power state", lambda: system.refresh(force=True))
            state = self._state(node, system)
            if state == target:
                return
            if time.monotonic() >= deadline:
                raise DriverError(f"Timed out after {limit:g} s waiting for node {node.ident} to reach "
                                  f"{target}: the BMC reports {state}.")
            time.sleep(POLL_INTERVAL)


class RedfishVirtualMediaBoot(BootInterface):
    name = "redfish-virtual-media"

    def __init__(self, agent_iso: Path | str, boot_dir: Path | str | None, boot_url: str | None) -> None:
        self.agent_iso = Path(agent_iso)
        self.boot_dir = Path(boot_dir) if boot_dir else None
        self.boot_url = boot_url.rstrip("/") if boot_url else None
        self._redfish = Redfish()

    def validate(self, node: NodeInfo) -> None:
        parse_driver_info(node)
        if not self.agent_iso.is_file():
            raise DriverError(f"The agent ISO {self.agent_iso} does not exist: build it with "
                              f"scripts/build-agent-image or set [baremetal] agent_iso.")
        if self.boot_dir is None or self.boot_url is None:
            raise DriverError("There is nowhere to publish the per-node agent ISO for the BMC: set "
                              "[baremetal] transfer_path and webdav_bind or webdav_url (or agent_iso_url).")

    def iso_path(self, node: NodeInfo) -> Path:
        assert self.boot_dir is not None
        return self.boot_dir / f"{node.id}.iso"

    def iso_url(self, node: NodeInfo) -> str:
        return f"{self.boot_url}/{node.id}.iso"

    def prepare_ramdisk(self, node: NodeInfo, params: dict[str, str]) -> None:
        self.validate(node)
        system = self._redfish.system(node, "prepare the agent boot")
        path = self.iso_path(node)
        path.parent.mkdir(parents=True, exist_ok=True)
        remaster(self.agent_iso, path, params)
        url = self.iso_url(node)

        def attach() -> None:
            import sushy
            drives = cd_drives(system)
            if not drives:
                raise DriverError(f"No suitable virtual media device found on node {node.ident}: its BMC "
                                  f"offers no virtual CD/DVD drive.")
            for drive in drives:
                if drive.inserted or drive.image:
                    drive.eject_media()
            drives[0].insert_media(url, inserted=True, write_protected=True)
            system.set_system_boot_options(target=sushy.BootSource.CD,
                                           enabled=sushy.BootSourceOverrideEnabled.ONCE)
        Redfish.call(node, f"insert virtual media {url}", attach)

    def clean_up_ramdisk(self, node: NodeInfo) -> None:
        system = self._redfish.system(node, "clean up the agent boot")

        def detach() -> None:
            import sushy
            for drive in cd_drives(system):
                if drive.inserted or drive.image:
                    drive.eject_media()
            system.set_system_boot_options(target=sushy.BootSource.HDD,
                                           enabled=sushy.BootSourceOverrideEnabled.CONTINUOUS)
        Redfish.call(node, "eject virtual media", detach)
        if self.boot_dir is not None:
            self.iso_path(node).unlink(missing_ok=True)


def cd_drives(system: Any) -> list[Any]:
    """The system's virtual CD/DVD drives: its own VirtualMedia (Redfish 1.13+) first, else its
    managers' (as Ironic looks them up)."""
    import sushy
    from sushy import exceptions as sushy_errors
    wanted = {sushy.VirtualMediaType.CD, sushy.VirtualMediaType.DVD}
    collections = []
    try:
        collections.append(system.virtual_media)
    except (sushy_errors.MissingAttributeError, sushy_errors.ResourceNotFoundError):
        pass
    if not collections:
        collections = [manager.virtual_media for manager in system.managers]
    return [drive for coll in collections for drive in coll.get_members()
            if wanted & set(drive.media_types or ())]


# -- the per-node ISO ---------------------------------------------------------------------------
def rewrite_config(text: str, kind: str, params: dict[str, str]) -> str:
    """The boot configuration with ``params`` on every kernel line (replacing the same keys)."""
    extra = kernel_cmdline(params)
    keys = {str(k) for k in params}
    keyword = re.compile(r"^(\s*)(append)\b(.*)$" if kind == "isolinux" else r"^(\s*)(linux|linuxefi)\b(.*)$",
                         re.IGNORECASE)
    out = []
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        match = keyword.match(body)
        if match:
            indent, word, rest = match.groups()
            kept = [w for w in rest.split() if w.split("=", 1)[0] not in keys]
            body = " ".join([indent + word, *kept, extra]) if extra else " ".join([indent + word, *kept])
            line = body + line[len(line.rstrip("\r\n")):]
        out.append(line)
    return "".join(out)


def remaster(base: Path, out: Path, params: dict[str, str]) -> None:
    """Write ``out``: ``base`` with ``params`` added to its kernel lines, El Torito and hybrid
    boot records replayed. Atomic: a BMC downloading an older ``out`` keeps reading it."""
    xorriso = shutil.which("xorriso")
    if xorriso is None:
        raise DriverError("xorriso is not installed (apt-get install xorriso): the redfish-virtual-media "
                          "boot needs it to put the node's parameters into the agent ISO.")
    if not base.is_file():
        raise DriverError(f"The agent ISO {base} does not exist: build it with scripts/build-agent-image "
                          f"or set [baremetal] agent_iso.")
    kernel_cmdline(params)
    listed = _xorriso([xorriso, "-indev", str(base), "-find", "/", "-type", "f", "-name", "*.cfg"], base)
    configs = []
    for raw in listed.splitlines():
        path = raw.strip().strip("'")
        if _ISOLINUX.match(path):
            configs.append((path, "isolinux"))
        elif _GRUB.match(path):
            configs.append((path, "grub"))
    if not configs:
        raise DriverError(f"The agent ISO {base} has no boot configuration to carry the node's parameters "
                          f"(/isolinux/isolinux.cfg or /boot/grub/grub.cfg).")
    with tempfile.TemporaryDirectory(prefix=".remaster-", dir=out.parent) as tmp:
        work = Path(tmp)
        extract: list[str] = []
        for i, (path, _) in enumerate(configs):
            extract += ["-extract", path, str(work / f"{i}.cfg")]
        _xorriso([xorriso, "-osirrox", "on", "-indev", str(base), *extract], base)
        mapping: list[str] = []
        for i, (path, kind) in enumerate(configs):
            local = work / f"{i}.cfg"
            os.chmod(local, 0o644)        # extracted read-only, as on the ISO
            local.write_text(rewrite_config(local.read_text(errors="replace"), kind, params))
            mapping += ["-map", str(local), path]
        staged = work / "node.iso"
        _xorriso([xorriso, "-indev", str(base), "-outdev", str(staged), "-boot_image", "any", "replay",
                  *mapping, "-commit"], base)
        os.chmod(staged, 0o644)
        os.replace(staged, out)


def _xorriso(argv: list[str], base: Path) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise DriverError(f"Remastering the agent ISO {base} failed: {proc.stderr.strip()[-800:]}")
    return proc.stdout
