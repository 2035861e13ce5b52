"""One ASGI middleware for the server's guards, applied before any route runs:

* request bodies larger than `max_body` bytes -> 413 (checked on Content-Length and while streaming),
* `Authorization: Bearer TOKEN` when the server has a token (`?token=` also works, for <img> and
  websockets, which cannot set headers); the web UI's static files are public,
* cross-site requests: a browser page from another origin may not drive the API (403) unless that
  origin is allowed by CORS; the same check ComfyUI's server makes against drive-by POSTs to localhost,
* the Host header must name this server (localhost, 127.0.0.1, [::1], --host, --allowed-host): a page
  on `evil.example` whose DNS name is rebound to 127.0.0.1 sends `Host: evil.example` and gets 403,
  as Jupyter and Django's ALLOWED_HOSTS refuse it.
"""
from __future__ import annotations

import hmac
import json
from urllib.parse import parse_qs, urlsplit

PUBLIC_PATHS = ("/", "/ui", "/favicon.ico")
PUBLIC_PREFIXES = ("/static/",)


class GuardMiddleware:
    def __init__(self, app, max_body: int, token: str | None, allowed_origins: list[str],
                 allowed_hosts: frozenset[str] | None = None):
        self.app = app
        self.max_body = max_body
        self.token = token
        self.allowed_origins = set(allowed_origins)
        self.allowed_hosts = allowed_hosts  # None: any Host (--allowed-host '*')

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        path = scope.get("path", "")
        if self.allowed_hosts is not None and host_name(headers.get("host", "")) not in self.allowed_hosts:
            return await _refuse(scope, send, 403, "unknown Host header; start the server with --allowed-host NAME "
                                                   "to serve this name")
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


LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def host_name(host_header: str) -> str:
    """`Host` header -> the name alone, lower case: `[::1]:8188` -> `::1`, `Example.org:80` -> `example.org`."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def allowed_hosts(bind_host: str, extra: list[str]) -> frozenset[str] | None:
    """The Host names to serve: loopback, the bound address and --allowed-host values. A wildcard bind
    adds this machine's own names and addresses (what other machines on the network call it)."""
    import socket

    if "*" in extra:
        return None
    names = set(LOOPBACK_NAMES) | {host_name(h) for h in extra}
    if bind_host in WILDCARD_HOSTS:
        try:
            hostname = socket.gethostname()
            names |= {hostname.lower(), socket.getfqdn().lower(), *socket.gethostbyname_ex(hostname)[2]}
        except OSError:  # no resolvable hostname: --allowed-host is the way in
            pass
    else:
        names.add(host_name(bind_host if ":" not in bind_host else f"[{bind_host}]"))
    return frozenset(names)


def is_loopback(host: str) -> bool:
    return host in LOOPBACK_NAMES or host.startswith("127.")


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
