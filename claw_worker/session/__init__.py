"""The session actor: each session's ordered mailbox and the machinery that drains it.

``enqueue`` (the ingress side: store a message, record its run), ``scripts`` (the Lua), ``mailbox``
(the worker side: lease, take, complete, release), ``leases`` (renewal), ``runner`` (the drain
task's body), ``sweeper`` (beat's backstop), ``stop`` (/stop) and ``runs`` (run state).
Nothing is imported here, so the ingress can take the enqueue side alone.
"""
