"""``clawctl skills install owner/repo/path@ref`` against a loopback server speaking codeload's
URL shape: a good archive installs whole; hostile and broken ones are refused with one clear
line and leave ``skills/`` exactly as it was, with no temporary directory behind."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from claw_worker.skills.catalog import SkillError, find, skills_root
from claw_worker.skills.installer import install_builtin, remove
from tests.campaign import record
from tests.codeload_server import COMMIT, CodeloadServer, archive
from tests.fixtures.claw_home import ClawHome

GOOD_MD = """---
name: hello
description: Say hello to someone by name.
metadata: {"openclaw": {"requires": {"bins": ["sh"]}}}
---

# hello

Run `skill_exec name=hello script=run.sh args=["NAME"]`.
"""
RUN_SH = '#!/bin/sh\necho "hello $1"\n'


def good_entries(name: str = "hello", md: str = GOOD_MD) -> list[tuple[Any, ...]]:
    return [
        ("dir", ""),
        ("file", "README.md", "the repository's readme"),
        ("dir", "skills"),
        ("dir", f"skills/{name}"),
        ("file", f"skills/{name}/SKILL.md", md),
        ("dir", f"skills/{name}/scripts"),
        ("file", f"skills/{name}/scripts/run.sh", RUN_SH, 0o755),
        ("symlink", f"skills/{name}/scripts/again.sh", "run.sh"),
        ("file", "skills/other/SKILL.md", GOOD_MD.replace("hello", "other")),
    ]


@pytest.fixture
def home(claw_home: ClawHome, codeload: CodeloadServer) -> ClawHome:
    claw_home.write_config({"skills": {"archive_base": codeload.url}})
    (claw_home.workspace / "skills").mkdir(parents=True)
    return claw_home


def tree(root: Path) -> dict[str, str]:
    """Every path under ``root`` (dot-directories included) with its content or link."""
    found = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            found[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            found[rel] = path.read_text(errors="replace")
        else:
            found[rel] = "/"
    return found


def refused(home: ClawHome, spec: str, *words: str) -> str:
    before = tree(home.workspace / "skills")
    result = home.clawctl("skills", "install", spec)
    assert result.returncode == 1, result.stdout
    line = result.stderr.strip()
    assert line.startswith("Error: ") and "\n" not in line, result.stderr
    for word in words:
        assert word in line, line
    assert tree(home.workspace / "skills") == before
    return line


def test_installs_the_skill_at_the_path_whole(home: ClawHome, codeload: CodeloadServer) -> None:
    codeload.add("acme", "skills-repo", "v1.2", good_entries())
    result = home.clawctl("skills", "install", "acme/skills-repo/skills/hello@v1.2")
    assert result.returncode == 0, result.stderr
    assert "installed hello from acme/skills-repo/skills/hello@v1.2" in result.stdout
    assert codeload.requests == ["/acme/skills-repo/tar.gz/v1.2"]
    skills = home.workspace / "skills"
    files = tree(skills)
    assert set(files) == {"hello", "hello/SKILL.md", "hello/scripts", "hello/scripts/run.sh",
                          "hello/scripts/again.sh", "hello/.clawfleet-source.json"}  # fmt: skip
    assert files["hello/SKILL.md"] == GOOD_MD
    assert files["hello/scripts/again.sh"] == "-> run.sh"
    assert (skills / "hello/scripts/run.sh").stat().st_mode & 0o777 == 0o755
    assert (skills / "hello/SKILL.md").stat().st_mode & 0o777 == 0o644
    source = json.loads(files["hello/.clawfleet-source.json"])
    assert source["source"] == "acme/skills-repo/skills/hello@v1.2"
    assert source["commit"] == COMMIT
    listed = home.clawctl("skills", "list").stdout
    assert "hello" in listed and "available" in listed and "other" not in listed


def test_default_ref_and_replacing_needs_force(home: ClawHome, codeload: CodeloadServer) -> None:
    codeload.add("acme", "solo", "HEAD", [("dir", ""), ("file", "SKILL.md", GOOD_MD)])
    assert home.clawctl("skills", "install", "acme/solo").returncode == 0
    installed = tree(home.workspace / "skills")
    assert installed["hello/SKILL.md"] == GOOD_MD
    changed = GOOD_MD.replace("Say hello", "Greet")
    codeload.add("acme", "solo", "HEAD", [("dir", ""), ("file", "SKILL.md", changed)])
    refused(home, "acme/solo", "already installed", "--force")
    result = home.clawctl("skills", "install", "acme/solo", "--force")
    assert result.returncode == 0, result.stderr
    assert "replaced hello" in result.stdout
    after = tree(home.workspace / "skills")
    assert after["hello/SKILL.md"] == changed
    assert not [name for name in os.listdir(home.workspace / "skills") if name.startswith(".")]


HOSTILE = {
    "dotdot": ([*good_entries(), ("file", "skills/hello/../../../../escape", "x")],
               ["'..'"]),
    "absolute": ([*good_entries(), ("file", "/tmp/clawfleet-escape", "x")], ["absolute path"]),
    "symlink-out": ([*good_entries(), ("symlink", "skills/hello/passwd", "../../../../etc/passwd")],
                    ["symlink", "outside the skill"]),
    "symlink-absolute": ([*good_entries(), ("symlink", "skills/hello/p", "/etc/passwd")],
                         ["symlink", "outside the skill"]),
    # Each link alone stays inside; through "up" (the skill's root), "esc" leads out.
    "symlink-chain-out": ([*good_entries(), ("dir", "skills/hello/a"), ("dir", "skills/hello/a/b"),
                           ("symlink", "skills/hello/a/b/up", "../.."),
                           ("symlink", "skills/hello/esc", "a/b/up/../../../etc/hostname")],
                          ["symlink", "through another symlink"]),
    # Through "up", "esc" is the workspace; a link under esc/escape/ made its folders there.
    "symlink-dir-chain-out": ([*good_entries(), ("dir", "skills/hello/a"),
                               ("dir", "skills/hello/a/b"),
                               ("symlink", "skills/hello/a/b/up", "../.."),
                               ("symlink", "skills/hello/esc", "a/b/up/../.."),
                               ("symlink", "skills/hello/esc/escape/l", "x")],
                              ["symlink", "under another symlink"]),
    # Names that would reach the terminal in the refusal: a control sequence, 3,000 levels.
    "escape-in-name": ([*good_entries(), ("symlink", "skills/hello/\x1b]52;c;cm0=\x07\x9b2J",
                                          "/etc/\x1b[2Jpasswd")],
                       ["symlink", "outside the skill", "\\x1b"]),
    "deep-name": ([*good_entries(), ("file", "skills/hello/" + "d/" * 3000 + "f", "x")],
                  ["cannot unpack", "File name too long", "..."]),
    # 24 links, each naming the one before three times: 306 bytes that took 2 minutes to
    # check at 12 levels and would take years at 24 (the kernel gives up after 40 links).
    "symlink-fan-out": ([*good_entries(), ("symlink", "skills/hello/l0", "."),
                         *(("symlink", f"skills/hello/l{n}", "/".join([f"l{n - 1}"] * 3))
                           for n in range(1, 24))],
                        ["symlink", "more than 40"]),
    "hardlink-out": ([*good_entries(), ("hardlink", "skills/hello/h", "README.md")],
                     ["hard link", "outside"]),
    "device": ([*good_entries(), ("chr", "skills/hello/null")], ["device"]),
    "fifo": ([*good_entries(), ("fifo", "skills/hello/pipe")], ["FIFO"]),
    "two-tops": ([*good_entries(), ("file", "!elsewhere/x", "x")], ["top directory"]),
    "twice": ([*good_entries(), ("file", "skills/hello/SKILL.md", GOOD_MD)], ["twice"]),
    "no-skill-md": ([("dir", ""), ("file", "skills/hello/notes.md", "no front matter file")],
                    ["not a valid skill", "no SKILL.md"]),
    "bad-yaml": (good_entries(md="---\nname: hello\ndescription: [unclosed\n---\n"),
                 ["not a valid skill", "not valid YAML"]),
    "no-front-matter": (good_entries(md="# hello\n\nno front matter\n"),
                        ["not a valid skill", "'---'"]),
    "unsafe-name": (good_entries(md=GOOD_MD.replace("name: hello", "name: ../../evil")),
                    ["not a valid skill", "name must be"]),
    "not-gzip": (None, ["not a readable tar.gz"]),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_and_broken_archives_are_refused(
    home: ClawHome, codeload: CodeloadServer, case: str
) -> None:
    entries, words = HOSTILE[case]
    if entries is None:
        codeload.archives[("acme", "bad", "main")] = b"<html>not an archive</html>"
    else:
        codeload.add("acme", "bad", "main", entries)
    assert home.clawctl("skills", "install-builtin", "skill-creator").returncode == 0
    line = refused(home, "acme/bad/skills/hello@main", *words)
    # What the archive names is shown bounded, its control characters escaped.
    assert len(line) < 700 and not re.search(r"[\x00-\x1f\x7f-\x9f]", line), line
    escaped = [p for p in (Path("/tmp/clawfleet-escape"), home.workspace / "escape",
                           home.path / "escape") if p.exists()]  # fmt: skip
    record("skills: malicious archive", tried=1, rejected=1, escapes=len(escaped))
    assert not escaped


@pytest.mark.parametrize("kind", ["dir", "file", "symlink"])
def test_the_archives_own_source_file_is_replaced(
    home: ClawHome, codeload: CodeloadServer, kind: str
) -> None:
    """An archive holding .clawfleet-source.json (the name the install writes where the
    skill came from): as a folder it failed with "Is a directory: ..clawfleet-source.json.<hex>.tmp".
    The install's own record replaces whatever is there."""
    name = "skills/hello/.clawfleet-source.json"
    extra: list[tuple[Any, ...]] = {
        "dir": [("dir", name), ("file", f"{name}/x", "x")],
        "file": [("file", name, '{"source": "builtin:hello"}')],
        "symlink": [("symlink", name, "SKILL.md")],
    }[kind]
    codeload.add("acme", "own", "main", [*good_entries(), *extra])
    result = home.clawctl("skills", "install", "acme/own/skills/hello@main")
    assert result.returncode == 0, result.stderr
    source = home.workspace / "skills/hello/.clawfleet-source.json"
    assert source.is_file() and not source.is_symlink()
    assert json.loads(source.read_text())["source"] == "acme/own/skills/hello@main"
    assert (home.workspace / "skills/hello/SKILL.md").read_text() == GOOD_MD


