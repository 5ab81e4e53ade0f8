"""Per-channel config sections. Each chat channel owns one small model here."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from claw_worker.config.fields import secret


class ChannelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    enabled: bool = False
    # Sender ids allowed to talk to the agent; empty allows everyone.
    allow_from: list[str] = []
    # Outbound token bucket: sustained messages per second and burst size.
    rate_per_sec: float = Field(1.0, gt=0)
    burst: int = Field(5, ge=1)


class TelegramConfig(ChannelConfig):
    token: str = secret()
    api_base: str = "https://api.telegram.org"


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
