"""/autonomy and /autolearn: the autonomous mode's switches (state: autonomy_state.py; the
work itself: beat_schedules/autonomy.py and autolearn.py)."""

from __future__ import annotations

import time

from claw_worker import constants as k
from claw_worker.autonomy_state import (
    Autolearn,
    Autonomy,
    describe_autolearn,
    describe_autonomy,
    human,
    last_active,
    own_chat,
    parse_interval,
)
from claw_worker.commands.registry import COMMANDS, CommandContext, command

# Autonomy acts on the sender's own chat, so anyone allowed to talk to the agent may turn it
# on for their chat (its limits bound what it costs) and off again; taking it over from
# another chat, or turning it on from where no report can reach (the HTTP API, a terminal:
# then it works for the last active chat), is for admins. Auto-learning reads every
# session's runs and writes the shared memory: admins only.


@command("/autonomy", "/autonomy on [every <N> minutes] | off | status",
         "work on this chat's unfinished tasks by myself while you are away")  # fmt: skip
async def _autonomy(ctx: CommandContext, args: list[str]) -> str:
    sub = args[0].lower() if args else "status"
    if sub not in ("on", "off", "status") or (sub != "on" and len(args) > 1):
        return f"Usage: {COMMANDS['/autonomy'].usage}"
    raw, now = await ctx.redis.hgetall(k.AUTONOMY), time.time()
    state, control = Autonomy.from_hash(raw), ctx.config.agents.defaults.runtime_control
    mine = state.session_key == ctx.session_key
    if sub == "status":
        return "\n".join((describe_autonomy(state, control, now, show_chat=mine or ctx.admin),
                          describe_autolearn(Autolearn.from_hash(raw), control, now)))  # fmt: skip
    if state.enabled and not mine and not ctx.admin:
        return "Autonomous mode is working for another chat; only an admin can change that."
    if sub == "off":
        if not state.enabled:
            return "Autonomous mode is already off."
        await ctx.redis.hset(k.AUTONOMY, mapping=state.stop("turned off", now).to_hash())
        return "Autonomous mode off."
    try:
        interval = parse_interval(args[1:])
    except ValueError as exc:
        return f"{exc}.\nUsage: {COMMANDS['/autonomy'].usage}"
    chat = own_chat(ctx.channel, ctx.chat_id, ctx.session_key)
    if chat is None and ctx.admin:
        chat = last_active(await ctx.redis.get(k.LAST_ACTIVE))
    if chat is None:
        return (
            "Autonomous mode reports to a chat, and replies cannot reach this one; turn it on "
            "from a chat (or as an admin here once someone has written in one)."
        )
    await ctx.redis.hset(k.AUTONOMY, mapping=Autonomy.start(chat, interval, now).to_hash())
    where = "this chat" if chat.session_key == ctx.session_key else chat.label()
    every = human(max(interval, control.autonomy_min_run_interval_sec))
    return (
        f"Autonomous mode on for {where}: once you have been away "
        f"{human(control.autonomy_idle_threshold_sec)}, I work on what is unfinished, a round "
        f"at most every {every}. I stop after "
        f"{control.autonomy_max_rounds_without_user} rounds without you or "
        f"{control.autonomy_max_consecutive_stalls} in a row without progress; "
        'say "stop autonomous mode" to stop now.'
    )


@command("/autolearn", "/autolearn on [every <N> minutes] | off | status",
         "review recent runs on my own and save procedures to memory",
         admin="it starts or stops autonomous learning, which reads every session's runs and "
               "writes the shared memory")  # fmt: skip
async def _autolearn(ctx: CommandContext, args: list[str]) -> str:
    sub = args[0].lower() if args else "status"
    if sub not in ("on", "off", "status") or (sub != "on" and len(args) > 1):
        return f"Usage: {COMMANDS['/autolearn'].usage}"
    state, now = Autolearn.from_hash(await ctx.redis.hgetall(k.AUTONOMY)), time.time()
    control = ctx.config.agents.defaults.runtime_control
    if sub == "status":
        return describe_autolearn(state, control, now)
    if sub == "off":
        if not state.enabled:
            return "Auto-learning is already off."
        await ctx.redis.hset(k.AUTONOMY, mapping=state.stop("turned off", now).to_hash())
        return "Auto-learning off."
    try:
        interval = parse_interval(args[1:])
    except ValueError as exc:
        return f"{exc}.\nUsage: {COMMANDS['/autolearn'].usage}"
    chat = own_chat(ctx.channel, ctx.chat_id, ctx.session_key)
    await ctx.redis.hset(k.AUTONOMY, mapping=Autolearn.start(chat, interval, now).to_hash())
    return (
        "Auto-learning on: while you are away I review new runs and save what is worth reusing "
        f"as procedures; I stop after {control.autolearn_max_rounds_without_user} rounds "
        'without you. Say "stop auto-learning" to stop now.'
    )
