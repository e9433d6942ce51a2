"""Benchmark: build item features for the whole real catalog from its images with the trained backbone, then index
them (faiss via assistant.vision.index). Writes benchmarks/results/index_build.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from assistant.core.loaders import load_catalog
from assistant.core.storage import atomic_write_text, cache_dir
from assistant.vision.backbone import Backbone, cpu_has_native_bf16
from assistant.vision.features import compute_features, features_path
from assistant.vision.index import IndexConfig, VectorIndex

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared/data/fashion-product-images-small"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--catalog", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="a trained backbone (default: <cache>/benchmarks/backbone-fpi, from backbone_quality.py)")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results/index_build.json")
    args = parser.parse_args()
    started = time.perf_counter()
    catalog = load_catalog(args.catalog)
    load_seconds = time.perf_counter() - started
    model_dir = args.model_dir or cache_dir() / "benchmarks" / "backbone-fpi"
    modes = [True, False] if cpu_has_native_bf16() else [False]
    runs = []
    for bf16 in modes:
        backbone = Backbone.load(model_dir, device="cpu")
        backbone.config.cpu_bf16 = bf16
        features_path(backbone, catalog).unlink(missing_ok=True)  # time a cold build, not a cache hit
        load_before = os.getloadavg()[0]
        started = time.perf_counter()
        features = compute_features(backbone, catalog, batch_size=args.batch_size)
        features_seconds = time.perf_counter() - started
        started = time.perf_counter()
        index = VectorIndex.build(features.item, IndexConfig())
        index_seconds = time.perf_counter() - started
        started = time.perf_counter()
        cached = compute_features(backbone, catalog, batch_size=args.batch_size, progress=False)
        cache_load_seconds = time.perf_counter() - started
        assert np.array_equal(cached.item, features.item)
        runs.append({
            "encode_precision": "bf16 autocast" if bf16 else "fp32", "failed_images": len(features.failed),
            "features_seconds": round(features_seconds, 2),
            "features_items_per_second": round(len(catalog) / features_seconds, 1),
            "index": repr(index), "index_add_seconds": round(index_seconds, 3),
            "build_seconds_total": round(features_seconds + index_seconds, 2),
            "cached_features_load_seconds": round(cache_load_seconds, 2),
            "load_average_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)]})
        print(json.dumps(runs[-1]), flush=True)
    result = {
        "items": len(catalog), "backbone_id": backbone.id, "image_size": list(backbone.image_size),
        "dim": backbone.dim, "catalog_load_seconds": round(load_seconds, 2), "target_seconds": 60,
        "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "runs": runs,
        "note": "features = decode every image + image tower + text tower + fusion + checksummed cache write; "
                "the default on CPUs with native bf16 is bf16 autocast; CPU shared with other processes while "
                "measured: times are upper bounds",
    }
    atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
