"""The ``quotas`` section: resource quotas per session and per sender (claw_worker/quotas.py)."""

from __future__ import annotations

from pydantic import Field

from claw_worker.config.fields import Section


class QuotasConfig(Section):
    """Resource quotas per session and per sender (claw_worker/quotas.py; docs/security.md).

    A sender is ``<channel>:<sender_id>`` of a user's message; the fleet's own messages
    (cron, heartbeat, autonomy, pipelines, sub-agents) and API calls that name no sender_id
    count only toward their session. Exempt from the token budgets and from max_runs_per_sender: the
    CLI (channel ``cli``: whoever runs it holds the config and Redis) and the senders of
    gateway.admins (as ``commands.is_admin`` vouches for them). Nobody is exempt from
    max_message_chars or agents.defaults.max_tool_iterations (the limit of tool-call rounds
    per run, whose reply says it was reached).
    """

    # The longest message text accepted, in characters: the ingress answers longer ones
    # with 413 on the APIs and a short reply on chat channels; the worker fails a longer
    # one from cron or a pipeline with a reply saying so.
    max_message_chars: int = Field(100_000, ge=1, le=10_000_000)
    # LLM tokens (the providers' total_tokens) per UTC day, counted in Redis across the
    # fleet; 0: unlimited. At the limit no further LLM call is made, a run under way stops
    # before its next call, and the reply says when the budget resets (00:00 UTC). A call
    # asks for no more output tokens than are left; only its prompt may overshoot.
    tokens_per_day_per_session: int = Field(0, ge=0)
    tokens_per_day_per_sender: int = Field(0, ge=0)
    # Runs of one sender at once across the fleet (each session runs one at a time); 0:
    # unlimited. A message over it waits queued, tried again after sender_busy_retry_sec,
    # like a message waiting for its resource keys: it is delayed, never failed.
    max_runs_per_sender: int = Field(10, ge=0, le=100_000)
    sender_busy_retry_sec: float = Field(2.0, gt=0, le=3600)

    def message_too_long(self, text: str) -> str | None:
        """What to tell the sender of ``text`` when it is over max_message_chars, else None."""
        if len(text) <= self.max_message_chars:
            return None
        return (
            f"Your message is {len(text):,} characters long; the limit is "
            f"{self.max_message_chars:,} (quotas.max_message_chars). Send it in shorter parts."
        )
