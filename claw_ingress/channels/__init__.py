"""Chat channel adapters, registered here and nowhere else.

``CHANNELS`` maps a channel's name (its section under ``channels`` in the config) to the
``module:Class`` of its adapter; ``BUILTIN`` names channels that are always on (they come
with the gateway, behind ``gateway.token``). An adapter module is imported only when its
channel is enabled, so a channel's library (python-telegram-bot, ...) costs nothing when it
is off, and one that fails to import cannot stop the others.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from claw_ingress.channels.base import Channel

CHANNELS: dict[str, str] = {
    "telegram": "claw_ingress.channels.telegram:TelegramChannel",
    "discord": "claw_ingress.channels.discord:DiscordChannel",
    "feishu": "claw_ingress.channels.feishu:FeishuChannel",
    "whatsapp": "claw_ingress.channels.whatsapp:WhatsAppChannel",
    "qq": "claw_ingress.channels.qq:QQChannel",
    "dingtalk": "claw_ingress.channels.dingtalk:DingTalkChannel",
    "maixcam": "claw_ingress.channels.maixcam:MaixCamChannel",
}
BUILTIN: dict[str, str] = {
    "ws": "claw_ingress.channels.websocket:WebSocketChannel",
}


def config_channels() -> list[str]:
    return list(CHANNELS)


def builtin_channels() -> list[str]:
    return list(BUILTIN)


def channel_class(name: str) -> type[Channel]:
    spec = CHANNELS.get(name) or BUILTIN.get(name)
    if spec is None:
        raise KeyError(f"no channel named {name!r} (channels: {', '.join(CHANNELS)})")
    module, attribute = spec.split(":")
    return getattr(importlib.import_module(module), attribute)
