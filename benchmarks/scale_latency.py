"""Benchmark: hybrid ranking through the index at 35k (real), 175k and 1M items: turn latency and agreement.

Large catalogs are synthesised from the real one: copy c of row i keeps row i's attributes, takes the title of a
random item of the same category (titles shuffled within categories) and the item vector of row i jittered by
Gaussian noise (norm --jitter) and re-normalised. Each simulated shopper opens with a described request and
replies four times with the template shopper's words about the item shown, as in dialog_latency.py; every turn
goes through `Dialog.start` / `Dialog.reply` with the app's ranker (retriever + 0.1 x BM25 under the feedback's
constraints). On the same dialog state the exact path (every item scored) ranks too: its top 12 is the truth for
recall@12, and its time is reported beside the turn's. `indexed` (an HNSW index at every size) forces the
candidate path and `exact` (no index) the full scoring, so the crossover that sets IndexConfig.exact_threshold
(the app's index is exact below it, so its ranking scores every item) shows in one run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from dialog_latency import DEFAULT_ROOT, RESULTS, item_features, timed_retriever
from matplotlib.figure import Figure

from assistant.core.catalog import Catalog, Item
from assistant.core.constraints import FeedbackConstraints
from assistant.core.dialog import PAGE_SIZE, Dialog, RankingContext
from assistant.core.loaders import load_catalog
from assistant.core.storage import atomic_write_text, cache_dir
from assistant.vision.index import IndexConfig, cached_index
from retriever.baselines import KeywordRanker
from retriever.model import ItemInputs, RetrieverConfig, RetrieverRanker
from simulator.template_user import TemplateUser


def synthetic_catalog(catalog: Catalog, size: int, seed: int) -> Catalog:
    """`size` items: the real ones, then copies whose titles are shuffled among items of the same category."""
    rng = np.random.default_rng(seed)
    by_category: dict[str, list[Item]] = {}
    for item in catalog:
        by_category.setdefault(item.category, []).append(item)
    items = list(catalog.items[:size])
    copy = 0
    while len(items) < size:
        copy += 1
        for item in catalog.items[: size - len(items)]:
            same = by_category[item.category]
            donor = same[int(rng.integers(len(same)))]
            items.append(Item(f"{item.id}~{copy}", item.image_path, donor.title, item.category, item.attributes))
    return Catalog(items, name=f"{catalog.name} x{size / len(catalog):.1f} (synthetic)")


def jittered(vectors: np.ndarray, size: int, jitter: float, seed: int) -> np.ndarray:
    """Row i of the result is vectors[i % n], plus Gaussian noise of norm ~`jitter` beyond the real rows."""
    rng = np.random.default_rng(seed)
    out = np.empty((size, vectors.shape[1]), dtype=np.float32)
    out[: len(vectors)] = vectors[:size]
    for start in range(len(vectors), size, len(vectors)):
        block = vectors[: min(len(vectors), size - start)]
        noisy = block + jitter / np.sqrt(vectors.shape[1]) * rng.standard_normal(block.shape, dtype=np.float32)
        out[start: start + len(block)] = noisy / np.linalg.norm(noisy, axis=1, keepdims=True)
    return out


def tiled_inputs(items: ItemInputs, size: int) -> ItemInputs:
    """What the query reads about a shown row (its image features and attribute ids), for `size` rows; the item
    tower's inputs are not needed (the item vectors are given), so text and item share the image tensor."""
    rows = torch.arange(size) % len(items)
    image = items.image[rows]
    return ItemInputs(image, image, image, items.attributes[rows], items.title[:1].expand(size, -1))


def percentiles(values: list[float]) -> dict:
    return {"p50_ms": round(float(np.percentile(values, 50)), 2), "p99_ms": round(float(np.percentile(values, 99)), 2)}


