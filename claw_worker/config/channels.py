"""Per-channel config sections. Each chat channel owns one small model here; its adapter
is ``claw_ingress/channels/<name>.py``."""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from claw_worker.config.fields import SECTION_CONFIG, Names, check_url, secret


class ChannelConfig(BaseModel):
    model_config = SECTION_CONFIG

    enabled: bool = False
    # Who may talk to the agent. allowlist: only allow_from; pairing: allow_from, plus
    # senders an operator approved (`clawctl pairing approve CODE`; an unknown sender is
    # sent a one-time code); open: anyone. Refused senders are logged, never answered by
    # the agent.
    dm_policy: Literal["allowlist", "pairing", "open"] = "pairing"
    allow_from: Names = []
    # Outbound token bucket: sustained messages per second and burst size.
    rate_per_sec: float = Field(1.0, gt=0)
    burst: int = Field(5, ge=1)
    # The platform's API root (tests and self-hosted mirrors point it elsewhere).
    api_base: str = ""

    # The settings the channel cannot work without (a token, an app id and secret).
    required: ClassVar[tuple[str, ...]] = ()

    def missing(self) -> list[str]:
        """The required settings that are not set (a mode may need others: override)."""
        return [name for name in self.required if not str(getattr(self, name)).strip()]

    @field_validator("api_base")
    @classmethod
    def _check_api_base(cls, value: str) -> str:
        return check_url(value, ("http", "https", "ws", "wss")).rstrip("/")


class TelegramConfig(ChannelConfig):
    token: str = secret()  # from @BotFather (123456789:AA...)
    api_base: str = "https://api.telegram.org"  # the root before /bot<token>/
    # polling: long-poll getUpdates (no public URL needed; one poller per bot: with several
    # ingress replicas use webhook). webhook: Telegram POSTs each update to webhook_url,
    # which must reach this gateway's /webhooks/telegram/ (Telegram calls HTTPS URLs only).
    mode: Literal["polling", "webhook"] = "polling"
    webhook_url: str = ""
    # Telegram sends it back in X-Telegram-Bot-Api-Secret-Token on every webhook request;
    # required in webhook mode. 1-256 characters of A-Z a-z 0-9 _ -.
    webhook_secret: str = secret()
    poll_timeout_sec: int = Field(30, ge=1, le=60)  # how long one getUpdates call waits
    # Webhook mode: a message whose own date is further than this from now is dropped (a
    # replayed request; Telegram keeps an undelivered update 24 hours at most). One sent
    # again within it has the same id and is stored once.
    max_clock_skew_sec: int = Field(86400, ge=60, le=7 * 86400)

    def missing(self) -> list[str]:
        needed = ["token", *(["webhook_url", "webhook_secret"] if self.mode == "webhook" else [])]
        return [name for name in needed if not getattr(self, name).strip()]

    @field_validator("webhook_url")
    @classmethod
    def _check_webhook_url(cls, value: str) -> str:
        return check_url(value)  # https:// (http:// for a local Bot API server)

    @field_validator("webhook_secret")
    @classmethod
    def _check_webhook_secret(cls, value: str) -> str:
        if value and not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", value):
            raise ValueError("webhook_secret must be 1-256 characters of A-Z, a-z, 0-9, _ and -")
        return value


class DiscordConfig(ChannelConfig):
    token: str = secret()  # the bot token (Developer Portal → Bot → Reset Token)
    api_base: str = "https://discord.com/api/v10"  # the REST root before /gateway/bot
    # Gateway intents: GUILD_MESSAGES (1<<9) | DIRECT_MESSAGES (1<<12) | MESSAGE_CONTENT
    # (1<<15). MESSAGE_CONTENT is privileged: enable it under Bot → Privileged Gateway
    # Intents, or drop it (4608): the bot then still reads DMs and messages mentioning it.
    intents: int = Field(37376, ge=0, lt=1 << 31)
    required: ClassVar[tuple[str, ...]] = ("token",)


class FeishuConfig(ChannelConfig):
    # A custom app with the bot ability, events pushed to /webhooks/feishu/ (Developer
    # Console → Events & Callbacks → "send events to developer server").
    app_id: str = ""
    app_secret: str = secret()
    verification_token: str = secret()  # Events & Callbacks → Encryption Strategy
    encrypt_key: str = secret()  # optional there; when set, pushes are encrypted and signed
    api_base: str = "https://open.feishu.cn"  # Lark: https://open.larksuite.com
    # A signed push whose X-Lark-Request-Timestamp is further than this from now is refused
    # (a replay; Feishu signs each retry afresh). Pushes are signed only with encrypt_key.
    max_clock_skew_sec: int = Field(300, ge=30, le=3600)
    required: ClassVar[tuple[str, ...]] = ("app_id", "app_secret", "verification_token")


