"""A name, markdown notes and tags that a person gives an experiment or a sweep: the PATCH body,
its validation, the write, and the `?tag=` filter. One implementation for both owners."""

import re
from typing import Annotated

from fastapi import Query
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from sqlalchemy.orm import Session

from bnlab.api.core.content import NOT_JSON, Responses
from bnlab.api.experiments.schemas import Message
from bnlab.store import queries
from bnlab.store.tables import MAX_NAME, MAX_TAG, Annotatable

MAX_NOTES = 20_000
MAX_TAGS = 20
TAG_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
TAG_RULE = (
    f"a tag is 1 to {MAX_TAG} letters, digits, '.', '_' or '-', starting with a letter or digit"
)


def _tag_word(tag: str) -> str:
    if not re.fullmatch(TAG_PATTERN, tag):
        raise ValueError(f"{TAG_RULE}: {tag[:MAX_TAG]!r} is not one")
    return tag


def _one_line(name: str | None) -> str | None:
    if name is not None and (not name.strip() or any(c < " " for c in name)):
        raise ValueError("a name is one line of text, not blank: send null to remove it")
    return name


TagWord = Annotated[
    str,
    Field(min_length=1, max_length=MAX_TAG, json_schema_extra={"pattern": TAG_PATTERN}),
    AfterValidator(_tag_word),
]


class AnnotationsPatch(BaseModel):
    """What to change; a field left out stays as it is."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "minProperties": 1,
            "examples": [
                {
                    "name": "relu at lr 1",
                    "notes": "Plain dies, **BN** trains.",
                    "tags": ["lesson-3", "relu"],
                },
                {"tags": []},
            ],
        },
    )

    name: Annotated[
        str | None,
        Field(max_length=MAX_NAME, description="One line; null removes it."),
        AfterValidator(_one_line),
    ] = None
    notes: str | None = Field(
        default=None, max_length=MAX_NOTES, description="Markdown; an empty string removes them."
    )
    tags: list[TagWord] | None = Field(
        default=None,
        max_length=MAX_TAGS,
        description="The whole set (replaces the old one); an empty list removes them all.",
    )

    @model_validator(mode="after")
    def _sensible(self) -> "AnnotationsPatch":
        if not self.model_fields_set:
            raise ValueError("send at least one of name, notes and tags")
        if "notes" in self.model_fields_set and self.notes is None:
            raise ValueError('notes cannot be null: send "" to remove them')
        if "tags" in self.model_fields_set and self.tags is None:
            raise ValueError("tags cannot be null: send [] to remove them")
        if self.tags is not None and len(set(self.tags)) < len(self.tags):
            repeated = sorted({tag for tag in self.tags if self.tags.count(tag) > 1})
            raise ValueError(f"each tag once: {', '.join(repeated)} listed more than once")
        return self


def responses(what: str) -> Responses:
    """The documented answers of a PATCH of a `what`, besides its 200."""
    return {
        404: {"model": Message, "description": f"No {what} with that id."},
        **NOT_JSON,
        422: {"description": "A name, notes or tags out of bounds, a bad tag, or nothing sent."},
    }


def annotate(session: Session, row: Annotatable, patch: AnnotationsPatch) -> None:
    """Write the patch on the row and commit."""
    queries.annotate(
        row,
        name=patch.name,
        notes=patch.notes,
        tags=patch.tags,
        clear_name="name" in patch.model_fields_set and patch.name is None,
    )
    session.commit()


TagFilter = Annotated[
    list[TagWord] | None,
    Query(
        alias="tag",
        max_length=MAX_TAGS,
        description="Only those with this tag; repeat it for those with every one of them.",
    ),
]
