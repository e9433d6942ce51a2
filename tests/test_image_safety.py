"""A shop's catalog is untrusted: images outside its folder are refused and never served, bad images are reported."""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from assistant.api import Assistant
from assistant.core.catalog import MAX_IMAGE_PIXELS, OUTSIDE_ROOT, CatalogError
from assistant.core.loaders import load_catalog
from assistant.vision.backbone import BACKBONE_FILE, Backbone
from assistant.vision.features import compute_features
from assistant.webapp import image_folders, launch_app

COLOURS = [(200, 30, 30), (30, 160, 40), (40, 60, 200), (220, 200, 40), (120, 40, 160), (20, 20, 20),
           (240, 240, 240), (250, 140, 20), (90, 60, 30), (230, 120, 180), (40, 180, 180), (130, 130, 130),
           (160, 0, 60), (0, 90, 60)]


def _shop_row(item_id: str, colour: int, image: str | None = None) -> dict:
    row = {"id": item_id, "title": f"Shirt {item_id}", "category": "shirt", "attributes": {"colour": str(colour)}}
    return row | ({"image": image} if image is not None else {})


def _good_shop(root: Path, items: int = 14) -> list[dict]:
    (root / "images").mkdir(parents=True)
    for n in range(items):
        Image.new("RGB", (48, 64), COLOURS[n % len(COLOURS)]).save(root / "images" / f"g{n}.jpg")
    return [_shop_row(f"g{n}", n) for n in range(items)]


