"""Benchmark: `train` end to end with a config (default fpi-cpu on the real catalog): seconds per stage, the total,
and the held-out metrics the run ends with. Writes benchmarks/results/train_<config>.json.

Run it on a quiet machine: the budget for fpi-cpu is 45 minutes on 2 cores. `--out` keeps the model directory
(resume a killed benchmark with `--resume`; stages finished before are then reported with their own times).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from assistant.core.storage import atomic_write_text, cache_dir
from assistant.pipeline import METRICS_FILE, train

RESULTS = Path(__file__).parent / "results"
DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared/data/fashion-product-images-small"


def summary(metrics: dict) -> dict:
    """The headline numbers of a run's metrics.json: per-turn success/recall of the model and the best baseline."""
    result: dict = {"attributes_test_accuracy": {name: values.get("accuracy") for name, values in
                                                 metrics["attributes"].items()}}
    result["simulator"] = {decoding: {key: round(value, 4) for key, value in values.items()
                                      if isinstance(value, float)} for decoding, values in metrics["simulator"].items()}
    for user, dialogs in metrics["dialogs"].items():
        systems = dialogs["systems"]
        result[f"dialogs_{user}"] = {name: {"success@10": values["success@10"], "recall@10": values["recall@10"]}
                                     for name, values in systems.items()}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalog", default=str(DEFAULT_ROOT))
    parser.add_argument("--config", default="fpi-cpu")
    parser.add_argument("--out", type=Path, help="model directory (default: <cache>/benchmarks/train-<config>)")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    name = Path(args.config).stem
    out = args.out or cache_dir() / "benchmarks" / f"train-{name}"
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    manifest = train(args.catalog, args.config, out, resume=args.resume)
    wall = time.perf_counter() - started
    stages = {stage: record["seconds"] for stage, record in manifest["stages"].items()}
    metrics = json.loads((out / METRICS_FILE).read_text(encoding="utf-8"))
    result = {
        "config": name, "catalog": metrics["catalog"], "split": metrics["split"], "model_dir": out.name,
        "stage_seconds": stages, "total_seconds": round(sum(stages.values()), 1),
        "wall_seconds_this_call": round(wall, 1), "budget_seconds": 45 * 60 if name == "fpi-cpu" else None,
        "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "load_average_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        **summary(metrics),
    }
    path = args.json or RESULTS / f"train_{name.replace('-', '_')}.json"
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
