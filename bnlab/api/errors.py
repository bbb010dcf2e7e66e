"""Error responses that cannot themselves fail.

FastAPI's default 422 echoes each rejected input back; a learning rate of 1e999 or NaN is a
float JSON cannot encode, and the default handler would turn that bad input into a 500.
"""

import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]


async def _validation_error(_request: Request, error: RequestValidationError) -> JSONResponse:
    # The default handler's shape ({"detail": [{"loc", "msg", "type", "input", ...}]}), made safe.
    detail = jsonable_encoder(_finite(error.errors()))
    return JSONResponse(status_code=422, content={"detail": detail})


def _finite(value: Any) -> Any:
    """`value` with every non-finite float written as text ("inf", "nan")."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value
