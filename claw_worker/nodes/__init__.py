"""Remote devices (SPEC "Nodes"), the worker's side: the registry the ingress writes
(``registry.py``), the wire every node speaks (``envelope.py``, shared with ``claw_node``),
dispatching an action p2p or through the ingress's relay (``dispatch.py``, ``relay.py``), and
the audit file and figures of every dispatch (``audit.py``, ``stats.py``).

The ingress (``claw_ingress/nodes.py``) and the workers talk only through Redis. This
``__init__`` imports nothing: the ingress reads ``stats.py`` for ``/status`` and the node
agent imports ``envelope.py``, and neither may pull in more.
"""
