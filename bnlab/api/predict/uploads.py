"""The /predict body made into images: JSON pixels or multipart PNG/JPEG files, size-limited.

The route reads the body itself instead of declaring a FastAPI body parameter: it accepts two
content types, and pydantic's `model_validate_json` (Rust) parses pixel arrays several times
faster than FastAPI's `json.loads` plus validation.
"""

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from fastapi import Request
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from torch import Tensor

from bnlab.api.core.domain_errors import Invalid, Malformed, TooLarge, UnsupportedMedia
from bnlab.api.core.errors import describe
from bnlab.api.experiments.schemas import Pixel, PixelsBody
from bnlab.api.predict.images import SIDE, decode_digit

IMAGE_FIELD = "image"
MAX_FILES = 256  # a batch of uploads; the byte limit bounds it as well


@dataclass(frozen=True)
class Images:
    pixels: Tensor  # float32 (N, 28, 28) in [0, 1]
    single: bool  # one image was sent (not a batch of one): answer with one object, not a list


async def read_images(request: Request, max_bytes: int) -> Images:
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    is_json = kind == "application/json" or kind.endswith("+json")
    if not is_json and kind != "multipart/form-data":
        raise UnsupportedMedia(
            f"Content-Type {kind or '(none)'} is not accepted: send application/json with "
            f'{{"pixels": ...}}, or multipart/form-data with a PNG or JPEG in the field '
            f"'{IMAGE_FIELD}'",
        )
    body = await read_body(request, max_bytes)
    if is_json:
        return images_from_json(body)
    return await images_from_multipart(request, body)


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The whole body, refused with 413 as soon as it is known to exceed `max_bytes`: from
    Content-Length before reading anything, and from the bytes actually read (a client may
    send no length, or the wrong one)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            too_large = int(declared) > max_bytes
        except ValueError:
            raise Malformed(f"Content-Length {declared!r} is not a number") from None
        if too_large:
            raise _too_large(max_bytes)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


def images_from_json(body: bytes) -> Images:
    if not body or body.isspace():
        raise Invalid('the body is empty: send {"pixels": [...]}')
    pixels = parse_pixels(body)
    try:
        # numpy builds the array from nested lists several times faster than torch.tensor.
        array = np.array(pixels, dtype=np.float32)
    except ValueError:
        raise Invalid("pixels: the rows (or images) differ in length") from None
    return _shaped(torch.from_numpy(array), array.shape)


class _Flat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pixels: list[Pixel]


class _Rows(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pixels: list[list[Pixel]]


class _Batch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pixels: list[list[list[Pixel]]]


_SHAPES: dict[int, type[_Flat | _Rows | _Batch]] = {1: _Flat, 2: _Rows, 3: _Batch}


def parse_pixels(body: bytes) -> list[Any]:
    """`PixelsBody`'s pixels, validated in Rust. A glance at the brackets picks the one shape
    to validate against: a union (or a discriminator, which calls back into Python) costs
    10-40% more per request. Whatever the glance gets wrong, `PixelsBody` settles."""
    fast = _SHAPES.get(_bracket_depth(body))
    if fast is not None:
        try:
            return fast.model_validate_json(body).pixels
        except ValidationError:
            pass
    try:
        return PixelsBody.model_validate_json(body).pixels
    except ValidationError as error:
        raise Invalid(describe(error)) from None


def _bracket_depth(body: bytes) -> int:
    """How many '[' open the value of the first "pixels" key (0 if not found)."""
    start = body.find(b'"pixels"')
    if start < 0:
        return 0
    depth = 0
    for byte in body[start + 8 : start + 64]:
        if byte == 0x5B:  # [
            depth += 1
        elif byte not in b" \t\r\n:":
            break
    return depth


async def images_from_multipart(request: Request, body: bytes) -> Images:
    parser = MultiPartParser(request.headers, _once(body), max_files=MAX_FILES, max_fields=16)
    try:
        form = await parser.parse()
    except MultiPartException as error:
        raise Invalid(f"the multipart body is malformed: {error.message}") from None
    try:
        uploads = form.getlist(IMAGE_FIELD)
        if not uploads:
            raise Invalid(
                f"no image: send the PNG or JPEG as a file in the form field '{IMAGE_FIELD}'"
            )
        if not all(isinstance(upload, UploadFile) for upload in uploads):
            raise Invalid(f"the form field '{IMAGE_FIELD}' must be a file upload, not a text value")
        blobs = [await upload.read() for upload in uploads]  # type: ignore[union-attr]
    finally:
        await form.close()
    # Decoding may take milliseconds for a big photo: off the event loop.
    digits = await run_in_threadpool(_decode_all, blobs)
    pixels = torch.stack(digits).float().div_(255)
    return Images(pixels, single=len(blobs) == 1)


def _decode_all(blobs: list[bytes]) -> list[Tensor]:
    digits = []
    for index, blob in enumerate(blobs):
        try:
            digits.append(decode_digit(blob))
        except (Invalid, TooLarge) as error:
            if len(blobs) == 1:
                raise
            raise type(error)(f"image {index}: {error}") from None
    return digits


def _shaped(pixels: Tensor, shape: tuple[int, ...]) -> Images:
    """One image or a batch, by shape: (784,) and (28, 28) are one image; (N, 784) and
    (N, 28, 28) are N. (28, 28) cannot be mistaken for a batch: a batch's images have 784."""
    flat = SIDE * SIDE
    if shape == (flat,) or shape == (SIDE, SIDE):
        return Images(pixels.view(1, SIDE, SIDE), single=True)
    if len(shape) == 2 and shape[0] > 0 and shape[1] == flat:
        return Images(pixels.view(-1, SIDE, SIDE), single=False)
    if len(shape) == 3 and shape[0] > 0 and shape[1:] == (SIDE, SIDE):
        return Images(pixels, single=False)
    if shape[0] == 0:
        raise Invalid("pixels is empty: send one image (784 numbers) or a list of them")
    raise Invalid(
        f"pixels has shape {list(shape)}; expected 784 numbers, 28 rows of 28, or a list of "
        "such images",
    )


async def _once(body: bytes) -> AsyncGenerator[bytes, None]:
    yield body


def _too_large(max_bytes: int) -> TooLarge:
    return TooLarge(
        f"the body is larger than {max_bytes:,} bytes: send a smaller image or fewer images"
    )
