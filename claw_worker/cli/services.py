"""The systemd units of the fleet, as text: what ``clawctl gateway`` writes.

One service per process (``clawfleet-ingress``, ``clawfleet-worker`` or the template
``clawfleet-worker@`` for several workers, ``clawfleet-beat``, ``clawfleet-flower`` on
request, ``clawfleet-redis`` when ``redis.url`` is empty), each ``PartOf`` and wanted by
``clawfleet.target``, whose ``Wants=`` is also the list of what is installed. The commands
are the plain ones with this install's absolute paths; secrets come only from the
environment file (``EnvironmentFile=``, mode 0600), never from a unit.
"""

from __future__ import annotations

import grp
import os
import pwd
import sys
from dataclasses import dataclass
from pathlib import Path

from claw_worker.cli._common import CliError
from claw_worker.cli._systemd import MARKER, PREFIX, TARGET, Systemd
from claw_worker.config.jsontext import is_text

REDIS_UNIT = f"{PREFIX}-redis.service"
ROLES = ("redis", "worker", "beat", "ingress", "flower")  # start order
SECRET_FOR_FLOWER = "FLOWER_BASIC_AUTH"
RESTART_SEC = 5
STOP_SEC = {"worker": 60, "redis": 30}  # the worker: time for Celery's warm shutdown
DEFAULT_STOP_SEC = 30
TMP_DIRS = (Path("/tmp"), Path("/var/tmp"))


@dataclass(frozen=True)
class Account:
    """Who the system units run as."""

    user: str
    group: str
    uid: int
    gid: int
    home: Path


@dataclass(frozen=True)
class Layout:
    """The paths the units name."""

    home: Path  # CLAW_HOME
    config: Path
    env_file: Path
    workspace: Path
    logs: Path
    python: Path
    bindir: Path


@dataclass(frozen=True)
class Options:
    flower: bool = False
    flower_port: int = 5555
    workers: int = 1
    embedded_redis: bool = True


@dataclass(frozen=True)
class Unit:
    name: str
    text: str


def service_account() -> Account:
    """The invoking user: SUDO_USER under sudo, else whoever runs this."""
    uid = os.geteuid()
    sudo_user = os.environ.get("SUDO_USER", "") if uid == 0 else ""
    try:
        pw = pwd.getpwnam(sudo_user) if sudo_user else pwd.getpwuid(uid)
    except KeyError:
        raise CliError(f"SUDO_USER is {sudo_user!r}, which is not a user on this host") from None
    try:
        group = grp.getgrgid(pw.pw_gid).gr_name
    except KeyError:
        group = str(pw.pw_gid)
    return Account(pw.pw_name, group, pw.pw_uid, pw.pw_gid, Path(pw.pw_dir))


def this_install() -> tuple[Path, Path]:
    """This install's Python and the directory of its commands (claw-ingress, celery)."""
    python = Path(sys.executable).absolute()
    return python, python.parent


def unit_value(path: Path, what: str) -> str:
    """``path`` as a unit file may hold it, or a clear error."""
    text = str(path)
    if not path.is_absolute():
        raise CliError(f"{what} must be an absolute path, not {text!r}")
    if not is_text(text) or any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise CliError(
            f"{what} {text.encode('utf-8', 'surrogateescape')!r} holds control characters "
            "or bytes that are not UTF-8, which a unit file cannot hold; use another path"
        )
    return text.replace("%", "%%")


