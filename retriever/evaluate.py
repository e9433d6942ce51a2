"""Evaluation harness: every system through the same simulated dialogs, per-turn recall, success and rank."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from assistant.core.catalog import Catalog
from assistant.core.constraints import FeedbackConstraints, Probabilities
from assistant.core.dialog import DialogRun, Ranker, run_dialogs
from assistant.core.storage import atomic_write, atomic_write_text
from assistant.vision.features import ItemFeatures, features_for
from retriever.baselines import AttributeFilterRanker, KeywordRanker, RandomRanker, SingleTurnRanker
from retriever.model import DialogRetriever, ItemInputs, RetrieverRanker

RECALL_AT = (1, 5, 10, 50)
SYSTEM_ORDER = ("model", "no_attributes", "keyword", "attribute_filter", "single_turn", "random")


@dataclass(frozen=True)
class Protocol:
    """The seeded dialogs every system plays: targets and each one's random first item."""

    targets: np.ndarray
    start_rows: list[int]

    @classmethod
    def draw(cls, catalog_size: int, targets: int, seed: int) -> Protocol:
        if catalog_size < 2:
            raise ValueError("evaluation needs a catalog of at least 2 items")
        rng = np.random.default_rng(seed)
        chosen = rng.choice(catalog_size, min(targets, catalog_size), replace=False)
        offsets = rng.integers(1, catalog_size, len(chosen))
        return cls(chosen, [int((t + o) % catalog_size) for t, o in zip(chosen, offsets, strict=True)])


def model_ranker(retriever: DialogRetriever, catalog: Catalog, items: ItemInputs,
                 item_vectors: np.ndarray | None = None, index: Any = None, constraints: bool = True,
                 lexical_weight: float = 0.0, attributes: list[dict[str, str]] | None = None,
                 probabilities: Probabilities | None = None, seed: int = 0) -> RetrieverRanker:
    """The model as the app ranks: the retriever (through `index` when given), under the feedback's soft attribute
    constraints when `constraints` (predicted rows weighed by `probabilities`), plus `lexical_weight` x BM25."""
    return RetrieverRanker(retriever, items, item_vectors, index,
                           constraints=FeedbackConstraints(catalog, attributes, probabilities) if constraints else None,
                           lexical=KeywordRanker(catalog, seed=seed) if lexical_weight > 0 else None,
                           lexical_weight=lexical_weight,
                           attributes=attributes if attributes is not None else [item.attributes for item in catalog])


def standard_systems(model: RetrieverRanker, catalog: Catalog, features: ItemFeatures, backbone: Any = None,
                     ablation: DialogRetriever | None = None, attributes: list[dict[str, str]] | None = None,
                     seed: int = 0) -> tuple[dict[str, Ranker], dict[str, str]]:
    """The model ranker and every baseline over `catalog` (features: the catalog's or a superset's), with notes.

    `no_attributes` is `ablation` (a retriever trained without attribute tokens) under the model's constraints and
    BM25 when given, else the model with the shown items' attribute tokens masked at inference; `retriever_only`
    is the model's retriever alone. Baselines needing the backbone's text tower (attribute_filter, single_turn)
    are left out when no backbone is given.
    """
    features = features_for(features, catalog)
    hybrid = {"constraints": model.constraints, "lexical": model.lexical, "lexical_weight": model.lexical_weight}
    systems: dict[str, Ranker] = {"model": model, "random": RandomRanker(len(catalog), seed=seed),
                                  "keyword": model.lexical or KeywordRanker(catalog, seed=seed)}
    if backbone is not None:
        systems["attribute_filter"] = AttributeFilterRanker(catalog, features.image, backbone, seed=seed)
        systems["single_turn"] = SingleTurnRanker(features.image, backbone, seed=seed)
    if ablation is not None:
        systems["no_attributes"] = RetrieverRanker(ablation, ablation.item_inputs(catalog, features, attributes),
                                                   **hybrid)
        note = "retriever trained without attribute tokens"
    else:
        systems["no_attributes"] = RetrieverRanker(model.retriever, model.items, model.item_vectors,
                                                   use_attributes=False, **hybrid)
        note = "the model with the shown items' attribute tokens masked at inference (not retrained)"
    systems["retriever_only"] = RetrieverRanker(model.retriever, model.items, model.item_vectors, reader=model.reader)
    return systems, {"no_attributes": note,
                     "retriever_only": "the dialog retriever without the feedback's attribute constraints"}


