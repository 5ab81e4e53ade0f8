"""The replies and notes the agent writes in its users' language (``agents.defaults.texts``).

The ones filled in with ``%`` are checked when the config is read: a template that does not
take its values would otherwise fail only when its reply is due.
"""

from __future__ import annotations

from pydantic import ConfigDict, ValidationInfo, field_validator

from claw_worker.config.fields import MAX_PROSE_CHARS, Section

# The texts filled in with %: (sample values, what the placeholders receive).
TEMPLATE_VALUES: dict[str, tuple[tuple[object, ...], str]] = {
    "lang_updated_template": (("en",), "one %s (the language code)"),
    "system_rewrite_template": (("update",), "one %s (the update)"),
    "runtime_compaction_note": ((40, 20), "%d, %d (messages removed, messages kept)"),
    "startup_compaction_note": ((40, 20), "%d, %d (messages removed, messages kept)"),
    "message_failed": (("error",), "one %s (the error)"),
    "tool_iterations_exhausted": ((20,), "one %d (the limit)"),
    "token_budget_used_up": (
        ("this session", 1000, 1200, "in 2 h 5 min"),
        "%s, %d, %d, %s (whose budget, the budget, tokens used, when it resets)",
    ),
    "sender_busy": ((3,), "one %d (the sender's runs going on)"),
}


class TextsConfig(Section):
    model_config = ConfigDict(str_max_length=MAX_PROSE_CHARS)

    no_response_fallback: str = "I've completed processing but have no response to give."
    think_only_fallback: str = "Thinking process completed."
    memory_recall_keywords: list[str] = [
        "remember", "记得", "上次", "之前", "偏好", "preference", "todo", "待办", "决定", "decision",
    ]  # fmt: skip
    lang_usage: str = "Usage: /lang <code>"
    lang_invalid: str = (
        "not a language code. Use a language tag such as en, de, pt-BR, zh-CN or zh-Hant "
        "(an ISO 639 language code, then optionally a script and a region)."
    )
    lang_updated_template: str = "Language preference updated to %s"
    subagents_none: str = "No subagents."
    sessions_none: str = "No sessions."
    unsupported_action: str = "unsupported action"
    system_rewrite_template: str = (
        "Rewrite the following internal system update in concise user-facing language:\n\n%s"
    )
    runtime_compaction_note: str = (
        "[runtime-compaction] removed %d old messages, kept %d recent messages"
    )
    startup_compaction_note: str = (
        "[startup-compaction] removed %d old messages, kept %d recent messages"
    )
    provider_not_configured: str = (
        "No LLM provider is configured yet. Run `clawctl login`, or set one with "
        "`clawctl config set providers.proxy.api_base http://HOST:PORT/v1`."
    )
    message_failed: str = "Sorry, I could not process your message: %s"
    run_stopped: str = "Stopped."
    stop_requested: str = "Stopping the current reply."
    tool_iterations_exhausted: str = (
        "I stopped after %d rounds of tool calls: that is the limit per run "
        "(agents.defaults.max_tool_iterations), reached before a final answer. Ask me to "
        "continue, or raise the limit."
    )
    # %s: "this session" or "this sender"; %d: the budget, the tokens used; %s: the reset.
    token_budget_used_up: str = (
        "The daily LLM token budget of %s is used up (%d tokens, %d used today), so no "
        "further model call is made; it resets at 00:00 UTC (%s)."
    )
    sender_busy: str = "waiting: %d runs of this sender at once (quotas.max_runs_per_sender)"

    @field_validator(*TEMPLATE_VALUES)
    @classmethod
    def _check_template(cls, template: str, info: ValidationInfo) -> str:
        values, meaning = TEMPLATE_VALUES[info.field_name or ""]
        try:
            template % values
        except (TypeError, ValueError, KeyError) as exc:
            raise ValueError(
                f"must be a %-template taking {meaning}, in that order (write %% for a "
                f"literal %): {exc}"
            ) from None
        return template
