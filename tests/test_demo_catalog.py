"""The embedded demo catalog: deterministic, loadable, and every label visible in the pixels."""

from __future__ import annotations

import os
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from assistant.cli import main as cli_main
from assistant.core.catalog import Catalog, CatalogError
from assistant.core.demo_catalog import STALE_SECONDS, VERSION, ensure_demo_catalog, generate_demo_catalog
from assistant.core.demo_drawing import BACKGROUND, HEIGHT, WIDTH, contact_sheet
from assistant.core.demo_sampling import ATTRIBUTE_VALUES, COLOURS
from assistant.core.loaders import load_catalog, load_generic

N_ITEMS = 2000


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Catalog:
    return load_generic(generate_demo_catalog(tmp_path_factory.mktemp("demo"), n_items=N_ITEMS, seed=0))


@pytest.fixture(scope="module")
def pixels(demo: Catalog) -> np.ndarray:
    """All images as one (items, height, width, 3) int array, in catalog order."""
    return np.stack([np.asarray(demo.open_image(item), dtype=np.int32) for item in demo])


def garment_mask(image: np.ndarray) -> np.ndarray:
    """Every pixel that is not the plain background."""
    return (image != np.array(BACKGROUND)).any(axis=-1)


def erode(mask: np.ndarray, steps: int) -> np.ndarray:
    for _ in range(steps):
        mask = mask & np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1)
    return mask


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path: Path) -> None:
    first = folder_bytes(generate_demo_catalog(tmp_path / "a", n_items=60, seed=0))
    again = folder_bytes(generate_demo_catalog(tmp_path / "b", n_items=60, seed=0))
    other = folder_bytes(generate_demo_catalog(tmp_path / "c", n_items=60, seed=1))
    assert len(first) == 61 and first == again
    assert first["catalog.jsonl"] != other["catalog.jsonl"]
    assert sum(first[name] != other[name] for name in first if name.endswith(".png")) > 50


def test_a_smaller_catalog_is_a_prefix_of_a_larger_one(tmp_path: Path, demo: Catalog) -> None:
    small = load_generic(generate_demo_catalog(tmp_path, n_items=25, seed=0))
    assert [i.as_dict() for i in small] == [i.as_dict() for i in demo.items[:25]]
    assert all(a.image_path.read_bytes() == b.image_path.read_bytes() for a, b in zip(small, demo, strict=False))


def test_catalog_loads_with_every_value_of_every_attribute(demo: Catalog) -> None:
    assert len(demo) == N_ITEMS and not demo.report.skipped
    assert load_catalog(demo.root).fingerprint == demo.fingerprint
    assert demo.ids[42] == "d00042" and demo["d00042"].image_path.name == "d00042.png"
    vocabulary = demo.vocabulary()
    assert set(vocabulary) == set(ATTRIBUTE_VALUES)
    for name, values in ATTRIBUTE_VALUES.items():
        assert set(vocabulary[name]) == set(values), name
        assert min(vocabulary[name].values()) >= 50, (name, vocabulary[name])
    for item in demo:
        garment = item.attributes["garment"]
        assert item.category == garment
        assert ("sleeve" in item.attributes) == ("neckline" in item.attributes) == (garment not in (
            "skirt", "trousers", "shorts"))
        assert ("length" in item.attributes) == (garment in ("dress", "skirt", "trousers", "shorts"))
        assert item.attributes["colour"] in item.title.lower() and garment in item.title.lower()
        assert ("women" in item.title.lower()) == (item.attributes["gender"] == "women")
    assert len(demo.split("test")) > 100
    with Image.open(demo.items[0].image_path) as image:
        assert (image.format, image.mode, image.size) == ("PNG", "RGB", (WIDTH, HEIGHT))


