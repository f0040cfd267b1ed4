"""Signed one-click unsubscribe links: `{api}/v1/unsubscribe?token=…`.

The token names the profile and channel and carries an HMAC of them, so it cannot be forged or
altered, and it holds no email address or phone number.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from functools import cache
from pathlib import Path

from sqlalchemy.engine import Engine

from activities import profiles
from parcours.errors import InputError
from parcours.settings import Settings

PATH = "/v1/unsubscribe"
_KEY_FILE = "secret.key"


def unsubscribe_url(settings: Settings, profile_id: str, channel: str) -> str:
    base = (settings.api_url or "http://127.0.0.1:8000").rstrip("/")
    return f"{base}{PATH}?token={make_token(settings, profile_id, channel)}"


def make_token(settings: Settings, profile_id: str, channel: str) -> str:
    claims = _b64(json.dumps({"p": profile_id, "c": channel}, separators=(",", ":")).encode())
    return f"{claims}.{_b64(_sign(settings, claims))}"


def read_token(settings: Settings, token: str) -> tuple[str, str]:
    """The (profile id, channel) a token names; InputError when it was not made with our key."""
    claims, _, signature = token.partition(".")
    try:
        valid = hmac.compare_digest(_unb64(signature), _sign(settings, claims))
        data = json.loads(_unb64(claims)) if valid else None
    except ValueError:
        valid, data = False, None
    if not valid or not isinstance(data, dict) or not {"p", "c"} <= data.keys():
        raise InputError(
            "token", "not a valid unsubscribe token (altered, or signed by another key)"
        )
    return str(data["p"]), str(data["c"])


def unsubscribe(engine: Engine, settings: Settings, token: str) -> tuple[str, str]:
    """Opt the token's profile out of its channel; the same link used twice is harmless."""
    profile_id, channel = read_token(settings, token)
    profiles.set_profile(
        engine, profile_id, consent={channel: False}, consent_source="unsubscribe_link"
    )
    return profile_id, channel


def _sign(settings: Settings, claims: str) -> bytes:
    return hmac.new(_key(settings), claims.encode(), hashlib.sha256).digest()


def _key(settings: Settings) -> bytes:
    if settings.secret_key is not None:
        return settings.secret_key.get_secret_value().encode()
    return _key_in(Path(settings.data_dir))


@cache
def _key_in(data_dir: Path) -> bytes:
    # No key configured (a dev stack): make one once and keep it beside the data, so links
    # stay valid across restarts. Production sets PARCOURS_SECRET_KEY on every process.
    path = data_dir / _KEY_FILE
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f"{_KEY_FILE}.{os.getpid()}")
    draft.write_bytes(secrets.token_hex(32).encode())
    draft.chmod(0o600)
    try:
        # Linking never replaces: when two processes race, both keep the first key.
        os.link(draft, path)
    except FileExistsError:
        pass
    finally:
        draft.unlink()
    return path.read_bytes().strip()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
