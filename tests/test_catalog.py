"""Catalog loaders on real files: the real catalog, a damaged copy of it, Fashion IQ and generic layouts."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import pytest
from PIL import Image

from assistant.cli import main
from assistant.core.catalog import FPI_ATTRIBUTES, CatalogError, split_of
from assistant.core.loaders import detect_format, load_catalog


def test_real_catalog_loads_every_item_with_all_seven_attributes(real_catalog) -> None:
    assert len(real_catalog) == 34975
    assert real_catalog.report.skipped == []
    assert all(set(item.attributes) == set(FPI_ATTRIBUTES) for item in real_catalog)
    item = real_catalog["1164"]
    assert item.title == "Nike Men Blue T20 Indian Cricket Jersey"
    assert item.category == "Tshirts"
    assert item.attributes["baseColour"] == "Blue"
    assert real_catalog.open_image(item).mode == "RGB"
    vocab = real_catalog.vocabulary()
    assert vocab["gender"]["Men"] == 17577
    assert len(vocab["articleType"]) == 138


def test_splits_are_stable_disjoint_and_roughly_80_10_10(real_catalog) -> None:
    parts = {name: real_catalog.split(name) for name in ("train", "val", "test")}
    ids = [set(part.ids) for part in parts.values()]
    assert sum(len(s) for s in ids) == len(real_catalog)
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert 0.78 < len(parts["train"]) / len(real_catalog) < 0.82
    assert len(parts["test"]) >= 3000
    assert split_of("1164") == split_of("1164")


SAMPLE = 1500  # rows of the real catalog in the damaged copy (its images copied: the loader refuses links out)


@pytest.fixture(scope="module")
def damaged_copy(fpi_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, set[str]]:
    """A copy of 1,500 real rows and their images with 3 corrupted JPEGs, 2 missing images, 1 malformed row."""
    root = tmp_path_factory.mktemp("fpi-damaged")
    (root / "images").mkdir(parents=True)
    header, *lines = (fpi_root / "styles.csv").read_text(encoding="utf-8").splitlines()
    lines = random.Random(3).sample(lines, SAMPLE)
    ids = [line.split(",", 1)[0] for line in lines]
    victims = random.Random(7).sample(ids, 5)
    corrupted = victims[:3]
    for item_id in ids:
        if item_id not in victims:
            shutil.copyfile(fpi_root / "images" / f"{item_id}.jpg", root / "images" / f"{item_id}.jpg")
    original = (fpi_root / "images" / f"{corrupted[0]}.jpg").read_bytes()
    (root / "images" / f"{corrupted[0]}.jpg").write_bytes(original[: len(original) // 2])  # truncated
    (root / "images" / f"{corrupted[1]}.jpg").write_bytes(os.urandom(2000))  # not an image
    (root / "images" / f"{corrupted[2]}.jpg").write_bytes(b"")  # empty
    lines.insert(234, "99999999,Men,Apparel")  # malformed: 3 fields
    (root / "styles.csv").write_text("\n".join([header, *lines]) + "\n", encoding="utf-8")
    return root, set(victims)


def test_damaged_copy_reports_exactly_the_six_bad_rows_and_keeps_the_rest(damaged_copy) -> None:
    root, victims = damaged_copy
    catalog = load_catalog(root)
    assert len(catalog) == SAMPLE - 5
    assert len(catalog.report.skipped) == 6
    assert catalog.report.counts() == {"unreadable image": 3, "missing image": 2, "malformed row": 1}
    assert not victims & set(catalog.ids)
    assert all(any(v in where for where, _ in catalog.report.skipped) for v in victims)


def _write_image(path: Path, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 40), colour).save(path)


def test_fashion_iq_layout_drops_pairs_with_missing_images(tmp_path: Path) -> None:
    root = tmp_path / "fiq"
    asins = [f"B00{i:05d}" for i in range(8)]
    for n, asin in enumerate(asins[:-1]):  # the last image is a dead URL: never downloaded
        _write_image(root / "images" / f"{asin}.jpg" if n % 2 else root / "images" / f"{asin}.png", (n * 30, 50, 90))
    (root / "image_splits").mkdir()
    (root / "image_splits" / "split.dress.train.json").write_text(json.dumps(asins[:6]))
    (root / "image_splits" / "split.shirt.val.json").write_text(json.dumps(asins[6:]))
    (root / "captions").mkdir()
    pairs = [
        {"target": asins[0], "candidate": asins[1], "captions": ["is red", "has no sleeves"]},
        {"target": asins[2], "candidate": asins[3], "captions": ["is longer", ""]},
        {"target": asins[7], "candidate": asins[6], "captions": ["is blue"]},  # target image missing
        {"candidate": asins[4]},  # malformed
    ]
    (root / "captions" / "cap.dress.train.json").write_text(json.dumps(pairs))
    (root / "tags").mkdir()
    (root / "tags" / "asin2attr.dress.train.json").write_text(json.dumps({asins[0]: ["floral", "maxi"]}))

    assert detect_format(root) == "fashion-iq"
    catalog = load_catalog(root)
    assert len(catalog) == 7
    assert catalog[asins[6]].category == "shirt"
    assert catalog[asins[0]].attributes == {"category": "dress", "tags": "floral, maxi"}
    assert [(p.reference, p.target, p.caption) for p in catalog.caption_pairs] == [
        (asins[1], asins[0], "is red and has no sleeves"), (asins[3], asins[2], "is longer")]
    assert catalog.report.counts() == {"missing image": 1, "dropped caption pair": 1, "malformed row": 1}


def test_generic_jsonl_and_csv_load_a_shops_products(tmp_path: Path) -> None:
    _write_image(tmp_path / "images" / "a.jpg", (200, 0, 0))
    _write_image(tmp_path / "pics" / "b.png", (0, 200, 0))
    rows = [
        {"id": "a", "title": "Red dress", "category": "dress", "attributes": {"colour": "red"}},
        {"id": "b", "image": "pics/b.png", "title": "Green shirt", "category": "shirt",
         "attributes": {"colour": "green"}},
        {"id": "c", "image": "pics/missing.png", "title": "Lost", "category": "shirt"},
        {"title": "no id"},
    ]
    (tmp_path / "catalog.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\nnot json\n", encoding="utf-8")
    catalog = load_catalog(tmp_path)
    assert catalog.ids == ["a", "b"]
    assert catalog["b"].attributes == {"colour": "green"}
    assert catalog.report.counts() == {"missing image": 1, "malformed row": 2}

    csv_dir = tmp_path / "csvshop"
    _write_image(csv_dir / "images" / "x.jpg", (0, 0, 200))
    (csv_dir / "catalog.csv").write_text(
        "id,title,category,colour,fit\nx,Blue jeans,trousers,blue,slim\ny,Gone,trousers,red,loose\n", encoding="utf-8")
    shop = load_catalog(csv_dir)
    assert shop.ids == ["x"]
    assert shop["x"].attributes == {"colour": "blue", "fit": "slim"}
    assert shop.report.counts() == {"missing image": 1}


def test_fingerprint_follows_content(tmp_path: Path) -> None:
    _write_image(tmp_path / "images" / "a.jpg", (200, 0, 0))
    path = tmp_path / "catalog.jsonl"
    path.write_text(json.dumps({"id": "a", "title": "Red dress", "category": "dress"}) + "\n")
    first = load_catalog(tmp_path).fingerprint
    assert load_catalog(tmp_path).fingerprint == first
    path.write_text(json.dumps({"id": "a", "title": "Red maxi dress", "category": "dress"}) + "\n")
    assert load_catalog(tmp_path).fingerprint != first


def test_not_a_catalog_says_what_it_expected(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="styles.csv"):
        load_catalog(tmp_path)
    with pytest.raises(CatalogError, match="no such file"):
        load_catalog(tmp_path / "nowhere")


def test_cli_catalog_prints_summary_and_report(damaged_copy, tmp_path: Path, capsys) -> None:
    root, _ = damaged_copy
    assert main(["catalog", str(root), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["items"] == SAMPLE - 5
    assert summary["report"]["skipped"] == 6
    assert summary["attributes"]["gender"]["Men"] > 600
    assert main(["catalog", str(tmp_path / "nowhere")]) == 2
    assert "no such file" in capsys.readouterr().err
