"""Commands that read or change the fleet's config: /config, /reload (admins only)."""

from __future__ import annotations

import asyncio
import json

from claw_worker.commands.registry import COMMANDS, CommandContext, command
from claw_worker.config import ConfigError, config_path
from claw_worker.config import store as config_store
from claw_worker.config.fleet import change_config, reload_config

CONFIG_REASON = "it reads or changes the fleet's configuration"


@command(
    "/config",
    "/config get <path> | /config set <path> <value>",
    "read or change the config",
    admin=CONFIG_REASON,
)
async def _config(ctx: CommandContext, args: list[str]) -> str:
    usage = f"Usage: {COMMANDS['/config'].usage}"
    path = config_path()
    try:
        if len(args) == 2 and args[0] == "get":
            value = config_store.get_path(config_store.load_config(path), args[1])
            masked = config_store.mask_secrets(value, args[1])
            return json.dumps(masked, ensure_ascii=False, indent=2)
        if len(args) >= 3 and args[0] == "set":
            # Writes the file and waits for every process's answer: off the event loop.
            result = await asyncio.to_thread(change_config, path, [(args[1], " ".join(args[2:]))])
            return result.message
    except ConfigError as exc:
        return f"Not changed: {exc}"
    return usage


@command("/reload", "/reload", "make every running process take this config file",
         admin=CONFIG_REASON)  # fmt: skip
async def _reload(ctx: CommandContext, args: list[str]) -> str:
    if args:
        return f"Usage: {COMMANDS['/reload'].usage}"
    try:
        result = await asyncio.to_thread(reload_config, config_path())
    except ConfigError as exc:
        return f"Not reloaded: {exc}"
    return result.message
