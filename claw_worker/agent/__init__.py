"""The agent runtime: one turn of history → context → model/tool loop → save → reply."""

from claw_worker.agent.loop import Agent, AgentReply

__all__ = ["Agent", "AgentReply"]
