"""Stands in for pygments, which only the test extras install (schemathesis and pytest pull it
in): the processes the tests start import this and get ImportError, as they would on a
production install. Without it every one of them, a thousand in a run, also paid for
pygments through structlog.dev and httpx._main (see tests/conftest.py)."""

raise ImportError("pygments is not installed with clawfleet (only with its test extras)")