def test_size_caps(home: ClawHome, codeload: CodeloadServer) -> None:
    noise = os.urandom(8192)  # incompressible: the download itself is over 1 KiB
    codeload.add("acme", "big", "main", [*good_entries(), ("file", "skills/hello/blob", noise)])
    home.write_config({"skills": {"archive_base": codeload.url, "max_archive_bytes": 1024}})
    refused(home, "acme/big/skills/hello@main", "8", "more than skills.max_archive_bytes")
    codeload.chunked = True  # no Content-Length: the cap holds while streaming
    refused(home, "acme/big/skills/hello@main", "larger than skills.max_archive_bytes")
    codeload.chunked = False
    # A decompression bomb: 8 MiB of zeros, a few KiB compressed, outside the skill's path.
    zeros = bytes(8 * 1024 * 1024)
    codeload.add("acme", "bomb", "main", [*good_entries(), ("file", "zeros", zeros)])
    home.write_config({"skills": {"archive_base": codeload.url, "max_unpacked_bytes": 1 << 20}})
    refused(home, "acme/bomb/skills/hello@main", "skills.max_unpacked_bytes")
    # ... or hidden in a header that tarfile reads whole into memory (a pax comment).
    codeload.archives[("acme", "pax", "main")] = archive("pax-main", good_entries(),
                                                         commit="0" * (8 << 20))  # fmt: skip
    refused(home, "acme/pax/skills/hello@main", "skills.max_unpacked_bytes")
    codeload.add("acme", "fat", "main", [*good_entries(), ("file", "skills/hello/z", zeros)])
    home.write_config({"skills": {"archive_base": codeload.url, "max_skill_bytes": 1 << 20}})
    refused(home, "acme/fat/skills/hello@main", "skills.max_skill_bytes")
    entries = [*good_entries(), *(("file", f"f{n}", "x") for n in range(20))]
    codeload.add("acme", "many", "main", entries)
    home.write_config({"skills": {"archive_base": codeload.url, "max_archive_entries": 10}})
    refused(home, "acme/many/skills/hello@main", "more than 10 entries")
    record("skills: oversized archive", tried=6, rejected=6)  # each refused() above


