"""Error responses that cannot themselves fail, and that say what to do.

FastAPI's default 422 echoes each rejected input back; a learning rate of 1e999 or NaN is a
float JSON cannot encode, and the default handler would turn that bad input into a 500. A
database that is down or not migrated is a 503 pointing at /health, not a bare 500.
"""

import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy.exc import OperationalError

from bnlab.api.redact import reason
from bnlab.settings import Settings


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(OperationalError, _database_unavailable)  # type: ignore[arg-type]


async def _validation_error(_request: Request, error: RequestValidationError) -> JSONResponse:
    # The default handler's shape ({"detail": [{"loc", "msg", "type", "input", ...}]}), made safe.
    detail = jsonable_encoder(_finite(error.errors()))
    return JSONResponse(status_code=422, content={"detail": detail})


async def _database_unavailable(request: Request, error: OperationalError) -> JSONResponse:
    settings: Settings = request.app.state.settings
    cause = reason(error.orig or error, settings.database_url)
    detail = f"the database is unavailable or not migrated ({cause}); see GET /health"
    return JSONResponse(status_code=503, content={"detail": detail})


def _finite(value: Any) -> Any:
    """`value` with every non-finite float written as text ("inf", "nan")."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def describe(error: ValidationError, most: int = 3) -> str:
    """A pydantic error as one line for a person: where and what, the first few."""
    errors = error.errors(include_url=False)
    parts = [f"{_where(e['loc'])}: {e['msg']}" if e["loc"] else e["msg"] for e in errors[:most]]
    more = f" (and {len(errors) - most} more)" if len(errors) > most else ""
    return "; ".join(parts) + more


def _where(loc: tuple[int | str, ...]) -> str:
    name, *indexes = loc
    # A union's branch tag appears in the location; a person only needs the indexes.
    return str(name) + "".join(f"[{i}]" for i in indexes if isinstance(i, int))
