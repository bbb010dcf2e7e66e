"""A cap on request bodies (BNLAB_MAX_BODY_BYTES), so no request can make the API buffer more.

Uvicorn sets no limit of its own, and FastAPI reads a JSON body whole before validating it.
/predict is left to its own limit (BNLAB_MAX_UPLOAD_BYTES, bnlab/api/predict/uploads.py), which says
what to send instead, and so is a bundle's import (BNLAB_MAX_BUNDLE_BYTES,
bnlab/api/experiments/bundles.py): its checkpoints are larger than any spec.
"""

from fastapi import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bnlab.api.core.auth import route_path

OWN_LIMIT = frozenset({"/predict", "/experiments/import"})


class LimitBody:
    """413 for a body over `max_bytes`: by its Content-Length before reading any of it, or as
    soon as the bytes read pass the limit (a client may send no length, or a false one)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or route_path(scope) in OWN_LIMIT:
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large()(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                # Raised into the route's body read; FastAPI passes an HTTPException through.
                raise self._too_large_error()
            return message

        await self.app(scope, counted, send)

    def _too_large_error(self) -> HTTPException:
        return HTTPException(
            413,
            f"the request body is larger than {self.max_bytes:,} bytes (BNLAB_MAX_BODY_BYTES); "
            "an experiment's spec or a sweep's grid takes a few KB",
        )

    def _too_large(self) -> JSONResponse:
        error = self._too_large_error()
        return JSONResponse({"detail": error.detail}, status_code=413)
