"""Benchmark: latency of one dialog turn through the public Dialog API on the real catalog (image loading excluded).

Each simulated shopper opens with a described request, then replies four times with the template shopper's words
about the item shown; only `Dialog.start` / `Dialog.reply` are timed (feedback encoding, the retriever's query,
the index search, the results). Latency does not depend on the weights, so without --retriever an untrained
retriever of the configured shape is timed; without --backbone the item vectors are synthetic.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from assistant.core.config import load_config, section
from assistant.core.constraints import FeedbackConstraints
from assistant.core.dialog import Dialog, RankingContext
from assistant.core.loaders import load_catalog
from assistant.core.storage import atomic_write_text
from assistant.vision.features import ItemFeatures
from assistant.vision.index import IndexConfig, VectorIndex, clustered_vectors
from retriever.baselines import KeywordRanker
from retriever.model import DialogRetriever, RetrieverConfig, RetrieverRanker
from simulator.template_user import TemplateUser

RESULTS = Path(__file__).parent / "results"
DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared/data/fashion-product-images-small"


def item_features(catalog, backbone_path: Path | None) -> tuple[ItemFeatures, str]:
    if backbone_path is not None:
        from assistant.vision.backbone import Backbone
        from assistant.vision.features import compute_features

        backbone = Backbone.load(backbone_path)
        return compute_features(backbone, catalog), backbone.id
    vectors = [clustered_vectors(len(catalog), 256, seed=seed) for seed in (1, 2)]
    return ItemFeatures(catalog.ids, vectors[0], vectors[1], vectors[0]), "synthetic (clustered_vectors, 256-d)"


def timed_retriever(catalog, features: ItemFeatures, path: Path | None, config_name: str, overrides: dict,
                    seed: int) -> DialogRetriever:
    """The trained retriever at `path`, else an untrained one of the config's shape (the same cost per query)."""
    if path:
        return DialogRetriever.load(path)
    try:
        config = section(load_config(config_name), "retriever", RetrieverConfig)
    except FileNotFoundError:
        config = RetrieverConfig()
    config = dataclasses.replace(config, **overrides)
    torch.manual_seed(seed)
    return DialogRetriever.create(catalog, features.dim, config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalog", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--backbone", type=Path, help="a trained backbone (file or folder); else synthetic vectors")
    parser.add_argument("--retriever", type=Path, help="a trained retriever.safetensors; else an untrained one")
    parser.add_argument("--config", default="fpi-cpu", help="config whose retriever: section gives the shape")
    parser.add_argument("--set", default="{}", help="JSON overrides of the retriever section (shape fields)")
    parser.add_argument("--dialogs", type=int, default=100)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for a single shopper's query")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=RESULTS / "dialog_latency.json")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    catalog = load_catalog(args.catalog)
    features, feature_source = item_features(catalog, args.backbone)
    retriever = timed_retriever(catalog, features, args.retriever, args.config, json.loads(args.set), args.seed)
    items = retriever.item_inputs(catalog, features)
    vectors = retriever.item_vectors(items)
    index = VectorIndex.build(vectors, IndexConfig())
    attributes = [item.attributes for item in catalog]
    rankers = {"app": RetrieverRanker(retriever, items, vectors, index, constraints=FeedbackConstraints(catalog),
                                      lexical=KeywordRanker(catalog), lexical_weight=RetrieverConfig.lexical_weight,
                                      attributes=attributes),
               "index_only": RetrieverRanker(retriever, items, vectors, index)}
    user = TemplateUser(catalog, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    per_turn = {name: [[] for _ in range(args.turns)] for name in rankers}
    load_before = os.getloadavg()[0]
    for number in range(args.dialogs + 1):  # the first dialog warms caches up and is not counted
        target = catalog.items[int(rng.integers(len(catalog)))]
        for name, ranker in rankers.items():  # the same dialog with each ranker, side by side
            dialog = Dialog(RankingContext(catalog, ranker, features.image))
            timings = []
            started = time.perf_counter()
            dialog.start(text=user.describe(target))
            timings.append(time.perf_counter() - started)
            for turn in range(2, args.turns + 1):
                reply = user.respond(dialog.reference, target, turn)
                started = time.perf_counter()
                dialog.reply(reply)
                timings.append(time.perf_counter() - started)
            if number:
                for turn, seconds in enumerate(timings):
                    per_turn[name][turn].append(seconds * 1000)

    def summary(ms: list[list[float]]) -> dict:
        every = np.concatenate(ms)
        return {"p50_ms": round(float(np.percentile(every, 50)), 2),
                "p99_ms": round(float(np.percentile(every, 99)), 2),
                "per_turn": {str(t + 1): {"p50_ms": round(float(np.percentile(turn, 50)), 2),
                                          "p99_ms": round(float(np.percentile(turn, 99)), 2)}
                             for t, turn in enumerate(ms)}}

    result = {
        "catalog_size": len(catalog), "dialogs": args.dialogs, "turns": args.turns,
        **summary(per_turn["app"]), "index_only": summary(per_turn["index_only"]),
        "index": index.kind, "torch_threads": args.threads, "features": feature_source,
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "retriever": "trained" if args.retriever else "untrained (same shape, same cost)",
        "retriever_config": dataclasses.asdict(retriever.config), "feature_dim": retriever.feature_dim,
        "note": "timed: Dialog.start / Dialog.reply (feedback text encoding, query, scoring, results); top level: "
                "the app's ranker (retriever + 0.1 x BM25 under the feedback's attribute constraints; every item "
                "scored below IndexConfig.exact_threshold, candidates re-ranked above it); "
                "index_only: the retriever through the faiss index without constraints; not timed: the template "
                "shopper's reply; no image is loaded",
    }
    atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
