"""The client's address, seen through the reverse proxies ``gateway.trusted_proxies`` names.

Behind a reverse proxy (nginx, a Kubernetes ingress controller) every connection comes from
the proxy, so the per-address rate limit would put every client in one bucket. The proxy
says who it serves in ``X-Forwarded-For`` (each hop appends the address it was connected
from), but anyone can send that header: it is believed only when the connection itself comes
from a trusted proxy, and only as far as the chain of trusted proxies goes.

uvicorn's own reading of the header (``proxy_headers``, which trusts 127.0.0.1 by default)
is turned off in ``__main__.py``: this module is the only place that reads it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from functools import lru_cache

from starlette.types import Scope

from claw_worker.config.gateway import IPNetwork, parse_proxy_network

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

FORWARDED_FOR = b"x-forwarded-for"
MAX_FORWARDED_ENTRIES = 64  # a longer chain is not a real one: walked no further (peer used)


@lru_cache(maxsize=16)
def trusted_networks(entries: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    """The networks of (already validated) ``gateway.trusted_proxies``; cached per list, as
    it is read on every request."""
    return tuple(parse_proxy_network(entry) for entry in entries)


@lru_cache(maxsize=4096)  # parsed on every request; clients come back
def _address(text: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    # A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d: one client, one bucket.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def _trusted(address: IPAddress, networks: Sequence[IPNetwork]) -> bool:
    return any(address in network for network in networks)


def client_address(peer: str, forwarded_for: Iterable[str], networks: Sequence[IPNetwork]) -> str:
    """The address to count a request against: the peer, unless the peer is a trusted proxy.

    Then ``X-Forwarded-For`` (every value of the header, in order) is walked from the right,
    past the trusted proxies, to the first untrusted address: the client as the nearest
    trusted proxy saw it. Entries further left were written by the client itself and are
    never used. A malformed entry met on the way, an empty header or an over-long chain:
    the peer, since what the proxy meant cannot be known. A chain of trusted addresses only:
    the leftmost one.
    """
    peer_address = _address(peer)
    if peer_address is None or not networks or not _trusted(peer_address, networks):
        return str(peer_address) if peer_address is not None else peer
    entries = [entry for value in forwarded_for for entry in value.split(",")]
    if not entries or len(entries) > MAX_FORWARDED_ENTRIES:
        return str(peer_address)
    client = peer_address
    for entry in reversed(entries):
        address = _address(entry)
        if address is None:
            return str(peer_address)
        client = address
        if not _trusted(address, networks):
            break
    return str(client)


def scope_client_address(scope: Scope, trusted_proxies: list[str]) -> str | None:
    """:func:`client_address` of an ASGI request or handshake (None: no peer, a unix socket)."""
    peer = scope.get("client")
    if not peer:
        return None
    forwarded = [value.decode("latin-1") for name, value in scope.get("headers", ())
                 if name == FORWARDED_FOR]  # fmt: skip
    return client_address(str(peer[0]), forwarded, trusted_networks(tuple(trusted_proxies)))
