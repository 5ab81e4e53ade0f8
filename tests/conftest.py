"""Fixtures live in tests/fixtures/, one module per kind of real process."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_plugins = [
    "tests.fixtures.redis_server",
    "tests.fixtures.claw_home",
    "tests.fixtures.llm",
    "tests.fixtures.fleet",
    "tests.fixtures.tools",
    "tests.fixtures.hosts",
    "tests.fixtures.campaign",
    "tests.fixtures.containers",
]

PRODUCTION_IMPORTS = Path(__file__).parent / "production_imports"


@pytest.fixture(autouse=True, scope="session")
def processes_import_as_in_production() -> Iterator[None]:
    """The processes the tests start (workers, beat, ingress, clawctl) do not see rich,
    which only the test extras bring (tests/production_imports/): they render logs as a
    user's would, and start without the ~0.07 s of CPU it cost each. This process, started
    before this fixture, keeps it (schemathesis needs rich)."""
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PRODUCTION_IMPORTS), before]))
    yield
    if before is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = before
