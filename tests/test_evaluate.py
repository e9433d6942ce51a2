"""Evaluation harness and baselines: per-turn metrics, the JSON result, the plot, what each baseline reads."""

from __future__ import annotations

import json

import numpy as np
import pytest

from assistant.core.catalog import Catalog
from assistant.core.dialog import DialogState, Turn
from assistant.core.loaders import load_catalog
from assistant.vision.backbone import BackboneConfig, create_backbone
from assistant.vision.features import compute_features
from retriever.baselines import AttributeFilterRanker, KeywordRanker, RandomRanker, SingleTurnRanker
from retriever.evaluate import evaluate, plot, save_result, turn_metrics
from simulator.template_user import TemplateUser

METRICS = ["recall@1", "recall@5", "recall@10", "recall@50", "success@10", "rank_percentile"]


@pytest.fixture(scope="module")
def demo() -> Catalog:
    return load_catalog("demo:400")


@pytest.fixture(scope="module")
def backbone_and_features(demo: Catalog):
    backbone = create_backbone(BackboneConfig())
    return backbone, compute_features(backbone, demo, progress=False)


def state(*feedback: str, shown: int | None = None) -> DialogState:
    return DialogState([Turn(shown, text) for text in feedback])


def test_turn_metrics_by_hand() -> None:
    ranks = np.array([[20, 8, 1], [60, 3, 12], [5, 70, 70]])
    metrics = turn_metrics(ranks, catalog_size=101)
    assert metrics["recall@1"] == [0.0, 0.0, round(1 / 3, 4)]
    assert metrics["recall@10"] == [round(1 / 3, 4), round(2 / 3, 4), round(1 / 3, 4)]
    assert metrics["recall@50"] == [round(2 / 3, 4), round(2 / 3, 4), round(2 / 3, 4)]
    assert metrics["success@10"] == [round(1 / 3, 4), 1.0, 1.0]  # once in the top 10, a dialog has succeeded
    assert metrics["rank_percentile"][0] == round(100 * np.mean([81, 41, 96]) / 100, 2)


def test_keyword_search_drops_negated_values_and_uses_catalog_words(demo: Catalog) -> None:
    keyword = KeywordRanker(demo)
    terms = keyword.query_terms(state("a striped dress", "red instead of blue"))
    assert {"dress", "red"} <= set(terms) and "blue" not in terms
    scores = keyword.scores([state("red dress, not blue")])[0]
    best = demo.items[int(np.argmax(scores))]
    assert best.attributes["colour"] == "red" and best.attributes["garment"] == "dress"


def test_attribute_filter_keeps_matching_items_first(demo: Catalog, backbone_and_features) -> None:
    backbone, features = backbone_and_features
    ranker = AttributeFilterRanker(demo, features.image, backbone)
    scores = ranker.scores([state("i want a dress", "green, not red")])[0]
    matching = [i for i, item in enumerate(demo)
                if item.attributes["garment"] == "dress" and item.attributes["colour"] == "green"]
    assert matching
    assert set(np.argsort(-scores)[: len(matching)]) == set(matching)


def test_single_turn_reads_only_the_last_turn(demo: Catalog, backbone_and_features) -> None:
    backbone, features = backbone_and_features
    ranker = SingleTurnRanker(features.image, backbone)
    last = DialogState([Turn(3, "in blue")])
    longer = DialogState([Turn(None, "a red skirt"), Turn(3, "in blue")])
    assert np.allclose(ranker.scores([last]), ranker.scores([longer]))


def test_evaluate_writes_the_agreed_json_and_plot(demo: Catalog, tmp_path) -> None:
    user = TemplateUser(demo, seed=1)
    systems = {"random": RandomRanker(len(demo), seed=0), "keyword": KeywordRanker(demo)}
    result = evaluate(systems, demo, user, turns=4, targets=80, seed=5, user_name="template")
    assert set(result) == {"catalog_size", "targets", "turns", "user", "systems"}
    assert (result["catalog_size"], result["targets"], result["turns"], result["user"]) == (400, 80, 4, "template")
    for metrics in result["systems"].values():
        assert list(metrics) == METRICS and all(len(v) == 4 for v in metrics.values())
        assert all(a <= b for a, b in zip(metrics["success@10"], metrics["success@10"][1:], strict=False))
    keyword, random = result["systems"]["keyword"], result["systems"]["random"]
    assert keyword["success@10"][-1] > random["success@10"][-1] + 0.3
    assert keyword["rank_percentile"][-1] > 90 > random["rank_percentile"][-1]
    again = evaluate({"keyword": KeywordRanker(demo)}, demo, user, turns=4, targets=80, seed=5)
    assert again["systems"]["keyword"] == keyword  # same seed, same dialogs
    path = save_result(result, tmp_path / "eval.json")
    assert json.loads(path.read_text()) == result
    image = plot(result, tmp_path / "eval.png").read_bytes()
    assert image.startswith(b"\x89PNG") and len(image) > 10_000
