"""Benchmark: train the retriever on the real catalog's train split, play held-out test dialogs, model vs baselines.

Writes benchmarks/results/retriever_quality.json (+ .png) through the evaluation harness, with the training time,
the configuration and the acceptance checks (success@10 at the last turn, recall@10 growth, margins over baselines).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from assistant.core.config import load_config, section
from assistant.core.loaders import load_catalog
from assistant.core.storage import cache_dir
from assistant.vision.backbone import Backbone
from assistant.vision.features import compute_features, features_for
from retriever.evaluate import evaluate, model_ranker, plot, save_result, standard_systems
from retriever.model import RetrieverConfig
from retriever.train import mixed_user, train_retriever
from simulator.template_user import TemplateUser

RESULTS = Path(__file__).parent / "results"
DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared/data/fashion-product-images-small"


def acceptance(result: dict) -> dict:
    """The targets for the real catalog, checked on this result."""
    systems = result["systems"]
    model = systems["model"]
    ours = ("model", "no_attributes", "retriever_only")
    baselines = {name: metrics for name, metrics in systems.items() if name not in ours}
    best_success = max(metrics["success@10"][-1] for metrics in baselines.values())
    return {
        "success@10_last_turn": model["success@10"][-1],
        "success@10_at_least_0.80": model["success@10"][-1] >= 0.80,
        "recall@10_last_over_first": round(model["recall@10"][-1] / max(model["recall@10"][0], 1e-9), 2),
        "recall@10_grows_1.5x": model["recall@10"][-1] >= 1.5 * model["recall@10"][0],
        "beats_every_baseline_recall@10_from_turn_2": all(
            model["recall@10"][t] > metrics["recall@10"][t]
            for metrics in baselines.values() for t in range(1, result["turns"])),
        "best_baseline_success@10_last_turn": best_success,
        "success@10_margin_over_best_baseline": round(model["success@10"][-1] - best_success, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalog", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--backbone", type=Path, required=True, help="a trained backbone (file or model folder)")
    parser.add_argument("--config", default="fpi-cpu", help="config whose retriever: section is used")
    parser.add_argument("--set", default="{}", help="JSON overrides of the retriever section")
    parser.add_argument("--simulator", type=Path, help="a model folder with a trained simulator to mix in")
    parser.add_argument("--ablation", action="store_true", help="also train a retriever without attribute tokens")
    parser.add_argument("--targets", type=int, default=1000)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=cache_dir() / "benchmarks" / "retriever-quality")
    parser.add_argument("--json", type=Path, default=RESULTS / "retriever_quality.json")
    parser.add_argument("--plot", type=Path, default=RESULTS / "retriever_quality.png")
    args = parser.parse_args()

    try:
        config = section(load_config(args.config), "retriever", RetrieverConfig)
    except FileNotFoundError:
        config = RetrieverConfig()
    config = dataclasses.replace(config, **json.loads(args.set))
    catalog = load_catalog(args.catalog)
    backbone = Backbone.load(args.backbone)
    features = compute_features(backbone, catalog)
    train, test = catalog.split("train"), catalog.split("test")
    train_features = features_for(features, train)
    simulator = None
    if args.simulator:
        from simulator.user import load_simulator_user

        simulator = load_simulator_user(args.simulator, train, train_features, decoding="sample")
    user = mixed_user(simulator, TemplateUser(train, seed=1), config.simulator_fraction, seed=config.seed)
    started = time.time()
    retriever = train_retriever(train, train_features, user, config, args.out_dir / "model")
    train_seconds = time.time() - started
    ablation = None
    if args.ablation:
        plain = dataclasses.replace(config, use_attributes=False)
        ablation = train_retriever(train, train_features, user, plain, args.out_dir / "no-attributes")
    model = model_ranker(retriever, test, retriever.item_inputs(test, features_for(features, test)),
                         lexical_weight=config.lexical_weight, seed=args.seed)
    systems, notes = standard_systems(model, test, features, backbone, ablation, seed=args.seed)
    started = time.time()
    result = evaluate(systems, test, TemplateUser(test, seed=args.seed + 2), args.turns, args.targets, args.seed,
                      user_name="template", notes=notes)
    result["notes"].update({
        "train_split_items": len(train), "retriever_train_seconds": round(train_seconds),
        "evaluation_seconds": round(time.time() - started), "torch_threads": torch.get_num_threads(),
        "training_users": "template" if simulator is None else f"simulator {config.simulator_fraction} + template",
        "backbone": backbone.id, "retriever_config": dataclasses.asdict(config),
        "acceptance": acceptance(result)})
    save_result(result, args.json)
    plot(result, args.plot)
    print(json.dumps({name: {k: v[-1] for k, v in m.items()} for name, m in result["systems"].items()}, indent=1))
    print(json.dumps(result["notes"]["acceptance"], indent=1))


if __name__ == "__main__":
    main()
