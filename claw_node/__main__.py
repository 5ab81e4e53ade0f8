"""``claw-node``: run this device as a node of a clawfleet (see ``claw_node/__init__.py``).

    CLAW_GATEWAY_TOKEN=... claw-node --gateway http://10.0.0.2:18790 --id laptop \\
        --listen 0.0.0.0:8765 --advertise http://10.0.0.7:8765
    CLAW_GATEWAY_TOKEN=... claw-node --gateway https://claw.example.com --id phone --relay

Exit status 2 for options that cannot work and a registration the gateway refuses (wrong
token, a bad field); an unreachable gateway is retried. SIGTERM or Ctrl-C stop it; the
registry then marks it offline after its TTL.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

import httpx

from claw_node.actions import Actions
from claw_node.gateway import BACKOFF_MAX_SEC, Lease, RegistrationError, RelayLink
from claw_node.server import NodeAPI, serve
from claw_node.settings import SettingsError, from_args, parser

log = logging.getLogger("claw_node")


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s claw-node %(levelname)s %(message)s")  # fmt: skip
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per heartbeat otherwise
    try:
        settings = from_args(args, dict(os.environ))
    except SettingsError as exc:
        print(f"claw-node: {exc}", file=sys.stderr)
        sys.exit(2)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    api = NodeAPI(settings.node_token, Actions(settings))
    threads: list[threading.Thread] = []
    server = None
    if settings.listen:
        try:
            server = serve(api, *settings.listen)
        except OSError as exc:
            print(f"claw-node: cannot listen on {args.listen}: {exc.strerror or exc}",
                  file=sys.stderr)  # fmt: skip
            sys.exit(2)
        threads.append(threading.Thread(target=server.serve_forever, name="http", daemon=True))
        threads[-1].start()
    lease = Lease(settings, stop)
    try:
        _first_registration(lease, stop)
    except RegistrationError as exc:
        print(f"claw-node: {exc}", file=sys.stderr)
        sys.exit(2)
    if stop.is_set():
        return
    log.info("registered with %s as %s (capabilities %s; p2p %s; relay %s; ttl %ss)",
             settings.gateway, settings.node_id, ",".join(settings.capabilities) or "none",
             settings.advertise or "off", "on" if settings.relay else "off",
             settings.ttl_sec)  # fmt: skip
    threads.append(threading.Thread(target=lease.keep, name="lease", daemon=True))
    relay = RelayLink(settings, api, stop) if settings.relay else None
    if relay is not None:
        threads.append(threading.Thread(target=relay.keep, name="relay", daemon=True))
    for thread in threads[1 if server else 0 :]:
        thread.start()
    while not stop.wait(1.0):
        pass
    if server is not None:
        server.shutdown()
    if relay is not None:
        relay.close()
    lease.close()
    log.info("stopped")


def _first_registration(lease: Lease, stop: threading.Event) -> None:
    """Register before serving the relay; an unreachable gateway is retried."""
    backoff = 1.0
    while not stop.is_set():
        try:
            lease.register()
            return
        except httpx.HTTPError as exc:
            log.warning("gateway unreachable: %s (retrying in %.0fs)", exc, backoff)
        stop.wait(backoff)
        backoff = min(BACKOFF_MAX_SEC, backoff * 2)


if __name__ == "__main__":
    main()
