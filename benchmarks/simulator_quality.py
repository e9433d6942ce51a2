"""Benchmark: train the fpi-cpu-sized simulator on the real catalog's train split, measure it on the held-out split.

Features: a trained backbone's item vectors when `--backbone DIR` is given, else 10x8 image thumbnails
(a cheap real representation; the simulator mostly needs the attribute tokens to be faithful).
Writes benchmarks/results/simulator_quality.json and keeps the model in the cache for simulator_throughput.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch.nn.functional as F

from assistant.core.catalog import Catalog
from assistant.core.config import load_config, section
from assistant.core.loaders import load_catalog
from assistant.core.storage import atomic_write_text, cache_dir
from assistant.vision.backbone import Backbone
from assistant.vision.features import ItemFeatures, compute_features
from assistant.vision.preprocessing import pixel_tensor
from simulator.captioner import SimulatorConfig
from simulator.metrics import evaluate_simulator
from simulator.train import train_simulator

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared/data/fashion-product-images-small"
MODEL_DIR = "benchmarks/simulator-fpi"  # inside the cache folder


def thumbnail_features(catalog: Catalog) -> ItemFeatures:
    """10x8 RGB thumbnails, centred and L2-normalised, as (N, 240) item vectors."""
    pixels, _ = pixel_tensor(catalog, (10, 8), progress=False)
    vectors = pixels.float().flatten(1) / 255.0
    vectors = F.normalize(vectors - vectors.mean(0), dim=1).numpy()
    return ItemFeatures(catalog.ids, vectors, vectors, vectors, backbone_id="thumbnails-10x8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalog", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--config", default="fpi-cpu", help="config name or YAML whose simulator: section to use")
    parser.add_argument("--backbone", type=Path, help="a trained backbone directory (default: thumbnails)")
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help=f"model directory (default: <cache>/{MODEL_DIR})")
    parser.add_argument("--fresh", action="store_true", help="train from scratch even if a finished run exists")
    parser.add_argument("--max-minutes", type=float, default=10.0, help="training time budget")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: the config's)")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results/simulator_quality.json")
    args = parser.parse_args()

    try:
        config = section(load_config(args.config), "simulator", SimulatorConfig)
    except FileNotFoundError:
        config = SimulatorConfig()
    config = dataclasses.replace(config, max_minutes=args.max_minutes,
                                 threads=config.threads if args.threads is None else args.threads)
    catalog = load_catalog(args.catalog)
    started = time.perf_counter()
    if args.backbone:
        features = compute_features(Backbone.load(args.backbone), catalog, progress=False)
    else:
        features = thumbnail_features(catalog)
    feature_s = time.perf_counter() - started
    out = args.out or cache_dir() / MODEL_DIR
    model = train_simulator(catalog, features, config, out, resume=not args.fresh)
    held_out = catalog.split("test")
    evaluations = {decoding: evaluate_simulator(model, held_out, features, pairs=args.pairs, seed=args.seed,
                                                decoding=decoding) for decoding in ("greedy", "sample")}
    greedy = evaluations["greedy"]
    run = model.training_run
    result = {
        "catalog": catalog.name, "items": len(catalog), "held_out_items": len(held_out),
        "features": features.backbone_id or "backbone", "feature_dim": features.dim, "feature_s": round(feature_s, 1),
        "config": dataclasses.asdict(model.config), "train_triplets": run["triplets"], "steps": run["steps"],
        "best_step": run["best_step"], "best_val_loss": run["best_val_loss"], "train_s": run["elapsed_s"],
        "train_cpu_s": run["cpu_s"],
        "history": run["history"],
        "held_out": {decoding: {k: v for k, v in scores.items() if k != "examples"}
                     for decoding, scores in evaluations.items()},
        "acceptance": {
            "attribute_precision>=0.95": greedy["attribute_precision"] >= 0.95,
            "attribute_recall_budget>=0.85": greedy["attribute_recall_budget"] >= 0.85,
            **{f"{name}>=0.3 ({decoding})": evaluations[decoding][name] >= 0.3
               for name in ("distinct_2", "distinct_2_per_100") for decoding in ("greedy", "sample")},
        },
        "examples": [{**g, "sampled": s["caption"]}
                     for g, s in zip(greedy["examples"][:25], evaluations["sample"]["examples"][:25], strict=True)],
        "note": "pairs sampled as in training (70% similar, 30% random) among held-out test-split items; "
                "recall_budget = stated changes / min(changed, max_facets), raw recall = stated / changed; "
                "BLEU/ROUGE/CIDEr against the template shopper's caption of the same pair; distinct-2 pools all "
                "captions (it falls with their number: see template_shopper), distinct_2_per_100 averages over "
                "segments of 100 captions; "
                "timings are on a shared 2-core machine",
    }
    atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("history", "examples")}, indent=2))


if __name__ == "__main__":
    main()
