"""Work spread over the fleet: pipelines of agent tasks, spawned sub-agents, resource-key
locks. Each task or sub-agent is a message in a session of its own, run by whichever worker
takes it (``session/submit.py``); its outcome comes back through ``outcomes.py``."""
