"""Benchmark: ROUGE-L (rouge-score) and CIDEr-D (pycocoevalcap) on a fixed set of real captions, value and speed.

The set is benchmarks/results/simulator_fpi_held_out_sample.json: 1,000 fpi-cpu simulator captions of held-out
pairs, each with the template shopper's caption as its reference, and the scores the metrics module gave them
when it was written. `--compare-with FILE` also loads another copy of simulator/metrics.py (e.g. an older one,
from `git show REV:simulator/metrics.py > FILE`) and times both, alternating, on the same captions.
Writes benchmarks/results/caption_metrics.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from assistant.core.storage import atomic_write_text
from simulator import metrics

RESULTS = Path(__file__).parent / "results"
METRICS = ("rouge_l", "cider_d")


def load_module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("compared_metrics", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sample", type=Path, default=RESULTS / "simulator_fpi_held_out_sample.json")
    parser.add_argument("--compare-with", type=Path, help="another copy of simulator/metrics.py to time beside")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", type=Path, default=RESULTS / "caption_metrics.json")
    parser.add_argument("--note", default="", help="how loaded the machine was, for the record")
    args = parser.parse_args()

    sample = json.loads(args.sample.read_text(encoding="utf-8"))
    captions = [example["caption"] for example in sample["examples"]]
    references = [[example["template"]] for example in sample["examples"]]
    # two references each (the template and the caption reversed word by word), for the best-of-references paths
    two_references = [[example["template"], " ".join(example["caption"].split()[::-1])]
                      for example in sample["examples"]]
    modules = {"library": metrics}
    if args.compare_with:
        modules["compared"] = load_module(args.compare_with)

    seconds: dict[str, dict[str, list[float]]] = {name: {metric: [] for metric in METRICS} for name in modules}
    values: dict[str, dict[str, float]] = {name: {} for name in modules}
    for _ in range(args.repeats):
        for name, module in modules.items():
            for metric in METRICS:
                function: Callable = getattr(module, metric)
                start = time.perf_counter()
                values[name][metric] = float(function(captions, references))
                seconds[name][metric].append(time.perf_counter() - start)
    result = {
        "captions": len(captions), "repeats": args.repeats,
        "stored": {metric: sample[metric] for metric in METRICS},
        "values": values,
        "two_references": {name: {metric: float(getattr(module, metric)(captions, two_references))
                                  for metric in METRICS} for name, module in modules.items()},
        "median_seconds": {name: {metric: round(statistics.median(runs), 4) for metric, runs in by_metric.items()}
                           for name, by_metric in seconds.items()},
        "rouge_l_f1": sum(metrics.ROUGE.score_multi(refs, caption)["rougeL"].fmeasure
                          for caption, refs in zip(captions, references, strict=True)) / len(captions),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average": os.getloadavg(),
                    "note": args.note},
    }
    atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