def test_missing_refs_paths_and_redirects(home: ClawHome, codeload: CodeloadServer) -> None:
    codeload.add("acme", "repo", "main", good_entries())
    refused(home, "acme/repo/skills/hello@nope", "404", "acme/repo/skills/hello@nope")
    refused(home, "acme/repo/skills/absent@main", "has no skills/absent")
    refused(home, "acme/repo/README.md@main", "not a directory")
    # No top directory at all (a tarball of loose files): the message names what it found.
    codeload.archives[("acme", "flat", "main")] = archive("x", [("file", "!SKILL.md", GOOD_MD)])
    refused(home, "acme/flat@main", "'SKILL.md'", "not a directory", "top directory")
    codeload.redirects["/acme/moved/tar.gz/main"] = "http://example.invalid/x.tar.gz"
    refused(home, "acme/moved/skills/hello@main", "only https or skills.archive_base")
    # A Location httpx cannot parse (bad punycode): one line, not an IDNA traceback.
    codeload.redirects["/acme/punycode/tar.gz/main"] = "https://xn--a.example/x.tar.gz"
    refused(home, "acme/punycode/skills/hello@main", "could not download", "unusable")
    # A Location holding a C1 control (the 8-bit CSI): refused, and not printed raw.
    codeload.redirects["/acme/csi/tar.gz/main"] = "http://elsewhere.invalid/\x9b2J.tar.gz"
    line = refused(home, "acme/csi/skills/hello@main", "control character")
    assert "\x9b" not in line, line
    # A redirect within the configured base is followed (codeload's own redirects).
    codeload.redirects["/acme/renamed/tar.gz/main"] = "/acme/repo/tar.gz/main"
    result = home.clawctl("skills", "install", "acme/renamed/skills/hello@main")
    assert result.returncode == 0, result.stderr
    assert (home.workspace / "skills/hello/SKILL.md").is_file()


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("acme", "not owner/repo/path"),
        ("acme//x", "not owner/repo/path"),
        ("ac_me/repo/x", "GitHub owner name"),
        ("acme/../x", "GitHub repository name"),
        ("acme/repo/skills/../x", "path segment"),
        ("acme/repo/a b", "path segment"),
        ("acme/repo/x@", "empty ref"),
        ("acme/repo/x@a b", "branch, tag or commit"),
        ("acme/repo/x@../main", "branch, tag or commit"),
        ("acme/repo/x@-rf", "branch, tag or commit"),
    ],
)
def test_bad_specs_are_refused_before_any_request(
    home: ClawHome, codeload: CodeloadServer, spec: str, words: str
) -> None:
    refused(home, spec, words)
    assert codeload.requests == []


