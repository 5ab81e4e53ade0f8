"""Fixtures live in tests/fixtures/, one module per kind of real process."""

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
