"""Training pairs: (reference, target) items drawn similar or at random, captioned by a shopper into triplets."""

from __future__ import annotations

import random
from typing import Any

from assistant.core.catalog import Catalog, Item
from simulator.template_user import TemplateUser


class PairSampler:
    """Draws (reference, target) pairs: similar ones (same category, differing in one or two attributes where
    a few random candidates allow it) or uniformly random ones."""

    def __init__(self, catalog: Catalog, candidates: int = 12) -> None:
        if len(catalog) < 2:
            raise ValueError(f"catalog {catalog.name!r} has {len(catalog)} item(s); pairs need at least 2")
        self.items = catalog.items
        self.candidates = candidates
        by_category: dict[str, list[Item]] = {}
        for item in self.items:
            by_category.setdefault(item.category, []).append(item)
        self.by_category = by_category

    @staticmethod
    def differing(a: Item, b: Item) -> int:
        """How many attributes (of either item) have different values."""
        return sum(a.attributes.get(n) != b.attributes.get(n) for n in a.attributes.keys() | b.attributes.keys())

    def random_pair(self, rng: random.Random) -> tuple[Item, Item]:
        reference = rng.choice(self.items)
        target = rng.choice(self.items)
        while target is reference:
            target = rng.choice(self.items)
        return reference, target

    def similar_pair(self, rng: random.Random) -> tuple[Item, Item]:
        """Same category and, among a few random candidates, the one closest to 1 or 2 differing attributes."""
        reference = rng.choice(self.items)
        pool = self.by_category[reference.category]
        if len(pool) < 2:
            return self.random_pair(rng)
        wanted = rng.choice((1, 2))
        best: tuple[int, Item] | None = None
        for _ in range(self.candidates):
            candidate = rng.choice(pool)
            if candidate is reference:
                continue
            differing = self.differing(reference, candidate)
            score = abs(differing - wanted) if differing else 100  # identical labels say nothing: last resort
            if best is None or score < best[0]:
                best = (score, candidate)
                if score == 0:
                    break
        return (reference, best[1]) if best else self.random_pair(rng)


def training_triplets(catalog: Catalog, n: int, seed: int = 0, similar_fraction: float = 0.7,
                      user: Any = None) -> list[tuple[str, str, str]]:
    """`n` (reference id, target id, caption) triplets for training a captioner or retriever.

    A `similar_fraction` of pairs share the category and differ in few attributes (as the CFQ paper paired
    items by attribute labels); the rest are random pairs. Captions come from `user` (a TemplateUser over the
    catalog by default), each for a turn in 0..4 so the wording varies.
    """
    if n < 0:
        raise ValueError(f"n must be 0 or more, not {n}")
    if not 0.0 <= similar_fraction <= 1.0:
        raise ValueError(f"similar_fraction must lie in [0, 1], not {similar_fraction}")
    user = user if user is not None else TemplateUser(catalog, seed=seed)
    sampler = PairSampler(catalog)
    rng = random.Random(seed)
    triplets = []
    for _ in range(n):
        pair = sampler.similar_pair(rng) if rng.random() < similar_fraction else sampler.random_pair(rng)
        reference, target = pair
        triplets.append((reference.id, target.id, user.respond(reference, target, rng.randrange(5))))
    return triplets
