"""Benchmark: attribute heads with and without foreground colour features, before and after calibration.

On the real catalog: heads trained on the train split's image embeddings (from a trained backbone, features
cached), the val split picks the epoch and fits each head's temperature, the test split is reported: top-1,
colour-family accuracy (colour heads) and expected calibration error before / after temperature scaling. Three
variants side by side: every head reading the colour features (the default), embedding only, only the colour
heads reading them; plus the default's heads with the colour features hidden (a bare photo vector).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np

from assistant.core.loaders import load_catalog
from assistant.core.storage import atomic_write_text
from assistant.vision.attributes import AttributeConfig, AttributePredictor, is_colour_name
from assistant.vision.backbone import BACKBONE_FILE, Backbone
from assistant.vision.features import COLOUR_DIM, colour_features, compute_features
from assistant.vision.preprocessing import decode_items

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared/data/fashion-product-images-small"
TARGETS = {"baseColour": {"accuracy": 0.72, "colour_family_accuracy": 0.90, "ece": 0.05}, "articleType":
           {"accuracy": 0.80}}


def colour_seconds_per_1000(catalog, size: tuple[int, int], items: int = 4096, batch: int = 512) -> dict:
    """Median seconds to measure 1,000 decoded images' colour features (decoding timed apart)."""
    decode_s, colour_s = [], []
    for start in range(0, min(items, len(catalog)), batch):
        began = time.perf_counter()
        pixels, _ = decode_items(catalog, catalog.items[start:start + batch], size)
        decoded = time.perf_counter()
        colour_features(pixels)
        colour_s.append((time.perf_counter() - decoded) * 1000 / len(pixels))
        decode_s.append((decoded - began) * 1000 / len(pixels))
    return {"colour_s_per_1000": round(float(np.median(colour_s)), 3),
            "decode_s_per_1000": round(float(np.median(decode_s)), 3),
            "colour_s_whole_catalog_estimate": round(float(np.median(colour_s)) * len(catalog) / 1000, 1),
            "images_timed": min(items, len(catalog))}


def report_variant(predictor: AttributePredictor, features, catalog, rows: list[int], train_s: float) -> dict:
    after = predictor.evaluate(features.image, catalog, rows, features.colour)
    before = predictor.evaluate(features.image, catalog, rows, features.colour, calibrated=False)
    attributes = {}
    for name, result in after.items():
        attributes[name] = {"accuracy": round(result["accuracy"], 4),
                            "majority_baseline": round(result["majority_baseline"], 4),
                            "ece_before_calibration": round(before[name]["ece"], 4),
                            "ece": round(result["ece"], 4), "temperature": result["temperature"],
                            "reads_colour": predictor.config.sees_colour(name) and predictor.colour_dim > 0,
                            "items": result["items"]}
        if "colour_family_accuracy" in result:
            attributes[name]["colour_family_accuracy"] = round(result["colour_family_accuracy"], 4)
    return {"train_s": round(train_s, 1), "attributes": attributes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a model directory with backbone.safetensors")
    parser.add_argument("--catalog", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--epochs", type=int, default=AttributeConfig.epochs)
    parser.add_argument("--variants", default="all_heads,embedding,colour_heads")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results/attribute_heads.json")
    args = parser.parse_args()

    load_before = os.getloadavg()
    catalog = load_catalog(args.catalog)
    backbone = Backbone.load(args.model / BACKBONE_FILE, device=args.device)
    began = time.perf_counter()
    features = compute_features(backbone, catalog)
    features_s = time.perf_counter() - began
    rows = {split: [catalog.index_of(i) for i in catalog.split(split).ids] for split in ("train", "val", "test")}
    base = AttributeConfig(epochs=args.epochs, device=args.device)
    names = catalog.attribute_names()
    configs = {"all_heads": base, "embedding": dataclasses.replace(base, colour_features=False),
               "colour_heads": dataclasses.replace(base, colour_heads=[n for n in names if is_colour_name(n)])}
    result = {"catalog": catalog.name, "items": len(catalog), "splits": {k: len(v) for k, v in rows.items()},
              "backbone": backbone.id, "model_dir": args.model.name, "colour_dim": COLOUR_DIM,
              "features_s": round(features_s, 1), "colour_timing": colour_seconds_per_1000(catalog,
                                                                                        backbone.image_size),
              "config": dataclasses.asdict(base), "variants": {}}
    for variant in args.variants.split(","):
        began = time.perf_counter()
        predictor = AttributePredictor.train(features.image, catalog, rows["train"], configs[variant],
                                             rows_val=rows["val"], colour=features.colour)
        report = report_variant(predictor, features, catalog, rows["test"], time.perf_counter() - began)
        if variant == "all_heads":
            hidden = predictor.evaluate(features.image, catalog, rows["test"])  # no colour features: a bare photo
            report["colour_hidden"] = {name: {"accuracy": round(r["accuracy"], 4), "ece": round(r["ece"], 4)}
                                       for name, r in hidden.items()}
        result["variants"][variant] = report
        default = result["variants"].get("all_heads", {}).get("attributes", {})
        result["targets_default"] = {
            name: {metric: {"target": target, "measured": default[name].get(metric),
                            "met": (default[name].get(metric) or 0) <= target if metric == "ece"
                            else (default[name].get(metric) or 0) >= target}
                   for metric, target in wanted.items()}
            for name, wanted in TARGETS.items() if name in default}
        result["machine"] = {"cpus": os.cpu_count(), "load_average_before": [round(x, 2) for x in load_before],
                             "load_average_after": [round(x, 2) for x in os.getloadavg()],
                             "note": "2 shared cores, loaded by other engineers' jobs and a model training run; "
                                     "timings are upper bounds"}
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")  # after each variant
        print(variant, json.dumps(report["attributes"].get("baseColour")), flush=True)
    print(json.dumps(result["targets_default"], indent=2))


if __name__ == "__main__":
    main()
