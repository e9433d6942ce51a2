"""Foreground colour features, colour heads that read them, temperature calibration, and older saved files."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from assistant.core.catalog import Catalog, Item
from assistant.core.loaders import load_catalog
from assistant.vision.attributes import (
    AttributeConfig,
    AttributePredictor,
    expected_calibration_error,
    same_colour_family,
)
from assistant.vision.features import (
    COLOUR_DIM,
    GREY_BINS,
    HISTOGRAM,
    MEAN_LAB,
    PRESENT,
    SHARE,
    colour_features,
    image_lab,
)

WHITE, RED, BLUE = (255, 255, 255), (200, 24, 32), (30, 60, 200)
FAST = AttributeConfig(epochs=30, seed=0, device="cpu")


def shirt_on(background: tuple[int, int, int], shirt: tuple[int, int, int]) -> np.ndarray:
    """An 80x64 photo: a T-shaped shirt (body and sleeves, 22% of the pixels) on a plain background."""
    image = np.empty((80, 64, 3), np.uint8)
    image[:] = background
    image[20:70, 20:44] = shirt  # body
    image[20:32, 8:56] = shirt  # sleeves
    return image


def test_a_red_shirt_on_white_reads_red_and_the_background_is_left_out() -> None:
    images = np.stack([shirt_on(WHITE, RED), shirt_on(WHITE, WHITE), shirt_on((40, 40, 40), BLUE)])
    features = colour_features(images)
    assert features.shape == (3, COLOUR_DIM) and features.dtype == np.float32
    red, white, dark = features
    shirt_share = ((images[0] != WHITE).any(-1)).mean()
    assert red[PRESENT] == 1.0 and red[SHARE] == pytest.approx(shirt_share, abs=0.01)
    lightness, a, b = red[MEAN_LAB] * 100
    assert a > 50 and b > 25 and 35 < lightness < 55  # the shirt's own Lab, no white mixed in
    np.testing.assert_allclose(red[MEAN_LAB] * 100, image_lab(np.array([[RED]], np.uint8))[0, 0], atol=1.5)
    histogram = red[HISTOGRAM]
    assert histogram.sum() == pytest.approx(1.0, abs=1e-5) and histogram[:GREY_BINS].sum() < 0.01  # no white mass
    # a white shirt on white leaves too few pixels: the whole image is the item, and it is white
    assert white[SHARE] < 0.03 and white[MEAN_LAB][0] * 100 > 95 and abs(white[MEAN_LAB][1] * 100) < 2
    # a dark backdrop is no product-photo background: every pixel counts, blue pulls b* down
    assert dark[SHARE] == 1.0 and dark[MEAN_LAB][2] < -0.1


def test_colour_features_take_torch_batches_and_reject_other_shapes() -> None:
    images = np.stack([shirt_on(WHITE, RED), shirt_on(WHITE, BLUE)])
    from_torch = colour_features(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
    np.testing.assert_array_equal(from_torch, colour_features(images))
    assert colour_features(np.zeros((0, 80, 64, 3), np.uint8)).shape == (0, COLOUR_DIM)
    with pytest.raises(ValueError, match="uint8 images"):
        colour_features(images.astype(np.float32))


@pytest.fixture(scope="module")
def demo() -> tuple[Catalog, np.ndarray, np.ndarray]:
    """600 demo items (drawn in their label colours): 4x5 RGB thumbnails as the embedding, and colour features."""
    catalog = load_catalog("demo:600")
    images = np.stack([np.asarray(catalog.open_image(item).convert("RGB")) for item in catalog])
    thumbnails = np.stack([np.asarray(catalog.open_image(item).convert("RGB").resize((4, 5)), np.float32).ravel()
                           for item in catalog]) / 255.0
    return catalog, thumbnails.astype(np.float32), colour_features(images)


def test_colour_features_make_the_colour_head_better(demo) -> None:
    catalog, thumbnails, colour = demo
    train, val, test = range(0, 400), range(400, 480), range(480, 600)
    with_colour = AttributePredictor.train(thumbnails, catalog, train, FAST, rows_val=val, colour=colour)
    without = AttributePredictor.train(thumbnails, catalog, train, replace(FAST, colour_features=False),
                                       rows_val=val, colour=colour)
    assert with_colour.colour_dim == COLOUR_DIM and without.colour_dim == 0
    seen = with_colour.evaluate(thumbnails, catalog, test, colour)
    blind = without.evaluate(thumbnails, catalog, test, colour)
    assert seen["colour"]["accuracy"] >= 0.9 and seen["colour"]["accuracy"] >= blind["colour"]["accuracy"] + 0.1, \
        (seen["colour"], blind["colour"])
    assert seen["colour"]["colour_family_accuracy"] >= seen["colour"]["accuracy"]
    assert "colour_family_accuracy" not in seen["garment"]  # a colour head's measure only
    assert with_colour.model.sees_colour == [True] * len(with_colour.names)  # by default every head reads colour
    only_colour = AttributePredictor.train(thumbnails, catalog, train, replace(FAST, epochs=8, colour_heads=["colour"]),
                                           colour=colour)
    assert only_colour.model.sees_colour == [name == "colour" for name in only_colour.names]
    # a bare photo vector (no colour features) still gets a prediction, as trained with hidden colour rows
    bare = with_colour.evaluate(thumbnails, catalog, test)
    assert bare["colour"]["accuracy"] >= bare["colour"]["majority_baseline"]


def overlapping_blobs(n: int, seed: int) -> tuple[Catalog, np.ndarray]:
    """Three classes of 8-d Gaussian points whose clouds overlap: no head can be sure of many of them."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    centres = rng.normal(size=(3, 8)) * 0.9
    points = (centres[labels] + rng.normal(size=(n, 8))).astype(np.float32)
    items = [Item(f"p{seed}-{i}", None, "point", "point", {"kind": "abc"[label]}) for i, label in enumerate(labels)]
    return Catalog(items, name=f"blobs-{seed}"), points