def main_colour(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The single most frequent garment colour (the fabric; a pattern and seams take fewer pixels)."""
    codes, counts = np.unique((image[mask] * np.array([65536, 256, 1])).sum(-1), return_counts=True)
    code = codes[counts.argmax()]
    return np.array([code >> 16, (code >> 8) & 255, code & 255])


def test_dominant_garment_colour_is_the_labelled_colour(demo: Catalog, pixels: np.ndarray) -> None:
    """For every item (white and black ones too): the named colour nearest to the garment's most common
    colour bucket (8 levels a channel) is its label."""
    names = list(COLOURS)
    palette = np.array([COLOURS[name] for name in names])
    for item, image in zip(demo, pixels, strict=True):
        garment = image[garment_mask(image)]
        assert len(garment) > 300, item.id
        buckets = ((garment >> 5) * np.array([64, 8, 1])).sum(-1)
        dominant = garment[buckets == np.bincount(buckets).argmax()].mean(0)
        assert names[((palette - dominant) ** 2).sum(-1).argmin()] == item.attributes["colour"], item.id


def off_shade_fraction(image: np.ndarray) -> float:
    """Share of the garment's inside that is not a shade of its main colour: seams, outlines and the inside
    of the neck are darker (black ones lighter) versions of it, a pattern's stripes, dots and flowers are not."""
    mask = garment_mask(image)
    fabric = main_colour(image, mask).astype(float)
    inside = image[erode(mask, 2)].astype(float)
    darker = np.clip(inside @ fabric / (fabric @ fabric), 0, 1)[:, None] * fabric
    towards_white = 255 - fabric
    lighter = fabric + np.clip((inside - fabric) @ towards_white / max(towards_white @ towards_white, 1.0),
                               0, 0.3)[:, None] * towards_white
    distance = np.minimum(np.abs(inside - darker).sum(-1), np.abs(inside - lighter).sum(-1))
    return float((distance > 60).mean())


def test_pattern_is_visible_solid_items_have_no_second_colour(demo: Catalog, pixels: np.ndarray) -> None:
    fractions = defaultdict(list)
    for item, image in zip(demo, pixels, strict=True):
        fractions[item.attributes["pattern"]].append(off_shade_fraction(image))
    assert max(fractions["solid"]) < 0.04
    for pattern in ("stripes", "dots", "checks", "floral"):
        assert min(fractions[pattern]) > 0.05, pattern
        assert np.median(fractions[pattern]) > 0.1, pattern


def test_fit_orders_silhouette_width_for_the_same_garment(demo: Catalog, pixels: np.ndarray) -> None:
    """Among items alike in everything that changes the outline, every slim one is narrower than every
    regular one, and every regular one narrower than every loose one."""
    widths: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for item, image in zip(demo, pixels, strict=True):
        mask = garment_mask(image)
        a = item.attributes
        widths[item.category, a.get("sleeve"), a.get("length"), a["gender"]][a["fit"]].append(
            mask.sum() / mask.any(axis=1).sum())
    compared = 0
    for group, by_fit in widths.items():
        if len(by_fit) == 3:
            compared += 1
            assert max(by_fit["slim"]) < min(by_fit["regular"]), group
            assert max(by_fit["regular"]) < min(by_fit["loose"]), group
    assert compared >= 30


def test_length_sets_where_the_hem_is(demo: Catalog, pixels: np.ndarray) -> None:
    hems: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for item, image in zip(demo, pixels, strict=True):
        if "length" in item.attributes:
            hems[item.category][item.attributes["length"]].append(int(np.flatnonzero(garment_mask(image).any(1))[-1]))
    order = {"dress": ["mini", "knee", "maxi"], "skirt": ["mini", "knee", "maxi"], "shorts": ["mini", "knee"],
             "trousers": ["cropped", "full"]}
    for category, lengths in order.items():
        for shorter, longer in zip(lengths, lengths[1:], strict=False):
            assert max(hems[category][shorter]) + 5 < min(hems[category][longer]), (category, shorter)


def centre_widths(mask: np.ndarray) -> np.ndarray:
    """Per row from the garment's top to its bottom, the width of the run of garment pixels through the centre
    column: the body alone, without sleeves held away from it."""
    rows = np.flatnonzero(mask.any(1))
    widths = []
    for row in mask[rows[0]: rows[-1] + 1]:
        centre = len(row) // 2
        left = np.flatnonzero(~row[:centre])
        right = np.flatnonzero(~row[centre:])
        widths.append(0 if not row[centre] else (right[0] if len(right) else len(row) - centre)
                      + centre - (left[-1] + 1 if len(left) else 0))
    return np.array(widths)


def test_gender_shows_as_a_shaped_waist(demo: Catalog, pixels: np.ndarray) -> None:
    """Dresses and skirts are women's; in the other garments every women's cut is narrower at the waist
    than below it (tops) or than the hips (bottoms), and no men's or unisex one is."""
    for item, image in zip(demo, pixels, strict=True):
        gender = item.attributes["gender"]
        if item.category in ("dress", "skirt"):
            assert gender == "women"
            continue
        widths = centre_widths(garment_mask(image))
        height = len(widths)
        if item.category in ("trousers", "shorts"):
            waist_ratio = widths[1] / widths[: int(0.35 * height)].max()
        else:
            waist_ratio = widths[int(0.45 * height): int(0.6 * height)].min() / widths[int(0.8 * height):].max()
        assert (waist_ratio < 0.88) == (gender == "women"), (item.id, item.category, gender, waist_ratio)


def nearest_centroid_accuracy(features: np.ndarray, labels: list[str | None], groups: list[str]) -> tuple:
    """Within each group, class means from the first half of the items label the second half by the nearest
    mean. Returns (accuracy, majority-class accuracy) over the second half."""
    half = len(labels) // 2
    correct = majority = total = 0
    for group in set(groups):
        train = [i for i in range(half) if groups[i] == group and labels[i] is not None]
        test = [i for i in range(half, len(labels)) if groups[i] == group and labels[i] is not None]
        classes = sorted({labels[i] for i in train})
        if len(classes) < 2:
            continue
        centroids = np.stack([features[[i for i in train if labels[i] == c]].mean(0) for c in classes])
        predicted = ((features[test][:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
        truth = [labels[i] for i in test]
        most_common = max(classes, key=[labels[i] for i in train].count)
        correct += sum(classes[p] == t for p, t in zip(predicted, truth, strict=True))
        majority += truth.count(most_common)
        total += len(test)
    return correct / total, majority / total


def test_sleeves_show_in_the_outline_and_necklines_at_the_neck(demo: Catalog, pixels: np.ndarray) -> None:
    """Comparing a garment's outline with the average outline of each sleeve length (per garment and fit), and
    the neck area's non-fabric pixels with each neckline's average, labels held-out items correctly."""
    masks = [garment_mask(image) for image in pixels]
    outlines = np.stack(masks).reshape(len(pixels), -1).astype(float)
    neck_areas = np.stack([(np.abs(image - main_colour(image, mask)).sum(-1) > 60)[:32, 16:48] & mask[:32, 16:48]
                           for image, mask in zip(pixels, masks, strict=True)]).reshape(len(pixels), -1).astype(float)
    sleeves = [item.attributes.get("sleeve") for item in demo]
    necklines = [item.attributes.get("neckline") for item in demo]
    accuracy, majority = nearest_centroid_accuracy(outlines, sleeves,
                                                   [f"{i.category} {i.attributes['fit']}" for i in demo])
    assert accuracy > 0.9 and majority < 0.65, (accuracy, majority)
    accuracy, majority = nearest_centroid_accuracy(neck_areas, necklines, [i.category for i in demo])
    assert accuracy > 0.85 and majority < 0.6, (accuracy, majority)


def test_ensure_demo_catalog_reuses_the_cache_and_ignores_leftovers(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASHION_ASSISTANT_CACHE", str(tmp_path))
    name = f"demo-v{VERSION}-s0-n30"
    stale, fresh = tmp_path / f".{name}.killed.tmp", tmp_path / f".{name}.running.tmp"
    for leftover in (stale, fresh):
        (leftover / "images").mkdir(parents=True)
        (leftover / "images" / "d00000.png").write_bytes(b"\x89PNG half")
    old = time.time() - STALE_SECONDS - 60
    os.utime(stale, (old, old))
    (tmp_path / name).mkdir()  # an incomplete catalog folder, as if written by hand

    folder = ensure_demo_catalog(n_items=30)
    assert folder == tmp_path / name
    assert len(load_generic(folder)) == 30 and len(list((folder / "images").iterdir())) == 30
    assert not stale.exists() and fresh.exists()  # another process may still be writing the fresh one
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".demo") and p != fresh] == []

    written = (folder / "catalog.jsonl").stat().st_mtime_ns
    assert ensure_demo_catalog(n_items=30) == folder
    assert (folder / "catalog.jsonl").stat().st_mtime_ns == written

    catalog = load_catalog("demo:30")
    assert catalog.root == folder and len(catalog) == 30
    assert len(load_catalog("demo:12:3")) == 12 and (tmp_path / f"demo-v{VERSION}-s3-n12" / "catalog.jsonl").exists()
    for bad in ("demo:many", "demo:0", "demo:1:2:3", "demo:-4"):
        with pytest.raises(CatalogError, match="demo"):
            load_catalog(bad)


def test_contact_sheet_and_command_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sheet = tmp_path / "docs" / "sheet.png"
    assert cli_main(["catalog", "demo:30:2", "--contact-sheet", str(sheet)]) == 0
    assert str(sheet) in capsys.readouterr().out
    with Image.open(sheet) as image:
        columns_width, three_rows = image.size
        assert image.format == "PNG" and columns_width > 12 * WIDTH
        assert three_rows > 3 * HEIGHT
    catalog = load_generic(generate_demo_catalog(tmp_path / "cat", n_items=30, seed=2))
    small = contact_sheet(catalog, tmp_path / "small.png", columns=4, rows=2)
    with Image.open(small) as image:
        assert image.size == (columns_width // 3, three_rows * 2 // 3)
    with pytest.raises(CatalogError, match="no items"):
        contact_sheet(catalog.subset([]), tmp_path / "empty.png")
