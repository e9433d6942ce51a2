"""Benchmark: time to load the real catalog (cold = first load in a fresh process, warm = repeated loads)."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from assistant.core.loaders import load_catalog

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared/data/fashion-product-images-small"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--catalog", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results/catalog_load.json")
    args = parser.parse_args()
    code = f"import time; t=time.perf_counter(); from assistant.core.loaders import load_catalog; " \
           f"c=load_catalog({str(args.catalog)!r}); print(len(c), time.perf_counter()-t)"
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    warm = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        catalog = load_catalog(args.catalog)
        warm.append(time.perf_counter() - start)
        _ = catalog.fingerprint
    result = {"items": len(catalog), "skipped": len(catalog.report.skipped),
              "first_load_in_fresh_process_s": round(float(first[1]), 3),
              "load_s_median": round(statistics.median(warm), 3), "load_s_all": [round(t, 3) for t in warm],
              "note": "no load cache: every load parses styles.csv and checks each image's start/end markers; "
                      "the OS file cache is warm after the first run"}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