def word(value: str, *, command: bool = False) -> str:
    """One word of an ``ExecStart=`` or ``Environment=`` line, quoted as systemd reads it."""
    if command:
        value = value.replace("$", "$$")
    if value and not any(c.isspace() or c in "\"'\\;" for c in value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(sd: Systemd, layout: Layout, options: Options, account: Account | None) -> list[Unit]:
    """Every file of the fleet: the services in start order, then the target."""
    system = not sd.user
    workers = (
        [f"{PREFIX}-worker.service"]
        if options.workers == 1
        else [f"{PREFIX}-worker@{i}.service" for i in range(1, options.workers + 1)]
    )
    redis_deps = [REDIS_UNIT] if options.embedded_redis else []
    network = ["network-online.target"] if system else []
    # A Redis on this host (Debian: redis-server.service): ordering only, never pulled in.
    local_redis = ["redis-server.service", "redis.service"] if system and not redis_deps else []
    ctx = _Context(layout, account if system else None, _private_tmp(layout) and system)

    units: list[Unit] = []
    if options.embedded_redis:
        units.append(ctx.service(
            "redis", "clawfleet embedded Redis (redis.url is empty)", after=[], wants=[],
            exec_start=[str(layout.python), "-m", "claw_worker.cli._redis_unit", "serve"],
            extra=[f"ExecStartPost={ctx.command([str(layout.python), '-m', 'claw_worker.cli._redis_unit', 'wait'])}",
                   "TimeoutStartSec=45"],
        ))  # fmt: skip
    deps = network + redis_deps
    celery = _command(layout, "celery", "celery")
    worker_name = "worker" if options.workers == 1 else "worker@"
    units.append(ctx.service(
        worker_name, "clawfleet worker" + (" %i" if options.workers > 1 else "") + " (Celery: agent runs)",
        after=deps + local_redis, wants=deps, exec_start=[*celery, "-A", "claw_worker", "worker"],
        extra=["KillMode=mixed", *(["LimitNOFILE=65536"] if system else [])],
        node="worker%i@%H" if options.workers > 1 else "worker@%H",
    ))  # fmt: skip
    units.append(ctx.service(
        "beat", "clawfleet beat (Celery beat on RedBeat: the schedules)",
        after=deps + local_redis, wants=deps, exec_start=[*celery, "-A", "claw_worker", "beat"],
    ))  # fmt: skip
    # After the workers: on a stop the ingress goes first, so nothing new arrives.
    units.append(ctx.service(
        "ingress", "clawfleet ingress (HTTP API and chat channels)",
        after=deps + local_redis + workers, wants=deps,
        exec_start=_command(layout, "claw-ingress", "claw_ingress"),
        extra=["LimitNOFILE=65536"] if system else [],
    ))  # fmt: skip
    if options.flower:
        guard = f'test -n "$${{{SECRET_FOR_FLOWER}}}"'
        units.append(ctx.service(
            "flower", "clawfleet Flower (task monitor, password protected)",
            after=deps + local_redis, wants=deps,
            exec_start=[*celery, "-A", "claw_worker", "flower", "--address=127.0.0.1",
                        f"--port={options.flower_port}"],
            # Flower can revoke tasks and stop workers: never without its password.
            extra=[f"ExecStartPre=/bin/sh -c '{guard}'"], keep_flower_auth=True,
        ))  # fmt: skip

    services = [*redis_deps, *workers, f"{PREFIX}-beat.service", f"{PREFIX}-ingress.service"]
    services += [f"{PREFIX}-flower.service"] if options.flower else []
    wanted_by = "default.target" if sd.user else "multi-user.target"
    target = _file(
        "clawfleet: ingress, workers and beat",
        [f"Wants={' '.join(services)}"],
        [],
        wanted_by,
        what="the target (its Wants= lists the installed services)",
    )
    return [*units, Unit(TARGET, target)]


def unit_names(units: list[Unit]) -> list[str]:
    return [unit.name for unit in units]


@dataclass(frozen=True)
class _Context:
    layout: Layout
    account: Account | None  # system units: User=/Group= and hardening
    private_tmp: bool

    def command(self, args: list[str]) -> str:
        return " ".join(word(arg.replace("%", "%%"), command=True) for arg in args)

    def service(
        self,
        role: str,
        description: str,
        *,
        after: list[str],
        wants: list[str],
        exec_start: list[str],
        extra: list[str] | None = None,
        node: str | None = None,
        keep_flower_auth: bool = False,
    ) -> Unit:
        lo = self.layout
        unit = [f"After={' '.join(after)}"] if after else []
        unit += [f"Wants={' '.join(wants)}"] if wants else []
        unit.append(f"PartOf={TARGET}")
        env = [
            word(f"CLAW_HOME={unit_value(lo.home, 'CLAW_HOME')}"),
            word(f"CLAW_CONFIG={unit_value(lo.config, 'the config file')}"),
            f"CLAW_NODE_NAME={node or role + '@%H'}",
            "PYTHONUNBUFFERED=1",
        ]
        service = ["Type=simple"]
        if self.account is not None:
            service += [f"User={self.account.user}", f"Group={self.account.group}"]
        service += [
            f"WorkingDirectory={unit_value(lo.home, 'CLAW_HOME')}",
            f"EnvironmentFile=-{unit_value(lo.env_file, 'the environment file')}",
            f"Environment={' '.join(env)}",
        ]
        if not keep_flower_auth:
            service.append(f"UnsetEnvironment={SECRET_FOR_FLOWER}")
        service += [
            f"ExecStart={self.command(exec_start)}",
            *(extra or []),
            "Restart=on-failure",
            f"RestartSec={RESTART_SEC}",
            f"TimeoutStopSec={STOP_SEC.get(role.rstrip('@'), DEFAULT_STOP_SEC)}",
            f"SyslogIdentifier={PREFIX}-{role.rstrip('@')}",
        ]
        if self.account is not None:
            service += self.hardening()
        name = f"{PREFIX}-{role}.service"
        return Unit(name, _file(description, unit, service, TARGET, what=name))

    def hardening(self) -> list[str]:
        """Keeps the OS read-only (/usr, /boot, /etc) and the process from gaining
        privileges; the service user's own files stay writable, as the agent's exec tool
        needs (git, caches in ~). ``ProtectSystem=strict`` would make all of them read-only."""
        lo = self.layout
        lines = [
            "NoNewPrivileges=yes",
            *(["PrivateTmp=yes"] if self.private_tmp else []),
            "ProtectSystem=full",
            "ProtectKernelTunables=yes",
            "ProtectKernelModules=yes",
            "ProtectControlGroups=yes",
        ]
        paths = [lo.home, lo.config.parent, lo.workspace, lo.logs]
        for path in dict.fromkeys(paths):
            lines.append(f"ReadWritePaths={word('-' + unit_value(path, 'a data path'))}")
        return lines


def _file(
    description: str, unit: list[str], service: list[str], wanted_by: str, *, what: str
) -> str:
    lines = [
        f"{MARKER}: {what}; the next run overwrites changes.",
        "# Secrets belong in the EnvironmentFile (mode 0600), never in this file.",
        "",
        "[Unit]",
        f"Description={description}",
        *unit,
    ]
    if service:
        lines += ["", "[Service]", *service]
    lines += ["", "[Install]", f"WantedBy={wanted_by}", ""]
    return "\n".join(lines)


def _command(layout: Layout, script: str, module: str) -> list[str]:
    """This install's ``script``, else ``python -m module``."""
    path = layout.bindir / script
    if path.is_file() and os.access(path, os.X_OK):
        return [str(path)]
    return [str(layout.python), "-m", module]


def _private_tmp(layout: Layout) -> bool:
    """A private /tmp would hide data kept under /tmp (a test's CLAW_HOME) from the units."""
    paths = (layout.home, layout.config, layout.workspace, layout.logs, layout.env_file)
    return not any(tmp == p or tmp in p.parents for p in paths for tmp in TMP_DIRS)