def test_unreachable_server_is_one_line(claw_home: ClawHome) -> None:
    from tests.fixtures.procs import free_port

    base = f"http://127.0.0.1:{free_port()}"
    claw_home.write_config({"skills": {"archive_base": base, "timeout_sec": 5}})
    result = claw_home.clawctl("skills", "install", "acme/repo/x")
    assert result.returncode == 1
    assert (
        result.stderr.startswith("Error: could not download") and "Traceback" not in result.stderr
    )
    assert not [p for p in (claw_home.workspace / "skills").iterdir()]


def test_bad_archive_base_is_a_config_error(claw_home: ClawHome) -> None:
    claw_home.write_config({"skills": {"archive_base": "ftp://mirror"}})
    result = claw_home.clawctl("skills", "install", "acme/repo/x")
    assert result.returncode == 1 and "skills.archive_base" in result.stderr


def test_leftovers_of_a_killed_install_are_cleared(
    home: ClawHome, codeload: CodeloadServer
) -> None:
    skills = home.workspace / "skills"
    stale, fresh = skills / ".install-dead1", skills / ".install-busy2"
    for path in (stale, fresh):
        (path / "scripts").mkdir(parents=True)
        (path / "SKILL.md").write_text("half")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    assert "hello" not in home.clawctl("skills", "list").stdout  # never listed
    codeload.add("acme", "repo", "main", good_entries())
    assert home.clawctl("skills", "install", "acme/repo/skills/hello@main").returncode == 0
    assert not stale.exists() and fresh.exists()  # another install may still be using it


def test_install_force_and_remove_at_the_same_moment_fail_only_with_a_reason(
    tmp_path: Path,
) -> None:
    """`skills install --force` and `skills remove` of one skill at the same moment (two
    operators, a script): the loser's rename met a directory already gone, "internal error:
    FileNotFoundError" (about one removal in 500 here). Now a removal finding it gone says
    it is not installed, and a replacement finding it gone installs the new one. Two more
    races it found: the clean-up of old temporaries stat'ed a folder a removal had just
    deleted (FileNotFoundError again), and the SKILL.md cache served the reinstalled skill
    an error read during a swap (same inode, size and copied mtime: "not a regular file")."""
    install_builtin(tmp_path, "git-status")
    unexpected: list[str] = []
    deadline = time.monotonic() + 3

    def hammer(step: Any) -> None:
        while time.monotonic() < deadline:
            try:
                step()
            except SkillError:
                pass  # "no skill ... is installed": the other one was first
            except Exception as exc:  # what the test looks for
                unexpected.append(repr(exc))

    threads = [threading.Thread(target=hammer, args=(step,)) for step in (
        lambda: install_builtin(tmp_path, "git-status", force=True),
        lambda: remove(tmp_path, "git-status"),
        lambda: remove(tmp_path, "git-status"),
    )]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert unexpected == []
    install_builtin(tmp_path, "git-status", force=True)
    skill = find(skills_root(tmp_path), "git-status")
    assert skill is not None and skill.available, skill
    assert [p.name for p in skills_root(tmp_path).iterdir()] == ["git-status"]