def turn_metrics(ranks: np.ndarray, catalog_size: int) -> dict[str, list[float]]:
    """Per turn: recall@k (target in the top k at that turn), success@10 (in the top 10 at some turn so far),
    rank percentile (100 = ranked first, 0 = last)."""
    metrics = {f"recall@{k}": [round(float(v), 4) for v in (ranks <= k).mean(0)] for k in RECALL_AT}
    metrics["success@10"] = [round(float(v), 4) for v in np.maximum.accumulate(ranks <= 10, axis=1).mean(0)]
    percentile = 100.0 * (catalog_size - ranks) / max(catalog_size - 1, 1)
    metrics["rank_percentile"] = [round(float(v), 2) for v in percentile.mean(0)]
    return metrics


def evaluate(systems: Mapping[str, Ranker], catalog: Catalog, user: Any, turns: int = 5, targets: int = 1000,
             seed: int = 0, user_name: str | None = None, notes: Mapping[str, str] | None = None,
             batch_size: int = 256, truth: Catalog | None = None) -> dict:
    """Play the same seeded dialogs with every system and report per-turn metrics.

    For each target, turn 1 is about a seeded random item; at every turn the user says how the target differs
    from the item shown (the system's highest-ranked item not shown before) and the target's rank is recorded.
    The user answers from `truth` (the same items in the same order with all their labels, when the systems
    rank a thinned copy of it; default `catalog`).
    """
    truth = catalog if truth is None else truth
    if truth.ids != catalog.ids:
        raise ValueError("the catalog the user answers from must hold the ranked catalog's items in its order")
    protocol = Protocol.draw(len(catalog), targets, seed)
    result: dict[str, Any] = {"catalog_size": len(catalog), "targets": len(protocol.targets), "turns": turns,
                              "user": user_name or type(user).__name__, "systems": {}}
    for name, ranker in systems.items():
        ranks = np.concatenate([play(ranker, truth, user, turns, protocol, s, s + batch_size).ranks
                                for s in range(0, len(protocol.targets), batch_size)])
        result["systems"][name] = turn_metrics(ranks, len(catalog))
    if notes:
        result["notes"] = dict(notes)
    return result


def play(ranker: Ranker, catalog: Catalog, user: Any, turns: int, protocol: Protocol, start: int, stop: int
         ) -> DialogRun:
    """Dialogs start..stop of the protocol with one system; the user answers about `catalog`'s items."""
    return run_dialogs(ranker, catalog, protocol.targets[start:stop], user, turns, protocol.start_rows[start:stop])


def save_result(result: dict, path: Path) -> Path:
    return atomic_write_text(Path(path), json.dumps(result, indent=2) + "\n")


def plot(result: dict, path: Path) -> Path:
    """A PNG of recall@10 and success@10 against the turn for every system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = result["systems"]
    names = [n for n in SYSTEM_ORDER if n in systems] + [n for n in systems if n not in SYSTEM_ORDER]
    turns = list(range(1, result["turns"] + 1))
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for axis, metric in zip(axes, ("recall@10", "success@10"), strict=True):
        for name in names:
            axis.plot(turns, systems[name][metric], marker="o", linewidth=2.4 if name == "model" else 1.4,
                      label=name)
        axis.set_title(metric)
        axis.set_xlabel("turn")
        axis.set_xticks(turns)
        axis.set_ylim(0, 1)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("share of targets")
    axes[1].legend(loc="lower right", fontsize=8)
    thin = f", labels thinned: {', '.join(result['thin_labels'])}" if result.get("thin_labels") else ""
    figure.suptitle(f"{result['catalog_size']} items, {result['targets']} targets, user: {result['user']}{thin}")
    figure.tight_layout()
    atomic_write(Path(path), lambda tmp: figure.savefig(tmp, format="png", dpi=110))
    plt.close(figure)
    return Path(path)
