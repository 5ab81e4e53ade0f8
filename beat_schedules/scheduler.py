"""Beat's scheduler: RedBeat, plus what a clawfleet process does at start.

``celery -A claw_worker beat`` uses this class (``beat_scheduler`` in the Celery settings).
RedBeat keeps every entry and the one-active-beat lock in Redis, so beat writes no local
file and a second beat, on any host, waits on the lock and takes over within
``beat.lock_timeout_sec`` of the active one dying. On top of RedBeat this starts the
embedded Redis when no URL is configured (before RedBeat first touches Redis) and joins the
control channel, so a config reload reaches beat too: the static entries of
``beat_schedules/schedule.py`` are rewritten from the new config.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from types import SimpleNamespace
from typing import Any

import structlog
from kombu.exceptions import OperationalError
from redbeat import RedBeatScheduler
from redbeat.schedulers import acquire_distributed_beat_lock
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import LockError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from beat_schedules.schedule import beat_schedule
from claw_worker import constants as k
from claw_worker.config import Config, config_path, current_config
from claw_worker.config.reload import LiveConfig, ReloadParticipant
from claw_worker.control import ControlListener, process_listener
from claw_worker.process import identity, set_identity
from claw_worker.redis_conn import client, delete_if_ours, record_url, redis_url

SELFCHECK_QUIET_SEC = 600  # a beat taking over within this of the last start: no new check
REDIS_RETRY_SEC = 1.0  # while Redis is away, how often the active beat tries it again
STATICS_CHECK_SEC = 5.0  # how often the active beat checks its static entries are in Redis

log = structlog.get_logger(__name__)


class FleetScheduler(RedBeatScheduler):
    def __init__(self, app: Any, *args: Any, **kwargs: Any) -> None:
        config = current_config()
        if identity().role != "beat":
            set_identity("beat")
        url = redis_url(config, start_embedded=not config.redis.url)
        _wait_for_redis(url)  # RedBeat's start-up would give up after 30 s and end beat
        record_url(url)  # for clawctl (config/running.py)
        self.live = LiveConfig(config)
        self._selfcheck_sent = False
        # Unique to this start: the mark says which beat's start it counts, so this beat
        # (and only this one) may retry a send that failed after it set the mark.
        self._selfcheck_token = f"{identity().name}/{uuid.uuid4().hex}"
        self._redis_down_since: float | None = None
        self._statics_checked = 0.0  # time.monotonic() of the last _restore_statics look
        self._url = url
        super().__init__(app, *args, **kwargs)  # writes the static entries into Redis
        self.control: ControlListener = process_listener(
            client(url), identity(), config=str(config_path().absolute())
        )
        ReloadParticipant(
            self.control.redis,
            identity(),
            config_file=config_path,
            current=lambda: self.live.config,
            apply=self.apply,
        ).attach(self.control)
        if not kwargs.get("lazy"):  # not the banner's instance: the schedule is in Redis
            self.control.info.setdefault("active", False)

    def setup_schedule(self) -> None:
        """RedBeat's set-up (the static entries written to Redis), waiting out an outage:
        it writes them in pipelines, which redis-py does not retry, and an error here would
        end beat before it ever ticks. Writing them again is harmless."""
        while True:
            try:
                super().setup_schedule()
                return
            except (RedisConnectionError, RedisTimeoutError) as exc:
                log.warning("beat: redis went away while writing the schedule",
                            error=str(exc))  # fmt: skip
                _wait_for_redis(self._url)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """RedBeat's tick, riding out a Redis restart: Celery's beat service ends the process
        on any error from here, and RedBeat's lock calls are not retried (only its plain
        commands are), so one tick during an outage would otherwise kill the active beat."""
        try:
            if self.lock_key and self.lock is None:  # RedBeat's start-up attempt failed
                self._wait_for_lock("beat: waiting for the active-beat lock")
            if not self._selfcheck_sent and self.lock is not None:  # this beat is active
                self._selfcheck_sent = self._send_selfcheck()
            if self.lock is not None:
                self._restore_statics()
            interval = super().tick(*args, **kwargs)
            # Whether this beat is the active one rides on its registry record (no write
            # of its own each tick): clawctl status reads it.
            self.control.info["active"] = self.lock is not None
        except LockError:  # Redis was away longer than the lock's timeout, or lost it
            self._wait_for_lock("beat: lost the active-beat lock; waiting to take it again")
            return 0.0
        except (RedisConnectionError, RedisTimeoutError) as exc:
            if self._redis_down_since is None:
                self._redis_down_since = time.monotonic()
                log.warning("beat: redis unavailable, retrying", error=str(exc),
                            retry_sec=REDIS_RETRY_SEC)  # fmt: skip
            return REDIS_RETRY_SEC
        if self._redis_down_since is not None:
            log.info("beat: redis is back",
                     away_sec=round(time.monotonic() - self._redis_down_since, 1))  # fmt: skip
            self._redis_down_since = None
        return float(interval)

    def _restore_statics(self) -> None:
        """Write the static entries again if Redis lost them (a restart without
        persistence, a flush, a failover to an empty replica): RedBeat writes them only at
        start, so the sweeper, the heartbeat and Sentinel would stop until beat restarted.
        Looked at every ``STATICS_CHECK_SEC``."""
        now = time.monotonic()
        if now - self._statics_checked < STATICS_CHECK_SEC:
            return
        self._statics_checked = now
        if not self.control.redis.exists(self.app.redbeat_conf.statics_key):
            log.warning("beat: the schedule was missing from Redis (did it lose its data?); "
                        "static entries written again")  # fmt: skip
            RedBeatScheduler.setup_schedule(self)

    def _wait_for_lock(self, why: str) -> None:
        """Wait for the one-active-beat lock as a standby does (never run beside another
        active beat), Redis outages included: RedBeat's own start-up wait, tried again
        until Redis answers."""
        log.warning(why)
        self.control.info["active"] = False
        self.lock = None
        while True:
            try:  # makes the lock as RedBeat does, then blocks, polling, until it is free
                acquire_distributed_beat_lock(sender=SimpleNamespace(scheduler=self))
                break
            except (RedisConnectionError, RedisTimeoutError):
                time.sleep(REDIS_RETRY_SEC)
        log.info("beat: holds the active-beat lock")

    def _send_selfcheck(self) -> bool:
        """The start-up self-check, once per gateway start: not again when a standby takes
        over within SELFCHECK_QUIET_SEC (a mark in Redis), never once per worker. True when
        this start needs no more tries (sent, or another beat's mark is there)."""
        client, token = self.control.redis, self._selfcheck_token
        taken = client.set(k.SELFCHECK_DONE, token, nx=True, ex=SELFCHECK_QUIET_SEC)
        if not taken and client.get(k.SELFCHECK_DONE) != token:
            return True  # another beat's start counted it: it sends, or sent, the check
        try:
            self.app.send_task(k.TASK_SELFCHECK, queue=k.QUEUE_CRON)
        except (OperationalError, RedisConnectionError, RedisTimeoutError) as exc:
            # Not sent: without this the mark would keep the check from ever being sent
            # this start. Given back (if still ours) so a beat taking over can send it;
            # if Redis is too far gone for that, our token lets the next tick retry.
            log.warning("beat: the start-up self-check was not sent; retrying next tick",
                        error=str(exc))  # fmt: skip
            with contextlib.suppress(RedisConnectionError, RedisTimeoutError):
                delete_if_ours(client, k.SELFCHECK_DONE, token)
            return False
        return True

    def reserve(self, entry: Any) -> Any:
        """A cron job's entry is a one-shot for its next due time: re-arm it as it fires
        (beat_schedules/cron.py); the fire task re-arms it too if this fails."""
        reserved = super().reserve(entry)
        if entry.name.startswith(k.CRON_ENTRY_PREFIX):
            from beat_schedules.cron import rearm

            try:
                rearm(self.control.redis, entry.name.removeprefix(k.CRON_ENTRY_PREFIX),
                      entry.kwargs.get("due"))  # fmt: skip
            except Exception:  # never stop beat; the fire re-arms
                from celery.utils.log import get_logger

                get_logger("celery.beat").exception("beat: could not re-arm %s", entry.name)
        return reserved

    def apply(self, config: Config) -> None:
        """A reloaded config: rewrite the static entries (their intervals follow it), and
        drop those it no longer has (``sentinel.enabled false``): RedBeat's
        ``update_from_dict`` only adds, so a switched-off Sentinel went on checking,
        healing and alerting until beat restarted."""
        from claw_worker.logs import setup_logging

        # What can fail first, so that a failure leaves the old config in effect whole.
        if self.live.config.logging != config.logging:
            setup_logging(config, identity().log_name)
        schedule = beat_schedule(config)
        self.live.swap(config)
        self.app.conf.beat_schedule = schedule
        # RedBeat's start-up sync, not ours: an outage fails the reload instead of blocking
        # the control listener. It deletes the static entries missing from ``schedule``,
        # writes the others and records their names, so a restart drops them too.
        RedBeatScheduler.setup_schedule(self)

    def close(self) -> None:
        self.control.stop()
        try:
            super().close()  # releases the lock: needs Redis
        except RedisError as exc:
            log.warning("beat: could not release the lock; it expires on its own",
                        error=str(exc))  # fmt: skip


def _wait_for_redis(url: str) -> None:
    """Block until Redis answers (a host that boots before it, a restart), saying so once."""
    probe = client(url)
    delay, waited = 0.5, False
    while True:
        try:
            probe.ping()
            break
        except (RedisConnectionError, RedisTimeoutError) as exc:
            if not waited:
                log.warning("beat: waiting for redis", error=str(exc))
                waited = True
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
    if waited:
        log.info("beat: redis is reachable")
