"""The client's address behind reverse proxies (``gateway.trusted_proxies``).

The function on its own (a trusted chain, a forged header from an untrusted peer, IPv6,
garbage), the setting's validation, and the per-address rate limit of a real ingress: from
a trusted loopback proxy each forwarded client has its own bucket; from an untrusted peer a
forged X-Forwarded-For changes nothing (counted for the campaign).
"""

from __future__ import annotations

import ipaddress

import httpx
import pytest
from pydantic import ValidationError

from claw_ingress.client_addr import client_address, trusted_networks
from claw_worker.config.gateway import GatewayConfig
from tests.campaign import record
from tests.test_transport_security import tracebacks

PROXIES = trusted_networks(("10.0.0.0/8", "fd00::/8", "127.0.0.1"))


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        # A trusted proxy: the first untrusted address from the right.
        ("10.0.0.5", ["198.51.100.1"], "198.51.100.1"),
        ("10.0.0.5", ["198.51.100.1, 10.1.2.3"], "198.51.100.1"),  # two proxies deep
        ("10.0.0.5", ["198.51.100.1", "10.1.2.3"], "198.51.100.1"),  # the header twice
        ("127.0.0.1", [" 198.51.100.1 ,10.9.9.9 "], "198.51.100.1"),  # spaces
        # What the client wrote itself (left of what the proxy appended) is never used.
        ("10.0.0.5", ["1.2.3.4, 5.6.7.8, 198.51.100.1"], "198.51.100.1"),
        ("10.0.0.5", ["10.0.0.1, 198.51.100.1"], "198.51.100.1"),  # a forged trusted one
        # An untrusted peer forging the header: its own address.
        ("203.0.113.7", ["198.51.100.1"], "203.0.113.7"),
        ("203.0.113.7", ["10.0.0.1"], "203.0.113.7"),
        # IPv6: a trusted proxy, a client, one address written two ways, mapped IPv4.
        ("fd00::1", ["2001:db8::1"], "2001:db8::1"),
        ("fd00::1", ["2001:DB8:0:0::1, fd12::9"], "2001:db8::1"),
        ("::ffff:10.0.0.5", ["198.51.100.1"], "198.51.100.1"),
        ("::ffff:203.0.113.7", ["198.51.100.1"], "203.0.113.7"),
        ("2001:db8::66", ["198.51.100.1"], "2001:db8::66"),
        # Garbage on the way: the peer (what the proxy meant cannot be known).
        ("10.0.0.5", ["not-an-address"], "10.0.0.5"),
        ("10.0.0.5", ["198.51.100.1:4711"], "10.0.0.5"),
        ("10.0.0.5", ["[2001:db8::1]"], "10.0.0.5"),
        ("10.0.0.5", ["198.51.100.1, , 10.0.0.9"], "10.0.0.5"),
        ("10.0.0.5", ["unknown"], "10.0.0.5"),
        ("10.0.0.5", [""], "10.0.0.5"),
        ("10.0.0.5", [], "10.0.0.5"),
        ("10.0.0.5", ["1.1.1.1, " * 100 + "198.51.100.1"], "10.0.0.5"),  # too long a chain
        # Garbage left of the first untrusted address is never reached.
        ("10.0.0.5", ["garbage, 198.51.100.1"], "198.51.100.1"),
        # Only trusted proxies in the chain: the leftmost.
        ("10.0.0.5", ["10.0.0.7, 10.0.0.6"], "10.0.0.7"),
    ],
)
def test_the_client_is_the_first_untrusted_address_from_the_right(
    peer: str, forwarded: list[str], expected: str
) -> None:
    assert client_address(peer, forwarded, PROXIES) == expected


def test_no_trusted_proxies_means_the_peer_always() -> None:
    assert client_address("203.0.113.7", ["198.51.100.1"], ()) == "203.0.113.7"
    assert client_address("127.0.0.1", ["198.51.100.1"], ()) == "127.0.0.1"
    assert client_address("not-an-ip", ["198.51.100.1"], PROXIES) == "not-an-ip"


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ("nginx", "not an IP address or network"),
        ("10.0.0.0/33", "not an IP address or network"),
        ("10.0.0.1/8", "write the network, 10.0.0.0/8"),
        ("", "not an IP address or network"),
        ("*", "not an IP address or network"),
    ],
)
def test_bad_trusted_proxies_are_refused_with_the_fix(entry: str, says: str) -> None:
    with pytest.raises(ValidationError) as refused:
        GatewayConfig(trusted_proxies=["127.0.0.1", entry])
    assert says in str(refused.value) and "trusted_proxies" in str(refused.value)


def test_good_trusted_proxies_are_kept() -> None:
    config = GatewayConfig(trusted_proxies=[" 10.0.0.0/8", "fd00::/8", "192.0.2.4"])
    assert config.trusted_proxies == ["10.0.0.0/8", "fd00::/8", "192.0.2.4"]
    assert GatewayConfig().trusted_proxies == []
    assert ipaddress.ip_address("192.0.2.4") in trusted_networks(("192.0.2.4",))[0]


# -- a real ingress ------------------------------------------------------------------------

BURST = 3
LIMITS = {"per_ip_per_min": 1, "per_ip_burst": BURST, "per_sender_per_min": 0}  # no refill
CLIENTS = [f"198.51.100.{n}" for n in range(1, 6)] + ["2001:db8::7"]


def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_bucket(fleet_factory) -> None:
    fleet = fleet_factory(gateway__rate_limit=LIMITS, gateway__trusted_proxies=["127.0.0.1/32"])
    fleet.start_ingress()
    with httpx.Client(base_url=fleet.base_url, timeout=30) as http:
        for client in CLIENTS:
            headers = {"X-Forwarded-For": f"{client}, 127.0.0.1"}  # a second local proxy hop
            codes = [http.get("/v1/models", headers=headers).status_code for _ in range(BURST)]
            assert codes == [200] * BURST, (client, codes)
            over = http.get("/v1/models", headers=headers)
            assert (
                over.status_code == 429 and "gateway.rate_limit" in over.json()["error"]["message"]
            )
        # The proxy itself (no header) still has its own, untouched bucket.
        assert http.get("/v1/models").status_code == 200
    assert not tracebacks(fleet)


def test_a_forged_forwarded_for_from_an_untrusted_peer_is_ignored(fleet_factory) -> None:
    """No trusted proxies (the default): every forged X-Forwarded-For lands in the peer's one
    bucket. uvicorn's own header reading, which trusts loopback, must not undo that."""
    fleet = fleet_factory(gateway__rate_limit=LIMITS)
    fleet.start_ingress()
    forged = [*CLIENTS, "127.0.0.2", "::1", "garbage", "10.0.0.1, 198.51.100.9", "unknown",
              "198.51.100.1:80", ", ".join(["1.2.3.4"] * 80)]  # fmt: skip
    codes: list[int] = []
    with httpx.Client(base_url=fleet.base_url, timeout=30) as http:
        for _ in range(2):
            for value in forged:
                codes.append(http.get("/v1/models", headers={"X-Forwarded-For": value}).status_code)
    tried = len(codes)
    passed, limited = codes.count(200), codes.count(429)
    server_errors = sum(code >= 500 for code in codes)
    assert passed + limited == tried, codes
    # The peer's burst, and then nothing: rejected are those still limited by the peer.
    record("transport: forged X-Forwarded-For", tried=tried, rejected=limited,
           escapes=max(0, passed - BURST), server_errors=server_errors)  # fmt: skip
    assert passed == BURST and server_errors == 0, codes
    assert not tracebacks(fleet)
