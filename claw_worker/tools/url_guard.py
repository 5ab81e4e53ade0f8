"""Where ``web_fetch`` may go: not to this host or its private network, unless allowed.

The URL comes from the model, and the model reads untrusted pages and messages, so a
prompt injection could make it fetch ``http://169.254.169.254/`` (cloud credentials),
``http://localhost:5555/`` (Flower) or the Redis host. Every request, redirects included,
is checked: the host's addresses must all be public, or the host must be listed in
``tools.web_fetch.allowed_hosts`` (a name, an address or a network such as 10.0.0.0/8).

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
            if not _public(address) and not any(address in n for n in self._networks):
                raise ToolError(
                    f"refusing to fetch from {host}: it resolves to {address}, a private, "
                    "loopback or link-local address; add the host (or its network) to "
                    f"{self.setting} to allow it"
                )


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


def _public(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    return address.is_global and not address.is_multicast
