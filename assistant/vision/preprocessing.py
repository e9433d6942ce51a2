"""Model inputs: letterboxed pixels (decoded once into an on-disk cache) and the text an item is read by."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from assistant.core.catalog import Catalog, ImageError, Item
from assistant.core.storage import atomic_write, cache_dir

PIXELS_FORMAT = "fashion-assistant-pixels/1"

log = logging.getLogger(__name__)


def item_text(item: Item) -> str:
    """The text an item is trained and indexed with: its title, then its attribute values."""
    values = [value for value in item.attributes.values() if value and value.lower() not in item.title.lower()]
    return f"{item.title}. {' '.join(values)}" if values else item.title


def size_pair(size: int | Sequence[int]) -> tuple[int, int]:
    """(height, width) from one size or a [height, width] pair."""
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def letterbox(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """An RGB image scaled to fit (height, width) without distortion, padded with its corner colour: uint8 HxWx3."""
    image = image.convert("RGB")
    height, width = size
    scale = min(width / image.width, height / image.height)
    fitted = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    if fitted != image.size:
        image = image.resize(fitted, Image.Resampling.BICUBIC)
    if fitted == (width, height):
        return np.asarray(image)
    canvas = Image.new("RGB", (width, height), image.getpixel((0, 0)))
    canvas.paste(image, ((width - fitted[0]) // 2, (height - fitted[1]) // 2))
    return np.asarray(canvas)


def images_to_tensor(images: Sequence[Image.Image], size: tuple[int, int]) -> torch.Tensor:
    """PIL images as one uint8 tensor (N, 3, height, width), letterboxed."""
    if not images:
        return torch.zeros((0, 3, *size), dtype=torch.uint8)
    return torch.from_numpy(np.stack([letterbox(image, size) for image in images])).permute(0, 3, 1, 2).contiguous()


def decode_items(catalog: Catalog, items: Sequence[Item], size: tuple[int, int],
                 pool: ThreadPoolExecutor | None = None) -> tuple[torch.Tensor, dict[str, str]]:
    """Decode items' images into a uint8 tensor; an unreadable one becomes zeros and is returned as {id: reason}."""

    def one(item: Item) -> np.ndarray | str:
        try:
            return letterbox(catalog.open_image(item), size)
        except ImageError as error:
            return str(error)
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            return f"item {item.id}: cannot decode image: {error}"

    decoded = list(pool.map(one, items)) if pool else [one(item) for item in items]
    pixels = np.zeros((len(items), *size, 3), dtype=np.uint8)
    failed: dict[str, str] = {}
    for row, (item, result) in enumerate(zip(items, decoded, strict=True)):
        if isinstance(result, str):
            failed[item.id] = result
        else:
            pixels[row] = result
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous(), failed


def _images_digest(catalog: Catalog) -> str:
    """Which image files, in which order, at which size and modification time."""
    digest = hashlib.sha256()
    for item in catalog:
        path = item.image_path
        stat = path.stat() if path and path.exists() else None
        record = [str(path.resolve()) if path else "", stat.st_size if stat else -1, stat.st_mtime_ns if stat else -1]
        digest.update(json.dumps(record).encode("utf-8"))
    return digest.hexdigest()[:16]


def pixel_cache_path(catalog: Catalog, image_size: int | Sequence[int]) -> Path:
    """cache_dir()/pixels/<catalog fingerprint>-<images digest>-<H>x<W>.safetensors"""
    height, width = size_pair(image_size)
    return cache_dir() / "pixels" / f"{catalog.fingerprint}-{_images_digest(catalog)}-{height}x{width}.safetensors"


def pixel_tensor(catalog: Catalog, image_size: int | Sequence[int], progress: bool = True,
                 cache: bool = True) -> tuple[torch.Tensor, dict[str, str]]:
    """All the catalog's images decoded once into uint8 (N, 3, H, W), cached on disk beside the other caches.

    The cache file is keyed by the catalog's images (paths, sizes, mtimes) and the image size, written
    atomically, and rebuilt when it cannot be read in full. Unreadable images are zeros, returned as {id: reason}.
    """
    size = size_pair(image_size)
    path = pixel_cache_path(catalog, size)
    ids = catalog.ids
    if cache and path.exists():
        try:
            with safe_open(str(path), "pt") as handle:
                meta = handle.metadata() or {}
                pixels = handle.get_tensor("pixels")
            if (meta.get("format") == PIXELS_FORMAT and json.loads(meta["ids"]) == ids
                    and tuple(pixels.shape) == (len(ids), 3, *size)):
                return pixels, json.loads(meta["failed"])
            log.warning("%s does not match the catalog; rebuilding it", path.name)
        except Exception as error:  # a truncated or foreign file: any reader error means rebuild
            log.warning("cannot read %s (%s); rebuilding it", path.name, error)
    chunks, failed = [], {}
    batch = 1024
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        for start in tqdm(range(0, len(ids), batch), desc="decoding images", unit_scale=batch, disable=not progress):
            pixels, bad = decode_items(catalog, catalog.items[start:start + batch], size, pool)
            chunks.append(pixels)
            failed.update(bad)
    for reason in failed.values():
        log.warning("skipping image: %s", reason)
    pixels = torch.cat(chunks) if chunks else torch.zeros((0, 3, *size), dtype=torch.uint8)
    if cache:
        meta = {"format": PIXELS_FORMAT, "ids": json.dumps(ids), "failed": json.dumps(failed)}
        atomic_write(path, lambda tmp: save_file({"pixels": pixels}, str(tmp), metadata=meta))
    return pixels, failed
