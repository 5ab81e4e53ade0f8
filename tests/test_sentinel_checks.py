"""The Sentinel's checks of this host's files (beat_schedules/sentinel_checks.py): each finds
a fault made on purpose and, with auto_heal, repairs it and records the repair; without
auto_heal nothing is changed. ``check()`` runs in this process against the test's real
redis-server and real directories; tests/test_sentinel.py runs it through beat and a worker.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any

import redis

from beat_schedules.sentinel import check
from claw_worker import constants as k
from claw_worker.config import Config, load_config, logs_dir, workspace_dir
from claw_worker.workspace import create_missing, template
from tests.fixtures.log_dirs import age as aged
from tests.fixtures.log_dirs import snapshot, write_foreign_files, write_own_logs

KB = 1024


def prepare(fleet_factory: Any, **sentinel: Any) -> tuple[Any, Config, redis.Redis]:
    """A fleet config (not started) with these sentinel settings, its onboarded workspace,
    the live config as a worker would load it, and a client of the test's Redis."""
    settings = {"min_free_mb": 0, **sentinel}
    fleet = fleet_factory(**{f"sentinel__{name}": value for name, value in settings.items()})
    config = load_config(fleet.home.config_file)
    create_missing(workspace_dir(config))
    logs_dir(config).mkdir(parents=True)  # as a process logging there would have made it
    return fleet, config, fleet.redis.client()


def run(client: redis.Redis, config: Config) -> dict[str, Any]:
    """One Sentinel round; the report it stored, with its results by check name."""
    check(client, config)
    report = json.loads(client.get(k.SENTINEL_REPORT))
    report["by"] = {r["check"]: r for r in report["results"]}
    return report


def with_settings(config: Config, **sentinel: Any) -> Config:
    return config.model_copy(update={"sentinel": config.sentinel.model_copy(update=sentinel)})


# -- the host: workspace, logs, config, disk ---------------------------------------------------


def test_workspace_files_found_missing_and_recreated_from_the_templates(fleet_factory) -> None:
    _, config, r = prepare(fleet_factory, auto_heal=False)
    ws = workspace_dir(config)
    (ws / "AGENTS.md").unlink()
    shutil.rmtree(ws / "memory")
    (ws / "USER.md").write_text("my own notes\n")

    found = run(r, config)["by"]["workspace"]
    assert found["state"] == "fail" and found["healed"] == ""
    assert "memory/" in found["detail"] and "AGENTS.md" in found["detail"]
    assert not (ws / "AGENTS.md").exists() and not (ws / "memory").exists()  # nothing changed

    report = run(r, with_settings(config, auto_heal=True))
    found = report["by"]["workspace"]
    assert found["state"] == "fail" and found["healed"] == "recreated memory/, AGENTS.md"
    assert report["actions"] == ["workspace: recreated memory/, AGENTS.md"]
    assert (ws / "AGENTS.md").read_text() == template("AGENTS.md") and (ws / "memory").is_dir()
    assert (ws / "USER.md").read_text() == "my own notes\n"  # an existing file is never rewritten
    assert run(r, config)["by"]["workspace"]["state"] == "ok"

    shutil.rmtree(ws)  # the whole workspace
    found = run(r, with_settings(config, auto_heal=True))["by"]["workspace"]
    assert found["detail"] == f"{ws} is missing" and "AGENTS.md" in found["healed"]
    assert run(r, config)["by"]["workspace"]["state"] == "ok"


