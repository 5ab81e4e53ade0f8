"""Skills: the SKILL.md format (Agent Skills, OpenClaw and nanobot spellings), requirements,
``clawctl skills`` list/show/search/remove/install-builtin/list-builtin, and the system
prompt listing only the skills that can run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from claw_worker.agent.context import build_system_prompt
from claw_worker.contract import InboundMessage
from claw_worker.skills.catalog import BUILTIN_ROOT, discover
from claw_worker.skills.skillfile import SkillError, parse_skill_md
from tests.fixtures.claw_home import ClawHome

MISSING_BIN = "clawfleet-test-no-such-program"


def skill_md(name: str, description: str, extra: str = "") -> str:
    return f"---\nname: {name}\ndescription: {description}\n{extra}---\n\n# {name}\n\nSteps.\n"


def add_skill(workspace: Path, name: str, text: str) -> Path:
    path = workspace / "skills" / name
    path.mkdir(parents=True)
    (path / "SKILL.md").write_text(text)
    return path


def test_front_matter_spellings_of_every_family() -> None:
    openclaw = parse_skill_md(
        '---\nname: nano\ndescription: "Images via Gemini"\n'
        'metadata: {"openclaw": {"requires": {"bins": ["uv"], "env": ["GEMINI_HOST"], '
        '"anyBins": ["bun", "npx"]}, "os": ["linux", "darwin"]}}\n---\nbody\n'
    )
    assert openclaw.requires.bins == ("uv",) and openclaw.requires.env == ("GEMINI_HOST",)
    assert openclaw.requires.any_bins == ("bun", "npx")
    assert openclaw.requires.os == ("linux", "darwin")
    nanobot = parse_skill_md(
        "---\nname: weather\ndescription: >\n  Weather from\n  wttr.in\nmetadata:\n"
        "  nanobot:\n    emoji: x\n    requires:\n      bins: [curl]\n---\n"
    )
    assert nanobot.description == "Weather from wttr.in" and nanobot.requires.bins == ("curl",)
    legacy = parse_skill_md(
        "---\nname: 1password\ndescription: op\nmetadata: "
        '\'{"clawdbot":{"requires":{"bins":["op"]}}}\'\n---\n'
    )
    assert legacy.requires.bins == ("op",)  # a quoted single-line JSON string
    plain = parse_skill_md(skill_md("x", "d", "requires: {bins: git, env: [A_B]}\nlicense: MIT\n"))
    assert plain.requires.bins == ("git",) and plain.requires.env == ("A_B",)
    anthropic = parse_skill_md(skill_md("pdf", "Fill PDF forms", "allowed-tools: Read\n"))
    assert anthropic.requires.bins == () and not anthropic.hidden
    hidden = parse_skill_md(skill_md("h", "d", "disable-model-invocation: true\n"))
    assert hidden.hidden


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("no front matter", "must start with a '---' line"),
        ("---\nname: x\ndescription: d\n", "not closed"),
        ("---\n- a list\n---\n", "must be a mapping"),
        ("---\nname: x\ndescription: [a\n---\n", "not valid YAML at line"),
        (skill_md("a/b", "d"), "name must be"),
        (skill_md("..", "d"), "name must be"),
        ("---\nname: x\n---\n", "description must be"),
        (skill_md("x", "d", "requires: [git]\n"), "requires must be a mapping"),
        (skill_md("x", "d", "requires: {bins: [1, 2]}\n"), "requires.bins must be a list"),
        (skill_md("x", "d", "requires: {env: ['A-B']}\n"), "not an environment variable"),
        (skill_md("x", "d", "requires: {os: [plan9]}\n"), "not one of linux"),
        (skill_md("x", "d", "metadata: '{\"openclaw\": '\n"), "metadata is not valid JSON"),
        ("---\na: &a [1,1,1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
         "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
         "name: x\ndescription: y\n---\n", "more than 5000 values"),
        # Values YAML parses but Python cannot build: each a one-line refusal, not a
        # ValueError or RecursionError out of the parser.
        (skill_md("x", "d", "created: 2024-02-30\n"), "day is out of range"),
        (skill_md("x", "d", "updated: 2001-12-14t21:59:43.10-99:99\n"), "cannot be read"),
        (skill_md("x", "d", "version: " + "9" * 5000 + "\n"), "cannot be read"),
        (skill_md("x", "d", "requires: &r [*r]\n"), "more than 5000 values"),
        (skill_md("x", "d", "beta: !!bool maybe\n"), "cannot be read"),  # KeyError inside
        (skill_md("x", "d", "since: !!timestamp soon\n"), "cannot be read"),  # AttributeError
        (skill_md("x", "d", "count: !!int\n"), "cannot be read"),  # IndexError
        (skill_md("x", "d", "extra: &e {again: *e}\n"), "more than 5000 values"),
        (skill_md("x", "d", "metadata: '" + '{"a": ' * 5000 + "'\n"), "nested too deeply"),
    ],
)  # fmt: skip
def test_front_matter_refusals(text: str, words: str) -> None:
    with pytest.raises(SkillError, match=None) as caught:
        parse_skill_md(text)
    assert words in str(caught.value)


def test_builtin_skills_are_valid_and_available_here() -> None:
    builtin = {s.name: s for s in discover(BUILTIN_ROOT)}
    assert {"git-status", "system-report", "summarize-file", "skill-creator"} <= set(builtin)
    for skill in builtin.values():
        assert skill.problem == "", (skill.name, skill.problem)
    assert builtin["git-status"].meta.requires.bins == ("git",)  # type: ignore[union-attr]


def test_list_show_search_remove_and_builtins(claw_home: ClawHome) -> None:
    listed = claw_home.clawctl("skills", "list-builtin")
    assert listed.returncode == 0 and "git-status" in listed.stdout
    assert "no skills in" in claw_home.clawctl("skills", "list").stdout
    both = claw_home.clawctl("skills", "install-builtin", "git-status", "--all")
    assert both.returncode == 1 and "not both" in both.stderr
    unknown = claw_home.clawctl("skills", "install-builtin", "nope")
    assert unknown.returncode == 1 and "there is no builtin skill 'nope'" in unknown.stderr
    done = claw_home.clawctl("skills", "install-builtin", "--all")
    assert done.returncode == 0, done.stderr
    skills = claw_home.workspace / "skills"
    assert sorted(p.name for p in skills.iterdir()) == sorted(
        s.name for s in discover(BUILTIN_ROOT)
    )
    assert (skills / "git-status/scripts/git-status.sh").stat().st_mode & 0o111
    again = claw_home.clawctl("skills", "install-builtin", "--all")
    assert again.returncode == 0 and "already installed, kept" in again.stdout
    assert "yes" in claw_home.clawctl("skills", "list-builtin").stdout

    rows = json.loads(claw_home.clawctl("skills", "list", "--json").stdout)
    git = next(r for r in rows if r["name"] == "git-status")
    assert git["available"] and git["source"] == "builtin:git-status"
    shown = claw_home.clawctl("skills", "show", "git-status")
    assert shown.stdout.startswith("---\nname: git-status\n")
    assert "installed skill git-status (available)" in shown.stderr
    assert "no skill 'nope'" in claw_home.clawctl("skills", "show", "nope").stderr

    found = claw_home.clawctl("skills", "search", "HOST", "health")
    assert found.stdout.splitlines()[1].startswith("system-report")
    assert "git-status" not in found.stdout
    assert "no skill matches" in claw_home.clawctl("skills", "search", "zzz-nothing").stdout

    unconfirmed = claw_home.clawctl("skills", "remove", "git-status")
    assert unconfirmed.returncode == 1 and "--yes" in unconfirmed.stderr
    assert (skills / "git-status").is_dir()
    removed = claw_home.clawctl("skills", "remove", "git-status", "--yes")
    assert removed.returncode == 0 and not (skills / "git-status").exists()
    assert not [p for p in skills.iterdir() if p.name.startswith(".")]
    gone = claw_home.clawctl("skills", "remove", "git-status", "--yes")
    assert gone.returncode == 1 and "no skill 'git-status' is installed" in gone.stderr
    # A builtin that is not installed is still found by search and show.
    assert "builtin" in claw_home.clawctl("skills", "search", "git").stdout
    assert "builtin skill git-status" in claw_home.clawctl("skills", "show", "git-status").stderr


def test_requirements_decide_what_is_available(claw_home: ClawHome) -> None:
    ws = claw_home.workspace
    add_skill(ws, "ready", skill_md("ready", "Works here.", "requires: {bins: [sh]}\n"))
    add_skill(ws, "no-bin", skill_md("no-bin", "Needs a program.",
                                     f"metadata: {{nanobot: {{requires: {{bins: [{MISSING_BIN}]}}}}}}\n"))  # fmt: skip
    add_skill(ws, "no-env", skill_md("no-env", "Needs a variable.",
                                     "requires: {env: [CLAW_SKILL_TEST_UNSET]}\n"))  # fmt: skip
    add_skill(ws, "secret", skill_md("secret", "Needs a token.",
                                     "requires: {env: [SKILLTEST_API_TOKEN]}\n"))  # fmt: skip
    add_skill(
        ws, "wrong-os", skill_md("wrong-os", "Mac only.", "metadata: {openclaw: {os: [darwin]}}\n")
    )
    add_skill(ws, "misnamed", skill_md("other-name", "Misnamed."))
    add_skill(ws, "broken", "---\nname: broken\n")
    add_skill(ws, "quiet", skill_md("quiet", "Hidden.", "disable-model-invocation: true\n"))
    env = claw_home.env(SKILLTEST_API_TOKEN="set-but-secret")
    result = subprocess.run([sys.executable, "-m", "claw_worker.cli", "skills", "list"], env=env,
                            capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    status = {line.split()[0]: line for line in result.stdout.splitlines()[1:] if line.strip()}
    assert "available" in status["ready"] and "unavailable" not in status["ready"]
    assert f"unavailable: missing bin {MISSING_BIN}" in status["no-bin"]
    assert "unavailable: missing env CLAW_SKILL_TEST_UNSET" in status["no-env"]
    assert "withheld from scripts" in status["secret"]
    assert "unavailable: missing os darwin (this is linux)" in status["wrong-os"]
    assert "invalid: its SKILL.md is named 'other-name'" in status["misnamed"]
    assert "invalid: the front matter of SKILL.md is not closed" in status["broken"]
    assert "available, not listed to the model" in status["quiet"]
    assert "not offered to the model" in result.stdout


def msg(origin: str = "user") -> InboundMessage:
    return InboundMessage(channel="test", chat_id="1", sender_id="u", text="hi",
                          metadata={"origin": origin} if origin != "user" else {})  # fmt: skip


def test_one_unreadable_skill_md_does_not_fail_the_turn(claw_home: ClawHome) -> None:
    """A SKILL.md the model (or a careless edit) wrote with a date that does not exist: the
    other skills are still offered, and `clawctl skills list` names what is wrong."""
    ws = claw_home.workspace
    add_skill(ws, "ready", skill_md("ready", "Reports the READY-MARKER state."))
    add_skill(ws, "dated", skill_md("dated", "DATED-MARKER", "created: 2024-02-30\n"))
    add_skill(ws, "looped", skill_md("looped", "LOOPED-MARKER", "requires: &r [*r]\n"))
    prompt = build_system_prompt(ws, msg())
    assert "- ready: Reports the READY-MARKER state." in prompt
    assert "DATED-MARKER" not in prompt and "LOOPED-MARKER" not in prompt
    listed = claw_home.clawctl("skills", "list")
    assert listed.returncode == 0, listed.stderr
    assert "Traceback" not in listed.stderr
    lines = {line.split()[0]: line for line in listed.stdout.splitlines() if line.strip()}
    assert "invalid" in lines["dated"] and "day is out of range" in lines["dated"]
    assert "invalid" in lines["looped"] and "available" in lines["ready"]


def test_a_listed_invalid_skill_can_be_shown_and_removed(claw_home: ClawHome) -> None:
    """A folder copied in by hand as "Weather Skill": `skills list` shows it as invalid, and
    `skills show` and `remove` take the name shown (they said "no skill is installed")."""
    skills = claw_home.workspace / "skills"
    add_skill(claw_home.workspace, "Weather Skill", skill_md("weather", "Weather."))
    listed = claw_home.clawctl("skills", "list").stdout
    assert "Weather Skill" in listed and "not a valid skill name" in listed
    shown = claw_home.clawctl("skills", "show", "Weather Skill")
    assert shown.returncode == 0 and "description: Weather." in shown.stdout, shown.stderr
    removed = claw_home.clawctl("skills", "remove", "Weather Skill", "--yes")
    assert removed.returncode == 0, removed.stderr
    assert not (skills / "Weather Skill").exists()
    assert not [p for p in skills.iterdir()]
    for name in ("..", ".install-x", "a/b", ""):  # never a way out of skills/ or into its work
        (skills / ".install-x").mkdir(exist_ok=True)
        refused = claw_home.clawctl("skills", "remove", name, "--yes")
        assert refused.returncode == 1 and "no skill" in refused.stderr, (name, refused.stderr)
    assert (skills / ".install-x").is_dir() and skills.is_dir()


def test_skills_folder_that_is_a_file_is_named(claw_home: ClawHome) -> None:
    """<workspace>/skills is a file (a careless `> skills`): `list` said "no skills in ...; add
    the builtin ones", then `install-builtin` failed with "File exists"."""
    claw_home.workspace.mkdir(parents=True, exist_ok=True)
    (claw_home.workspace / "skills").write_text("not a folder\n")
    for args in (("list",), ("install-builtin", "git-status"), ("search", "git")):
        result = claw_home.clawctl("skills", *args)
        assert result.returncode == 1, (args, result.stdout)
        assert "skills is not a directory" in result.stderr, (args, result.stderr)
    assert (claw_home.workspace / "skills").read_text() == "not a folder\n"


