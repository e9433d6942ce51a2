"""Caption metrics on small hand-made examples with known values."""

from __future__ import annotations

import math

import pytest

from assistant.core.catalog import Item
from assistant.core.feedback import AttributeParser
from simulator.metrics import (
    attribute_faithfulness,
    bleu,
    caption_scores,
    cider_d,
    distinct_n,
    rouge_l,
    segment_distinct_n,
)

SENTENCES = ["make it red with long sleeves", "a blue striped one for men", "shorter and in green please",
             "i want a dress instead of a skirt", "something darker with a collar"]


def item(item_id: str, **attributes: str) -> Item:
    return Item(item_id, None, f"item {item_id}", "top", attributes)


@pytest.fixture(scope="module")
def parser() -> AttributeParser:
    return AttributeParser({"colour": ["red", "blue", "green"], "pattern": ["striped", "solid"],
                            "sleeve": ["long", "short"]})


def test_bleu_is_one_for_identical_and_near_zero_for_disjoint_sentences() -> None:
    same = bleu(SENTENCES, [[s] for s in SENTENCES])
    assert same == pytest.approx({"bleu_1": 1.0, "bleu_2": 1.0, "bleu_3": 1.0, "bleu_4": 1.0})
    disjoint = bleu(["alpha beta gamma delta"], [["one two three four"]])
    assert disjoint["bleu_1"] == 0.0 and disjoint["bleu_4"] < 0.01


def test_bleu_orders_partial_overlap_between_identical_and_disjoint() -> None:
    partial = bleu(["make it red with short sleeves"], [["make it red with long sleeves"]])
    assert 0.5 < partial["bleu_1"] < 1.0
    assert partial["bleu_4"] < partial["bleu_1"]


def test_rouge_l_known_value() -> None:
    # LCS("a b c d", "a c d e") = 3 -> precision = recall = 3/4 -> F = 3/4 for any beta
    assert rouge_l(["a b c d"], [["a c d e"]]) == pytest.approx(0.75)
    assert rouge_l(SENTENCES, [[s] for s in SENTENCES]) == pytest.approx(1.0)
    assert rouge_l(["x y"], [["a b"]]) == 0.0
    # precision 1, recall 1/2: coco-caption's F with beta 1.2 is 2.44 * 0.5 / (0.5 + 1.44), not F1's 2/3
    assert rouge_l(["a b"], [["a b c d"]]) == pytest.approx(2.44 * 0.5 / 1.94)
    # the best precision and the best recall over the references, each on its own
    assert rouge_l(["a b c"], [["a b", "a b c x y z"]]) == pytest.approx(2.44 * 1.0 / (1.0 + 1.44))
    assert rouge_l(["Make it RED!"], [["make it red"]]) == pytest.approx(1.0)  # case and punctuation ignored


def test_cider_d_is_ten_for_identical_distinct_sentences_and_lower_otherwise() -> None:
    references = [[s] for s in SENTENCES]
    assert cider_d(SENTENCES, references) == pytest.approx(10.0)
    shuffled = SENTENCES[1:] + SENTENCES[:1]
    assert cider_d(shuffled, references) < 1.0
    one_word_off = ["make it red with short sleeves", *SENTENCES[1:]]
    assert 5.0 < cider_d(one_word_off, references) < 10.0


def test_cider_d_needs_matching_lists_and_words_to_match() -> None:
    assert cider_d(["a caption"], [[""]]) == 0.0
    assert cider_d(["", *SENTENCES[1:]], [[s] for s in SENTENCES]) == pytest.approx(8.0)  # an empty caption scores 0
    with pytest.raises(ValueError, match="reference sets"):
        cider_d(SENTENCES, [[s] for s in SENTENCES[:-1]])


def test_cider_d_length_penalty() -> None:
    references = [[s] for s in SENTENCES]
    padded = [SENTENCES[0] + " " + " ".join(["really"] * 8), *SENTENCES[1:]]
    # the padded caption keeps every reference n-gram, but 8 extra words cost exp(-64 / 72) and the cosine
    assert cider_d(padded, references) < 10.0 - 10.0 / len(SENTENCES) * (1 - math.exp(-64 / 72))


