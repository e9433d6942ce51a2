"""Benchmark: captions per second of the fpi-cpu simulator (batched generate(), greedy / beam / sampling) on CPU.

Uses the model simulator_quality.py trained (in the cache) or `--model DIR`, on held-out pairs of the real catalog.
Writes benchmarks/results/simulator_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from pathlib import Path

import torch
from simulator_quality import DEFAULT_ROOT, MODEL_DIR, thumbnail_features

from assistant.core.loaders import load_catalog
from assistant.core.storage import atomic_write_text, cache_dir
from assistant.vision.backbone import Backbone
from assistant.vision.features import compute_features
from simulator.captioner import SimulatorModel
from simulator.pairs import PairSampler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalog", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--model", type=Path, help=f"simulator directory (default: <cache>/{MODEL_DIR})")
    parser.add_argument("--backbone", type=Path, help="the backbone the model was trained with (default: thumbnails)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results/simulator_throughput.json")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model_dir = args.model or cache_dir() / MODEL_DIR
    model = SimulatorModel.load(model_dir)
    catalog = load_catalog(args.catalog)
    features = compute_features(Backbone.load(args.backbone), catalog, progress=False) if args.backbone \
        else thumbnail_features(catalog)
    sampler, rng = PairSampler(catalog.split("test")), random.Random(0)
    pairs = [sampler.similar_pair(rng) if rng.random() < 0.7 else sampler.random_pair(rng) for _ in range(args.pairs)]
    references, targets = [p[0] for p in pairs], [p[1] for p in pairs]
    lookup = model.lookup(features)
    model.caption(references[:64], targets[:64], features, lookup=lookup)  # warm-up

    def rate(decoding: str, batch_size: int, count: int) -> dict:
        runs, cpu_runs = [], []
        for repeat in range(args.repeats):
            start, cpu_start = time.perf_counter(), time.process_time()
            captions = model.caption(references[:count], targets[:count], features, decoding, seed=repeat,
                                     batch_size=batch_size, lookup=lookup)
            runs.append(count / (time.perf_counter() - start))
            cpu_runs.append(count / (time.process_time() - cpu_start))
        pieces = statistics.mean(len(ids) for ids in model.tokenizer.encode(captions))
        return {"decoding": decoding, "batch_size": batch_size, "captions": count,
                "captions_per_s": round(statistics.median(runs), 1), "all_runs": [round(r, 1) for r in runs],
                "captions_per_cpu_s": round(statistics.median(cpu_runs), 1),
                "mean_caption_pieces": round(pieces, 2)}

    results = [rate("greedy", size, min(args.pairs, max(64, size * 4))) for size in (1, 16, 64, 256, 1024)]
    results += [rate(decoding, 256, 256) for decoding in ("beam", "sample")]
    best_greedy = max(r["captions_per_s"] for r in results if r["decoding"] == "greedy")
    result = {"model": model_dir.name, "parameters": sum(p.numel() for p in model.network.parameters()),
              "config": model.settings()["config"], "torch_threads": args.threads, "cpu": platform.processor(),
              "results": results, "best_greedy_captions_per_s": best_greedy,
              "acceptance": {"greedy>=500 captions/s": best_greedy >= 500},
              "load_average_1min": round(os.getloadavg()[0], 2),
              "note": "one generate() call per batch; captions_per_s is wall-clock, captions_per_cpu_s divides by "
                      "this process's CPU time (all threads), which other jobs on a shared machine disturb less"}
    atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