def _write_rows(root: Path, rows: list[dict]) -> Path:
    (root / "catalog.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return root


@pytest.fixture()
def escaping_shop(tmp_path: Path) -> tuple[Path, Path]:
    """A shop whose last three rows aim at a real image outside it (absolute, ../, symlink), beside a secret."""
    outside = tmp_path / "private"
    outside.mkdir()
    Image.new("RGB", (48, 64), (10, 200, 10)).save(outside / "real.jpg")
    (outside / "secret.txt").write_text("the shop's database password", encoding="utf-8")
    shop = tmp_path / "shop"
    rows = _good_shop(shop)
    os.symlink(outside / "real.jpg", shop / "images" / "linked.jpg")
    rows += [_shop_row("absolute", 1, str(outside / "real.jpg")), _shop_row("climbs", 2, "../private/real.jpg"),
             _shop_row("linked", 3, "images/linked.jpg")]
    return _write_rows(shop, rows), outside


def test_rows_aimed_outside_the_catalog_are_skipped_with_that_reason(escaping_shop) -> None:
    shop, outside = escaping_shop
    catalog = load_catalog(shop)
    assert len(catalog) == 14
    skipped = dict(catalog.report.skipped)
    assert skipped == {f"catalog.jsonl:{15 + n} (id {name})": OUTSIDE_ROOT
                       for n, name in enumerate(["absolute", "climbs", "linked"])}
    assert catalog.image_root == shop.resolve()
    assert image_folders(catalog) == [str(shop.resolve())]
    assert all(item.image_path.is_relative_to(shop.resolve()) for item in catalog)


def test_images_root_is_the_explicit_opt_in_and_then_the_only_folder(escaping_shop, tmp_path: Path) -> None:
    shop, outside = escaping_shop
    catalog = load_catalog(shop, images_root=tmp_path)  # a root above both the shop and the private folder
    assert len(catalog) == 17 and catalog.report.skipped == []
    assert catalog["linked"].image_path == (outside / "real.jpg").resolve()  # the link's real target
    assert image_folders(catalog) == [str(tmp_path.resolve())]
    narrow = load_catalog(shop, images_root=outside)  # now the shop's own images are the outside ones
    assert sorted(narrow.ids) == ["absolute", "climbs", "linked"]
    assert narrow.report.counts() == {OUTSIDE_ROOT: 14}
    with pytest.raises(CatalogError, match="not a folder"):
        load_catalog(shop, images_root=tmp_path / "nowhere")


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_served_app_refuses_everything_outside_the_image_root(escaping_shop, demo_model_dir: Path,
                                                                   tmp_path: Path) -> None:
    shop, outside = escaping_shop
    assistant = Assistant.load(demo_model_dir, load_catalog(shop), progress=False)
    app, url = launch_app(assistant, tmp_path / "data", port=_free_port(), block=False, quiet=True)
    try:
        base = f"{url.rstrip('/')}/gradio_api/file="
        assert _status(base + str(assistant.catalog["g0"].image_path)) == 200
        refused = [outside / "secret.txt", outside / "real.jpg", shop / "images" / "linked.jpg",
                   shop / "images" / ".." / ".." / "private" / "secret.txt", shop / "catalog.jsonl",
                   demo_model_dir / "config.yaml", demo_model_dir / "retriever.safetensors", Path("/etc/passwd")]
        for path in refused:
            assert _status(base + str(path)) in (403, 404), path
    finally:
        app.close()


def _one_bit_png(path: Path, width: int, height: int) -> Path:
    """A valid black-and-white PNG of width x height pixels, a few kilobytes on disk (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = (b"\0" + b"\xff" * ((width + 7) // 8)) * height
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b""))
    return path


@pytest.fixture()
def bad_image_shop(tmp_path: Path) -> Path:
    """Good images, a JPEG cut short but ending in the end marker, a PNG renamed .jpg and two over the pixel limit."""
    shop = tmp_path / "shop"
    rows = _good_shop(shop)
    photo = Image.linear_gradient("L").convert("RGB").resize((120, 160))
    photo.save(shop / "images" / "whole.jpg", quality=90)
    data = (shop / "images" / "whole.jpg").read_bytes()
    (shop / "images" / "cut.jpg").write_bytes(data[: len(data) // 2] + b"\xff\xd9")
    photo.save(shop / "images" / "renamed.jpg", format="PNG")
    _one_bit_png(shop / "images" / "large.jpg", 8000, 8000)  # 64 MP: over our limit, under PIL's own
    _one_bit_png(shop / "images" / "bomb.jpg", 20000, 20000)  # 400 MP
    rows += [_shop_row(name, n, f"images/{name}.jpg") for n, name in enumerate(["cut", "renamed", "large", "bomb"])]
    return _write_rows(shop, rows)


def test_bad_images_are_in_the_load_report_or_encode_and_none_gets_a_zero_vector(bad_image_shop: Path,
                                                                                 demo_model_dir: Path) -> None:
    assert 8000 * 8000 > MAX_IMAGE_PIXELS
    catalog = load_catalog(bad_image_shop)
    skipped = {where.split("(id ")[1].rstrip(")"): reason for where, reason in catalog.report.skipped}
    assert set(skipped) == {"large", "bomb"}
    assert all(reason.startswith("image too large") for reason in skipped.values())
    assert "8000x8000" in skipped["large"]
    assert {"cut", "renamed"} <= set(catalog.ids)
    features = compute_features(Backbone.load(demo_model_dir / BACKBONE_FILE), catalog, progress=False)
    assert features.failed == {}
    assert features.report().as_dict()["skipped"] == 0
    norms = np.linalg.norm(features.image, axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-4)  # every item has a real image vector


def test_verdicts_are_cached_by_size_and_mtime(tmp_path: Path) -> None:
    shop = tmp_path / "shop"
    _write_rows(shop, _good_shop(shop))
    assert len(load_catalog(shop)) == 14
    victim = shop / "images" / "g3.jpg"
    stat = victim.stat()
    victim.write_bytes(os.urandom(stat.st_size))  # the same size ...
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # ... and mtime: the cached verdict stands
    assert len(load_catalog(shop)) == 14
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # touched: decoded again
    reloaded = load_catalog(shop)
    assert "g3" not in reloaded and reloaded.report.counts() == {"unreadable image": 1}


def test_a_catalog_with_no_usable_item_is_one_clear_error(tmp_path: Path) -> None:
    shop = tmp_path / "shop"
    rows = _good_shop(shop, items=2)
    for row in rows:
        (shop / "images" / f"{row['id']}.jpg").write_bytes(b"")
    _write_rows(shop, rows)
    with pytest.raises(CatalogError, match=r"no usable items \(2 rows skipped: unreadable image 2\)"):
        load_catalog(shop)
    header_only = tmp_path / "fpi"
    shutil.copytree(shop / "images", header_only / "images")
    (header_only / "styles.csv").write_text("id,gender,masterCategory,subCategory,articleType,baseColour,season,"
                                            "year,usage,productDisplayName\n", encoding="utf-8")
    with pytest.raises(CatalogError, match=r"no usable items \(0 rows skipped\)"):
        load_catalog(header_only)
