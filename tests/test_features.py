"""The feature cache: shapes and norms, colour features, loading instead of recomputing, older and damaged files,
killed builds, bad images."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from assistant.core.catalog import Catalog, Item
from assistant.core.loaders import load_generic
from assistant.vision.backbone import Backbone, BackboneConfig, create_backbone
from assistant.vision.features import (
    COLOUR_DIM,
    FeatureCacheError,
    ItemFeatures,
    colour_features,
    compute_features,
    features_for,
    features_path,
)
from assistant.vision.preprocessing import decode_items, item_text


@pytest.fixture(scope="module")
def backbone() -> Backbone:
    return create_backbone(BackboneConfig(fuse_text=0.25))


@pytest.fixture(scope="module")
def catalog(real_catalog: Catalog) -> Catalog:
    return real_catalog.subset(real_catalog.ids[:300], name="first300")


def test_features_are_normalised_rows_in_catalog_order(backbone: Backbone, catalog: Catalog) -> None:
    features = compute_features(backbone, catalog, batch_size=128, progress=False)
    assert features.ids == catalog.ids and len(features) == 300 and features.dim == 256 and not features.failed
    for vectors in (features.image, features.text, features.item):
        assert vectors.shape == (300, 256) and vectors.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    item = catalog.items[123]
    row = features.row(item.id)
    assert row == 123
    # the same vectors as encoding the item alone (up to bf16 rounding where the CPU encodes in bf16)
    assert features.image[row] @ backbone.encode_images([catalog.open_image(item)])[0] > 0.999
    assert features.text[row] @ backbone.encode_texts([item_text(item)])[0] > 0.999
    np.testing.assert_allclose(features.item, backbone.fuse(features.image, features.text), atol=1e-6)
    with pytest.raises(KeyError, match="no features for item 'nope'"):
        features.row("nope")


def test_second_call_loads_the_cache(backbone: Backbone, catalog: Catalog) -> None:
    first = compute_features(backbone, catalog, progress=False)
    path = features_path(backbone, catalog)
    assert path.name == f"{backbone.id}-{catalog.fingerprint}.safetensors"
    modified = path.stat().st_mtime_ns
    second = compute_features(backbone, catalog, progress=False)
    assert path.stat().st_mtime_ns == modified
    np.testing.assert_array_equal(second.item, first.item)
    other = compute_features(backbone, catalog.subset(catalog.ids[:20]), progress=False)  # another key
    assert len(other) == 20 and path.stat().st_mtime_ns == modified


@pytest.mark.parametrize("damage", ["truncate", "garbage", "flip_a_byte"])
def test_damaged_cache_file_is_rebuilt(backbone: Backbone, catalog: Catalog, damage: str) -> None:
    small = catalog.subset(catalog.ids[:40], name=f"forty-{damage}")
    good = compute_features(backbone, small, progress=False)
    path = features_path(backbone, small)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) - 1000])
    elif damage == "garbage":
        path.write_bytes(os.urandom(len(data)))
    else:  # a valid header with one changed vector byte: only the checksum can tell
        path.write_bytes(data[:-7] + bytes([data[-7] ^ 0xFF]) + data[-6:])
    with pytest.raises(FeatureCacheError):
        ItemFeatures.load(path)
    rebuilt = compute_features(backbone, small, progress=False)
    np.testing.assert_allclose(rebuilt.item, good.item, atol=1e-6)
    np.testing.assert_array_equal(ItemFeatures.load(path).item, rebuilt.item)


def test_unreadable_image_gets_a_zero_vector_and_is_reported(backbone: Backbone, catalog: Catalog,
                                                             tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 definitely not a jpeg \xff\xd9")
    items = list(catalog.items[:5])
    bad = Item("bad-1", broken, "Broken Red Shirt", "Shirts", {"baseColour": "Red"})
    missing = Item("gone-2", tmp_path / "gone.jpg", "Missing Blue Jeans", "Jeans", {"baseColour": "Blue"})
    shop = Catalog([*items[:2], bad, *items[2:], missing], name="with-broken-images")
    features = compute_features(backbone, shop, batch_size=4, progress=False)
    assert set(features.failed) == {"bad-1", "gone-2"}
    assert "cannot read image broken.jpg" in features.failed["bad-1"] and "bad-1" in caplog.text
    for item_id in ("bad-1", "gone-2"):
        row = features.row(item_id)
        assert not features.image[row].any() and not features.colour[row].any()
        np.testing.assert_allclose(np.linalg.norm(features.text[row]), 1.0, atol=1e-5)
        np.testing.assert_allclose(features.item[row], features.text[row], atol=1e-5)  # only its text is left
    assert np.allclose(np.linalg.norm(features.image[[0, 1, 3, 4, 5]], axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(features.colour[[0, 1, 3, 4, 5], 0], 1.0)  # measured colour: `present` is 1


def test_colour_features_come_with_the_vectors_and_an_older_cache_gains_them(backbone: Backbone,
                                                                             catalog: Catalog) -> None:
    small = catalog.subset(catalog.ids[:60], name="sixty")
    features = compute_features(backbone, small, progress=False)
    assert features.colour.shape == (60, COLOUR_DIM) and features.colour.dtype == np.float32
    pixels, _ = decode_items(small, small.items, backbone.image_size)
    np.testing.assert_array_equal(features.colour, colour_features(pixels))
    half = features_for(features, small.subset(small.ids[10:40]))
    np.testing.assert_array_equal(half.colour, features.colour[10:40])
    # a file of the format before colour features (with marked vectors, to tell loading from recomputing)
    path = features_path(backbone, small)
    older = dataclasses.replace(features, image=-features.image, colour=None)
    older.save(path)
    with safe_open(str(path), "np") as handle:
        meta = handle.metadata()
    save_file({kind: getattr(older, kind) for kind in ("image", "text", "item")}, str(path),
              metadata={**meta, "format": "fashion-assistant-features/1"})
    assert ItemFeatures.load(path).colour is None
    upgraded = compute_features(backbone, small, progress=False)
    np.testing.assert_array_equal(upgraded.image, -features.image)  # the vectors were kept, not recomputed
    np.testing.assert_array_equal(upgraded.colour, features.colour)
    np.testing.assert_array_equal(ItemFeatures.load(path).colour, features.colour)  # saved with them now


IMAGE_BAR = re.compile(r"image features:[^\r\n]*?(\d+)/(\d+)")


def _build_features(backbone: Backbone, catalog: Catalog, progress_fd: int) -> None:
    """The feature build in a forked process, its progress bar written to `progress_fd`."""
    sys.stderr = os.fdopen(progress_fd, "w", buffering=1)
    compute_features(backbone, catalog, batch_size=32)


def midway(progress: str) -> bool:
    """Whether the last image-features bar in `progress` reports some but not all images done."""
    done = IMAGE_BAR.findall(progress)
    return bool(done) and 0 < int(done[-1][0]) < int(done[-1][1])


def test_killed_build_leaves_nothing_half_written(backbone: Backbone, real_catalog: Catalog, tmp_path: Path,
                                                  forked) -> None:
    lines = [json.dumps({"id": item.id, "image": os.path.relpath(item.image_path, tmp_path), "title": item.title,
                         "category": item.category, "attributes": item.attributes})
             for item in real_catalog.items[:1000]]
    catalog_file = tmp_path / "catalog.jsonl"
    catalog_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    catalog = load_generic(catalog_file, images_root=real_catalog.image_root)  # the real photos, in place
    path = features_path(backbone, catalog)
    # a forked process (no second import of torch and open_clip), SIGKILLed midway through the images
    progress_fd, child_fd = os.pipe()
    process = forked(_build_features, backbone, catalog, child_fd)
    os.close(child_fd)
    deadline = time.time() + 120
    progress = ""
    with os.fdopen(progress_fd) as bar:  # killed when its own progress bar says it is midway, not after a sleep
        while not midway(progress) and time.time() < deadline:
            read = bar.read(1)
            assert read, f"the build ended before its progress bar showed it midway ({process.exitcode})"
            progress += read
        assert midway(progress), f"no progress within 2 minutes: {progress[-200:]!r}"
        process.kill()
        process.join()
    assert not path.exists()
    features = compute_features(backbone, catalog, progress=False)
    assert len(features) == 1000 and ItemFeatures.load(path).ids == catalog.ids
