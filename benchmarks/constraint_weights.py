"""How much a predicted label's shortfall costs: the feedback constraints' PREDICTED_WEIGHT and RULED_WEIGHT swept on
dev material only, with thin labels (the only case where they matter): the request benchmark's dev half on the
test split, and 300 dialogs on the val split with the template and the paraphrase shopper (train bank).

    python benchmarks/constraint_weights.py --model models/fpi-cpu \\
        --catalog ../shared/data/fashion-product-images-small --weights 1:1,0.5:0.5,2:2,1:3,1:10 \\
        --json benchmarks/results/constraint_weights_fpi_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from assistant.api import Assistant
from assistant.core.catalog import thin_labels
from assistant.core.loaders import load_catalog
from retriever.requests import default_requests, load_requests

USERS = ("template", "paraphrase")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--catalog", required=True)
    parser.add_argument("--weights", default="1:1,0.5:0.5,2:2,1:3,1:10",
                        help="comma-separated predicted:ruled weight pairs")
    parser.add_argument("--thin-labels", default="baseColour,season,usage")
    parser.add_argument("--dialogs", type=int, default=300)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    catalog = load_catalog(args.catalog)
    names = args.thin_labels.split(",")
    test, val = catalog.split("test"), catalog.split("val")
    requests = load_requests(default_requests(test), half="dev")
    ranking = Assistant.load(args.model, thin_labels(test, names), progress=False)
    talking = Assistant.load(args.model, thin_labels(val, names), progress=False)
    started, rows = time.time(), []
    for pair in args.weights.split(","):
        predicted, ruled = (float(w) for w in pair.split(":"))
        for assistant in (ranking, talking):
            assistant.constraints.predicted_weight, assistant.constraints.ruled_weight = predicted, ruled
        summary = ranking.evaluate_requests(requests, truth=test)["halves"]["dev"]["systems"]["model"]
        row = {"predicted_weight": predicted, "ruled_weight": ruled, "requests_dev": summary}
        for user in USERS:
            systems = talking.evaluate(user, turns=5, targets=args.dialogs, truth=val, baselines=False)["systems"]
            row[f"dialogs_val_{user}_success@10"] = systems["model"]["success@10"]
        rows.append(row)
        print(f"predicted {predicted:g} ruled {ruled:g}: precision@12 {summary['precision@12']:.3f}, negation pages "
              f"clean {summary['negation_no_ruled_out']:.3f}, success@10 t5 "
              + ", ".join(f"{u} {row[f'dialogs_val_{u}_success@10'][-1]:.3f}" for u in USERS), flush=True)
    record = {"model": args.model.name, "catalog": catalog.name, "thin_labels": names, "requests": len(requests),
              "dialogs": args.dialogs, "rows": rows, "seconds": round(time.time() - started, 1),
              "load_average": os.getloadavg()}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
