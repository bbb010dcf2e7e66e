"""Error responses that cannot themselves fail, and that say what to do.

FastAPI's default 422 echoes each rejected input back; a learning rate of 1e999 or NaN is a
float JSON cannot encode, and a list nested 500 deep overflows the recursion of any encoder: the
default handler would turn such bad input into a 500. So the echo is made finite and cut short.

A database that cannot answer now (down, restarting, unreachable, its connection lost mid-request)
or that lacks bnlab's tables is a 503 with `Retry-After` and what to do, not a bare 500: every
route that reads SQL gets it from here, whichever SQLAlchemy error the driver's failure became
(OperationalError, InterfaceError, or any error that invalidated the connection).

Code below the routes raises the domain's errors (bnlab/api/core/domain_errors.py); `STATUS` is the
one place that says which HTTP status each is.
"""

import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError

from bnlab.api.core import domain_errors
from bnlab.api.core.redact import reason
from bnlab.settings import Settings
from bnlab.store.retry import is_transient

# What a 503 for the database asks a client to wait before trying again.
RETRY_AFTER_SECONDS = 5

# The codes PostgreSQL (SQLSTATE) and the texts SQLite give for a table or column that is not
# there: a database `bnlab migrate` has not brought up to this bnlab's schema.
UNDEFINED_TABLE_OR_COLUMN = frozenset({"42P01", "42703"})
SQLITE_MISSING = ("no such table", "no such column")

STATUS: dict[type[domain_errors.DomainError], int] = {
    domain_errors.Malformed: 400,
    domain_errors.NotFound: 404,
    domain_errors.Conflict: 409,
    domain_errors.TooLarge: 413,
    domain_errors.UnsupportedMedia: 415,
    domain_errors.Invalid: 422,
    domain_errors.Unavailable: 503,
    domain_errors.Busy: 503,
}


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(DBAPIError, _database_error)  # type: ignore[arg-type]
    app.add_exception_handler(domain_errors.DomainError, _domain_error)  # type: ignore[arg-type]


async def _domain_error(_request: Request, error: domain_errors.DomainError) -> JSONResponse:
    headers = {}
    if isinstance(error, domain_errors.Busy):
        headers["Retry-After"] = str(error.retry_after)
    # By the nearest listed class: a subclass (say, a broker that is down) answers as its kind.
    status = next(STATUS[kind] for kind in type(error).__mro__ if kind in STATUS)
    return JSONResponse(status_code=status, content={"detail": error.message}, headers=headers)


async def _validation_error(_request: Request, error: RequestValidationError) -> JSONResponse:
    # The default handler's shape ({"detail": [{"loc", "msg", "type", "input", ...}]}), made safe.
    detail = jsonable_encoder([_echo_safely(e) for e in error.errors()])
    return JSONResponse(status_code=422, content={"detail": detail})


async def _database_error(request: Request, error: DBAPIError) -> JSONResponse:
    settings: Settings = request.app.state.settings
    detail = database_unavailable(error, settings)
    if detail is None:
        raise error  # a bug (an integrity error, bad SQL): the 500 it is
    return JSONResponse(
        status_code=503,
        content={"detail": detail},
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def database_unavailable(error: DBAPIError, settings: Settings) -> str | None:
    """What a person should read when `error` means the database cannot serve this request now;
    None when it means something else."""
    cause = reason(error.orig or error, settings.database_url)
    if _schema_missing(error):
        return (
            f"the database lacks bnlab's tables or columns: run `bnlab migrate` ({cause}); "
            "see GET /health"
        )
    if is_transient(error):
        return (
            f"the database is unreachable; retry shortly ({cause}); GET /health shows what is down"
        )
    return None


def _schema_missing(error: DBAPIError) -> bool:
    if getattr(error.orig, "pgcode", None) in UNDEFINED_TABLE_OR_COLUMN:
        return True
    return str(error.orig).startswith(SQLITE_MISSING)


# How much of a rejected input a 422 echoes: enough to recognise it, never the whole body.
ECHO_DEPTH, ECHO_ITEMS, ECHO_CHARS = 4, 20, 200


def _echo_safely(error: dict[str, Any]) -> dict[str, Any]:
    return {key: _finite(value, ECHO_DEPTH) for key, value in error.items()}


def _finite(value: Any, depth: int) -> Any:
    """`value` with every non-finite float written as text ("inf", "nan"), cut to `depth`
    levels, `ECHO_ITEMS` items per level and `ECHO_CHARS` characters per string."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str) and len(value) > ECHO_CHARS:
        return value[:ECHO_CHARS] + "..."
    if isinstance(value, dict | list | tuple) and depth == 0:
        return "..."
    if isinstance(value, dict):
        items = list(value.items())[:ECHO_ITEMS]
        return {str(key): _finite(item, depth - 1) for key, item in items}
    if isinstance(value, list | tuple):
        return [_finite(item, depth - 1) for item in value[:ECHO_ITEMS]]
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
