"""``clawctl gateway`` (install): write the units, the environment file, enable and start.

Re-running is idempotent: unchanged units are not rewritten and systemd is not reloaded;
changed ones are rewritten atomically, systemd reloaded and the running ones restarted;
units no longer wanted (Flower dropped, fewer workers) are stopped, disabled and removed.
"""

from __future__ import annotations

import os
import pwd
import re
import stat
from pathlib import Path

import click

from claw_worker.cli._common import CliError, current_path, load
from claw_worker.cli._systemd import TARGET, Systemd, is_ours
from claw_worker.cli.services import (
    SECRET_FOR_FLOWER,
    Account,
    Layout,
    Options,
    Unit,
    render,
    service_account,
    this_install,
)
from claw_worker.config.paths import ENV_HOME, claw_home, logs_dir, workspace_dir
from claw_worker.fsutil import atomic_write_bytes

ENV_FILE_NAME = "clawfleet.env"
ENV_TEMPLATE = """\
# Secrets for the clawfleet services: systemd reads this file (EnvironmentFile=) and it
# must stay mode 0600. One NAME=value per line; lines starting with # are ignored.
# After a change: clawctl gateway restart
#
# The LLM endpoint's key (else providers.proxy.api_key from the config):
#CLAW_API_KEY=
# The bearer token of /api/*, /v1/* and the node endpoints (else gateway.token):
#CLAW_GATEWAY_TOKEN=
# A Redis URL with a password, rather than in redis.url:
#CLAW_REDIS_URL=redis://:PASSWORD@redis.internal:6379/0
# Flower's login, user:password (`clawctl gateway --flower` needs it):
#FLOWER_BASIC_AUTH=
"""


def env_file_path() -> Path:
    return claw_home().absolute() / ENV_FILE_NAME


def adopt_sudo_home(account: Account) -> str | None:
    """Under sudo, without CLAW_HOME set, use the invoking user's ~/.claw (the units run as
    that user), not root's."""
    if os.geteuid() != 0 or account.uid == 0 or os.environ.get(ENV_HOME):
        return None
    os.environ[ENV_HOME] = str(account.home / ".claw")
    return (
        f"run with sudo: using {account.user}'s CLAW_HOME {os.environ[ENV_HOME]} "
        "(set CLAW_HOME to choose another)"
    )


def install(*, flower: bool, flower_port: int, workers: int) -> None:
    sd = Systemd.here()
    account = None if sd.user else service_account()
    if account is not None:
        note = adopt_sudo_home(account)
        if note:
            click.echo(note)
    config = load()
    config_file = current_path()
    if not config_file.is_file():
        raise CliError(
            f"no config file at {config_file}: run `clawctl onboard` first (or pass --config)"
        )
    python, bindir = this_install()
    home = claw_home().absolute()
    layout = Layout(
        home=home,
        config=config_file.absolute(),
        env_file=env_file_path(),
        workspace=workspace_dir(config).absolute(),
        logs=logs_dir(config).absolute(),
        python=python,
        bindir=bindir,
    )
    options = Options(flower, flower_port, workers, embedded_redis=not config.redis.url)
    units = render(sd, layout, options, account)  # refuses unusable paths before any write
    if account is not None and account.uid == 0:
        click.echo(
            "warning: the services will run as root, which is discouraged: the agent's exec "
            "tool would run commands as root. Run `sudo clawctl gateway` from the user who "
            "should own the fleet instead."
        )
    if account is not None and "PrivateTmp=yes" not in units[0].text:
        click.echo("note: PrivateTmp is off: the fleet's files are under /tmp or /var/tmp")
    for path in (home, layout.logs):
        _make_dir(path, account)
    click.echo(f"env file  {layout.env_file} ({ensure_env_file(layout.env_file, account)})")
    if flower and not _flower_auth(layout.env_file):
        raise CliError(
            f"Flower never runs without a password: put {SECRET_FOR_FLOWER}=user:password "
            f"in {layout.env_file}, then run `clawctl gateway --flower` again"
        )
    apply(sd, units)
    if sd.user:
        user = _login_name()
        if not Path("/var/lib/systemd/linger", user).exists():
            click.echo(
                f"To keep them running after you log out, and start them at boot: "
                f"`loginctl enable-linger {user}`"
            )


