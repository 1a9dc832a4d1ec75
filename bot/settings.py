"""Configuration from the environment (and an optional .env file), validated at start."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from recognizer import MIN_CONFIDENCE


class ConfigError(Exception):
    """Configuration a user must fix; the message names the setting."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DIGITBOT_", env_file=".env", extra="ignore")

    telegram_bot_token: SecretStr | None = Field(None, validation_alias="TELEGRAM_BOT_TOKEN")
    telegram_bot_token_file: Path | None = Field(None, validation_alias="TELEGRAM_BOT_TOKEN_FILE")
    admin_ids: Annotated[frozenset[int], NoDecode] = frozenset()
    data_dir: Path = Path("data")
    database_url: str | None = None
    mnist_dir: Path | None = None
    api_url: str = "https://api.telegram.org/bot"
    file_url: str = "https://api.telegram.org/file/bot"
    min_confidence: float = Field(MIN_CONFIDENCE, ge=0.0, le=1.0)
    rate_limit: int = Field(  # updates (photos, commands, button presses) per user and minute
        30, ge=1, validation_alias=AliasChoices("DIGITBOT_RATE_LIMIT", "DIGITBOT_PHOTOS_PER_MINUTE")
    )
    # Requests to chats a second, for all chats together: Telegram refuses a bot more than about 30
    # messages a second. 0: no limit (a test server).
    send_rate: float = Field(30.0, ge=0)
    keep_photos: bool = False
    retention_days: int | None = Field(None, ge=1)
    webhook_url: str | None = None
    webhook_listen: str = "127.0.0.1"  # behind a TLS proxy on the same host; 0.0.0.0 only when told
    webhook_port: int = 8443
    webhook_secret: SecretStr | None = None  # None: a random one for each start
    metrics_port: int | None = Field(None, ge=1, le=65535)  # GET /metrics and /healthz; None: not served
    metrics_listen: str = "127.0.0.1"  # 0.0.0.0 in a container, so that Prometheus can reach it
    retrain_cron: str = "0 3 * * *"  # nightly; crontab syntax, in UTC
    retrain_every: float | None = Field(None, gt=0)  # seconds; overrides the cron schedule when set
    retrain_min_corrections: int = Field(50, ge=0)  # scheduled runs skip until this many new corrections
    retrain_budget: float = Field(240.0, gt=0)  # seconds of training per run
    retrain_epochs: int = Field(3, ge=1)
    retrain_mnist_samples: int = Field(20_000, ge=100)
    max_mnist_drop: float = 0.002  # the gate: at most 0.2 percentage points below the active model
    max_corrections_per_user: int = Field(200, ge=1)
    holdout_percent: int = Field(20, ge=0, lt=100)  # samples (whole users) kept out of training to judge
    # Seconds a fine-tuning run stays claimed without its process renewing the claim (it does so every
    # quarter of this): a run whose replica died is failed this long after, by another replica.
    run_lease: float = Field(60.0, gt=0)

    @field_validator("admin_ids", mode="before")
    @classmethod
    def _comma_separated_ids(cls, value: object) -> object:
        if isinstance(value, str):
            parts = [p.strip() for p in value.split(",") if p.strip()]
            bad = [p for p in parts if not re.fullmatch(r"-?\d+", p)]
            if bad:
                raise ValueError(f"expected comma-separated Telegram user ids, got {bad[0]!r}")
            return frozenset(int(p) for p in parts)
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _telegram_secret_alphabet(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", value.get_secret_value()):
            raise ValueError("Telegram accepts 1-256 characters A-Z, a-z, 0-9, _ and -")
        return value

    @property
    def token(self) -> str:
        """The bot token from TELEGRAM_BOT_TOKEN or the file TELEGRAM_BOT_TOKEN_FILE names."""
        if self.telegram_bot_token is not None:
            token = self.telegram_bot_token.get_secret_value().strip()
        elif self.telegram_bot_token_file is not None:
            try:
                token = self.telegram_bot_token_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(
                    f"TELEGRAM_BOT_TOKEN_FILE: cannot read {self.telegram_bot_token_file}: {exc.strerror}"
                ) from None
        else:
            raise ConfigError(
                "TELEGRAM_BOT_TOKEN is not set (or set TELEGRAM_BOT_TOKEN_FILE to a file holding it); "
                "get a token from @BotFather"
            )
        if not re.fullmatch(r"\d+:[\w-]{20,}", token):
            raise ConfigError(
                "TELEGRAM_BOT_TOKEN does not look like a bot token (digits, a colon, then 20+ "
                "letters); check for quotes or spaces"
            )
        return token

    def resolved_database_url(self) -> str:
        from storage.db import sqlite_url

        return self.database_url or sqlite_url(self.data_dir)


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, with pydantic's errors turned into one readable ConfigError."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else "settings"
            env = name if name.isupper() else f"DIGITBOT_{name.upper()}"
            lines.append(f"{env}: {error['msg']}")
        raise ConfigError("; ".join(lines)) from None
