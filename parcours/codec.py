"""Encrypting what Parcours writes into Temporal histories (`PARCOURS_ENCRYPTION_KEY`).

A payload codec runs in the client and the worker, outside workflow code: the Temporal server,
its store and its UI only ever see ciphertext. Each payload becomes AES-256-GCM over the whole
serialized payload (its metadata included), with a fresh 96-bit nonce and the key id as
associated data, stored as `nonce || ciphertext` with the metadata
`encoding: binary/encrypted` and `encryption-key-id: <id>` (the layout of Temporal's own
encryption sample, so its tools read ours).

Only the plugin imports this module, and only when a key is set: workflow code never does.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import (
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    PayloadCodec,
)

from parcours.settings import ENCRYPTION_VARIABLE, EncryptionKey

ENCODING = b"binary/encrypted"
KEY_ID = "encryption-key-id"
NONCE_BYTES = 12


class DecryptionError(ValueError):
    """A payload this codec cannot open: its key is not held, or it was altered."""


class EncryptionCodec(PayloadCodec):
    def __init__(self, keys: Sequence[EncryptionKey]) -> None:
        if not keys:
            raise ValueError(f"encryption needs at least one key: set {ENCRYPTION_VARIABLE}")
        self._ciphers = {k.id: AESGCM(k.key.get_secret_value()) for k in keys}
        self.current = keys[0].id

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encrypt(p) for p in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decrypt(p) for p in payloads]

    def encrypt(self, payload: Payload) -> Payload:
        key_id = self.current.encode()
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[self.current].encrypt(nonce, payload.SerializeToString(), key_id)
        return Payload(metadata={"encoding": ENCODING, KEY_ID: key_id}, data=nonce + sealed)

    def decrypt(self, payload: Payload) -> Payload:
        # Payloads written before encryption was turned on stay readable: entries started then
        # keep running after the switch.
        if payload.metadata.get("encoding") != ENCODING:
            return payload
        key_id = payload.metadata.get(KEY_ID, b"").decode(errors="replace")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise DecryptionError(
                f"a payload was encrypted with key {key_id!r}, which {ENCRYPTION_VARIABLE} "
                f"does not hold (it holds {', '.join(map(repr, self._ciphers))}): keep retired "
                "keys after the first one while histories may still need them"
            )
        nonce, sealed = payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:]
        try:
            plain = cipher.decrypt(nonce, sealed, key_id.encode())
        except InvalidTag:
            raise DecryptionError(
                f"a payload encrypted with key {key_id!r} does not decrypt: the key given "
                "under that id is not the one it was encrypted with, or the payload was altered"
            ) from None
        return Payload.FromString(plain)


def encrypted_data_converter(keys: Sequence[EncryptionKey]) -> DataConverter:
    """The plugin's pydantic converter, with every payload encrypted. Failure messages and
    stack traces are moved into an encoded payload too: a provider's refusal can quote an
    address."""
    return dataclasses.replace(
        pydantic_data_converter,
        payload_codec=EncryptionCodec(keys),
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )
