"""Benchmark: per-attribute top-1 accuracy of the attribute heads on the real catalog's test split.

Heads are trained on the train split's image embeddings (the val split picks the epoch) from a feature file
(`--features`, an assistant.vision.features file of this catalog) or a trained backbone folder (`--backbone`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from assistant.core.loaders import load_catalog
from assistant.core.storage import atomic_write_text
from assistant.vision.attributes import OTHER, AttributeConfig, AttributePredictor
from assistant.vision.features import ItemFeatures, compute_features

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared/data/fashion-product-images-small"
TARGETS = {"articleType": 0.80, "baseColour": 0.60, "gender": 0.80}


def image_embeddings(args: argparse.Namespace, catalog) -> tuple[np.ndarray, str]:
    """Image vectors in catalog order, and where they came from."""
    if args.features:
        features = ItemFeatures.load(args.features)
        source = f"feature file {args.features.name} (backbone {features.backbone_id})"
    else:
        from assistant.vision.backbone import Backbone

        backbone = Backbone.load(args.backbone, device=args.device)
        features = compute_features(backbone, catalog)
        source = f"backbone {backbone.id} from {args.backbone.name}/"
    missing = set(catalog.ids) - set(features.ids)
    if missing:
        raise SystemExit(f"the features lack {len(missing)} of the catalog's items (e.g. {sorted(missing)[:3]})")
    rows = [features.row(item_id) for item_id in catalog.ids]
    return getattr(features, args.vectors)[rows], source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    given = parser.add_mutually_exclusive_group(required=True)
    given.add_argument("--features", type=Path, help="an ItemFeatures .safetensors file of this catalog")
    given.add_argument("--backbone", type=Path, help="a trained backbone folder (backbone.safetensors)")
    parser.add_argument("--catalog", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--vectors", choices=["image", "item"], default="image",
                        help="image vectors (default); `item` may be fused with text that names the labels")
    parser.add_argument("--epochs", type=int, default=AttributeConfig.epochs)
    parser.add_argument("--hidden", type=int, default=AttributeConfig.hidden)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results/attribute_accuracy.json")
    args = parser.parse_args()

    catalog = load_catalog(args.catalog)
    embeddings, source = image_embeddings(args, catalog)
    rows = {split: [catalog.index_of(i) for i in catalog.split(split).ids] for split in ("train", "val", "test")}
    config = AttributeConfig(epochs=args.epochs, hidden=args.hidden, device=args.device)
    start = time.perf_counter()
    predictor = AttributePredictor.train(embeddings, catalog, rows["train"], config, rows_val=rows["val"])
    train_s = time.perf_counter() - start
    test = predictor.evaluate(embeddings, catalog, rows["test"])
    val = predictor.evaluate(embeddings, catalog, rows["val"])
    top3 = predictor.top_k(embeddings[rows["test"]], k=3)
    attributes = {}
    for head in predictor.heads:
        named = [v for v in head.values if v != OTHER]
        labelled = [(best[head.name], catalog.items[row].attributes[head.name])
                    for best, row in zip(top3, rows["test"], strict=True) if head.name in catalog.items[row].attributes]
        in_top3 = [truth in {value for value, _ in best} for best, truth in labelled]
        attributes[head.name] = {
            "test_accuracy": round(test[head.name]["accuracy"], 4),
            "majority_baseline": round(test[head.name]["majority_baseline"], 4),
            "test_top3_accuracy": round(float(np.mean(in_top3)), 4) if in_top3 and not head.multi_label else None,
            "majority_value": head.majority, "val_accuracy": round(val[head.name]["accuracy"], 4),
            "test_items": test[head.name]["items"], "classes": len(named),
            "catalog_values_without_own_class": len(catalog.vocabulary()[head.name]) - len(named),
            **({"target": TARGETS[head.name], "meets_target": test[head.name]["accuracy"] >= TARGETS[head.name]}
               if head.name in TARGETS else {}),
        }
    result = {"catalog": catalog.name, "items": len(catalog), "splits": {k: len(v) for k, v in rows.items()},
              "embeddings": f"{args.vectors} vectors, dim {embeddings.shape[1]}, from {source}",
              "config": dataclasses.asdict(config), "train_s": round(train_s, 1), "attributes": attributes,
              "note": f"values with fewer than {config.min_count} training items are folded into {OTHER!r}, "
                      "which is never predicted: test items with such values count as misses"}
    atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