def _login_name() -> str:
    """This user's name for loginctl (its uid when the account has no name, as in some
    containers; loginctl takes either)."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def apply(sd: Systemd, units: list[Unit]) -> None:
    """Write what changed, drop what is no longer wanted, reload, enable and start."""
    for unit in units:
        path = sd.dir / unit.name
        if path.exists() and not is_ours(path):
            raise CliError(
                f"{path} exists and was not written by `clawctl gateway`; move it away first"
            )
    old_services = sd.installed_units()
    new_services = _wanted(units)
    stale_services = [name for name in old_services if name not in new_services]
    stale_files = [p for p in sd.ours() if p.name not in {u.name for u in units}]
    changed = [u for u in units if _content(sd.dir / u.name) != u.text]

    if stale_services:
        sd.run("disable", "--now", *stale_services)
        click.echo(f"stopped and disabled {', '.join(stale_services)}")
    sd.dir.mkdir(parents=True, exist_ok=True)
    for unit in changed:
        atomic_write_bytes(sd.dir / unit.name, unit.text.encode("utf-8"), 0o644)
        click.echo(f"wrote     {sd.dir / unit.name}")
    for path in stale_files:
        path.unlink(missing_ok=True)
        click.echo(f"removed   {path}")
    if len(changed) < len(units):
        click.echo(f"unchanged {len(units) - len(changed)} unit files in {sd.dir}")
    if changed or stale_files:
        sd.run("daemon-reload")
    sd.run("enable", "--now", TARGET, *new_services)
    click.echo(f"enabled and started {', '.join(new_services)}")
    # A running service keeps its old unit until restarted.
    changed_names = {u.name for u in changed}
    restart = [s for s in new_services if s in old_services and _file_of(s) in changed_names]
    if restart:
        sd.run("try-restart", *restart)
        click.echo(f"restarted {', '.join(restart)} (their units changed)")
    click.echo("See them with `clawctl gateway status`.")


def ensure_env_file(path: Path, account: Account | None) -> str:
    """Create the environment file (0600, commented examples) or tighten its mode."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        atomic_write_bytes(path, ENV_TEMPLATE.encode("utf-8"), 0o600)
        _own(path, account)
        return "created, mode 600: put secrets here"
    if not stat.S_ISREG(st.st_mode):
        raise CliError(f"{path} must be a regular file (it holds the services' secrets)")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        path.chmod(0o600)
        return f"kept, permissions tightened from {mode:o} to 600"
    return "kept"


def env_value(path: Path, name: str) -> str:
    """The value of ``name`` in an environment file ('' when unset); never printed."""
    value = ""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    for line in text.splitlines():
        key, sep, rest = line.strip().partition("=")
        if sep and key.strip() == name:
            value = rest.strip().strip("\"'")
    return value


def _flower_auth(path: Path) -> bool:
    users = [entry.partition(":") for entry in env_value(path, SECRET_FOR_FLOWER).split(",")]
    return all(user and sep and password for user, sep, password in users)


def _wanted(units: list[Unit]) -> list[str]:
    target = next(u for u in units if u.name == TARGET)
    match = re.search(r"^Wants=(.*)$", target.text, re.M)
    return match.group(1).split() if match else []


def _file_of(service: str) -> str:
    """The unit file of a service: an instance's template."""
    return re.sub(r"@[^.]+\.service$", "@.service", service)


def _content(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (FileNotFoundError, UnicodeDecodeError):
        return None


def _make_dir(path: Path, account: Account | None) -> None:
    if path.is_dir():
        if account is not None and path.stat().st_uid != account.uid:
            click.echo(f"warning: {path} is not owned by {account.user}, who runs the services")
        return
    path.mkdir(parents=True, mode=0o700)
    _own(path, account)


def _own(path: Path, account: Account | None) -> None:
    """Files made for another user (root installing for SUDO_USER) are given to them."""
    if account is not None and account.uid != os.geteuid():
        os.chown(path, account.uid, account.gid)
