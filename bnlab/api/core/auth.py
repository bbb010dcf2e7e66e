"""The API token (BNLAB_API_TOKEN): every request but a few open paths must carry
`Authorization: Bearer <token>`, or it is refused with 401 before any route runs.

A plain ASGI middleware rather than a FastAPI dependency: /predict declares no dependencies
(each costs it ~20 us, see deps.py), and a check on the raw header list costs ~1 us. The token
is compared in constant time, and never logged or echoed.

Open without a token:
- /health: Docker's healthcheck and load balancers probe it; it shows no data and no secret.
- / and /static/*: the dashboard's page and scripts; they hold no data, and their API calls
  carry the token the user types into the page.
- /docs, /redoc, /openapi.json: the API's description, the same as the source says; Swagger UI
  must load /openapi.json before a person can type the token into its Authorize dialog.
"""

import hmac
import json
import logging
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from bnlab.settings import Settings

OPEN_PATHS = frozenset(
    {"/health", "/", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
)
OPEN_PREFIXES = ("/static/",)
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
SCHEME = "bearer"  # the name of the security scheme in the OpenAPI document

log = logging.getLogger(__name__)

MISSING = (
    "this API needs a token: send the header 'Authorization: Bearer <token>' with the value of "
    "BNLAB_API_TOKEN on the server"
)
WRONG = "the API token is wrong: send 'Authorization: Bearer <token>' with the server's token"


class RequireToken:
    """Refuses (401) any request to a closed path without the right bearer token."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" or is_open(route_path(scope)):
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        client = scope.get("client") or ("?", 0)
        # %r: a path may hold decoded newlines that would forge log lines. Never the token.
        log.warning(
            "401 %s %r from %s: %s", scope.get("method", "WS"), scope["path"], client[0], refusal
        )
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # policy violation
            return
        await _send_401(send, MISSING if refusal == "no token" else WRONG, refusal)

    def _refusal(self, scope: Scope) -> str | None:
        """None when the request carries the token; else why not (for the log)."""
        header = next((value for name, value in scope["headers"] if name == b"authorization"), None)
        if header is None:
            return "no token"
        scheme, _, credentials = header.strip().partition(b" ")
        if scheme.lower() != b"bearer":
            return "not a bearer token"
        if not hmac.compare_digest(credentials.strip(), self._token):
            return "wrong token"
        return None


def route_path(scope: Scope) -> str:
    """The path the router matches: without the root path a proxy may mount the app under."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


async def _send_401(send: Send, detail: str, refusal: str) -> None:
    challenge = 'Bearer realm="bnlab"'
    if refusal == "wrong token":
        challenge += ', error="invalid_token"'
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"www-authenticate", challenge.encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": json.dumps({"detail": detail}).encode()})


def require_token(app: FastAPI, token: str) -> None:
    """Guard `app` with `token`, and say so in its OpenAPI document (Swagger UI's Authorize)."""
    app.add_middleware(RequireToken, token=token)
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _with_security(build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _with_security(document: dict[str, Any]) -> dict[str, Any]:
    schemes = document.setdefault("components", {}).setdefault("securitySchemes", {})
    schemes[SCHEME] = {
        "type": "http",
        "scheme": "bearer",
        "description": "The server's BNLAB_API_TOKEN.",
    }
    document["security"] = [{SCHEME: []}]
    message = {
        "type": "object",
        "properties": {"detail": {"type": "string"}},
        "required": ["detail"],
    }
    unauthorized = {
        "description": "No token, or the wrong one.",
        "content": {"application/json": {"schema": message}},
    }
    for path, operations in document["paths"].items():
        for operation in operations.values():
            if is_open(path):
                operation["security"] = []  # no token needed here
            else:
                operation.setdefault("responses", {})["401"] = unauthorized
    return document


def access_notice(settings: Settings) -> tuple[int, str]:
    """What `bnlab api` says on start about who can use it: a log level and a line."""
    where = f"{settings.host}:{settings.port}"
    if settings.api_token is not None:
        return logging.INFO, (
            f"API on {where} needs 'Authorization: Bearer <BNLAB_API_TOKEN>' on every route but "
            "/health, the docs and the dashboard's page"
        )
    if settings.host in LOOPBACK:
        return logging.INFO, (
            f"API on {where}, bound to {settings.host} only: open to this machine alone, without "
            "a token (set BNLAB_API_TOKEN to require one)"
        )
    return logging.WARNING, (
        f"API on {where} WITHOUT A TOKEN: anyone who can reach this port can queue experiments "
        "and read every result; set BNLAB_API_TOKEN"
    )
