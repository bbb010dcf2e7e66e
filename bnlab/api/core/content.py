"""JSON bodies only, said plainly: a POST whose body is not JSON gets 415 and what to send.

FastAPI hands a body of any other type to validation as raw bytes, which answers 422 "Input
should be a valid dictionary", leaving the sender to guess that the header is what is wrong
(`curl -d` sends application/x-www-form-urlencoded unless told otherwise).
"""

from typing import Any

from fastapi import Depends, HTTPException, Request

from bnlab.api.experiments.schemas import Message


async def require_json(request: Request) -> None:
    # Dependencies run before the body is validated, so this answers first.
    header = request.headers.get("content-type")
    if header is None:
        return  # FastAPI reads a body without a type as JSON
    kind = header.split(";", 1)[0].strip().lower()
    if kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json")):
        return
    raise HTTPException(
        415,
        f"Content-Type {kind or '(empty)'} is not accepted: send the body as JSON with the "
        "header 'Content-Type: application/json'",
    )


# A route's documented answers, as FastAPI's `responses=` takes them.
Responses = dict[int | str, dict[str, Any]]

JSON_ONLY = Depends(require_json)
NOT_JSON: Responses = {415: {"model": Message, "description": "The body is not JSON."}}
