"""Feedback constraints and hybrid search: items contradicting the feedback sink, its words count as in BM25."""

from __future__ import annotations

import numpy as np

from assistant.core.catalog import Catalog, Item
from assistant.core.constraints import PENALTY, PRIORITY, FeedbackConstraints
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
    # the red shirt misses the kind (priority 8) and the colour (2): PENALTY x (1 + 8 + 2)
    assert out[0, 0] == np.float32(0.9 - PENALTY * (1 + PRIORITY['category'] + PRIORITY['colour']))
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


def _shop() -> Catalog:
    """Ten items: the kind, who it is for and the colour vary; no navy dress exists."""
    rows = [("1", "Dresses", "Women", "Red"), ("2", "Dresses", "Women", "Blue"),
            ("3", "Dresses", "Girls", "Navy Blue"), ("4", "Shirts", "Women", "Navy Blue"),
            ("5", "Shirts", "Men", "Navy Blue"), ("6", "Dresses", "Women", "Black"), ("7", "Tshirts", "Unisex", "Pink"),
            ("8", "Tshirts", "Men", "Pink"), ("9", "Dresses", "Women", "Turquoise Blue"),
            ("10", "Shirts", "Men", "Red")]
    return Catalog([Item(i, f"{i}.jpg", f"{colour} {kind}", kind,
                         {"articleType": kind, "gender": gender, "baseColour": colour})
                    for i, kind, gender, colour in rows], name="ten")


def _order(constraints: FeedbackConstraints, *feedback: str) -> list[str]:
    catalog_ids = [str(i) for i in range(1, 11)]
    penalty = constraints.penalties(_state(*feedback))
    return [catalog_ids[r] for r in np.lexsort((np.arange(len(penalty)), penalty))]


def test_no_exact_match_keeps_the_kind_then_the_person_then_the_nearest_shade() -> None:
    constraints = FeedbackConstraints(_shop())
    penalty = constraints.penalties(_state("a navy dress for my girlfriend"))
    order = _order(constraints, "a navy dress for my girlfriend")
    # no women's navy dress: dresses for women come first, the nearest shade (blue family) before other colours,
    # then the girls' navy dress (right kind and colour, wrong person), and the navy shirts after every dress
    assert order[:2] == ["2", "9"]
    assert set(order[2:4]) == {"1", "6"}
    assert order[4] == "3"
    assert order.index("4") > order.index("3") and order.index("5") > order.index("3")
    assert penalty.min() > 0  # nothing fits everything


def test_fitting_items_come_first_and_partial_credit_orders_the_rest() -> None:
    constraints = FeedbackConstraints(_shop())
    penalty = constraints.penalties(_state("a blue dress for women"))
    assert penalty[1] == 0 and (penalty[[0, 2, 3, 4, 5, 6, 7, 8, 9]] > 0).all()
    assert penalty[8] < penalty[0]  # Turquoise Blue: a shade of blue earns partial credit, red none
    unisex = constraints.penalties(_state("a tshirt for my brother"))
    assert unisex[7] == 0 and 0 < unisex[6] < unisex[0]  # the unisex tee: partial credit for who it is for


def test_penalties_for_chosen_rows_match_all_rows() -> None:
    constraints = FeedbackConstraints(_shop())
    state = _state("not red, a shirt")
    every = constraints.penalties(state)
    np.testing.assert_array_equal(constraints.penalties(state, rows=[9, 3, 0]), every[[9, 3, 0]])
    assert constraints.penalties(_state("hello")) is None


def test_predicted_labels_count_by_their_confidence() -> None:
    catalog = _shop()
    rows = [dict(item.attributes) for item in catalog]
    values = ["Red", "Blue", "Black"]
    # rows 5 and 9 were predicted: both most likely Red, row 5 at 0.9 and row 9 at 0.5
    probabilities = {"baseColour": (np.array([5, 9]), values, np.array([[0.9, 0.05, 0.05], [0.5, 0.1, 0.4]]))}
    constraints = FeedbackConstraints(catalog, rows, probabilities)
    penalty = constraints.penalties(_state("a red dress"))
    assert penalty[0] == 0  # labelled red dress
    assert 0 < penalty[5] < penalty[1]  # 0.9 red beats a labelled blue dress
    assert penalty[5] < 1.0 < PENALTY  # a guess costs some score, not a place below every item that fits
    ruled = constraints.penalties(_state("a dress, not red"))
    assert ruled[1] == 0 and ruled[0] > ruled[5] > 0  # a 0.9-likely red dress is mostly ruled out


def test_a_ruled_out_values_probability_costs_the_ruled_weight() -> None:
    catalog = _shop()
    rows = [dict(item.attributes) for item in catalog]
    values = ["Red", "Blue", "Black"]
    probabilities = {"baseColour": (np.array([5, 9]), values, np.array([[0.9, 0.05, 0.05], [0.5, 0.1, 0.4]]))}
    mild = FeedbackConstraints(catalog, rows, probabilities, ruled_weight=1.0)
    strict = FeedbackConstraints(catalog, rows, probabilities, ruled_weight=10.0)
    state = _state("a dress, not red")
    extra = strict.penalties(state) - mild.penalties(state)
    # only the predicted rows pay more: the colour priority x the head's probability of red x the weight's change
    np.testing.assert_allclose(extra[[5, 9]], [PRIORITY["colour"] * 0.9 * 9.0, PRIORITY["colour"] * 0.5 * 9.0],
                               rtol=1e-5)
    assert not np.delete(extra, [5, 9]).any()
    # asking for a colour has no ruled-out value: both weigh a shortfall alike
    np.testing.assert_array_equal(strict.penalties(_state("a red dress")), mild.penalties(_state("a red dress")))