class WhatsAppConfig(ChannelConfig):
    # cloud: the WhatsApp Business Cloud API, messages pushed to /webhooks/whatsapp/ (Meta
    # App Dashboard → WhatsApp → Configuration: callback URL and verify token; subscribe
    # to the "messages" field). bridge: a WhatsApp Web bridge process (nanobot's Node.js
    # bridge or ClawGo's) reached over a WebSocket. Unset: bridge when bridge_url is set.
    mode: Literal["cloud", "bridge"] = "cloud"
    access_token: str = secret()  # a System User token with whatsapp_business_messaging
    phone_number_id: str = ""  # the business number's id (not the number itself)
    verify_token: str = secret()  # any string, the same as in the dashboard
    app_secret: str = secret()  # App Settings → Basic: signs every notification
    api_base: str = "https://graph.facebook.com/v21.0"  # the root before /<phone_number_id>
    bridge_url: str = ""  # bridge mode: e.g. ws://127.0.0.1:3001
    bridge_token: str = secret()  # bridge mode: nanobot's BRIDGE_TOKEN, if the bridge asks
    # The bridge's outbound frames: nanobot {"type": "send", "to", "text"}, ClawGo
    # {"type": "message", "to", "content"}. Inbound frames of both are understood.
    bridge_protocol: Literal["nanobot", "clawgo"] = "nanobot"
    # cloud: a message whose own ``timestamp`` is further than this from now is dropped
    # (logged, acknowledged so Meta does not resend it). The signature covers the body but
    # has no time in it, so this bounds a captured notification's replay; a replay within
    # it carries the same message id and is dropped by the mailbox's dedupe. One day:
    # Meta resends what the gateway did not take (an outage) for days, not minutes.
    max_clock_skew_sec: int = Field(86400, ge=60, le=7 * 86400)

    @model_validator(mode="before")
    @classmethod
    def _bridge_mode_from_url(cls, data: Any) -> Any:
        # A section naming only a bridge (as nanobot's and ClawGo's configs do) is bridge mode.
        if isinstance(data, dict) and "mode" not in data and data.get("bridge_url"):
            return {**data, "mode": "bridge"}
        return data

    @field_validator("bridge_url")
    @classmethod
    def _check_bridge_url(cls, value: str) -> str:
        return check_url(value, ("ws", "wss"))

    def missing(self) -> list[str]:
        """The settings this mode cannot work without that are not set."""
        if self.mode == "bridge":
            needed = ["bridge_url"]
        else:
            needed = ["access_token", "phone_number_id", "app_secret", "verify_token"]
        return [name for name in needed if not getattr(self, name).strip()]


class QQConfig(ChannelConfig):
    # The official QQ bot API (q.qq.com), events pushed to /webhooks/qq/ (Development →
    # Callback configuration: C2C and group @ message events).
    app_id: str = ""  # the AppID
    secret: str = secret()  # the AppSecret: signs callbacks, gets access tokens
    api_base: str = "https://api.sgroup.qq.com"  # sandbox: https://sandbox.api.sgroup.qq.com
    token_url: str = "https://bots.qq.com/app/getAppAccessToken"
    # A callback whose X-Signature-Timestamp is further than this from now is refused (401):
    # a replay (QQ signs each delivery afresh).
    max_clock_skew_sec: int = Field(300, ge=30, le=3600)

    required: ClassVar[tuple[str, ...]] = ("app_id", "secret")

    @field_validator("token_url")
    @classmethod
    def _check_token_url(cls, value: str) -> str:
        if not value:
            raise ValueError("token_url must be set (https://bots.qq.com/app/getAppAccessToken)")
        return check_url(value)


class DingTalkConfig(ChannelConfig):
    # An internal app's robot in HTTP mode, messages pushed to /webhooks/dingtalk/.
    client_id: str = ""  # the AppKey (Client ID)
    client_secret: str = secret()  # the AppSecret: signs the callbacks, gets access tokens
    robot_code: str = ""  # empty: client_id (an internal app's robot code is its AppKey)
    api_base: str = "https://api.dingtalk.com"
    # Replies go to a message's sessionWebhook only when it starts with this (the webhook
    # comes in the callback's body, which the signature does not cover).
    session_webhook_base: str = "https://oapi.dingtalk.com/"
    # A callback whose timestamp is further than this from now is refused (DingTalk: 1 h).
    max_clock_skew_sec: int = Field(3600, ge=60, le=3600)
    required: ClassVar[tuple[str, ...]] = ("client_id", "client_secret")


class MaixCamConfig(ChannelConfig):
    # The TCP server the cameras connect to. Their protocol (PicoClaw's) has no credentials
    # (a device names itself), so it listens on loopback unless told otherwise: bind a LAN
    # address only on a network you trust.
    host: str = "127.0.0.1"
    port: int = Field(18791, ge=1, le=65535)
    # A connection that sends nothing (no event, no heartbeat) this long is closed, so that
    # silent or dead connections cannot hold every device slot; 0: never. Dead peers (a
    # board that lost power) are also found by TCP keepalive within about two minutes.
    idle_timeout_sec: int = Field(600, ge=0, le=86400)
    # Connections from one IP address at once (of the 64 in all), so that one host cannot
    # take every slot with live connections. Devices reached through one tunnel or proxy
    # share its address: raise this to their number.
    max_connections_per_address: int = Field(16, ge=1, le=64)


class ChannelsConfig(BaseModel):
    model_config = SECTION_CONFIG

    telegram: TelegramConfig = TelegramConfig()
    discord: DiscordConfig = DiscordConfig()
    feishu: FeishuConfig = FeishuConfig()
    whatsapp: WhatsAppConfig = WhatsAppConfig()
    qq: QQConfig = QQConfig()
    dingtalk: DingTalkConfig = DingTalkConfig()
    maixcam: MaixCamConfig = MaixCamConfig()
