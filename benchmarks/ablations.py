"""Ablations of the dialog retriever, from one run: the trained model beside copies whose retriever is trained again
from scratch without paraphrased answers, without the simulator's answers, without attribute tokens, with the last
turn only, with contextual MiniLM token vectors, or with labels dropped at random (thin-catalog augmentation); each
evaluated on the held-out split, the retriever alone and as the app ranks, per user, and with `--thin-labels` on a
thin copy of the split too. With `--epochs N` every row, the full recipe included, is a retriever trained again for
N epochs, for a table that fits a shorter budget.

    python benchmarks/ablations.py --model models/fpi-cpu --catalog ../shared/data/fashion-product-images-small \
        --targets 1000 --epochs 1 --thin-labels baseColour,season,usage --json benchmarks/results/ablations_fpi_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import yaml

from assistant.api import Assistant
from assistant.core.catalog import Catalog, thin_labels
from assistant.core.loaders import load_catalog
from assistant.model_dir import CONFIG_FILE
from assistant.pipeline import fine_tune

# name -> the retriever fields it changes (the trained model is "as trained")
ABLATIONS = {
    "no paraphrases": {"paraphrase_fraction": 0.0},
    "no simulator answers": {"simulator_fraction": 0.0},
    "no attribute tokens": {"use_attributes": False},
    "last turn only": {"max_turns": 1},
    "contextual MiniLM tokens": {"text_mode": "contextual"},
    "labels dropped at random (0.3)": {"label_dropout": 0.3},
}
SYSTEMS = ("model", "retriever_only", "keyword")


def ablated_model(source: Path, changes: dict, work: Path, catalog) -> Path:
    """A copy of `source` whose retriever is trained again from scratch with `changes` to its section."""
    config = yaml.safe_load((source / CONFIG_FILE).read_text(encoding="utf-8"))
    config["retriever"].update(changes)
    name = "-".join(f"{k}={v}" for k, v in changes.items())
    config_path = work / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    out = work / name
    fine_tune(source, out, stages=["retriever"], catalog=catalog, config=config_path, fresh=True)
    return out


def evaluate(model_dir: Path, held_out: dict[str, tuple[Catalog, list[str]]], truth: Catalog, turns: int,
             targets: int) -> dict:
    """success@10 per turn of each system, per catalog (labelled, thin) and user ("user" or "user thin"); the users
    answer from `truth`, the split with all its labels."""
    results = {}
    for suffix, (catalog, users) in held_out.items():
        assistant = Assistant.load(model_dir, catalog, progress=False)
        for user in users:
            systems = assistant.evaluate(user, turns=turns, targets=targets, truth=truth)["systems"]
            results[user + suffix] = {name: systems[name]["success@10"] for name in SYSTEMS if name in systems}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--catalog", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--users", default="template,paraphrase-heldout")
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--targets", type=int, default=1000)
    parser.add_argument("--only", help="comma-separated ablation names (default: all)")
    parser.add_argument("--epochs", type=int, help="retrain every row, the full recipe too, for this many epochs")
    parser.add_argument("--thin-labels", help="also evaluate with these labels blanked, e.g. baseColour,season,usage")
    parser.add_argument("--thin-users", default="paraphrase-heldout", help="the users of the thin evaluation")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    catalog = load_catalog(args.catalog)
    labelled = catalog.split(args.split)
    held_out = {"": (labelled, args.users.split(","))}
    if args.thin_labels:
        held_out[" thin"] = (thin_labels(labelled, args.thin_labels.split(",")), args.thin_users.split(","))
    chosen = args.only.split(",") if args.only else list(ABLATIONS)
    started = time.time()
    rows = {name: ABLATIONS[name] for name in chosen}
    results = {}
    if args.epochs:
        rows = {"full recipe": {}, **rows}
        rows = {name: {**changes, "epochs": args.epochs} for name, changes in rows.items()}
    else:
        results["as trained"] = {"changes": {}, **evaluate(args.model, held_out, labelled, args.turns, args.targets)}
    with tempfile.TemporaryDirectory(prefix="ablations-") as work:
        for name, changes in rows.items():
            begun = time.time()
            model = ablated_model(args.model, changes, Path(work), catalog)
            results[name] = {"changes": changes, "seconds": round(time.time() - begun, 1),
                             **evaluate(model, held_out, labelled, args.turns, args.targets)}
            print(name, json.dumps(results[name]), flush=True)
    record = {"model": args.model.name, "catalog": catalog.name, "split": args.split, "targets": args.targets,
              "turns": args.turns, "thin_labels": args.thin_labels, "metric": "success@10 per turn", "results": results,
              "seconds": round(time.time() - started, 1), "load_average": os.getloadavg()}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    for name, result in results.items():
        for user in (user + suffix for suffix, (_, users) in held_out.items() for user in users):
            cells = "  ".join(f"{system} {curve[-1]:.3f}" for system, curve in result[user].items())
            print(f"{name:>30} {user:>25}: t{args.turns} {cells}")


if __name__ == "__main__":
    main()
