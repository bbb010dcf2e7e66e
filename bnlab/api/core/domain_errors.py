"""What code below the routes raises when a request cannot be served: a kind of refusal and the
message a person reads. Which HTTP status each kind is lives in one place, bnlab/api/core/errors.py;
nothing here knows HTTP, so serving, the study's sources, uploads and submissions say what is
wrong and the routes' layer says how it travels.
"""


class DomainError(Exception):
    """A request refused for a reason its sender can act on; `str(error)` says it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Malformed(DomainError):
    """The request itself cannot be read (a header that is not what it claims)."""


class Invalid(DomainError):
    """Well-formed, but a value in it cannot be used."""


class NotFound(DomainError):
    """What the request names does not exist."""


class Conflict(DomainError):
    """What the request names exists, but its state does not allow this now."""


class TooLarge(DomainError):
    """The body, or what it decodes to, is larger than the API accepts."""


class UnsupportedMedia(DomainError):
    """The body is of a type the route does not take."""


class Unavailable(DomainError):
    """Something the request needs (a dataset, the broker) cannot be reached now."""


class Busy(DomainError):
    """Every slot for this kind of work is taken; retrying after `retry_after` seconds may
    succeed."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after
