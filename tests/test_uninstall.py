"""``clawctl uninstall``: services stopped, disabled and removed (the calls recorded by a
stand-in ``systemctl``), ``--purge`` removing CLAW_HOME and the configured workspace and
logs and nothing else, and ``--remove-bin`` removing only clawfleet's commands (in a
throwaway bin directory, never the real virtualenv's)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.claw_home import ClawHome
from tests.fixtures.procs import pid_alive
from tests.fixtures.pty_session import PtySession
from tests.fixtures.systemd import SystemdStandIn

SERVICES = ["clawfleet-redis.service", "clawfleet-worker.service", "clawfleet-beat.service",
            "clawfleet-ingress.service"]  # fmt: skip
VENV_BIN = Path(sys.executable).absolute().parent


@pytest.fixture
def systemd(claw_home: ClawHome, tmp_path: Path) -> SystemdStandIn:
    claw_home.write_config({"gateway": {"token": "tok-5e1d"}})
    sd = SystemdStandIn(tmp_path / "sd", claw_home).install()
    assert sd.clawctl("gateway").returncode == 0
    sd.forget_calls()
    return sd


def test_uninstall_stops_disables_and_removes_units(systemd: SystemdStandIn) -> None:
    foreign = systemd.units / "other.service"
    foreign.write_text("[Service]\nExecStart=/bin/true\n")
    lookalike = systemd.units / "clawfleet-mine.service"  # a name like ours, not written by us
    lookalike.write_text("[Service]\nExecStart=/bin/true\n")

    result = systemd.clawctl("uninstall")
    assert result.returncode == 0, result.stderr
    assert systemd.calls() == [
        ["disable", "--now", *SERVICES, "clawfleet.target"],
        ["daemon-reload"],
    ]
    assert sorted(p.name for p in systemd.units.iterdir()) == ["clawfleet-mine.service",
                                                               "other.service"]  # fmt: skip
    assert "stopped and disabled" in result.stdout and "removed" in result.stdout
    # Without --purge the config, env file and workspace stay.
    home = systemd.home.path
    assert (home / "config.json").exists() and (home / "clawfleet.env").exists()

    again = systemd.clawctl("uninstall")
    assert again.returncode == 0 and "none installed" in again.stdout


def test_purge_yes_removes_claw_home_and_configured_dirs_only(
    systemd: SystemdStandIn, tmp_path: Path
) -> None:
    home = systemd.home.path
    workspace, logs, keep = tmp_path / "ws", tmp_path / "logs", tmp_path / "keep"
    for path in (workspace / "memory", logs, keep, home / "data", home / "cache"):
        path.mkdir(parents=True)
    (workspace / "memory" / "profile.md").write_text("me")
    (logs / "worker@h.log").write_text("{}")
    (keep / "precious.txt").write_text("stays")
    config = json.loads(systemd.home.config_file.read_text())
    config["agents"] = {"defaults": {"workspace": str(workspace)}}
    config["logging"] = {"dir": str(logs)}
    systemd.home.write_config(config)
    # An embedded Redis a CLI command left running on this CLAW_HOME's data.
    subprocess.run(
        [sys.executable, "-c", "from claw_worker.embedded_redis import ensure_embedded; "
         "ensure_embedded()"], env=systemd.env(), check=True, timeout=60,
    )  # fmt: skip
    redis_pid = int((home / "run" / "redis.pid").read_text())
    try:
        result = systemd.clawctl("uninstall", "--purge", "--yes")
        assert result.returncode == 0, result.stderr
        out = result.stdout
        assert f"CLAW_HOME {home}: " in out and "config.json" in out and "data/" in out
        assert f"the workspace directory {workspace} (it may be shared" in out
        assert "stopped the embedded Redis" in out
        assert not pid_alive(redis_pid)
        assert not home.exists() and not workspace.exists() and not logs.exists()
        assert (keep / "precious.txt").read_text() == "stays"
        assert systemd.calls()[0] == ["disable", "--now", *SERVICES, "clawfleet.target"]
    finally:
        if pid_alive(redis_pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(redis_pid, signal.SIGKILL)


def test_purge_answered_no_removes_nothing(systemd: SystemdStandIn) -> None:
    home = systemd.home.path
    before = sorted(p.name for p in home.iterdir())
    unit_files = sorted(p.name for p in systemd.units.iterdir())
    for stdin in ("n\n", None):  # piped input, and none at all: no terminal to ask on
        result = systemd.clawctl("uninstall", "--purge", stdin=stdin)
        assert result.returncode == 1
        assert "pass --yes to remove it (stdin is not a terminal" in result.stderr
        assert "Aborted" not in result.stderr
        assert (
            "--purge removes, for good:" in result.stdout and f"CLAW_HOME {home}" in result.stdout
        )
    # At a terminal: asked, and "n" is a clear no.
    argv = [sys.executable, "-m", "claw_worker.cli", "uninstall", "--purge"]
    with PtySession(argv, env=systemd.env(), cwd=home) as session:
        session.expect("Remove all of this? [y/N]: ")
        session.sendline("n")
        assert session.wait() == 1
        assert "not confirmed; nothing was changed" in session.transcript
        assert "Aborted" not in session.transcript
    assert sorted(p.name for p in home.iterdir()) == before
    assert sorted(p.name for p in systemd.units.iterdir()) == unit_files
    assert systemd.calls() == []


def test_purge_leaves_a_config_file_outside_claw_home(
    systemd: SystemdStandIn, tmp_path: Path
) -> None:
    outside = tmp_path / "etc" / "claw.json"
    outside.parent.mkdir()
    outside.write_text("{}")
    result = systemd.clawctl("--config", str(outside), "uninstall", "--purge", "--yes")
    assert result.returncode == 0, result.stderr
    assert f"left the config file {outside} (outside CLAW_HOME" in result.stdout
    assert outside.exists() and not systemd.home.path.exists()


def test_purge_refuses_homes_roots_and_parents(systemd: SystemdStandIn, tmp_path: Path) -> None:
    fake_home = tmp_path / "home" / "alice"
    (fake_home / "documents").mkdir(parents=True)
    home = systemd.home.path
    cases = [
        ({"agents": {"defaults": {"workspace": str(fake_home)}}}, "is the home directory"),
        (
            {"agents": {"defaults": {"workspace": str(fake_home.parent)}}},
            "holds the home directory",
        ),
        ({"logging": {"dir": "/"}}, "is the root directory"),
        ({"logging": {"dir": str(Path(sys.prefix).parent)}}, "holds this clawfleet install"),
        # (HOME is not under pytest's base directory here, so this one is about CLAW_HOME.)
        ({"logging": {"dir": str(home.parent)}}, "holds CLAW_HOME"),
    ]
    for config, reason in cases:
        env = systemd.env(HOME=str(fake_home if reason != "holds CLAW_HOME" else "/root"))
        systemd.home.write_config(config)
        # "n" as a second guard: a refusal must come before any question.
        result = systemd.clawctl("uninstall", "--purge", "--yes", stdin="n\n", env=env)
        assert result.returncode == 1 and reason in result.stderr, (config, result.stderr)
        assert "refusing to purge" in result.stderr
    claw_home_is_home = systemd.clawctl(
        "uninstall", "--purge", "--yes", stdin="n\n", env=systemd.env(HOME=str(home))
    )
    assert claw_home_is_home.returncode == 1
    assert (
        f"refusing to purge CLAW_HOME {home}: it is the home directory" in claw_home_is_home.stderr
    )
    assert (fake_home / "documents").is_dir() and (home / "config.json").exists()
    assert systemd.calls() == []  # refused before anything was done


def test_remove_bin_removes_only_clawfleet_scripts(systemd: SystemdStandIn, tmp_path: Path) -> None:
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "clawctl").write_text((VENV_BIN / "clawctl").read_text())
    (fake_bin / "claw-ingress").write_text("#!/bin/sh\necho someone else's claw-ingress\n")
    (fake_bin / "claw-node").symlink_to(VENV_BIN / "claw-node")
    (fake_bin / "celery").write_text((VENV_BIN / "celery").read_text())
    result = systemd.clawctl(
        "uninstall", "--remove-bin", env=systemd.env(CLAW_BIN_DIR=str(fake_bin))
    )
    assert result.returncode == 0, result.stderr
    assert not (fake_bin / "clawctl").exists()
    assert f"removed {fake_bin / 'clawctl'}" in result.stdout
    assert f"left {fake_bin / 'claw-ingress'}: not clawfleet's entry-point script" in result.stdout
    assert f"left {fake_bin / 'claw-node'}: not a regular file" in result.stdout
    assert (fake_bin / "claw-ingress").exists() and (fake_bin / "celery").exists()
    assert (VENV_BIN / "claw-node").exists() and (VENV_BIN / "clawctl").exists()
    assert "-m pip uninstall clawfleet" in result.stdout


def test_uninstall_without_systemd_removes_files_and_purges(systemd: SystemdStandIn) -> None:
    env = systemd.env(PATH=str(systemd.root / "empty"))
    result = systemd.clawctl("uninstall", "--purge", "--yes", env=env)
    assert result.returncode == 0, result.stderr
    assert "systemd is not available here: removing the unit files only" in result.stdout
    assert not any(systemd.units.iterdir()) and not systemd.home.path.exists()
    assert systemd.calls() == []


def test_a_failing_systemctl_is_one_line_and_the_rest_still_runs(systemd: SystemdStandIn) -> None:
    systemd.set_state(fail={"disable": "Failed to disable unit: Access denied"})
    result = systemd.clawctl("uninstall")
    assert result.returncode == 1
    assert "failed: Failed to disable unit: Access denied" in result.stderr
    assert "uninstall incomplete: 1 step(s) failed" in result.stderr
    assert not any(systemd.units.iterdir())
    assert systemd.calls()[-1] == ["daemon-reload"]
