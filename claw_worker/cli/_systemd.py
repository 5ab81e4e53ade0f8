"""Talking to systemd: where unit files go, whether systemd runs here, ``systemctl`` calls.

User units (``systemctl --user``, ``~/.config/systemd/user``) when not root, system units
(``/etc/systemd/system``) when root. For tests and unusual hosts: ``CLAW_SYSTEMD_SCOPE``
(``user`` or ``system``) picks the scope, ``CLAW_SYSTEMD_DIR`` the unit directory, and
``CLAW_SYSTEMD_PROBE`` the directory whose presence means systemd is the init system
(``/run/systemd/system``, as sd_booted() checks); ``systemctl`` is whatever is on PATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from claw_worker.cli._common import CliError

ENV_SCOPE = "CLAW_SYSTEMD_SCOPE"
ENV_DIR = "CLAW_SYSTEMD_DIR"
ENV_PROBE = "CLAW_SYSTEMD_PROBE"
SYSTEM_DIR = Path("/etc/systemd/system")
BOOTED_PROBE = Path("/run/systemd/system")

PREFIX = "clawfleet"
TARGET = f"{PREFIX}.target"
# The first line of every file `clawctl gateway` writes: only such files are ever
# rewritten or removed.
MARKER = "# Written by `clawctl gateway` (clawfleet)"

NOT_AVAILABLE = (
    "systemd is not available here: run the fleet with `clawctl gateway run`, "
    "or with Docker compose (see compose.yaml)"
)
# A stop waits for the worker's graceful shutdown (TimeoutStopSec=60) and more.
SYSTEMCTL_TIMEOUT_SEC = 180.0


def scope() -> str:
    chosen = os.environ.get(ENV_SCOPE, "")
    if chosen in ("user", "system"):
        return chosen
    if chosen:
        raise CliError(f"{ENV_SCOPE} must be `user` or `system`, not {chosen!r}")
    return "system" if os.geteuid() == 0 else "user"


def unit_dir(which: str) -> Path:
    override = os.environ.get(ENV_DIR)
    if override:
        return Path(override).expanduser().absolute()
    if which == "system":
        return SYSTEM_DIR
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home) / "systemd" / "user"


def available() -> bool:
    probe = Path(os.environ.get(ENV_PROBE) or BOOTED_PROBE)
    return shutil.which("systemctl") is not None and probe.is_dir()


@dataclass(frozen=True)
class Systemd:
    scope: str  # "user" or "system"
    dir: Path

    @classmethod
    def here(cls, *, require: bool = True) -> Systemd:
        """This host's systemd (``require``: or the one-line "not available" error)."""
        if require and not available():
            raise CliError(NOT_AVAILABLE)
        which = scope()
        return cls(which, unit_dir(which))

    @property
    def user(self) -> bool:
        return self.scope == "user"

    def journal_hint(self, unit: str) -> str:
        return f"journalctl {'--user ' if self.user else ''}-u {unit}"

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``systemctl [--user] ARGS``; a failure (with ``check``) is one-line CliError."""
        argv = ["systemctl", *(["--user"] if self.user else []), *args]
        try:
            result = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=SYSTEMCTL_TIMEOUT_SEC,
            )
        except FileNotFoundError:
            raise CliError(NOT_AVAILABLE) from None
        except subprocess.TimeoutExpired:
            raise CliError(f"`{' '.join(argv)}` did not finish within "
                           f"{SYSTEMCTL_TIMEOUT_SEC:.0f} s") from None  # fmt: skip
        if check and result.returncode != 0:
            raise CliError(self.failure(argv, result))
        return result

    def failure(self, argv: list[str], result: subprocess.CompletedProcess[str]) -> str:
        lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit status {result.returncode}"
        message = f"`{' '.join(argv)}` failed: {reason}"
        if self.user and "bus" in reason.lower():
            message += (
                " (no user service manager in this session: log in as this user directly, "
                "not through su, or install system units as root)"
            )
        return message

    # -- the installed units ----------------------------------------------------------
    def ours(self) -> list[Path]:
        """Files in the unit directory that `clawctl gateway` wrote."""
        if not self.dir.is_dir():
            return []
        found = []
        for path in sorted(self.dir.glob(f"{PREFIX}*")):
            if path.suffix in (".service", ".target") and is_ours(path):
                found.append(path)
        return found

    def installed_units(self) -> list[str]:
        """The services of the installed fleet, as the target lists them (a worker template
        expands to its instances), in start order; [] when not installed."""
        target = self.dir / TARGET
        if not is_ours(target):
            return []
        units: list[str] = []
        for line in target.read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "Wants":
                units.extend(value.split())
        return units

    def states(self, units: list[str]) -> dict[str, dict[str, str]]:
        """Each unit's ActiveState, SubState and MainPID, from ``systemctl show``."""
        result = self.run("show", "-p", "Id,ActiveState,SubState,MainPID", *units)
        states: dict[str, dict[str, str]] = {}
        block: dict[str, str] = {}
        for line in [*result.stdout.splitlines(), ""]:
            if not line.strip():
                if block.get("Id"):
                    states[block["Id"]] = block
                block = {}
                continue
            key, _, value = line.partition("=")
            block[key.strip()] = value.strip()
        return states


def is_ours(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.readline().startswith(MARKER)
    except OSError:
        return False