def measure(size: int, real: Catalog, features, retriever, real_items: ItemInputs, real_vectors: np.ndarray,
            args: argparse.Namespace) -> dict:
    built = time.perf_counter()
    catalog = synthetic_catalog(real, size, args.seed)
    vectors = jittered(real_vectors, size, args.jitter, args.seed)
    items = real_items if size == len(real) else tiled_inputs(real_items, size)
    source = hashlib.sha256(real_vectors.tobytes()).hexdigest()[:12]  # another model's vectors: another index
    key, directory = f"scale-{size}-{args.seed}-{args.jitter}-{source}", cache_dir() / "benchmarks" / "scale"
    index = cached_index(vectors, IndexConfig(), key=key, directory=directory)
    hnsw = index if index.kind == "hnsw" else cached_index(vectors, IndexConfig(kind="hnsw"), key, directory)
    attributes = [item.attributes for item in catalog]
    constraints, lexical = FeedbackConstraints(catalog), KeywordRanker(catalog)
    common = {"constraints": constraints, "lexical": lexical, "lexical_weight": RetrieverConfig.lexical_weight,
              "attributes": attributes}
    rankers = {"app": RetrieverRanker(retriever, items, vectors, index, **common),
               "indexed": RetrieverRanker(retriever, items, vectors, hnsw, **common),
               "exact": RetrieverRanker(retriever, items, vectors, None, **common)}
    build_seconds = time.perf_counter() - built
    user = TemplateUser(real, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    turn_ms: list[float] = []
    rank_ms: dict[str, list[float]] = {"indexed": [], "exact": []}
    query_ms: list[float] = []
    recall: list[float] = []
    load_before = os.getloadavg()
    for number in range(args.dialogs + 1):  # the first dialog warms caches up and is not counted
        target = catalog.items[int(rng.integers(size))]
        dialog = Dialog(RankingContext(catalog, rankers["app"], vectors))
        for turn in range(1, args.turns + 1):
            started = time.perf_counter()
            if turn == 1:
                dialog.start(text=user.describe(target))
            else:
                dialog.reply(user.respond(dialog.reference, target, turn))
            seconds = time.perf_counter() - started
            state = dialog.state
            exclude = [state.shown_rows()]
            ranked = {}
            for name in ("indexed", "exact"):
                started = time.perf_counter()
                ranked[name] = rankers[name].rank([state], PAGE_SIZE, exclude)[0]
                rank_ms[name].append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            rankers["app"].queries([state])
            query_ms.append((time.perf_counter() - started) * 1000)
            if not number:
                for values in (*rank_ms.values(), query_ms):
                    values.pop()
                continue
            turn_ms.append(seconds * 1000)
            truth = {int(r) for r in ranked["exact"] if r >= 0}
            recall.append(len(truth & {int(r) for r in ranked["indexed"] if r >= 0}) / max(1, len(truth)))
    return {"catalog_size": size, "index": index.kind, "path": "exact" if index.kind == "exact" else "indexed",
            "turn": percentiles(turn_ms), "indexed_rank": percentiles(rank_ms["indexed"]),
            "exact_rank": percentiles(rank_ms["exact"]), "query_encoding": percentiles(query_ms),
            "recall_at_12_vs_exact": round(float(np.mean(recall)), 4),
            "turns_with_full_recall": round(float(np.mean(np.array(recall) == 1.0)), 4),
            "turns": len(turn_ms), "setup_s": round(build_seconds, 1),
            "load_average_1m": [round(load_before[0], 2), round(os.getloadavg()[0], 2)]}


def plot(results: list[dict], path: Path) -> None:
    figure = Figure(figsize=(6.4, 3.6), dpi=110, layout="constrained")
    axes = figure.add_subplot()
    sizes = [r["catalog_size"] for r in results]
    for key, label, colour in (("turn", "app turn (Dialog.reply)", "#e11d48"),
                               ("indexed_rank", "candidates + re-rank", "#2563eb"),
                               ("exact_rank", "exact: every item scored", "#64748b")):
        axes.plot(sizes, [r[key]["p50_ms"] for r in results], marker="o", color=colour, label=f"{label} p50")
        axes.plot(sizes, [r[key]["p99_ms"] for r in results], marker="^", linestyle="--", color=colour, alpha=0.6,
                  label=f"{label} p99")
    axes.axhline(10, color="#16a34a", linewidth=0.8, linestyle=":", label="target p50 10 ms")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("catalog size (items)")
    axes.set_ylabel("ms per turn")
    axes.set_title("Hybrid ranking latency against catalog size (2 shared cores)", fontsize=10)
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=7, ncol=2)
    figure.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalog", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--sizes", default="34975,175000,1000000", help="comma-separated catalog sizes")
    parser.add_argument("--backbone", type=Path, help="a trained backbone (file or folder); else synthetic vectors")
    parser.add_argument("--retriever", type=Path, help="a trained retriever.safetensors; else an untrained one")
    parser.add_argument("--config", default="fpi-cpu", help="config whose retriever: section gives the shape")
    parser.add_argument("--dialogs", type=int, default=100, help="dialogs per catalog size")
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--jitter", type=float, default=0.3, help="norm of the noise added to copied vectors")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=RESULTS / "scale_latency.json")
    args = parser.parse_args()

    torch.set_num_threads(1)
    real = load_catalog(args.catalog)
    features, feature_source = item_features(real, args.backbone)
    retriever = timed_retriever(real, features, args.retriever, args.config, {}, args.seed)
    real_items = retriever.item_inputs(real, features)
    real_vectors = retriever.item_vectors(real_items)
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        results.append(measure(size, real, features, retriever, real_items, real_vectors, args))
        print(json.dumps(results[-1]), flush=True)
    output = {
        "results": results, "dialogs_per_size": args.dialogs, "turns": args.turns, "features": feature_source,
        "retriever": "trained" if args.retriever else "untrained (same shape, same cost)",
        "exact_threshold": IndexConfig().exact_threshold, "jitter": args.jitter, "cpus": os.cpu_count(),
        "note": "turn: Dialog.start/reply with the app's ranker (every item scored up to exact_threshold items, "
                "where the index is exact; beyond, candidates from the approximate index + exact re-rank); "
                "indexed_rank / exact_rank: ranker.rank on the same dialog state through an HNSW index / with "
                "every item scored (both include the retriever's query encoding, "
                "query_encoding alone beside them); recall@12: the candidate path's top 12 against the exact "
                "top 12. The machine's 2 cores were shared with other work (load_average_1m before/after).",
    }
    atomic_write_text(args.json, json.dumps(output, indent=2) + "\n")
    plot(results, args.json.with_suffix(".png"))
    print(json.dumps(output, indent=2))


if __name__ == "__main__":
    main()
