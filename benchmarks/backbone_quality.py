"""Benchmark: text -> image retrieval on the real catalog's test split after training the backbone on its train split.

Query: an item's title; pool: all test items' images; the same model trained on shuffled image-text pairs is the
control (it must score near chance). Writes benchmarks/results/backbone_quality.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import torch

from assistant.core.loaders import load_catalog
from assistant.core.storage import atomic_write_text, cache_dir
from assistant.vision.backbone import BackboneConfig, cpu_has_native_bf16
from assistant.vision.backbone_training import train_backbone
from assistant.vision.probes import shuffled_pairs, text_image_recall

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared/data/fashion-product-images-small"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--catalog", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="where the trained backbone goes (default: <cache>/benchmarks/backbone-fpi)")
    parser.add_argument("--train-items", type=int, default=0, help="use only the first N train items (0: all)")
    parser.add_argument("--no-control", action="store_true", help="skip the shuffled-pairs control")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                        help="override a BackboneConfig field, e.g. --set epochs=4 --set lr=1e-3")
    parser.add_argument("--note", default="", help="free text stored with the results")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results/backbone_quality.json")
    args = parser.parse_args()
    overrides = {key: json.loads(value) for key, value in (item.split("=", 1) for item in args.set)}
    config = BackboneConfig(**overrides)
    model_dir = args.model_dir or cache_dir() / "benchmarks" / "backbone-fpi"
    catalog = load_catalog(args.catalog)
    train, test = catalog.split("train"), catalog.split("test")
    if args.train_items:
        train = train.subset(train.ids[: args.train_items], name=f"{train.name}[:{args.train_items}]")
    load_before = os.getloadavg()
    runs = {"trained": train} if args.no_control else {"trained": train, "shuffled_control": shuffled_pairs(train)}
    results: dict[str, dict] = {}
    for name, pairs in runs.items():
        out_dir = model_dir if name == "trained" else model_dir.with_name(model_dir.name + "-shuffled-control")
        started = time.perf_counter()
        backbone = train_backbone(pairs, config, out_dir)
        train_seconds = time.perf_counter() - started
        history_file = out_dir / "backbone-train-log.json"
        history = json.loads(history_file.read_text()) if history_file.exists() else []
        results[name] = {"test": text_image_recall(backbone, test, progress=True), "model_dir": out_dir.name,
                         "backbone_id": backbone.id, "wall_seconds_this_call": round(train_seconds, 1),
                         "train_seconds_total": round(sum(h["seconds"] for h in history), 1),
                         "train_seconds_per_epoch": [h["seconds"] for h in history],
                         "train_images_per_second": [h["images_per_second"] for h in history],
                         "loss_per_epoch": [round(h["loss"], 4) for h in history]}
        print(name, json.dumps(results[name]["test"]), flush=True)
    result = {
        "task": "text->image retrieval, query = title, pool = all test-split images",
        "train_items": len(train), "test_pool": len(test),
        "chance": {f"R@{k}": round(k / len(test), 4) for k in (1, 5, 10)},
        "config": dataclasses.asdict(config), "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "encode_precision": "bf16 autocast" if config.cpu_bf16 and cpu_has_native_bf16() else "fp32",
        "note": "CPU shared with other processes while measured: times are upper bounds. " + args.note, **results,
    }
    atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