def test_logs_over_the_limit_lose_their_oldest_rotated_files_never_a_live_or_foreign_one(
    fleet_factory, tmp_path
) -> None:
    """Only clawfleet's own files count and are pruned: before, a shared logs directory
    lost syslog's rotations and a symlink named like a rotation, oldest first."""
    _, config, r = prepare(fleet_factory, auto_heal=False, logs_max_mb=1)
    logs, elsewhere = logs_dir(config), tmp_path / "elsewhere"
    files = {"w1.log": 600, "w1.log.1": 400, "w1.log.2": 400, "w1.log.3": 400, "beat.log": 10}
    write_own_logs(logs, files)
    for age, name in enumerate(reversed(files)):  # w1.log.3 is the oldest
        os.utime(logs / name, (time.time() - 1000 + age, time.time() - 1000 + age))
    (logs / "notes.txt").write_bytes(b"x" * 10 * KB)  # not a log: never touched
    write_foreign_files(logs, elsewhere, kb=300)
    foreign = sorted(set(os.listdir(logs)) - set(files))
    aged([logs / name for name in foreign], days=30)  # older than any of ours
    before = snapshot(logs, elsewhere)

    found = run(r, config)["by"]["logs"]
    assert found["state"] == "warn" and "over 1 MB" in found["detail"] and found["healed"] == ""
    assert snapshot(logs, elsewhere) == before

    found = run(r, with_settings(config, auto_heal=True))["by"]["logs"]
    assert found["state"] == "warn" and found["healed"].startswith("pruned 2 rotated log file(s)")
    assert sorted(os.listdir(logs)) == sorted(["beat.log", "w1.log", "w1.log.1", *foreign])
    assert all(before[path] == content for path, content in snapshot(logs, elsewhere).items())
    assert run(r, config)["by"]["logs"]["state"] == "ok"

    # Only live files over the limit: nothing may go.
    write_own_logs(logs, {"w1.log": 1200})
    (logs / "w1.log.1").unlink()
    size = (logs / "w1.log").stat().st_size
    found = run(r, with_settings(config, auto_heal=True))["by"]["logs"]
    assert found["state"] == "warn" and "no rotated file to prune" in found["detail"]
    assert (logs / "w1.log").stat().st_size == size

    shutil.rmtree(logs)  # processes could not reopen their files
    logs.write_text("a file in its place")
    found = run(r, with_settings(config, auto_heal=True))["by"]["logs"]
    assert found["state"] == "fail" and "not a directory" in found["detail"] and logs.is_file()
    logs.unlink()
    assert run(r, config)["by"]["logs"]["state"] == "fail" and not logs.exists()
    found = run(r, with_settings(config, auto_heal=True))["by"]["logs"]
    assert found["healed"] == f"recreated {logs}" and logs.is_dir()


def test_a_broken_or_changed_config_file_is_reported_and_left_alone(fleet_factory) -> None:
    fleet, config, r = prepare(fleet_factory)
    assert run(r, config)["by"]["config"]["state"] == "ok"

    data = json.loads(fleet.home.config_file.read_text())
    data["gateway"]["port"] += 1
    fleet.home.write_config(data)
    assert run(r, config)["by"]["config"]["state"] == "ok"  # maybe being reloaded right now
    old = time.time() - 120
    os.utime(fleet.home.config_file, (old, old))
    found = run(r, config)["by"]["config"]
    assert found["state"] == "warn" and "clawctl config reload" in found["detail"]

    data["gateway"]["port"] -= 1
    data["sentinel"].update(notify_channel="telegram", notify_chat_id="42")
    fleet.home.write_config(data)
    found = run(r, load_config(fleet.home.config_file))["by"]["config"]
    assert found["state"] == "warn" and "telegram, which is not enabled" in found["detail"]

    fleet.home.config_file.write_text('{"gateway": {"port": "not a number"}}')
    found = run(r, config)["by"]["config"]
    assert found["state"] == "fail" and str(fleet.home.config_file) in found["detail"]
    assert "gateway.port" in found["detail"] and found["healed"] == ""
    assert fleet.home.config_file.read_text() == '{"gateway": {"port": "not a number"}}'


def test_free_disk_warns_under_the_minimum_and_fails_under_half(fleet_factory) -> None:
    fleet, config, r = prepare(fleet_factory)
    free_mb = shutil.disk_usage(fleet.home.path).free // (1024 * 1024)
    assert run(r, config)["by"]["disk"]["state"] == "ok"  # min_free_mb 0
    found = run(r, with_settings(config, min_free_mb=int(free_mb * 1.5) + 1))["by"]["disk"]
    assert found["state"] == "warn" and "workspace/logs/home" in found["detail"]
    found = run(r, with_settings(config, min_free_mb=free_mb * 3 + 10))["by"]["disk"]
    assert found["state"] == "fail" and "under half" in found["detail"]
