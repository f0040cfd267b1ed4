"""Settings (SPEC §6): environment variables first, then `parcours.toml` in the data dir.

`parcours dev` writes that file with the addresses it chose, so every other command run with
the same data dir reaches the same stack without flags.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretBytes, SecretStr, ValidationError, field_validator

from parcours.delivery_policy import DeliveryPolicy

CONFIG_FILE = "parcours.toml"
ENCRYPTION_VARIABLE = "PARCOURS_ENCRYPTION_KEY"
# The Temporal UI of `temporal server start-dev`, under both names a browser may use.
DEFAULT_CODEC_ORIGINS = ["http://localhost:8233", "http://127.0.0.1:8233"]


class EncryptionKey(BaseModel):
    """One AES-256 key of PARCOURS_ENCRYPTION_KEY; its id is written beside every payload it
    encrypts, so the payload finds its key again after the key is rotated."""

    id: str
    key: SecretBytes


class Settings(BaseModel):
    data_dir: Path
    database_url: str
    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    # The Temporal Web UI, which the journey page links to (`parcours dev` records its own).
    temporal_ui_url: str | None = None
    api_url: str | None = None
    task_queue: str = "parcours"
    sendgrid_api_key: SecretStr | None = None
    sendgrid_url: str = "https://api.sendgrid.com"
    email_from: str = "noreply@example.com"
    twilio_account_sid: str | None = None
    twilio_auth_token: SecretStr | None = None
    twilio_from: str | None = None
    twilio_messaging_service_sid: str | None = None
    # None means Twilio's own host, which the library knows.
    twilio_url: str | None = None
    # An FCM HTTP v1 `messages:send` URL (or a gateway that speaks its request shape).
    push_url: str | None = None
    push_token: SecretStr | None = None
    # Verifies SendGrid's signed Event Webhook (the key shown under Mail Settings).
    sendgrid_webhook_public_key: str | None = None
    # Signs unsubscribe links; without one, a key is made once and kept in the data dir.
    secret_key: SecretStr | None = None
    # Keys the HTTP API accepts as `Authorization: Bearer KEY`.
    api_keys: list[SecretStr] = Field(default_factory=list)
    # Payload encryption: the first key encrypts, every key decrypts (docs/encryption.md).
    encryption_keys: list[EncryptionKey] = Field(default_factory=list)
    # Keys the codec server accepts; separate from the API's, since the Temporal UI shows its
    # codec endpoint (key included) to everyone who may open the UI.
    codec_keys: list[SecretStr] = Field(default_factory=list)
    codec_cors_origins: list[str] = Field(default_factory=lambda: list(DEFAULT_CODEC_ORIGINS))
    provider_timeout_seconds: float = 10.0
    delivery: DeliveryPolicy = Field(default_factory=DeliveryPolicy)
    # `host:port` where the worker serves its Prometheus metrics, and where the Temporal SDK
    # serves its own (two listeners: the SDK's exporter runs in its Rust core). "off": none.
    worker_metrics_address: str | None = "127.0.0.1:9464"
    temporal_metrics_address: str | None = "127.0.0.1:9465"
    # None: each command's own default (JSON for `parcours worker` and `parcours api`).
    log_format: Literal["json", "text"] | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Processes a worker sends campaign pages from (activities/child_processes.py); None: one
    # more than the cores on Linux, 0: pages run in the worker's own threads.
    page_processes: int | None = Field(default=None, ge=0)

    @field_validator("worker_metrics_address", "temporal_metrics_address")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is None or value.strip().lower() in ("", "off"):
            return None
        host, sep, port = value.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected host:port (or off), got {value!r}")
        return value.strip()

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @classmethod
    def load(
        cls, data_dir: Path | str | None = None, env: Mapping[str, str] | None = None
    ) -> Settings:
        env = os.environ if env is None else env
        root = Path(data_dir or env.get("PARCOURS_DATA_DIR") or ".parcours").absolute()
        file = _read_config(root / CONFIG_FILE)
        values: dict[str, Any] = {
            "data_dir": root,
            "database_url": f"sqlite:///{root / 'parcours.db'}",
        }
        sections = {
            "temporal_address": ("temporal", "address"),
            "temporal_namespace": ("temporal", "namespace"),
            "temporal_ui_url": ("temporal", "ui_url"),
            "task_queue": ("temporal", "task_queue"),
            "api_url": ("api", "url"),
            "worker_metrics_address": ("worker", "metrics_address"),
            "temporal_metrics_address": ("worker", "temporal_metrics_address"),
            "page_processes": ("worker", "page_processes"),
            "database_url": ("database", "url"),
        }
        for name, (section, key) in sections.items():
            if key in file.get(section, {}):
                values[name] = file[section][key]
        variables = {
            "database_url": "PARCOURS_DATABASE_URL",
            "temporal_address": "TEMPORAL_ADDRESS",
            "temporal_namespace": "TEMPORAL_NAMESPACE",
            "temporal_ui_url": "PARCOURS_TEMPORAL_UI_URL",
            "task_queue": "PARCOURS_TASK_QUEUE",
            "sendgrid_api_key": "SENDGRID_API_KEY",
            "sendgrid_url": "PARCOURS_SENDGRID_URL",
            "email_from": "PARCOURS_EMAIL_FROM",
            "twilio_account_sid": "TWILIO_ACCOUNT_SID",
            "twilio_auth_token": "TWILIO_AUTH_TOKEN",
            "twilio_from": "TWILIO_FROM",
            "twilio_messaging_service_sid": "TWILIO_MESSAGING_SERVICE_SID",
            "twilio_url": "PARCOURS_TWILIO_URL",
            "push_url": "PARCOURS_PUSH_URL",
            "push_token": "PARCOURS_PUSH_TOKEN",
            "sendgrid_webhook_public_key": "SENDGRID_WEBHOOK_PUBLIC_KEY",
            "secret_key": "PARCOURS_SECRET_KEY",
            "worker_metrics_address": "PARCOURS_WORKER_METRICS_ADDRESS",
            "temporal_metrics_address": "PARCOURS_TEMPORAL_METRICS_ADDRESS",
            "log_format": "PARCOURS_LOG_FORMAT",
            "log_level": "PARCOURS_LOG_LEVEL",
            "page_processes": "PARCOURS_PAGE_PROCESSES",
        }
        for name, variable in variables.items():
            if env.get(variable):
                values[name] = env[variable]
        values["delivery"] = _delivery_policy(file.get("delivery", {}), env)
        for name, variable in (
            ("api_keys", "PARCOURS_API_KEYS"),
            ("codec_keys", "PARCOURS_CODEC_KEYS"),
            ("codec_cors_origins", "PARCOURS_CODEC_CORS_ORIGINS"),
        ):
            if env.get(variable):
                values[name] = [k.strip() for k in env[variable].split(",") if k.strip()]
        if env.get(ENCRYPTION_VARIABLE):
            values["encryption_keys"] = parse_encryption_keys(env[ENCRYPTION_VARIABLE])
        return cls.model_validate(values)

    @property
    def config_path(self) -> Path:
        return self.data_dir / CONFIG_FILE


# `PARCOURS_QUIET_HOURS="sms=21:00-08:00,push=off"`, `PARCOURS_FREQUENCY_CAPS="email=3/7d"`.
_POLICY_VARIABLES = {
    "quiet_hours": "PARCOURS_QUIET_HOURS",
    "frequency_caps": "PARCOURS_FREQUENCY_CAPS",
}


def _delivery_policy(section: Mapping[str, Any], env: Mapping[str, str]) -> DeliveryPolicy:
    values = dict(section)
    for name, variable in _POLICY_VARIABLES.items():
        if env.get(variable):
            values[name] = _pairs(variable, env[variable])
    if env.get("PARCOURS_MESSAGE_MAX_AGE"):
        values["max_age"] = env["PARCOURS_MESSAGE_MAX_AGE"]
    try:
        return DeliveryPolicy.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(
            f"delivery.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
        )
        raise ValueError(f"invalid delivery settings: {problems}") from None


def _pairs(variable: str, text: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{variable}: expected channel=value pairs, got {item!r}")
        pairs[key.strip()] = value.strip()
    return pairs


_KEY_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
AES_KEY_BYTES = 32


def parse_encryption_keys(text: str) -> list[EncryptionKey]:
    """`PARCOURS_ENCRYPTION_KEY="2026-11:BASE64KEY,2026-05:OLDERKEY"`: comma-separated
    `id:key` pairs, each key 32 random bytes in base64. Errors name the variable and the
    entry, never the key itself."""
    keys: list[EncryptionKey] = []
    entries = [part.strip() for part in text.split(",") if part.strip()]
    if not entries:
        raise ValueError(f"{ENCRYPTION_VARIABLE}: expected id:base64key[,id:base64key...]")
    for n, entry in enumerate(entries, start=1):
        where = f"{ENCRYPTION_VARIABLE}: entry {n}"
        key_id, sep, encoded = entry.partition(":")
        key_id = key_id.strip()
        if not sep:
            raise ValueError(
                f"{where}: expected id:base64key (an id, a colon, then the key), "
                "e.g. made by `parcours encryption-key`"
            )
        if not _KEY_ID.match(key_id):
            raise ValueError(
                f"{where}: the key id {key_id!r} must be 1 to 64 letters, digits, '.', '_' or '-'"
            )
        try:
            secret = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"{where} (id {key_id!r}): the key is not valid base64") from None
        if len(secret) != AES_KEY_BYTES:
            raise ValueError(
                f"{where} (id {key_id!r}): the key is {len(secret)} bytes; "
                f"expected {AES_KEY_BYTES} (an AES-256 key)"
            )
        if any(k.id == key_id for k in keys):
            raise ValueError(f"{where}: the key id {key_id!r} is used twice")
        keys.append(EncryptionKey(id=key_id, key=SecretBytes(secret)))
    return keys


def _read_config(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: invalid TOML: {exc}") from exc


def write_config(path: Path, sections: Mapping[str, Mapping[str, str | int]]) -> None:
    """Write `parcours.toml` atomically, so a reader never sees half a file."""
    lines = ["# Written by `parcours dev`: where this stack's parts listen.", ""]
    for section, entries in sections.items():
        lines.append(f"[{section}]")
        for key, value in entries.items():
            lines.append(
                f"{key} = {value}" if isinstance(value, int) else f'{key} = "{_escape(value)}"'
            )
        lines.append("")
    tmp = path.with_suffix(".toml.tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    tmp.replace(path)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')
