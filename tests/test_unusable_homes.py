"""Directories clawfleet cannot use: a CLAW_HOME it cannot create, one too long for the
embedded Redis's unix socket, a ``logging.dir`` it cannot create. Each is named with the
setting to change, before anything starts (so no "stopping" of a fleet that never ran),
with a non-zero exit and no traceback (ClawHome.clawctl asserts that)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.fixtures.claw_home import ClawHome
from tests.fixtures.procs import free_port

UNCREATABLE = "/proc/clawfleet-nope"  # /proc takes no new directories, even from root


def clawctl(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``clawctl`` with CLAW_HOME=``home``, run elsewhere (``home`` may not exist)."""
    result = subprocess.run(
        [sys.executable, "-m", "claw_worker.cli", *args],
        stdin=subprocess.DEVNULL,
        env=ClawHome(home).env(),
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def test_gateway_run_with_an_unusable_logging_dir_names_it(claw_home: ClawHome) -> None:
    claw_home.write_config(
        {"gateway": {"port": free_port()}, "logging": {"dir": f"{UNCREATABLE}/logs"}}
    )
    result = claw_home.clawctl("gateway", "run")
    assert result.returncode == 1
    assert f"logging.dir: cannot create the log directory {UNCREATABLE}/logs" in result.stderr
    assert "set logging.dir to a directory this host can create and write" in result.stderr
    assert "stopping" not in result.stdout and "stopped" not in result.stdout
    assert not (claw_home.path / "run" / "redis.sock").exists()


def test_an_uncreatable_claw_home_is_named() -> None:
    for command in (("onboard",), ("gateway", "run")):
        result = clawctl(Path(UNCREATABLE), *command)
        assert result.returncode == 1, command
        assert f"CLAW_HOME {UNCREATABLE}" in result.stderr or (
            f"CLAW_HOME is {UNCREATABLE}" in result.stderr
        ), result.stderr
        assert "set CLAW_HOME to a directory you can write" in result.stderr
        assert "stopping" not in result.stdout


def test_a_claw_home_too_long_for_the_redis_socket_is_named(tmp_path: Path) -> None:
    long_home = tmp_path / ("h" * (120 - len(str(tmp_path))))
    home = ClawHome(long_home)
    result = clawctl(long_home, "onboard")
    assert result.returncode == 1
    assert "CLAW_HOME is too long for the embedded Redis" in result.stderr
    assert "limited to 107" in result.stderr and "Nothing was created" in result.stderr
    assert not long_home.exists()

    long_home.mkdir()
    home.write_config({"providers": {"proxy": {"api_base": "http://127.0.0.1:9/v1"}}})
    for command in (("agent", "-m", "hi"), ("gateway", "run")):
        result = home.clawctl(*command)
        assert result.returncode == 1, command
        assert "CLAW_HOME is too long for the embedded Redis" in result.stderr, result.stderr
        assert "redis.log" not in result.stderr and "# " not in result.stderr  # no server log
        assert "stopping" not in result.stdout
    # With a Redis of its own configured, a long CLAW_HOME is fine.
    home.write_config({"redis": {"url": "redis://127.0.0.1:9/0"}})
    ok = home.clawctl("onboard")
    assert ok.returncode == 0, ok.stderr
