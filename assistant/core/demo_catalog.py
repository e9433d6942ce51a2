"""The embedded demo catalog: garments drawn with PIL from exact attribute labels, so demos need no download."""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

from PIL import Image

from assistant.core.catalog import CatalogError
from assistant.core.demo_drawing import render
from assistant.core.demo_sampling import sample_attributes, sample_look, title_of
from assistant.core.storage import atomic_write_text, cache_dir

VERSION = 3  # part of the cache folder name: bump it whenever the drawing or the sampling changes
STALE_SECONDS = 3600  # a temp folder this old is a killed generation's leftover (a whole one takes seconds)


def make_item(index: int, seed: int) -> tuple[dict, Image.Image]:
    """Item `index` of the catalog for `seed` (its own rng, so a smaller catalog is a prefix of a larger one)."""
    rng = random.Random(f"demo-{seed}-{index}")
    attributes = sample_attributes(rng)
    look = sample_look(rng, attributes["colour"])
    item_id = f"d{index:05d}"
    record = {"id": item_id, "image": f"images/{item_id}.png", "title": title_of(attributes, rng),
              "category": attributes["garment"], "attributes": attributes}
    return record, render(attributes, look)


def generate_demo_catalog(folder: Path, n_items: int = 2000, seed: int = 0) -> Path:
    """Draw `n_items` garments into `folder/images/` and list them in `folder/catalog.jsonl` (written last)."""
    if n_items < 1:
        raise ValueError(f"n_items must be at least 1, not {n_items}")
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for index in range(n_items):
        record, image = make_item(index, seed)
        image.save(folder / record["image"], format="PNG", optimize=False)
        lines.append(json.dumps(record, ensure_ascii=False, sort_keys=False))
    atomic_write_text(folder / "catalog.jsonl", "\n".join(lines) + "\n")
    return folder


def ensure_demo_catalog(n_items: int = 2000, seed: int = 0) -> Path:
    """The demo catalog's folder in the cache, generated on first use (in a temp folder renamed when complete)."""
    target = cache_dir() / f"demo-v{VERSION}-s{seed}-n{n_items}"
    if (target / "catalog.jsonl").exists():
        return target
    for leftover in target.parent.glob(f".{target.name}.*.tmp"):
        if time.time() - leftover.stat().st_mtime > STALE_SECONDS:
            shutil.rmtree(leftover, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        generate_demo_catalog(work, n_items=n_items, seed=seed)
        if target.exists() and not (target / "catalog.jsonl").exists():
            shutil.rmtree(target)  # not ours to keep: an incomplete folder under our own cache name
        try:
            os.rename(work, target)
        except OSError:
            if not (target / "catalog.jsonl").exists():  # another process did not win the race either
                raise
    finally:
        if work.exists():
            shutil.rmtree(work)
    return target


def demo_options(source: str) -> dict[str, int]:
    """`demo`, `demo:N` or `demo:N:SEED` -> keyword arguments for ensure_demo_catalog."""
    name, *numbers = source.split(":")
    if name != "demo" or len(numbers) > 2 or not all(n.isdigit() and int(n) >= 0 for n in numbers):
        raise CatalogError(f"{source!r}: the demo catalog is 'demo', 'demo:N_ITEMS' or 'demo:N_ITEMS:SEED'")
    options = dict(zip(("n_items", "seed"), map(int, numbers), strict=False))
    if options.get("n_items", 1) < 1:
        raise CatalogError(f"{source!r}: the demo catalog needs at least 1 item")
    return options
