"""The layout holds as the fleet grows: no import cycles; the ingress imports only an
explicit allow-list of modules (lazy imports included), so channels added to
``claw_ingress/channels/`` never pull the runtime in; and importing a module does not build
the Celery app unless that module is the app."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("claw_worker", "claw_ingress", "beat_schedules")

# What the ingress may import from the project, each for a reason.
INGRESS_ALLOWED = {
    "claw_worker",  # the package itself (its __init__ imports nothing)
    "claw_worker.contract",  # the message contract
    "claw_worker.constants",  # every Redis key, queue and task name
    "claw_worker.config",  # the config model, its file store, paths and the fleet reload
    "claw_worker.config.paths",
    "claw_worker.config.schema",
    "claw_worker.config.channels",
    "claw_worker.config.gateway",
    "claw_worker.config.tools",
    "claw_worker.config.quotas",
    "claw_worker.config.texts",
    "claw_worker.config.fields",
    "claw_worker.config.jsontext",
    "claw_worker.config.store",
    "claw_worker.config.reload",
    "claw_worker.config.fleet",
    "claw_worker.config.running",  # where the running fleet is (config set from a chat)
    "claw_worker.config.local",  # the directories a config names, usable on this host
    "claw_worker.session",  # the enqueue side of the session package
    "claw_worker.session.enqueue",
    "claw_worker.session.scripts",
    "claw_worker.session.wakeup",  # the drain wake-up the enqueue script pushes
    "claw_worker.session.runs",  # reading run state for /status
    "claw_worker.session.stop",  # /stop
    "claw_worker.commands",  # the slash-command registry and its commands
    "claw_worker.commands.registry",
    "claw_worker.commands.intents",
    "claw_worker.commands.session",
    "claw_worker.commands._lang_tag",  # /lang's check of a language tag (pure)
    "claw_worker.commands.admin",
    "claw_worker.commands.autonomy",
    "claw_worker.commands.pipelines",  # /pipeline: the store runs in a thread
    "claw_worker.session.submit",  # ... which submits the tasks it starts
    "claw_worker.work",  # its __init__ imports nothing
    "claw_worker.work.model",  # pipelines as data, the check of a plan (pure)
    "claw_worker.work.transitions",  # their changes of state (pure)
    "claw_worker.work.pipelines",  # the pipeline store and dispatch (no agent, no tools)
    "claw_worker.work.prompts",  # the texts of tasks and reports
    "claw_worker.autonomy_state",  # /autonomy, /autolearn; the last active chat
    "claw_worker.nodes",  # its __init__ imports nothing
    "claw_worker.nodes.stats",  # the nodes' dispatch figures in /status (pure functions)
    "claw_worker.control",  # the control channel: registry, reload broadcasts
    "claw_worker.process",  # this process's node name
    "claw_worker.redis_conn",  # Redis URLs and clients
    "claw_worker.embedded_redis",  # the one-box Redis, started by the ingress when needed
    "claw_worker.fsutil",  # atomic writes (config set)
    "claw_worker.logs",  # structured, redacted logging
    "claw_worker.log_files",  # which files in the log directory are clawfleet's (retention)
    "claw_worker.redact",  # ... its redactor (also scrubs the channels' errors for status)
    "claw_worker.secret_shapes",  # ... the shapes of secrets it masks
    "claw_worker.reply_filter",  # commands' answers and pipeline reports, scrubbed
    "claw_worker.metrics",  # the Prometheus metrics (prometheus_client only): counted, /metrics
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


def _in_type_checking(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules ``path`` imports anywhere (functions included, TYPE_CHECKING not)."""
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if _in_type_checking(node, parents):
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
    return {name for name in found if name in modules}


def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(path, modules) for name, path in modules.items()}


def test_no_import_cycles() -> None:
    edges = graph()
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == [], "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_ingress_imports_only_its_allow_list_lazy_imports_included() -> None:
    edges = graph()
    reached: set[str] = set()
    todo = [name for name in edges if name.split(".")[0] == "claw_ingress"]
    while todo:
        name = todo.pop()
        if name in reached:
            continue
        reached.add(name)
        todo.extend(edges[name])
    outside = sorted(
        n for n in reached if not n.startswith("claw_ingress") and n not in INGRESS_ALLOWED
    )
    assert outside == [], f"the ingress reaches modules outside its allow-list: {outside}"


def test_importing_a_module_does_not_build_the_celery_app(tmp_path: Path) -> None:
    """Only ``claw_worker.celery`` builds the app (and reads the config to do it): every
    other module imports with a broken config file and leaves the app unbuilt."""
    broken = tmp_path / "config.json"
    broken.write_text('{"gateway": {"port": "not a port"}}')
    names = sorted(
        n for n in project_modules() if n != "claw_worker.celery" and not n.endswith("__main__")
    )
    code = (
        "import importlib, json, sys\n"
        f"names = {names!r}\n"
        "built = []\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "    if 'claw_worker.celery' in sys.modules:\n"
        "        built.append(name); sys.modules.pop('claw_worker.celery')\n"
        "print(json.dumps(built))\n"
    )
    env = {"CLAW_CONFIG": str(broken), "CLAW_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []
