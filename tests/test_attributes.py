"""Attribute heads learn real labels from a cheap real image representation, fill gaps, save and load."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from assistant.core.catalog import Catalog
from assistant.vision.attributes import OTHER, AttributeConfig, AttributePredictor, split_values

TRAIN_ITEMS, TEST_ITEMS = 2000, 500
FAST = AttributeConfig(epochs=30, seed=0, device="cpu")


def tiny_image_features(catalog: Catalog) -> np.ndarray:
    """Each real image shrunk to 8x10 RGB pixels, flattened, plus a 4x4x4 colour histogram: 304 numbers."""
    features = []
    for item in catalog:
        image = catalog.open_image(item)
        pixels = np.asarray(image.resize((8, 10)), dtype=np.float32).ravel() / 255.0
        bins = (np.asarray(image.resize((30, 40)), dtype=np.int64) // 64).reshape(-1, 3)
        histogram = np.bincount(bins[:, 0] * 16 + bins[:, 1] * 4 + bins[:, 2], minlength=64) / len(bins)
        features.append(np.concatenate([pixels, histogram.astype(np.float32)]))
    return np.stack(features)


@pytest.fixture(scope="module")
def sample(real_catalog: Catalog) -> tuple[Catalog, np.ndarray]:
    """2,000 real train-split items then 500 test-split items, with their tiny-image features."""
    rng = np.random.default_rng(0)
    train_ids = rng.choice(real_catalog.split("train").ids, TRAIN_ITEMS, replace=False)
    test_ids = rng.choice(real_catalog.split("test").ids, TEST_ITEMS, replace=False)
    catalog = real_catalog.subset([*train_ids, *test_ids], name="sample")
    return catalog, tiny_image_features(catalog)


@pytest.fixture(scope="module")
def predictor(sample) -> AttributePredictor:
    catalog, features = sample
    return AttributePredictor.train(features, catalog, range(TRAIN_ITEMS), FAST)


def test_heads_beat_the_majority_baseline_on_held_out_real_items(sample, predictor):
    catalog, features = sample
    report = predictor.evaluate(features, catalog, range(TRAIN_ITEMS, TRAIN_ITEMS + TEST_ITEMS))
    assert set(report) == {"gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "usage"}
    for name, margin in {"articleType": 0.15, "baseColour": 0.08, "gender": 0.12, "masterCategory": 0.2}.items():
        result = report[name]
        assert result["items"] == TEST_ITEMS
        assert result["accuracy"] >= result["majority_baseline"] + margin, (name, result)
    assert report["gender"]["majority_value"] == "Men"


def test_rare_values_fold_into_other_and_are_never_predicted(sample, predictor):
    catalog, features = sample
    article = predictor.head("articleType")
    train_counts = {}
    for item in catalog.items[:TRAIN_ITEMS]:
        train_counts[item.attributes["articleType"]] = train_counts.get(item.attributes["articleType"], 0) + 1
    assert OTHER in article.values and article.values[-1] == OTHER
    assert set(article.values[:-1]) == {v for v, n in train_counts.items() if n >= 5}
    predictions = predictor.predict(features)
    assert all(p["articleType"] != OTHER for p in predictions)
    best = predictor.top_k(features[:3], k=4)
    assert [len(b["articleType"]) for b in best] == [4, 4, 4]
    assert best[0]["articleType"][0][0] == predictions[0]["articleType"]
    assert all(a[1] >= b[1] for a, b in zip(best[0]["articleType"], best[0]["articleType"][1:], strict=False))


def test_fill_missing_fills_exactly_the_missing_labels(sample, predictor):
    catalog, features = sample
    rng = np.random.default_rng(1)
    drop_article = set(rng.choice(len(catalog), 40, replace=False).tolist())
    drop_colour = set(rng.choice(len(catalog), 25, replace=False).tolist())
    items = []
    for row, item in enumerate(catalog):
        attributes = {name: value for name, value in item.attributes.items()
                      if not (name == "articleType" and row in drop_article)
                      and not (name == "baseColour" and row in drop_colour)}
        items.append(replace(item, attributes=attributes))
    gappy = Catalog(items, name="gappy")
    filled, predicted = predictor.fill_missing(gappy, features)
    expected = ({(catalog.items[r].id, "articleType") for r in drop_article}
                | {(catalog.items[r].id, "baseColour") for r in drop_colour})
    assert predicted == expected
    predictions = predictor.predict(features)
    for row, (before, after) in enumerate(zip(gappy, filled, strict=True)):
        assert set(after.attributes) == set(catalog.items[row].attributes)
        for name, value in after.attributes.items():
            if (after.id, name) in predicted:
                assert value == predictions[row][name]
            else:
                assert value == before.attributes[name]
    assert predictor.fill_missing(filled, features)[1] == set()


def test_multi_label_attribute_learns_comma_separated_values(sample):
    """A Fashion IQ style `tags` list made from real labels: sigmoid heads, precision@1 above the baseline."""
    catalog, features = sample
    items = [replace(item, attributes={"tags": ", ".join([item.attributes["gender"].lower(),
                                                          item.attributes["masterCategory"].lower(),
                                                          item.attributes["usage"].lower()])})
             for item in catalog]
    tagged = Catalog(items, name="tagged")
    predictor = AttributePredictor.train(features, tagged, range(TRAIN_ITEMS), FAST)
    head = predictor.head("tags")
    assert head.multi_label and "men" in head.values and "apparel" in head.values
    predicted = predictor.predict(features[TRAIN_ITEMS:])
    assert all(set(split_values(p["tags"])) <= set(head.values) for p in predicted)
    report = predictor.evaluate(features, tagged, range(TRAIN_ITEMS, TRAIN_ITEMS + TEST_ITEMS))["tags"]
    assert report["accuracy"] >= report["majority_baseline"] + 0.05 and report["f1"] >= 0.75, report


def test_save_load_roundtrip_and_bad_files(sample, predictor, tmp_path):
    catalog, features = sample
    path = predictor.save(tmp_path / "attributes.safetensors")
    loaded = AttributePredictor.load(path, device="cpu")
    assert loaded.names == predictor.names and loaded.config == predictor.config
    before, after = predictor.predict_proba(features[:50]), loaded.predict_proba(features[:50])
    for name in predictor.names:
        np.testing.assert_array_equal(before[name], after[name])
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(ValueError, match="not a readable attribute predictor"):
        AttributePredictor.load(path)
    with pytest.raises(ValueError, match=r"embeddings must be \(2500, dim\)"):
        predictor.evaluate(features[:10], catalog)
    with pytest.raises(ValueError, match="epochs"):
        AttributeConfig(epochs=0)