def test_distinct_n() -> None:
    assert distinct_n(["a a a"], 1) == pytest.approx(1 / 3)
    assert distinct_n(["a b", "a b"], 2) == pytest.approx(1 / 2)
    assert distinct_n(["a b c", "d e f"], 2) == 1.0
    assert distinct_n([], 2) == 0.0


def test_segment_distinct_n_does_not_fall_with_the_number_of_captions() -> None:
    captions = [f"make it {colour} with {sleeve} sleeves" for colour in ("red", "blue", "green", "black", "white")
                for sleeve in ("long", "short")]
    assert segment_distinct_n(captions * 20, 2, segment=10) == pytest.approx(distinct_n(captions, 2))
    assert distinct_n(captions * 20, 2) == pytest.approx(distinct_n(captions, 2) / 20)
    assert segment_distinct_n(captions[:4], 2, segment=10) == distinct_n(captions[:4], 2)


def test_caption_scores_has_every_overlap_and_diversity_metric() -> None:
    scores = caption_scores(SENTENCES, SENTENCES)
    assert set(scores) == {"bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider_d", "distinct_1", "distinct_2",
                           "distinct_2_per_100"}
    assert scores["bleu_4"] == pytest.approx(1.0) and scores["rouge_l"] == pytest.approx(1.0)


def test_precision_counts_wrong_values(parser: AttributeParser) -> None:
    reference = item("r", colour="blue", pattern="solid", sleeve="long")
    target = item("t", colour="red", pattern="striped", sleeve="long")
    right = attribute_faithfulness(["make it red and striped"], [reference], [target], parser)
    assert right["attribute_precision"] == 1.0
    wrong = attribute_faithfulness(["make it green and striped"], [reference], [target], parser)
    assert wrong["attribute_precision"] == pytest.approx(0.5)
    # a value the target has but that did not change is still true of the target
    unchanged = attribute_faithfulness(["with long sleeves"], [reference], [target], parser)
    assert unchanged["attribute_precision"] == 1.0 and unchanged["attribute_recall"] == 0.0


def test_raw_recall_and_recall_against_the_facet_budget(parser: AttributeParser) -> None:
    reference = item("r", colour="blue", pattern="solid", sleeve="short")
    target = item("t", colour="red", pattern="striped", sleeve="long")  # three attributes changed
    one = attribute_faithfulness(["make it red"], [reference], [target], parser, max_facets=2)
    assert one["attribute_recall"] == pytest.approx(1 / 3)
    assert one["attribute_recall_budget"] == pytest.approx(1 / 2)
    two = attribute_faithfulness(["red and striped"], [reference], [target], parser, max_facets=2)
    assert two["attribute_recall"] == pytest.approx(2 / 3)
    assert two["attribute_recall_budget"] == 1.0
    # naming more than the budget does not push budget recall past 1
    three = attribute_faithfulness(["red, striped, long sleeves"], [reference], [target], parser, max_facets=2)
    assert three["attribute_recall"] == 1.0 and three["attribute_recall_budget"] == 1.0
    # a wrong value for a changed attribute is no mention
    wrong = attribute_faithfulness(["make it green"], [reference], [target], parser, max_facets=2)
    assert wrong["attribute_recall"] == 0.0 and wrong["attribute_precision"] == 0.0


def test_recall_is_micro_averaged_over_pairs(parser: AttributeParser) -> None:
    pairs = [(item("a", colour="blue"), item("b", colour="red")),
             (item("c", colour="blue", pattern="solid"), item("d", colour="green", pattern="striped"))]
    scores = attribute_faithfulness(["red", "green"], [p[0] for p in pairs], [p[1] for p in pairs], parser,
                                    max_facets=1)
    assert scores["attribute_recall"] == pytest.approx(2 / 3)
    assert scores["attribute_recall_budget"] == 1.0
    assert scores["asserted_per_caption"] == 1.0