def test_a_list_cut_at_the_limit_says_so(claw_home: ClawHome) -> None:
    """Only the first 500 entries of skills/ are read (a folder of thousands must not stall
    every turn): `list` showed 500 and said nothing of the others, which the model is not
    offered either."""
    root = claw_home.workspace / "skills"
    for n in range(503):
        (root / f"s{n:03d}").mkdir(parents=True)
    result = claw_home.clawctl("skills", "list", "--json")
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)) == 500
    assert (
        "Only the first 500 entries" in result.stderr and "3 more are not listed" in result.stderr
    )
    (root / "s000").rmdir()
    (root / "s001").rmdir()
    (root / "s002").rmdir()
    assert claw_home.clawctl("skills", "list", "--json").stderr == ""


ESCAPES = ("\x1b", "\x07", "\x9b")  # ESC, BEL (ends an OSC), the 8-bit CSI


def test_terminal_escapes_in_a_skill_never_reach_the_terminal(claw_home: ClawHome) -> None:
    """A downloaded skill whose description (YAML's "\\e" escapes), required program or
    body holds terminal control sequences (OSC 52 writes the clipboard, ESC[2J clears the
    screen): `clawctl skills list`, `search` and `show` print none of them raw."""
    ws = claw_home.workspace
    osc = "\\e]52;c;cm0gLXJmIH4=\\a\\e[2J\\x9b31m"
    add_skill(ws, "weather", skill_md("weather", f'"Weather today {osc}"'))
    add_skill(ws, "needs", skill_md("needs", "needs a program", f'requires: {{bins: ["{osc}"]}}\n'))
    body = skill_md("plain", "A plain skill.") + "Run it.\x1b]52;c;cm0gLXJmIH4=\x07\x1b[2J\n"
    add_skill(ws, "plain", body)
    for args in (("list",), ("search", "weather"), ("search", "needs"), ("show", "plain")):
        result = claw_home.clawctl("skills", *args)
        out = result.stdout + result.stderr
        assert not any(c in out for c in ESCAPES), (args, out)
    listed = claw_home.clawctl("skills", "list").stdout
    rows = {line.split()[0]: line for line in listed.splitlines() if line.strip()}
    assert "invalid" in rows["weather"] and "control character" in rows["weather"]
    assert "invalid" in rows["needs"] and "not a program name" in rows["needs"]
    shown = claw_home.clawctl("skills", "show", "plain").stdout
    assert "Run it.\\x1b]52;c;cm0gLXJmIH4=\\x07\\x1b[2J" in shown  # visible, not acted on


