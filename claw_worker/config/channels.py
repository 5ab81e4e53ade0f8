"""Per-channel config sections. Each chat channel owns one small model here; its adapter
is ``claw_ingress/channels/<name>.py``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from claw_worker.config.fields import secret


class ChannelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    enabled: bool = False
    # Who may talk to the agent. allowlist: only allow_from; pairing: allow_from, plus
    # senders an operator approved (`clawctl pairing approve CODE`; an unknown sender is
    # sent a one-time code); open: anyone. Refused senders are logged, never answered by
    # the agent.
    dm_policy: Literal["allowlist", "pairing", "open"] = "pairing"
    allow_from: list[str] = []
    # Outbound token bucket: sustained messages per second and burst size.
    rate_per_sec: float = Field(1.0, gt=0)
    burst: int = Field(5, ge=1)
    # The platform's API root (tests and self-hosted mirrors point it elsewhere).
    api_base: str = ""

    @field_validator("api_base")
    @classmethod
    def _check_api_base(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://", "ws://", "wss://")):
            raise ValueError("api_base must start with http://, https://, ws:// or wss://")
        return value.rstrip("/")


class TelegramConfig(ChannelConfig):
    token: str = secret()
    api_base: str = "https://api.telegram.org"  # the root before /bot<token>/


class DiscordConfig(ChannelConfig):
    token: str = secret()


class FeishuConfig(ChannelConfig):
    app_id: str = ""
    app_secret: str = secret()


class WhatsAppConfig(ChannelConfig):
    bridge_url: str = ""


class QQConfig(ChannelConfig):
    app_id: str = ""
    secret: str = secret()


class DingTalkConfig(ChannelConfig):
    client_id: str = ""
    client_secret: str = secret()


class MaixCamConfig(ChannelConfig):
    host: str = "0.0.0.0"
    port: int = Field(18791, ge=1, le=65535)


class ChannelsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    telegram: TelegramConfig = TelegramConfig()
    discord: DiscordConfig = DiscordConfig()
    feishu: FeishuConfig = FeishuConfig()
    whatsapp: WhatsAppConfig = WhatsAppConfig()
    qq: QQConfig = QQConfig()
    dingtalk: DingTalkConfig = DingTalkConfig()
    maixcam: MaixCamConfig = MaixCamConfig()