def test_temperature_scaling_lowers_the_calibration_error_of_an_over_confident_head() -> None:
    catalog, points = overlapping_blobs(1200, seed=3)
    over_confident = AttributeConfig(hidden=256, dropout=0.0, weight_decay=0.0, epochs=150, lr=5e-3, device="cpu")
    train, calibration, held_out = range(0, 200), range(200, 700), range(700, 1200)  # few rows, long training
    predictor = AttributePredictor.train(points, catalog, train, over_confident)
    assert predictor.temperatures == [1.0]  # no validation rows: not calibrated
    before = predictor.evaluate(points, catalog, held_out)["kind"]
    [temperature] = predictor.calibrate(points, catalog, calibration)
    after = predictor.evaluate(points, catalog, held_out)["kind"]
    assert temperature > 1.5 and after["temperature"] == pytest.approx(temperature, abs=1e-4)
    assert before["ece"] > 0.08 and after["ece"] < before["ece"] / 2, (before, after)
    assert after["accuracy"] == before["accuracy"]  # dividing logits by one scalar keeps every argmax
    assert predictor.evaluate(points, catalog, held_out, calibrated=False)["kind"]["ece"] == before["ece"]


def test_expected_calibration_error_by_hand() -> None:
    # bin (0.6, 0.667]: 2 items at 0.65 with 1 right: |0.5 - 0.65|; bin (0.933, 1]: 2 at 0.95, both right
    assert expected_calibration_error([0.65, 0.65, 0.95, 0.95], [1, 0, 1, 1]) == pytest.approx((2 * 0.15 + 2 * 0.05)
                                                                                                / 4)
    assert expected_calibration_error([], []) == 0.0


def test_colour_family_is_the_labels_basic_colour() -> None:
    assert same_colour_family("Navy Blue", "Blue") and same_colour_family("Red", "Red")
    assert not same_colour_family("Red", "Blue") and not same_colour_family("Multi", "Black")


def test_saved_colour_heads_round_trip_and_files_from_before_colour_load(demo, tmp_path) -> None:
    catalog, thumbnails, colour = demo
    predictor = AttributePredictor.train(thumbnails, catalog, range(400), replace(FAST, epochs=8),
                                         rows_val=range(400, 500), colour=colour)
    loaded = AttributePredictor.load(predictor.save(tmp_path / "colour.safetensors"), device="cpu")
    assert loaded.temperatures == predictor.temperatures and loaded.colour_dim == COLOUR_DIM
    for name, matrix in predictor.predict_proba(thumbnails[:50], colour[:50]).items():
        np.testing.assert_array_equal(matrix, loaded.predict_proba(thumbnails[:50], colour[:50])[name])
    with pytest.raises(ValueError, match=rf"colour features must be \(N, {COLOUR_DIM}\)"):
        loaded.predict(thumbnails[:5], colour[:5, :10])

    # a file as saved before colour features and calibration: no colour_features in its config, no temperatures
    plain = AttributePredictor.train(thumbnails, catalog, range(400), replace(FAST, epochs=8, colour_features=False))
    path = plain.save(tmp_path / "old.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    del metadata["temperatures"]
    config = json.loads(metadata["config"])
    for key in ("colour_features", "colour_heads", "colour_dropout"):
        del config[key]
    save_file(load_file(str(path)), str(path), metadata={**metadata, "config": json.dumps(config)})
    old = AttributePredictor.load(path, device="cpu")
    assert not old.config.colour_features and old.colour_dim == 0 and old.temperatures == [1.0] * len(old.names)
    np.testing.assert_array_equal(old.predict_proba(thumbnails[:20])["colour"],
                                  plain.predict_proba(thumbnails[:20])["colour"])
    assert old.predict(thumbnails[:3], colour[:3]) == plain.predict(thumbnails[:3])  # colour given, not read


def test_an_uploaded_photo_is_read_with_its_colour(demo) -> None:
    """The Dialog's photo path (RankingContext.photo -> predict_photo) gives the heads the photo's colour too."""
    catalog, thumbnails, colour = demo
    predictor = AttributePredictor.train(thumbnails, catalog, range(0, 400), FAST, colour=colour)
    test = range(480, 600)
    pixels = [torch.from_numpy(np.asarray(catalog.open_image(catalog.items[row]).convert("RGB"))).permute(2, 0, 1)[None]
              for row in test]
    photo = [predictor.predict_photo(thumbnails[row], pixels[i])["colour"] for i, row in enumerate(test)]
    blind = [guess["colour"] for guess in predictor.predict(thumbnails[list(test)])]
    truth = [catalog.items[row].attributes["colour"] for row in test]
    photo_accuracy = np.mean([p == t for p, t in zip(photo, truth, strict=True)])
    blind_accuracy = np.mean([b == t for b, t in zip(blind, truth, strict=True)])
    assert photo_accuracy >= 0.9 and photo_accuracy >= blind_accuracy + 0.1, (photo_accuracy, blind_accuracy)