def test_system_prompt_lists_only_available_skills(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    assert "## Skills" not in build_system_prompt(ws, msg())
    add_skill(ws, "ready", skill_md("ready", "Reports the READY-MARKER state."))
    add_skill(
        ws, "no-bin", skill_md("no-bin", "NOBIN-MARKER", f"requires: {{bins: [{MISSING_BIN}]}}\n")
    )
    add_skill(ws, "hidden", skill_md("hidden", "HIDDEN-MARKER", "disable-model-invocation: true\n"))
    add_skill(ws, "broken", "---\nname: broken\ndescription: BROKEN-MARKER\n")
    (ws / "skills" / ".install-x1").mkdir()  # an install under way is not a skill
    prompt = build_system_prompt(ws, msg())
    assert "## Skills" in prompt
    assert "- ready: Reports the READY-MARKER state." in prompt
    assert "read skills/<name>/SKILL.md with read_file" in prompt
    for marker in ("NOBIN-MARKER", "HIDDEN-MARKER", "BROKEN-MARKER", ".install-x1"):
        assert marker not in prompt
    # The heartbeat's minimal context leaves the skills out.
    assert "READY-MARKER" not in build_system_prompt(ws, msg("heartbeat"))
    # A change to SKILL.md shows on the next turn.
    (ws / "skills/ready/SKILL.md").write_text(skill_md("ready", "Now CHANGED-MARKER."))
    assert "CHANGED-MARKER" in build_system_prompt(ws, msg())
