"""Reading an exported history (`WorkflowHistory.to_json()`) the way an outsider could: what
it shows in clear, which payloads are not encrypted, and what the keyring opens."""

from __future__ import annotations

import base64
import contextlib
import json
from typing import Any

from google.protobuf import json_format
from temporalio.api.common.v1 import Payload

from parcours.codec import ENCODING, KEY_ID, EncryptionCodec

ENCRYPTED = base64.b64encode(ENCODING).decode()


def readable(history_json: str) -> bytes:
    """Everything a reader of the exported history can see: the JSON, and every base64 value
    in it decoded (payload data is base64 in Temporal's JSON)."""
    seen = [history_json.encode()]

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, str):
            with contextlib.suppress(ValueError):
                seen.append(base64.b64decode(value, validate=True))

    walk(json.loads(history_json))
    return b"\n".join(seen)


def payloads(history_json: str) -> tuple[int, list[str]]:
    """How many payloads are encrypted, and where the others are. Left out: search attributes
    (the server indexes them, so they are never encoded; docs/encryption.md) and the
    bookkeeping the SDK's core writes itself in its markers (a patch's name; a local
    activity's sequence number, attempt and times; its result is ours, and is checked)."""
    encrypted = 0
    clear: list[str] = []

    def walk(value: Any, path: str) -> None:
        nonlocal encrypted
        if isinstance(value, dict):
            if isinstance(value.get("metadata"), dict) and "encoding" in value["metadata"]:
                if value["metadata"]["encoding"] == ENCRYPTED:
                    encrypted += 1
                else:
                    clear.append(path)
                return
            if str(value.get("markerName", "")).startswith("core_"):
                details = {
                    k: v
                    for k, v in value.get("details", {}).items()
                    if k not in ("data", "patch-data")
                }
                value = {**value, "details": details}
            for key, item in value.items():
                if key != "searchAttributes":
                    walk(item, f"{path}.{key}")
        elif isinstance(value, list):
            for n, item in enumerate(value):
                walk(item, f"{path}[{n}]")

    walk(json.loads(history_json), "")
    return encrypted, clear


def decrypted(history_json: str, codec: EncryptionCodec) -> tuple[str, set[str]]:
    """What is readable once every encrypted payload is replaced by its clear form (what the
    codec server gives the UI), and the key ids found."""
    key_ids: set[str] = set()

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            if value.get("metadata", {}).get("encoding") == ENCRYPTED:
                payload = json_format.ParseDict(value, Payload())
                key_ids.add(payload.metadata[KEY_ID].decode())
                return json_format.MessageToDict(codec.decrypt(payload))
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    opened = json.dumps(walk(json.loads(history_json)))
    return readable(opened).decode(errors="replace"), key_ids
