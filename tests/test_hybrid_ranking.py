"""Hybrid ranking through the index: candidates (HNSW, BM25 champions, rows fitting the constraints) re-ranked
by the exact hybrid score agree with scoring every item."""

from __future__ import annotations

import numpy as np
import pytest

from assistant.core.catalog import Catalog, Item
from assistant.core.constraints import FIT_TOLERANCE, FeedbackConstraints
from assistant.core.dialog import DialogState, Turn
from assistant.vision.index import AttributeIndex, IndexConfig, VectorIndex, clustered_vectors
from retriever.baselines import TIE_BREAK, KeywordRanker
from retriever.model import RetrieverRanker

COLOURS = ["Red", "Green", "Blue", "Black", "White", "Navy Blue", "Grey", "Pink"]
KINDS = ["Shirts", "Kurtas", "Dresses", "Jeans", "Tshirts", "Skirts"]
WORDS = ["cotton", "floral", "slim", "classic", "striped", "linen", "denim", "casual", "party", "summer"]
SIZE = 3000


class _QueryRanker(RetrieverRanker):
    """The hybrid ranker with a fixed query vector per dialog (its first turn's words pick it): no network."""

    def __init__(self, queries: dict[str, np.ndarray], **kwargs) -> None:
        super().__init__(None, None, **kwargs)
        self.fixed = queries

    def queries(self, states):
        return np.stack([self.fixed[state.turns[0].feedback] for state in states])


@pytest.fixture(scope="module")
def shop():
    rng = np.random.default_rng(0)
    items = []
    for row in range(SIZE):
        kind, colour = KINDS[row % len(KINDS)], COLOURS[int(rng.integers(len(COLOURS)))]
        gender = ["Men", "Women"][int(rng.integers(2))]
        words = " ".join(rng.choice(WORDS, size=2, replace=False))
        items.append(Item(str(row), None, f"{words} {colour} {kind}", kind,
                          {"articleType": kind, "baseColour": colour, "gender": gender}))
    catalog = Catalog(items, name="hybrid")
    vectors = clustered_vectors(SIZE, 32, clusters=50, seed=1)
    return catalog, vectors


def _rankers(catalog, vectors, openings):
    queries = dict(zip(openings, clustered_vectors(len(openings), 32, clusters=50, seed=2), strict=True))
    hnsw = VectorIndex.build(vectors, IndexConfig(kind="hnsw"))
    common = {"item_vectors": vectors, "constraints": FeedbackConstraints(catalog), "lexical": KeywordRanker(catalog),
              "lexical_weight": 0.1, "attributes": [item.attributes for item in catalog]}
    return _QueryRanker(queries, index=hnsw, **common), _QueryRanker(queries, index=None, **common)


OPENINGS = ["a blue shirt for men", "something floral", "a red dress not for men", "cotton kurtas in green",
            "a pink skirt", "slim linen", "black jeans for women", "a white tshirt", "a navy blue party dress",
            "classic denim"]


def test_candidates_reranked_agree_with_scoring_every_item(shop) -> None:
    catalog, vectors = shop
    indexed, exact = _rankers(catalog, vectors, OPENINGS)
    recalls = []
    for opening in OPENINGS:
        state = DialogState([Turn(None, opening)])
        shown = {int(r) for r in exact.rank([state], 3, [set()])[0]}
        state.turns.append(Turn(min(shown), "in grey please"))  # a reply that changes the colour
        for probe in (DialogState(state.turns[:1]), state):
            exclude = [probe.shown_rows()]
            got, truth = indexed.rank([probe], 12, exclude)[0], exact.rank([probe], 12, exclude)[0]
            assert not exclude[0] & set(got.tolist())
            recalls.append(len(set(got) & set(truth)) / 12)
            if indexed.constraints.reader.constraints(probe)[0]:  # few rows fit: all scored, exactly the same
                assert list(got) == list(truth), probe
    assert np.mean(recalls) >= 0.95


def test_attribute_index_finds_the_rows_that_break_no_constraint(shop) -> None:
    catalog, _ = shop
    constraints = FeedbackConstraints(catalog)
    index = AttributeIndex([item.attributes for item in catalog])
    for text in ["a blue shirt for men", "not red", "a green kurta, not for women", "navy blue"]:
        state = DialogState([Turn(None, text)])
        wanted, ruled_out = constraints.reader.constraints(state)
        allowed = {name: {v for v, credit in credits.items() if credit >= 1.0 - FIT_TOLERANCE}
                   for name, credits in wanted.items()}
        np.testing.assert_array_equal(index.rows(allowed, ruled_out), np.flatnonzero(constraints.penalties(state) == 0))
    assert len(index.rows({"baseColour": {"Purple"}}, {})) == 0  # a value no item has: nothing fits


def test_search_within_returns_only_allowed_rows_best_first(shop) -> None:
    _, vectors = shop
    index = VectorIndex.build(vectors, IndexConfig(kind="hnsw"))
    allowed = np.arange(0, SIZE, 7)
    found = index.search_within(vectors[5], 10, allowed)
    assert set(found) <= set(allowed.tolist())
    truth = allowed[np.argsort(-(vectors[allowed] @ vectors[5]))[:10]]
    assert len(set(found) & set(truth)) >= 9
    few = allowed[:3]
    exact = VectorIndex.build(vectors, IndexConfig(kind="exact"))  # exhaustive: every allowed row, then padding
    assert list(exact.search_within(vectors[5], 5, few)) == [*few[np.argsort(-(vectors[few] @ vectors[5]))], -1, -1]


def test_keyword_candidates_are_the_best_bm25_rows(shop) -> None:
    catalog, _ = shop
    keyword = KeywordRanker(catalog)
    state = DialogState([Turn(None, "floral linen")])
    scores = keyword.scores([state])[0]
    candidates = keyword.candidates(state, 20)
    assert len(candidates) == 20
    np.testing.assert_allclose(keyword.row_scores(state, candidates), scores[candidates])
    # the best BM25 rows, up to the tie break (more rows share the best score than a champion list keeps)
    assert scores[candidates].min() >= np.sort(scores)[-20] - TIE_BREAK
    within = np.arange(0, SIZE, 2)
    assert set(keyword.candidates(state, 20, within=within)) <= set(within.tolist())
