"""Where checkpoints live: a local folder or an object store, through fsspec, in one place.

A location is a local path (`/srv/checkpoints/experiment-1/bn.safetensors`) or an fsspec URL
(`s3://bucket/prefix/experiment-1/bn.safetensors`; `gs://` and others once their fsspec package
is installed). Net checkpoints, training states and recalibrated versions are all whole objects,
written and read as bytes, so a reader never sees half of one: a local file is written beside
and renamed over; an object store's single PUT of the whole body is atomic by itself.

S3's endpoint and credentials come from where every AWS client looks (`AWS_ENDPOINT_URL` or
`AWS_ENDPOINT_URL_S3`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`, the
AWS config files): botocore reads them itself. None of them is in any message raised here.
"""

import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import fsspec  # type: ignore[import-untyped]
from fsspec.implementations.local import LocalFileSystem  # type: ignore[import-untyped]

T = TypeVar("T")
FileSystem = Any  # fsspec's AbstractFileSystem (fsspec ships no type information)
# A write that fails for longer than this (the store down, restarting, or refusing) gives up.
RETRY_SECONDS = 60.0
# What a read or an existence check raises at once: no object is an answer, not a fault.
MISSING = (FileNotFoundError,)
PROBE = ".bnlab-probe"
# botocore says at INFO where it found the endpoint and the credentials, on every start and in
# every process: noise in bnlab's log (its warnings and errors still show).
for _chatty in ("botocore", "aiobotocore"):
    logging.getLogger(_chatty).setLevel(logging.WARNING)


class StoreError(Exception):
    """The checkpoint store cannot be opened or written: the message says what to fix."""


def locate(base: str, *parts: str) -> str:
    """The location of `parts` under `base`: an absolute path for a local folder, else a URL."""
    filesystem, root = _open(base)
    path = "/".join([root.rstrip("/"), *parts])
    if isinstance(filesystem, LocalFileSystem):
        return path
    return str(filesystem.unstrip_protocol(path))


def write(location: str, data: bytes, retry_seconds: float = RETRY_SECONDS) -> None:
    """Store `data` whole at `location`, retried while the store is unreachable."""
    filesystem, path = _open(location)
    _retried(lambda: _write_whole(filesystem, path, data), location, retry_seconds)


def read(location: str, retry_seconds: float = RETRY_SECONDS) -> bytes:
    """The object's bytes; FileNotFoundError if there is none (not retried: it is an answer)."""
    filesystem, path = _open(location)
    data: bytes = _retried(lambda: filesystem.cat_file(path), location, retry_seconds, MISSING)
    return data


def exists(location: str, retry_seconds: float = RETRY_SECONDS) -> bool:
    filesystem, path = _open(location)
    found: bool = _retried(lambda: filesystem.exists(path), location, retry_seconds, MISSING)
    return found


def delete(location: str, retry_seconds: float = RETRY_SECONDS) -> None:
    """Remove the object if it is there."""
    filesystem, path = _open(location)
    _retried(lambda: _delete(filesystem, path), location, retry_seconds)


def names_under(folder: str, retry_seconds: float = RETRY_SECONDS) -> list[str]:
    """The names directly under `folder` (none if it is not there), as the store is now."""
    filesystem, path = _open(folder)

    def listed() -> list[str]:
        filesystem.invalidate_cache(path)  # s3fs keeps listings: another host may have written
        try:
            found = filesystem.ls(path, detail=False)
        except FileNotFoundError:
            return []
        return [str(entry).rstrip("/").rsplit("/", 1)[-1] for entry in found]

    return _retried(listed, folder, retry_seconds)


def delete_tree(folder: str, retry_seconds: float = RETRY_SECONDS) -> None:
    """Remove `folder` and everything under it, if it is there."""
    filesystem, path = _open(folder)

    def removed() -> None:
        filesystem.invalidate_cache(path)
        with contextlib.suppress(FileNotFoundError):
            filesystem.rm(path, recursive=True)

    _retried(removed, folder, retry_seconds)


