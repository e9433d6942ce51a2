"""Training pairs and triplets on the real catalog: similar pairs share more attributes, any user captions them."""

from __future__ import annotations

import statistics

import pytest

from assistant.core.catalog import Item
from simulator.pairs import PairSampler, training_triplets


def test_training_triplets_favour_similar_pairs(real_catalog) -> None:
    def shared(triplets) -> float:
        return statistics.mean(7 - PairSampler.differing(real_catalog[r], real_catalog[t]) for r, t, _ in triplets)

    similar = training_triplets(real_catalog, 1500, seed=1, similar_fraction=1.0)
    random_pairs = training_triplets(real_catalog, 1500, seed=1, similar_fraction=0.0)
    mixed = training_triplets(real_catalog, 1500, seed=1)
    print(f"shared attributes (of 7): similar {shared(similar):.2f}, mixed {shared(mixed):.2f}, "
          f"random {shared(random_pairs):.2f}")
    assert shared(similar) > 5.0 > shared(mixed) > shared(random_pairs) + 1.5
    assert all(real_catalog[r].category == real_catalog[t].category for r, t, _ in similar)
    assert all(r != t and caption for r, t, caption in mixed)
    assert training_triplets(real_catalog, 200, seed=4) == training_triplets(real_catalog, 200, seed=4)


def test_training_triplets_take_any_user_and_refuse_bad_arguments(real_catalog) -> None:
    class Echo:
        def respond(self, shown: Item, target: Item, turn: int) -> str:
            return f"{shown.id}>{target.id}"

    triplets = training_triplets(real_catalog, 50, user=Echo())
    assert all(caption == f"{r}>{t}" for r, t, caption in triplets)
    with pytest.raises(ValueError, match="similar_fraction"):
        training_triplets(real_catalog, 5, similar_fraction=1.5)
    with pytest.raises(ValueError, match="at least 2"):
        training_triplets(real_catalog.subset(real_catalog.ids[:1]), 5)
