"""An uploaded PNG or JPEG made into what the nets were trained on: a 28x28 MNIST-like digit.

MNIST digits are white on black. A photo or scan of a digit on paper is the opposite, so a
mostly light image (mean above mid-grey) is inverted. Any size is squashed to 28x28: simple, and
what the study's preprocessing amounts to for a roughly square, centred digit.
"""

import io

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from bnlab.api.core.domain_errors import Invalid, TooLarge

SIDE = 28
FORMATS = ("PNG", "JPEG")
# Far more than a digit needs, far less than Pillow's own limit (~89 megapixels): a small
# compressed file that claims more pixels is a decompression bomb, refused before decoding.
MAX_PIXELS = 4096 * 4096


def decode_digit(data: bytes) -> Tensor:
    """uint8 pixels (28, 28), white digit on black, from PNG or JPEG bytes."""
    if not data:
        raise Invalid("the uploaded image is empty")
    try:
        # `formats` keeps Pillow's other (less used, less hardened) decoders out of reach.
        with Image.open(io.BytesIO(data), formats=FORMATS) as image:
            # Only the header has been read: refuse a bomb before any pixel is decompressed.
            # (Checked here, not via Image.MAX_IMAGE_PIXELS: that is process-wide state.)
            if image.width * image.height > MAX_PIXELS:
                raise _bomb(image.width, image.height)
            if getattr(image, "is_animated", False) and image.format == "PNG":
                # Which frame is the digit is anyone's guess. (A camera's multi-picture JPEG
                # is fine: its first image is the photo.)
                frames = getattr(image, "n_frames", "several")
                raise Invalid(
                    f"the PNG is animated ({frames} frames): send one still image of the digit",
                )
            if image.format == "JPEG":
                # Let libjpeg decode at a fraction of the size: a photo becomes 28x28 anyway.
                image.draft("L", (SIDE * 4, SIDE * 4))
            gray = _grayscale(ImageOps.exif_transpose(image))
            small = gray.resize((SIDE, SIDE), Image.Resampling.LANCZOS)
    except Image.DecompressionBombError as error:
        raise TooLarge(f"the image has too many pixels to decode safely: {error}") from None
    except UnidentifiedImageError:
        raise Invalid("the upload is not a PNG or JPEG image, or its header is damaged") from None
    except (OSError, SyntaxError, ValueError) as error:
        # Pillow's ways of saying "truncated" or "corrupt".
        raise Invalid(f"the image could not be decoded: {error}") from None
    pixels = torch.frombuffer(bytearray(small.tobytes()), dtype=torch.uint8).view(SIDE, SIDE)
    if pixels.float().mean() > 127:  # dark ink on light paper: make it MNIST's white on black
        pixels = 255 - pixels
    return pixels


def _grayscale(image: Image.Image) -> Image.Image:
    image = _eight_bit(image)
    # Transparent pixels carry arbitrary colour (often black): show them as a viewer would,
    # on white, so a digit drawn on a transparent canvas is dark ink on light paper.
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
    return image.convert("L")


def _eight_bit(image: Image.Image) -> Image.Image:
    """A 16-bit grayscale PNG (mode I;16) scaled to 8 bits. Pillow's own conversion to L clips
    at 255 instead, so nearly every pixel of the digit would come out white."""
    if not image.mode.startswith("I"):
        return image
    wide = np.asarray(image)
    if wide.dtype != np.uint16:  # mode I: 32-bit, holding the same 0-65535 range
        wide = wide.clip(0, 65535).astype(np.uint16)
    eight = Image.fromarray((wide >> 8).astype(np.uint8))
    transparent = image.info.get("transparency")
    if isinstance(transparent, int):  # tRNS names one 16-bit gray level as transparent
        eight.info["transparency"] = min(transparent, 65535) >> 8
    return eight


def _bomb(width: int, height: int) -> TooLarge:
    return TooLarge(
        f"the image is {width}x{height} pixels; at most {MAX_PIXELS:,} pixels are decoded "
        "(a digit needs 28x28): scale it down and send it again",
    )
