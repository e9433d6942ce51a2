"""What the shopper types or uploads, made safe for a dialog, and items and beliefs worded for a person."""

from __future__ import annotations

import os
import unicodedata
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from assistant.core.catalog import Item

MAX_MESSAGE_CHARS = 500
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MAX_UPLOAD_PIXELS = 40_000_000
EMPTY_MESSAGE_PROMPT = ("Tell me what you are looking for (for example \"a red floral dress\"), "
                        "or click an item and say how it should change.")
# Attribute names worth showing first, in this order; any other attribute follows in the catalog's order.
KEY_ATTRIBUTE_ORDER = ("colour", "color", "basecolour", "pattern", "sleeve", "length", "neckline", "fit",
                       "gender", "usage", "season")


class UploadError(ValueError):
    """An uploaded file that cannot be used as a photo; the message is meant for the shopper."""


@dataclass(frozen=True)
class CleanMessage:
    """A shopper's message as the dialog reads it, and a note for the shopper when it had to be changed."""

    text: str
    note: str | None = None


def clean_message(raw: str | None, limit: int = MAX_MESSAGE_CHARS) -> CleanMessage:
    """Plain one-line text: control characters dropped, whitespace collapsed, cut to `limit` characters.

    Emoji, any script, HTML and markdown are kept as the characters they are; showing them safely is the
    surface's job (the app escapes them, the terminal prints them).
    """
    text = unicodedata.normalize("NFC", raw or "")
    text = "".join(c if unicodedata.category(c) not in ("Cc", "Cs", "Co") else " " for c in text)
    text = " ".join(text.split())
    if len(text) <= limit:
        return CleanMessage(text)
    cut = text[:limit]
    word_end = cut.rfind(" ")
    if word_end > limit * 0.8:
        cut = cut[:word_end]
    note = f"Your message was {len(text):,} characters long; I read the first {len(cut)}."
    return CleanMessage(cut, note)


def open_upload(path: str | os.PathLike, max_bytes: int = MAX_UPLOAD_BYTES,
                max_pixels: int = MAX_UPLOAD_PIXELS) -> Image.Image:
    """An uploaded photo as RGB, or UploadError saying why it cannot be used (never a decompression bomb)."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as error:
        raise UploadError("The upload did not arrive; please try again.") from error
    if size == 0:
        raise UploadError("That file is empty; please upload a photo (JPEG, PNG or WebP).")
    if size > max_bytes:
        raise UploadError(f"That file is {size / 1e6:.1f} MB; please upload a photo under {max_bytes / 1e6:.0f} MB.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise UploadError(f"That image is {width:,}×{height:,} pixels, too large to read; please "
                                      f"upload one under {max_pixels / 1e6:.0f} megapixels.")
                image.load()
                return image.convert("RGB")
    except UploadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise UploadError(f"That image is too large to read; please upload one under {max_pixels / 1e6:.0f} "
                          "megapixels.") from error
    except (OSError, ValueError, SyntaxError) as error:  # PIL: UnidentifiedImageError, truncated data, bad headers
        raise UploadError("That file is not an image I can read; please upload a photo (JPEG, PNG or WebP).") \
            from error


def key_attributes(item: Item, limit: int = 3) -> list[str]:
    """The item's most telling attribute values (colour, pattern, shape first), skipping the category itself."""
    order = {name: rank for rank, name in enumerate(KEY_ATTRIBUTE_ORDER)}
    names = sorted(item.attributes, key=lambda name: order.get(name.lower(), len(order)))
    values: list[str] = []
    for name in names:
        value = item.attributes[name]
        if value and value.lower() != item.category.lower() and value not in values:
            values.append(value)
    return values[:limit]


def item_caption(item: Item) -> str:
    """Key attributes, then the title, on two lines: as under a gallery picture."""
    return f"{' · '.join(key_attributes(item))}\n{item.title}"


RULED_OUT_KEY = "not"  # the key of Assistant.understood holding the values the shopper ruled out


def format_understood(understood: dict[str, str]) -> str:
    """`colour: red · sleeve: short · not pink, navy blue`, or a plain note when nothing is known yet."""
    if not understood:
        return "nothing specific yet"
    return " · ".join(f"not {value.lower()}" if name == RULED_OUT_KEY else f"{name}: {value}"
                      for name, value in understood.items())