def check(base: str) -> None:
    """At start-up: `base` can be opened, reached and written (a probe object written and
    removed proves the scheme, the bucket and the credentials at once). StoreError otherwise."""
    probe = locate(base, PROBE)
    filesystem, path = _open(probe)
    try:
        _write_whole(filesystem, path, b"bnlab")
        _delete(filesystem, path)
    except FileNotFoundError:
        raise StoreError(
            f"BNLAB_CHECKPOINT_DIR={shown(base)}: its bucket does not exist; create it, or "
            "point BNLAB_CHECKPOINT_DIR at one that does"
        ) from None
    except PermissionError:
        raise StoreError(
            f"BNLAB_CHECKPOINT_DIR={shown(base)}: the store refused bnlab's credentials (set "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or the AWS config chain, to a key "
            "that may read and write there)"
        ) from None
    except Exception as error:  # botocore, aiohttp, OSError: whatever the backend raises
        raise StoreError(
            f"BNLAB_CHECKPOINT_DIR={shown(base)} cannot be written: {_reason(error)} "
            "(for S3, check AWS_ENDPOINT_URL and the credentials)"
        ) from None


def shown(location: str) -> str:
    """The location as messages show it: without any user:password@ a URL may carry."""
    parts = urlsplit(location)
    if parts.password is None and parts.username is None:
        return location
    return parts._replace(netloc=parts.hostname or "").geturl()


def _open(location: str) -> tuple[FileSystem, str]:
    try:
        filesystem, path = fsspec.core.url_to_fs(location)
    except ValueError:  # fsspec: "Protocol not known"
        scheme = urlsplit(location).scheme
        raise StoreError(
            f"BNLAB_CHECKPOINT_DIR={shown(location)}: bnlab cannot open {scheme}:// locations; "
            "use a local folder or s3://bucket/prefix"
        ) from None
    except ImportError as error:  # a known scheme whose fsspec package is not installed
        raise StoreError(f"BNLAB_CHECKPOINT_DIR={shown(location)}: {error}") from None
    return filesystem, str(path)


def _write_whole(filesystem: FileSystem, path: str, data: bytes) -> None:
    if not isinstance(filesystem, LocalFileSystem):
        filesystem.pipe_file(path, data)  # one PUT: atomic
        return
    # A file of its own beside the target, renamed over it: readers see the old or the new.
    partial = f"{path}.{uuid.uuid4().hex[:12]}.partial"
    filesystem.makedirs(filesystem._parent(path), exist_ok=True)
    try:
        filesystem.pipe_file(partial, data)
        filesystem.mv(partial, path)
    finally:
        if filesystem.exists(partial):
            filesystem.rm_file(partial)


def _delete(filesystem: FileSystem, path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        filesystem.rm_file(path)


def _retried(
    operation: Callable[[], T],
    location: str,
    retry_seconds: float,
    answers: tuple[type[Exception], ...] = (),
) -> T:
    """`operation`, again after 0.5, 1, 2, ... s while it fails, up to `retry_seconds`;
    then a StoreError saying so. `answers` are raised at once: a read's missing object is an
    answer, while a write's missing bucket may be a store that is still coming back."""
    deadline = time.monotonic() + retry_seconds
    pause = 0.5
    while True:
        try:
            return operation()
        except answers:
            raise
        except Exception as error:  # the backend's own errors: botocore, aiohttp, OSError
            if time.monotonic() + pause > deadline:
                raise StoreError(
                    f"the checkpoint store failed for {retry_seconds:.0f} s at "
                    f"{shown(location)}: {_reason(error)}"
                ) from None
        time.sleep(pause)
        pause = min(2 * pause, 8.0)


def _reason(error: BaseException) -> str:
    return str(error) or type(error).__name__
