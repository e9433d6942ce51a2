"""Benchmark: batch-1 top-50 search latency (p50/p99), recall@50 against exact search and build time.

(a) the real catalog's 34,975 item embeddings (from a feature file, else synthetic vectors of that size) and
(b) one million synthetic clustered vectors; exact vs HNSW vs IVF-PQ, sweeping efSearch / nprobe, all indexes
timed side by side (query by query, interleaved) in one run so machine noise hits them alike.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

import faiss
import numpy as np

from assistant.core.storage import atomic_write_text
from assistant.vision.index import SINGLE_THREAD_BELOW, IndexConfig, VectorIndex, cached_index, clustered_vectors

K = 50
RECALL_TARGET, LATENCY_TARGET_MS = 0.95, 5.0
SWEPT = {"hnsw_ef_search": "ef", "ivf_nprobe": "nprobe"}


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[f >= 0]) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]))


def build_or_read(vectors: np.ndarray, config: IndexConfig, cache: Path | None, key: str
                  ) -> tuple[VectorIndex, float | None]:
    """The index and, when it was read from the --cache folder rather than built, the seconds reading took."""
    if cache is None:
        return VectorIndex.build(vectors, config), None
    saved_before = set(cache.glob("*.faiss")) if cache.exists() else set()
    start = time.perf_counter()
    index = cached_index(vectors, config, key=key, directory=cache)
    read = set(cache.glob("*.faiss")) == saved_before
    return index, round(time.perf_counter() - start, 1) if read else None


def side_by_side(variants: dict[str, tuple[VectorIndex, IndexConfig]], queries: np.ndarray,
                 truth: np.ndarray, exclude: int = 0) -> dict[str, dict]:
    """Each variant answers every query one at a time, variants interleaved; p50/p99 ms and recall@K."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    rows: dict[str, list[np.ndarray]] = {name: [] for name in variants}
    for q in range(len(queries)):
        shown = [set(truth[q, :exclude].tolist())] if exclude else None
        for name, (index, config) in variants.items():
            index.config = config
            start = time.perf_counter()
            _, found = index.search(queries[q: q + 1], K, exclude=shown)
            times[name].append((time.perf_counter() - start) * 1000)
            rows[name].append(found[0])
    result = {}
    for name in variants:
        ms = np.asarray(times[name][1:])  # the first call warms caches
        found = np.stack(rows[name])
        truth_here = truth[:, exclude: exclude + K]
        result[name] = {"p50_ms": round(float(np.median(ms)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
                        "recall_at_50": round(recall_at_k(found, truth_here), 4)}
    return result


def thread_comparison(index: VectorIndex, queries: np.ndarray) -> dict:
    """Raw faiss search time with 1 vs 2 OpenMP threads, for single queries and for batches of 64."""
    out = {}
    for batch, repeats in ((1, 40), (64, 4)):
        for threads in (1, 2):
            faiss.omp_set_num_threads(threads)
            ms = []
            for start in range(0, min(len(queries), repeats * batch), batch):
                began = time.perf_counter()
                index.index.search(queries[start: start + batch], K)
                ms.append((time.perf_counter() - began) * 1000)
            out[f"batch{batch}_threads{threads}_median_ms"] = round(float(np.median(ms[1:] or ms)), 3)
    return out


def choose(results: dict[str, dict], prefix: str, parameter: str) -> dict:
    """The cheapest swept setting of `prefix` meeting recall@50 >= target, and how the default setting did."""
    passing = [(name, r) for name, r in results.items() if name.startswith(prefix)
               and r["recall_at_50"] >= RECALL_TARGET]
    default = getattr(IndexConfig(), parameter)
    out: dict = {"default": {parameter: default, **results.get(f"{prefix} {SWEPT[parameter]}={default}", {})}}
    if passing:
        name, result = min(passing, key=lambda p: int(p[0].split("=")[1]))
        out["cheapest_meeting_recall"] = {parameter: int(name.split("=")[1]), **result}
    for entry in out.values():
        if "p50_ms" in entry:
            entry["meets_targets"] = entry["p50_ms"] <= LATENCY_TARGET_MS and entry["recall_at_50"] >= RECALL_TARGET
    return out


def run_size(label: str, vectors: np.ndarray, queries: np.ndarray, args: argparse.Namespace,
             cache: Path | None, key: str) -> dict:
    base = IndexConfig(threads=args.threads)
    configs = {"exact": dataclasses.replace(base, kind="exact"),
               "hnsw": dataclasses.replace(base, kind="hnsw"),
               "ivfpq": dataclasses.replace(base, kind="ivfpq")}
    built, build_s, read_s = {}, {}, {}
    for kind, config in configs.items():
        print(f"[{label}] building {kind} over {len(vectors)} x {vectors.shape[1]} ...", flush=True)
        built[kind], read = build_or_read(vectors, config, cache, key)
        build_s[kind] = built[kind].build_seconds and round(built[kind].build_seconds, 1)
        if read is not None:
            read_s[kind] = read
        print(f"[{label}] {kind}: built in {build_s[kind]} s{'' if read is None else f', read in {read} s'}",
              flush=True)
    _, truth = built["exact"].search(queries, K + args.exclude)
    variants = {"exact": (built["exact"], configs["exact"])}
    for ef in args.ef_search:
        variants[f"hnsw ef={ef}"] = (built["hnsw"], dataclasses.replace(configs["hnsw"], hnsw_ef_search=ef))
    for nprobe in args.nprobe:
        variants[f"ivfpq nprobe={nprobe}"] = (built["ivfpq"], dataclasses.replace(configs["ivfpq"], ivf_nprobe=nprobe))
    print(f"[{label}] timing {len(variants)} variants on {len(queries)} queries ...", flush=True)
    results = side_by_side(variants, queries, truth)
    with_exclusion = side_by_side({name: variants[name] for name in
                                   ("exact", f"hnsw ef={args.ef_search[-1]}", f"ivfpq nprobe={args.nprobe[-1]}")},
                                  queries[: len(queries) // 2], truth[: len(queries) // 2], exclude=args.exclude)
    auto_kind = IndexConfig().resolved_kind(len(vectors))
    ivf = built["ivfpq"].index
    ivf = faiss.downcast_index(ivf.base_index) if isinstance(ivf, faiss.IndexRefine) else ivf
    return {
        "items": len(vectors), "dim": int(vectors.shape[1]), "queries": len(queries),
        "build_s": build_s, **({"read_from_cache_s": read_s, "build_s_note": "measured when the cached index "
                                "was built, with the same code"} if read_s else {}),
        "ivf_lists": int(ivf.nlist), "pq_bytes_per_vector": int(ivf.pq.M * ivf.pq.nbits // 8),
        "search": results,
        f"search_excluding_{args.exclude}_shown_items": with_exclusion,
        "settings": {"hnsw": choose(results, "hnsw", "hnsw_ef_search"),
                     "ivfpq": choose(results, "ivfpq", "ivf_nprobe")},
        "threads_raw_faiss": {"index": auto_kind, **thread_comparison(built[auto_kind], queries)},
    }


def real_vectors(path: Path | None, count: int, queries: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Item embeddings (and text-embedding queries) from a feature file, else synthetic vectors of the same size."""
    if path is not None:
        from assistant.vision.features import ItemFeatures

        features = ItemFeatures.load(path)
        rng = np.random.default_rng(0)
        picked = rng.choice(len(features.item), queries, replace=False)
        return (features.item, np.ascontiguousarray(features.text[picked]),
                f"real catalog item embeddings from {path.name} (backbone {features.backbone_id}); "
                f"queries: {queries} random items' text embeddings")
    return (clustered_vectors(count, seed=0), clustered_vectors(queries, seed=1),
            "SYNTHETIC clustered vectors of the real catalog's size (no feature file given)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=Path,
                        help="an ItemFeatures file of the real catalog (assistant.vision.features)")
    parser.add_argument("--catalog-size", type=int, default=34_975)
    parser.add_argument("--large", type=int, default=1_000_000,
                        help="synthetic vectors for part (b); 0 keeps part (b) from the existing JSON")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--ef-search", type=int, nargs="+", default=[64, 96, 128, 192, 256, 384])
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    parser.add_argument("--exclude", type=int, default=10, help="shown items excluded in the exclusion timing")
    parser.add_argument("--threads", type=int, default=2, help="threads for builds and batched searches")
    parser.add_argument("--cache", type=Path, help="keep built large indexes here and reuse them on reruns")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results/index_latency.json")
    args = parser.parse_args()

    vectors, queries, source = real_vectors(args.features, args.catalog_size, args.queries)
    result = {
        "k": K, "targets": {"p50_ms": LATENCY_TARGET_MS, "recall_at_50": RECALL_TARGET},
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "faiss": faiss.__version__, "note": "2 cores shared with other jobs: timings are noisy"},
        "threads": {"batch_1": 1, f"batches_of_{SINGLE_THREAD_BELOW}_or_more": args.threads, "build": args.threads},
        "defaults": dataclasses.asdict(IndexConfig()),
        "catalog": {"source": source, **run_size("catalog", vectors, queries, args, None, "catalog")},
    }
    if not args.large and args.json.exists():
        earlier = json.loads(args.json.read_text(encoding="utf-8")).get("large")
        if earlier:
            result["large"] = {**earlier, "note": "kept from an earlier run of this script (--large 0)"}
    if args.large:
        large = clustered_vectors(args.large, seed=0)
        large_queries = clustered_vectors(args.queries, seed=1)
        source = ("synthetic: 1,000 overlapping Gaussian clusters in a 32-d latent space mapped to 256-d plus "
                  "isotropic noise, L2-normalised (assistant.vision.index.clustered_vectors); queries drawn from "
                  "the same "
                  "distribution, not from the indexed set")
        timings = run_size("large", large, large_queries, args, args.cache, f"synthetic-{args.large}")
        result["large"] = {"source": source, **timings}
    atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
