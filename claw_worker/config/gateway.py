"""The ``gateway`` section: the ingress's address, token, browser and size limits, and
the rate limits it keeps in Redis (claw_ingress/; docs/security.md)."""

from __future__ import annotations

import ipaddress
import re

from pydantic import Field, field_validator

from claw_worker.config.channels import ChannelsConfig
from claw_worker.config.fields import Section, secret


def _is_loopback_host(host: str) -> bool:
    """localhost or a loopback address (anything else, 0.0.0.0 and names included, may be
    reachable from other hosts)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_proxy_network(entry: str) -> IPNetwork:
    """One ``gateway.trusted_proxies`` entry, an address or a network; ValueError saying
    what is wrong with it."""
    text = entry.strip()
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        if "host bits set" in str(exc):
            network = ipaddress.ip_network(text, strict=False)
            raise ValueError(f"{entry!r} has host bits set: write the network, {network}") from None
        raise ValueError(
            f"{entry!r} is not an IP address or network (like 10.0.0.5, 10.0.0.0/8 or "
            "fd00::/8); give a proxy's address, not its host name"
        ) from None


class RateLimitConfig(Section):
    """Token buckets kept in Redis (claw_ingress/ratelimit.py), so every ingress replica
    draws on the same ones. Over a limit: HTTP 429 with Retry-After, a /ws error frame, a
    chat message dropped (logged, one "slow down" answer per sender and minute). 0: off."""

    # Requests per minute from one client address, every route but /health (a flood of
    # wrong tokens included). Behind a reverse proxy every client shares its address
    # unless the proxy is in gateway.trusted_proxies.
    per_ip_per_min: int = Field(600, ge=0, le=1_000_000)
    per_ip_burst: int = Field(100, ge=1, le=1_000_000)  # requests at once before the rate applies
    # Messages per minute from one sender ("<channel>:<sender_id>"), from any channel, the
    # APIs and /ws; a message without a sender id (/ws, OpenAI, an API caller giving none)
    # counts against its session, so an anonymous caller is bounded by per_ip_per_min.
    per_sender_per_min: int = Field(30, ge=0, le=1_000_000)
    per_sender_burst: int = Field(10, ge=1, le=1_000_000)


class GatewayConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(18790, ge=1, le=65535)
    token: str = secret("Authorization: Bearer <token> on /api/* when set")
    max_body_bytes: int = Field(512 * 1024, ge=1024)
    # POST /v1/chat/completions (when larger than max_body_bytes): OpenAI clients resend the
    # whole conversation each turn, images pasted into it as data URLs, of which the agent
    # reads the last user message; at 512 KiB a chat UI's conversation ended for good at
    # its first screenshot (every later turn carries it).
    max_openai_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    # Browser origins (scheme://host[:port]) whose pages may call the API; a request
    # carrying any other Origin is refused.
    allowed_origins: list[str] = []
    # Extra names accepted in the Host header while bound to loopback (a reverse proxy's);
    # localhost and loopback addresses always are. Guards against DNS rebinding.
    allowed_hosts: list[str] = []
    # Senders ("<channel>:<sender_id>") who may run admin commands (/config set, /reload)
    # from a chat; the CLI always may, an anonymous API caller never.
    admins: list[str] = []
    # Slow or flooding clients: at most this many connections (503 beyond), and this long
    # to send the request headers and the body.
    max_connections: int = Field(1000, ge=1, le=100_000)
    header_timeout_sec: float = Field(10.0, gt=0, le=600)
    body_timeout_sec: float = Field(30.0, gt=0, le=3600)
    # Listening on a non-loopback address without a token is refused at start; this says
    # "yes, expose the API unauthenticated" (e.g. behind a proxy that authenticates).
    allow_public_without_token: bool = False
    # The largest /ws frame taken; a larger one closes the connection (1009). None: as
    # max_body_bytes.
    max_frame_bytes: int | None = Field(None, ge=1024)
    rate_limit: RateLimitConfig = RateLimitConfig()
    # Reverse proxies in front (addresses or networks: "10.0.0.0/8", "fd00::/8"). Only a
    # connection from one of them has its X-Forwarded-For believed, walked from the right
    # past these to the client, whose address the per-address rate limit and the logs then
    # use (claw_ingress/client_addr.py). Empty: the connection's own address, always.
    trusted_proxies: list[str] = []

    @property
    def frame_limit(self) -> int:
        return self.max_frame_bytes or self.max_body_bytes

    def exposure_problem(self, host: str | None = None) -> str | None:
        """Why listening on ``host`` (default: this section's) is refused, or None: an
        address other hosts can reach, with no token and no explicit override."""
        host = (host or self.host).strip().strip("[]")
        if self.token or self.allow_public_without_token or _is_loopback_host(host):
            return None
        return (
            f"refusing to listen on {host} without gateway.token: anyone who can reach it "
            "could talk to the agent. Set a token (clawctl config set gateway.token "
            '"$(openssl rand -hex 32)"), listen on 127.0.0.1 (clawctl config set '
            "gateway.host 127.0.0.1), or, if a proxy in front authenticates, clawctl config "
            "set gateway.allow_public_without_token true"
        )

    @field_validator("token")
    @classmethod
    def _check_token(cls, token: str) -> str:
        if token and (token != token.strip() or any(c.isspace() for c in token)):
            raise ValueError("the token must not contain spaces or line breaks")
        if token and not token.isprintable():
            raise ValueError("the token must be printable text")
        return token

    @field_validator("trusted_proxies")
    @classmethod
    def _check_trusted_proxies(cls, entries: list[str]) -> list[str]:
        for entry in entries:
            parse_proxy_network(entry)  # raises, naming the entry and the fix
        return [entry.strip() for entry in entries]

    @field_validator("admins")
    @classmethod
    def _check_admins(cls, admins: list[str]) -> list[str]:
        # An entry that can never match (no channel, a channel that names no sender) would
        # leave the operator believing someone is an admin who is not.
        channels = [*ChannelsConfig.model_fields, "api"]
        for entry in admins:
            channel, _, sender = entry.partition(":")
            if channel not in channels or not sender or sender != sender.strip():
                raise ValueError(
                    f"{entry!r} is not <channel>:<sender_id> (e.g. telegram:123456789, "
                    f"api:ops), with a channel whose messages name their sender: "
                    f"{', '.join(channels)}"
                )
        return admins

    @field_validator("allowed_origins")
    @classmethod
    def _check_origins(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            if not re.fullmatch(r"https?://[^/\s]+", origin):
                raise ValueError(
                    f"{origin!r} is not an origin like https://app.example.com (no path)"
                )
        return origins
