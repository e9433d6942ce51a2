"""Benchmark: load the real catalog cold (empty image-verdict cache: every image decoded) and warm (cached verdicts)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

DEFAULT_ROOT = Path(os.environ.get("FASHION_ASSISTANT_FPI",
                                   Path(__file__).resolve().parents[2] / "shared/data/fashion-product-images-small"))
LOAD = ("import time; t = time.perf_counter(); from assistant.core.loaders import load_catalog; "
        "c = load_catalog({root!r}); print(len(c), len(c.report.skipped), time.perf_counter() - t)")


def load_in_fresh_process(root: Path, cache: str) -> tuple[int, int, float]:
    """(items, skipped, seconds including the import) of one load in a new interpreter using `cache`."""
    env = {**os.environ, "FASHION_ASSISTANT_CACHE": cache}
    out = subprocess.run([sys.executable, "-c", LOAD.format(root=str(root))], capture_output=True, text=True,
                         check=True, env=env).stdout.split()
    return int(out[0]), int(out[1]), float(out[2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--catalog", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results/catalog_load.json")
    args = parser.parse_args()
    cold, warm = [], []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as cache:
            items, skipped, seconds = load_in_fresh_process(args.catalog, cache)
            cold.append(seconds)
            warm.append(load_in_fresh_process(args.catalog, cache)[2])
    load = os.getloadavg()
    result = {"items": items, "skipped": skipped,
              "cold_load_s_median": round(statistics.median(cold), 2), "cold_load_s_all": [round(t, 2) for t in cold],
              "warm_load_s_median": round(statistics.median(warm), 2), "warm_load_s_all": [round(t, 2) for t in warm],
              "load_average_1_5_15": [round(v, 2) for v in load],
              "note": "each load in a fresh process; cold: empty cache folder, every image decoded in full "
                      "(2 threads); warm: the image verdicts cached by path, size and mtime; the OS file cache is "
                      "warm; the 2 cores were shared with other engineers' runs"}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
