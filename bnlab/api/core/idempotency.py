"""`Idempotency-Key` on the POSTs that create things (/experiments, /sweeps): a request retried
with the same key gets back what the first one made, never a second one.

The key is stored with the row it made, in a unique column. Two requests racing with one key
make one row: the later INSERT fails on the unique constraint, and that request answers with the
earlier one's row. The same key with a different body is refused (422): it is a client's bug, and
quietly answering with the other row would hide it.
"""

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import Header, Response
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bnlab.api.core.domain_errors import Invalid
from bnlab.store.tables import Experiment, Sweep

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias=HEADER,
        min_length=1,
        max_length=255,  # the width of the idempotency_key columns
        pattern=r"^[!-~]+$",  # visible ASCII, e.g. a UUID
        description="Any unique string, e.g. a UUID. A retry with the same key and body gets "
        "the first request's answer (and `Idempotent-Replayed: true`) instead of a second "
        "creation; the same key with another body is a 422.",
    ),
]

Row = TypeVar("Row")
Made = TypeVar("Made", Experiment, Sweep)


def created(what: str) -> dict[str, Any]:
    """The documented 202 of a POST that makes a `what`: its headers."""
    return {
        "headers": {
            "Location": {"description": f"The {what}'s URL."},
            REPLAYED_HEADER: {
                "description": "`true` when an earlier request with this Idempotency-Key "
                f"made the {what}."
            },
        }
    }


def create_once(
    session: Session,
    model: type[Made],
    key: str | None,
    response: Response,
    *,
    create: Callable[[], Made],
    body: BaseModel,
    what: str,
) -> Made:
    """once() for a POST whose `body` is kept as the row's spec: the row, with the answer's
    Location (/{what}s/{id}) and, when an earlier request made it, Idempotent-Replayed."""
    row, replayed = once(
        session,
        model,
        key,
        create=create,
        same=lambda earlier: earlier.spec == body.model_dump(mode="json"),
        what=what,
    )
    if replayed:
        mark_replayed(response)
    response.headers["Location"] = f"/{what}s/{row.id}"
    return row


def once(
    session: Session,
    model: type[Row],
    key: str | None,
    *,
    create: Callable[[], Row],
    same: Callable[[Row], bool],
    what: str,
) -> tuple[Row, bool]:
    """The `model` row that `key` made earlier, or a new one from `create()` (which stores `key`
    with it and commits); and whether it was made earlier. `same(row)`: was the earlier request's
    body this one's?"""
    earlier = find(session, model, key)
    if earlier is None:
        try:
            return create(), False
        except IntegrityError:
            # Another request with this key committed between our look and our INSERT.
            session.rollback()
            earlier = find(session, model, key)
            if earlier is None:
                raise
    if not same(earlier):
        number = getattr(earlier, "id", "?")
        raise Invalid(
            f"{HEADER} {key!r} was already used for {what} {number}, with a different body: "
            f"send a new key to create another {what}, or the same body to get {what} "
            f"{number} back",
        )
    return earlier, True


def find(session: Session, model: type[Row], key: str | None) -> Row | None:
    if key is None:
        return None
    column: Any = model.idempotency_key  # type: ignore[attr-defined]
    return session.scalars(select(model).where(column == key)).one_or_none()


def mark_replayed(response: Response) -> None:
    response.headers[REPLAYED_HEADER] = "true"
