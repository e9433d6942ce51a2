"""Feedback constraints and hybrid search: items contradicting the feedback sink, its words count as in BM25."""

from __future__ import annotations

import numpy as np

from assistant.core.catalog import Catalog, Item
from assistant.core.constraints import PENALTY, FeedbackConstraints
from assistant.core.dialog import DialogState, Turn
from retriever.baselines import KeywordRanker
from retriever.model import RetrieverRanker


def _catalog() -> Catalog:
    rows = [("1", "Red Shirt", "Shirts", "Red", "Men"), ("2", "Green Shirt", "Shirts", "Green", "Men"),
            ("3", "Green Kurta", "Kurtas", "Green", "Women"), ("4", "Blue Kurta", "Kurtas", "Blue", "Women"),
            ("5", "Green Shirt", "Shirts", "Green", "Women")]
    return Catalog([Item(i, f"{i}.jpg", title, kind, {"articleType": kind, "baseColour": colour, "gender": gender})
                    for i, title, kind, colour, gender in rows], name="five")


def _state(*feedback: str) -> DialogState:
    return DialogState(turns=[Turn(None, text) for text in feedback])


def test_asserted_and_negated_values_count_per_item() -> None:
    constraints = FeedbackConstraints(_catalog())
    assert constraints.mismatches(_state("")) is None
    np.testing.assert_array_equal(constraints.mismatches(_state("in green please")), [1, 0, 0, 1, 0])
    np.testing.assert_array_equal(constraints.mismatches(_state("green", "for women")), [2, 1, 0, 1, 0])
    np.testing.assert_array_equal(constraints.mismatches(_state("not red")), [1, 0, 0, 0, 0])
    # a later turn overrides an earlier one
    np.testing.assert_array_equal(constraints.mismatches(_state("in green", "blue instead")), [1, 1, 1, 0, 1])


def test_apply_sinks_contradicting_items_below_all_fitting_ones() -> None:
    constraints = FeedbackConstraints(_catalog())
    scores = np.array([[0.9, 0.1, 0.2, 0.8, 0.3], [0.9, 0.1, 0.2, 0.8, 0.3]], dtype=np.float32)
    out = constraints.apply(scores.copy(), [_state("a green kurta"), _state("")])
    assert list(np.argsort(-out[0])[:1]) == [2]  # the only green kurta first, whatever its score
    assert out[0, 0] == np.float32(0.9 - 2 * PENALTY)
    np.testing.assert_array_equal(out[1], scores[1])  # no constraints: scores untouched


def test_predicted_attributes_stand_in_for_missing_labels() -> None:
    catalog = _catalog()
    rows = [dict(item.attributes) for item in catalog]
    rows[3]["baseColour"] = "Green"  # e.g. the attribute predictor's guess for an unlabelled item
    constraints = FeedbackConstraints(catalog, rows)
    np.testing.assert_array_equal(constraints.mismatches(_state("green")), [1, 0, 0, 0, 0])


class _FlatRetriever(RetrieverRanker):
    """A retriever that finds every item equally similar: what remains is the lexical term and the constraints."""

    def queries(self, states):
        return np.zeros((len(states), 4), dtype=np.float32)


def test_hybrid_search_adds_bm25_of_the_feedback_words() -> None:
    catalog = _catalog()
    flat = np.zeros((len(catalog), 4), dtype=np.float32)
    hybrid = _FlatRetriever(None, None, flat, lexical=KeywordRanker(catalog), lexical_weight=0.1,
                            constraints=FeedbackConstraints(catalog))
    plain = _FlatRetriever(None, None, flat)
    state = _state("a kurta like the blue one")
    assert int(np.argmax(hybrid.scores([state])[0])) == 3  # "Blue Kurta": both words match its title
    assert not plain.scores([state]).any()
    rows = hybrid.rank([state], k=2, exclude=[{3}])[0]
    assert rows[0] == 2 and 3 not in rows  # the green kurta breaks one constraint, the shirts two; shown: never
