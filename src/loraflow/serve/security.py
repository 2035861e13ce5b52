"""One ASGI middleware for the server's guards, applied before any route runs:

* request bodies larger than `max_body` bytes -> 413 (checked on Content-Length and while streaming),
* `Authorization: Bearer TOKEN` when the server has a token (`?token=` also works, for <img> and
  websockets, which cannot set headers); the web UI's static files are public,
* cross-site requests: a browser page from another origin may not drive the API (403) unless that
  origin is allowed by CORS; the same check ComfyUI's server makes against drive-by POSTs to localhost.
"""
from __future__ import annotations

import hmac
import json
from urllib.parse import parse_qs, urlsplit

PUBLIC_PATHS = ("/", "/ui", "/favicon.ico")
PUBLIC_PREFIXES = ("/static/",)


class GuardMiddleware:
    def __init__(self, app, max_body: int, token: str | None, allowed_origins: list[str]):
        self.app = app
        self.max_body = max_body
        self.token = token
        self.allowed_origins = set(allowed_origins)

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        path = scope.get("path", "")
        if not self._same_origin(headers):
            return await _refuse(scope, send, 403, "cross-origin request refused (start the server with --cors-origins to allow it)")
        if self.token and path not in PUBLIC_PATHS and not path.startswith(PUBLIC_PREFIXES):
            if not self._authorized(headers, scope.get("query_string", b"")):
                return await _refuse(scope, send, 401, "missing or wrong bearer token")
        if scope["type"] == "http":
            length = headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > self.max_body):
                return await _refuse(scope, send, 413, f"request body larger than {self.max_body} bytes")
            receive = self._limited(receive, scope, send)
        return await self.app(scope, receive, send)

    def _same_origin(self, headers: dict) -> bool:
        origin = headers.get("origin")
        if not origin or origin == "null" and not headers.get("host"):
            return True
        if origin in self.allowed_origins or "*" in self.allowed_origins:
            return True
        return urlsplit(origin).netloc.lower() == headers.get("host", "").lower()

    def _authorized(self, headers: dict, query: bytes) -> bool:
        auth = headers.get("authorization", "")
        given = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        if given is None:
            given = (parse_qs(query.decode("latin-1")).get("token") or [None])[0]
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def _limited(self, receive, scope, send):
        seen = 0
        max_body = self.max_body

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > max_body:
                    raise BodyTooLarge(max_body)
            return message

        return limited_receive


class BodyTooLarge(Exception):
    def __init__(self, limit: int):
        super().__init__(f"request body larger than {limit} bytes")


async def _refuse(scope, send, status: int, message: str) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 4401 if status == 401 else 4403})
        return
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
