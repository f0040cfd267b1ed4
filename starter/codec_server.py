"""`parcours codec-server`: lets the Temporal UI and CLI show encrypted payloads in clear.

It speaks Temporal's remote codec protocol: `POST /encode` and `POST /decode` take
`{"payloads": [...]}` (the JSON form of `temporal.api.common.v1.Payloads`, data in base64)
and answer the same shape; the UI adds an `X-Namespace` header, which changes nothing here
(one keyring serves every namespace the workers write to).

Every call needs a key of `PARCOURS_CODEC_KEYS`, given either as `Authorization: Bearer KEY`
(the Temporal CLI's `--codec-auth`) or as the first segment of the path, `/KEY/decode`: the
Temporal UI sends no header of its own, so its endpoint is `http://host:port/KEY`. CORS
answers the UI's origins only (`PARCOURS_CODEC_CORS_ORIGINS`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads

from parcours.codec import DecryptionError, EncryptionCodec
from parcours.settings import ENCRYPTION_VARIABLE, Settings
from starter.auth import bearer_key, known_key

DEFAULT_PORT = 8081
log = logging.getLogger("parcours.codec_server")


def create_codec_app(
    settings: Settings, *, keys: Sequence[str] | None = None, origins: Sequence[str] | None = None
) -> FastAPI:
    if not settings.encryption_keys:
        raise ValueError(
            f"the codec server has nothing to decode with: set {ENCRYPTION_VARIABLE} "
            "to the keys the workers use"
        )
    codec = EncryptionCodec(settings.encryption_keys)
    accepted = [k.get_secret_value() for k in settings.codec_keys] if keys is None else keys
    if not accepted:
        raise ValueError(
            "the codec server needs at least one key: set PARCOURS_CODEC_KEYS (comma-separated); "
            "`parcours dev` makes one for you"
        )
    app = FastAPI(title="Parcours codec server", openapi_url=None, docs_url=None, redoc_url=None)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(settings.codec_cors_origins if origins is None else origins),
        allow_methods=["POST"],
        allow_headers=["Authorization", "Content-Type", "X-Namespace"],
        # The UI's "include cross-origin credentials" option sends cookies along.
        allow_credentials=True,
    )

    def check(request: Request, path_key: str | None) -> None:
        given = path_key or bearer_key(request.headers.get("Authorization"))
        if not known_key(given, accepted):
            raise HTTPException(
                401, "a codec key is required: `Authorization: Bearer KEY` or the path /KEY/decode"
            )

    async def transform(
        request: Request, step: Callable[[Payload], Payload], path_key: str | None
    ) -> Response:
        check(request, path_key)
        body = Payloads()
        try:
            json_format.Parse(await request.body(), body)
        except json_format.ParseError as exc:
            raise HTTPException(400, f'expected {{"payloads": [...]}}: {exc}') from None
        try:
            done = Payloads(payloads=[step(p) for p in body.payloads])
        except DecryptionError as exc:
            raise HTTPException(400, str(exc)) from None
        log.info(
            "%s %d payloads (namespace %s)",
            request.url.path.rsplit("/", 1)[-1],
            len(done.payloads),
            request.headers.get("X-Namespace", "-"),
        )
        return Response(json_format.MessageToJson(done), media_type="application/json")

    def route(path: str, step: Callable[[Payload], Payload]) -> None:
        async def with_header(request: Request) -> Response:
            return await transform(request, step, None)

        async def with_path_key(request: Request, key: str) -> Response:
            return await transform(request, step, key)

        endpoints: list[tuple[str, Callable[..., Awaitable[Response]]]] = [
            (f"/{path}", with_header),
            ("/{key}/" + path, with_path_key),
        ]
        for url, endpoint in endpoints:
            app.add_api_route(url, endpoint, methods=["POST"])

    route("encode", codec.encrypt)
    route("decode", codec.decrypt)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
