"""Stands in for rich, which only the test extras install (schemathesis pulls it in): the
processes the tests start import this and get ImportError, as they would on a production
install. Without it every one of them, a thousand in a run, also paid ~0.07 s of CPU for
rich through structlog.dev and httpx._main (see tests/conftest.py)."""

raise ImportError("rich is not installed with clawfleet (only with its test extras)")
