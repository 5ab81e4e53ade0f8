"""The node agent's options, validated once at start: every problem is one clear line.

Secrets come from the environment rather than the command line (where ``ps`` shows them):
``CLAW_GATEWAY_TOKEN`` (the gateway's token), ``CLAW_NODE_TOKEN`` (the node's own; a random
one when unset), ``CLAW_NODE_MODEL_KEY`` (the API key of ``--model-base``).
"""

from __future__ import annotations

import argparse
import re
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

import re2

from claw_worker.config.schema import ExecToolConfig

NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
CAPABILITY = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


class SettingsError(Exception):
    """An option that cannot work; the message says which and why."""


@dataclass(frozen=True)
class Settings:
    gateway: str  # http(s)://host:port of the gateway
    node_id: str
    name: str
    gateway_token: str
    node_token: str
    listen: tuple[str, int] | None  # serve the HTTP API here (p2p)
    advertise: str  # the URL workers call (p2p); "" when not listening
    relay: bool  # keep a WebSocket to the gateway
    ttl_sec: int
    capabilities: tuple[str, ...]
    workdir: Path
    run: bool  # serve run at all
    run_timeout_sec: float
    max_output_chars: int
    deny_patterns: tuple[str, ...]
    location: tuple[float, ...] | None  # lat, lon[, accuracy in metres]
    model_base: str
    model: str
    model_key: str = field(repr=False, default="")

    def can(self, capability: str) -> bool:
        """What this program can actually do (not what it advertises)."""
        return {
            "run": self.run,
            "invoke": True,
            "location": self.location is not None,
            "model": bool(self.model_base),
        }.get(capability, False)


def _http_url(value: str, what: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(f"{what} must be an http:// or https:// URL, not {value!r}")
    return value.rstrip("/")


def _listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SettingsError(f"--listen must be HOST:PORT, e.g. 127.0.0.1:8765, not {value!r}")
    return host.strip("[]"), int(port)


def _location(value: str) -> tuple[float, ...]:
    try:
        numbers = tuple(float(part) for part in value.split(","))
    except ValueError:
        numbers = ()
    if len(numbers) not in (2, 3) or not (-90 <= numbers[0] <= 90 and -180 <= numbers[1] <= 180):
        raise SettingsError(f"the location must be LAT,LON[,ACCURACY_M], not {value!r}")
    return numbers


def _deny(patterns: list[str]) -> tuple[str, ...]:
    for pattern in patterns:
        try:
            re2.compile(pattern)
        except re2.error as exc:
            raise SettingsError(f"--deny {pattern!r} is not a regular expression ({exc})") from None
    return (*ExecToolConfig().deny_patterns, *patterns)


def from_args(args: argparse.Namespace, env: dict[str, str]) -> Settings:
    if not NODE_ID.match(args.id):
        raise SettingsError("--id must be 1-64 letters, digits, '.', '_' or '-'")
    if not args.listen and not args.relay:
        raise SettingsError("give --listen HOST:PORT (p2p), --relay, or both")
    token = args.token or env.get("CLAW_GATEWAY_TOKEN", "")
    node_token = env.get("CLAW_NODE_TOKEN") or secrets.token_urlsafe(32)
    if len(node_token) < 16 or any(c.isspace() for c in node_token):
        raise SettingsError("CLAW_NODE_TOKEN must be at least 16 characters, without spaces")
    listen = _listen(args.listen) if args.listen else None
    advertise = ""
    if args.advertise:
        advertise = _http_url(args.advertise, "--advertise")
    elif listen:
        advertise = f"http://{listen[0]}:{listen[1]}"
    location_text = args.location or env.get("CLAW_NODE_LOCATION", "")
    if args.model_base and not args.model:
        raise SettingsError("--model-base needs --model (the model's name)")
    if not 2 <= args.ttl <= 86400:
        raise SettingsError("--ttl must be between 2 and 86400 seconds")
    if not 0 < args.run_timeout <= 3600:
        raise SettingsError("--run-timeout must be more than 0 and at most 3600 seconds")
    if not 100 <= args.max_output <= 1_000_000:
        raise SettingsError("--max-output must be between 100 and 1000000 characters")
    workdir = Path(args.workdir).expanduser().resolve()
    if not workdir.is_dir():
        raise SettingsError(f"--workdir {workdir} is not a directory")
    settings = Settings(
        gateway=_http_url(args.gateway, "--gateway"),
        node_id=args.id,
        name=args.name or args.id,
        gateway_token=token,
        node_token=node_token,
        listen=listen,
        advertise=advertise,
        relay=args.relay,
        ttl_sec=args.ttl,
        capabilities=(),
        workdir=workdir,
        run=not args.no_run,
        run_timeout_sec=args.run_timeout,
        max_output_chars=args.max_output,
        deny_patterns=_deny(args.deny or []),
        location=_location(location_text) if location_text else None,
        model_base=_http_url(args.model_base, "--model-base") if args.model_base else "",
        model=args.model or "",
        model_key=env.get("CLAW_NODE_MODEL_KEY", ""),
    )
    if args.capabilities is not None:
        caps = [c.strip() for c in args.capabilities.split(",") if c.strip()]
        bad = [c for c in caps if not CAPABILITY.match(c)]
        if bad or len(caps) > 32:
            raise SettingsError("--capabilities is a comma-separated list of up to 32 names "
                                "like run,invoke,location,model")  # fmt: skip
    else:
        caps = [c for c in ("run", "invoke", "location", "model") if settings.can(c)]
    return replace(settings, capabilities=tuple(dict.fromkeys(caps)))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="claw-node",
        usage="%(prog)s --gateway URL --id ID (--listen HOST:PORT | --relay | both) [options]",
        description="Run this device as a clawfleet node: register with the gateway, renew, "
        "and serve run, invoke, location_get and agent_task.",
    )
    p.add_argument("--gateway", required=True, help="the gateway, e.g. http://10.0.0.2:18790")
    p.add_argument("--id", required=True, help="this node's id (letters, digits, . _ -)")
    p.add_argument("--name", help="a display name (default: the id)")
    p.add_argument("--token", help="the gateway's token (better: $CLAW_GATEWAY_TOKEN)")
    p.add_argument("--listen", help="HOST:PORT to serve the node API on (p2p)")
    p.add_argument("--advertise", help="the URL workers call (default: http://<--listen>)")
    p.add_argument("--relay", action="store_true", help="keep a WebSocket to the gateway")
    p.add_argument("--ttl", type=int, default=60, help="lease in seconds (renewed every ttl/3)")
    p.add_argument("--capabilities", help="advertise these (default: what this node can do)")
    p.add_argument("--workdir", default=".", help="where run's commands start (default: .)")
    p.add_argument("--no-run", action="store_true", help="refuse run (no shell commands)")
    p.add_argument("--run-timeout", type=float, default=60.0, help="run's longest command (s)")
    p.add_argument("--max-output", type=int, default=16000, help="run's output cap (chars)")
    p.add_argument("--deny", action="append", help="one more regex run refuses (repeatable)")
    p.add_argument("--location", help="LAT,LON[,ACCURACY_M] for location_get "
                   "(or $CLAW_NODE_LOCATION)")  # fmt: skip
    p.add_argument("--model-base", help="an OpenAI-compatible API for agent_task, e.g. "
                   "http://127.0.0.1:8000/v1 (key: $CLAW_NODE_MODEL_KEY)")  # fmt: skip
    p.add_argument("--model", help="the model agent_task asks")
    return p
