"""Where ``web_fetch`` may go: not to this host or its private network, unless allowed.

The URL comes from the model, and the model reads untrusted pages and messages, so a
prompt injection could make it fetch ``http://169.254.169.254/`` (cloud credentials),
``http://localhost:5555/`` (Flower) or the Redis host. Every request, redirects included,
is checked: the host's addresses must all be public, or the host must be listed in
``tools.web_fetch.allowed_hosts`` (a name, an address or a network such as 10.0.0.0/8).
An IPv6 address that carries an IPv4 one (IPv4-mapped, IPv4-compatible, NAT64, 6to4,
Teredo) is judged by the IPv4 address too: ``[64:ff9b::7f00:1]`` is 127.0.0.1.

The check resolves the name itself, a moment before httpx connects: a DNS server that
answers differently the second time (DNS rebinding) can still get through. Deployments that
need a hard boundary should also fence the workers with a firewall or an egress proxy.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence

from claw_worker.tools.base import ToolError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class UrlGuard:
    """``setting`` names the allow-list in the refusal (skill downloads have their own)."""

    def __init__(
        self,
        allowed_hosts: Sequence[str],
        *,
        block_private: bool = True,
        setting: str = "tools.web_fetch.allowed_hosts",
    ) -> None:
        self.block_private = block_private
        self.setting = setting
        self._names: set[str] = set()
        self._networks: list[Network] = []
        for entry in allowed_hosts:
            try:
                self._networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                self._names.add(entry.strip().lower().rstrip("."))

    def check(self, host: str, port: int) -> None:
        """Raise ``ToolError`` when ``host`` is off limits."""
        name = host.lower().rstrip(".").strip("[]")
        if not self.block_private or name in self._names:
            return
        for address in _resolve(name, port):
            for inner in _meanings(address):
                if _public(inner) or self._allowed(address, inner):
                    continue
                carries = f" (an IPv6 form of {inner})" if inner != address else ""
                raise ToolError(
                    f"refusing to fetch from {host}: it resolves to {address}{carries}, a "
                    "private, loopback or link-local address; add the host (or its network) "
                    f"to {self.setting} to allow it"
                )

    def _allowed(self, address: IPAddress, inner: IPAddress) -> bool:
        return any(address in n or inner in n for n in self._networks)


def _resolve(name: str, port: int) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(name)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ToolError(f"cannot resolve host {name!r}: {exc}") from exc
    # An IPv6 answer may carry a scope ("fe80::1%eth0"): the address is what counts.
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


# IPv6 ranges that carry an IPv4 address in their low 32 bits and reach it through a
# translator (RFC 6052 NAT64); the local-use NAT64 range (RFC 8215) may embed it anywhere.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_LOCAL_NAT64 = ipaddress.IPv6Network("64:ff9b:1::/48")


def _meanings(address: IPAddress) -> list[IPAddress]:
    """The address and every IPv4 address it embeds, each of which must pass: Python 3.11
    calls ``[::7f00:1]``, ``[64:ff9b::7f00:1]`` and ``[2002:7f00:1::]`` global, yet each
    leads to 127.0.0.1 through a translator or a tunnel."""
    if isinstance(address, ipaddress.IPv4Address):
        return [address]
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]  # ::ffff:127.0.0.1 is 127.0.0.1, and only that
    found: list[IPAddress] = [address]
    if int(address) >> 32 == 0 or address in _NAT64:  # ::127.0.0.1 (IPv4-compatible), NAT64
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    if address.sixtofour is not None:  # 2002:7f00:1:: (6to4)
        found.append(address.sixtofour)
    if address.teredo is not None:  # 2001:0:<server>::<client, inverted> (Teredo)
        found.extend(address.teredo)
    return found


def _public(address: IPAddress) -> bool:
    if address in _LOCAL_NAT64:
        return False  # the embedded address could be at any of several offsets
    return address.is_global and not address.is_multicast
