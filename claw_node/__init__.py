"""``claw-node``: the small agent a user runs on a device so the fleet can use it (SPEC
"Nodes").

It registers with the gateway (``POST /nodes/register``) under its id, with a token of its
own the fleet must present on every request, renews its lease every third of its TTL, and
serves the node actions over HTTP (p2p: ``--listen``) and/or over a WebSocket it keeps to
the gateway (``--relay``, for devices nobody can call). Modules: ``__main__`` (the command
line), ``settings`` (its validated options), ``gateway`` (registration and the relay
connection), ``server`` (the HTTP API and the token check), ``actions`` (what it can do),
``shell`` (``run``, guarded like the worker's ``exec``).

It stays light: of the project it imports only ``claw_worker.nodes.envelope`` (the wire),
the default deny patterns of ``exec`` and the path of its reaper script; never the agent,
the workers or Redis.
"""
