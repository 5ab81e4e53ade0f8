"""The control channel's listener through a Redis outage: one warning, not one a second,
and back on its own when Redis returns."""

from __future__ import annotations

from structlog.testing import capture_logs

from claw_worker.control import ControlListener
from claw_worker.process import ProcessIdentity
from tests.fixtures.procs import wait_for


def test_an_outage_is_logged_once_and_the_listener_comes_back(redis_server) -> None:
    listener = ControlListener(
        redis_server.client(), ProcessIdentity("worker", "w-9@h", "h", 9)
    ).start()
    try:
        wait_for(listener.subscribed.is_set, timeout=10, what="the first subscription")
        with capture_logs() as logs:
            redis_server.stop()
            wait_for(lambda: listener.failed_tries >= 3, timeout=30,
                     what="three failed tries to subscribe again")  # fmt: skip
            redis_server.start()
            wait_for(lambda: listener.failed_tries == 0, timeout=30, what="the listener back")
        events = [entry["event"] for entry in logs]
        assert events.count("control channel lost, resubscribing") == 1, events
        assert events.count("control channel back") == 1, events
    finally:
        listener.stop()
