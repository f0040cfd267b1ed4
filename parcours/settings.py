"""Settings (SPEC §6): environment variables first, then `parcours.toml` in the data dir.

`parcours dev` writes that file with the addresses it chose, so every other command run with
the same data dir reaches the same stack without flags.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr

CONFIG_FILE = "parcours.toml"


class Settings(BaseModel):
    data_dir: Path
    database_url: str
    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    temporal_ui_url: str | None = None
    api_url: str | None = None
    task_queue: str = "parcours"
    sendgrid_api_key: SecretStr | None = None
    sendgrid_url: str = "https://api.sendgrid.com"
    email_from: str = "noreply@example.com"
    provider_timeout_seconds: float = 10.0

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
            "database_url": ("database", "url"),
        }
        for name, (section, key) in sections.items():
            if key in file.get(section, {}):
                values[name] = file[section][key]
        variables = {
            "database_url": "PARCOURS_DATABASE_URL",
            "temporal_address": "TEMPORAL_ADDRESS",
            "temporal_namespace": "TEMPORAL_NAMESPACE",
            "task_queue": "PARCOURS_TASK_QUEUE",
            "sendgrid_api_key": "SENDGRID_API_KEY",
            "sendgrid_url": "PARCOURS_SENDGRID_URL",
            "email_from": "PARCOURS_EMAIL_FROM",
        }
        for name, variable in variables.items():
            if env.get(variable):
                values[name] = env[variable]
        return cls.model_validate(values)

    @property
    def config_path(self) -> Path:
        return self.data_dir / CONFIG_FILE


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
