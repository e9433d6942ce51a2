"""Nearest-item search over L2-normalised embeddings with faiss: exact for small catalogs, HNSW / IVF-PQ beyond."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from assistant.core.storage import atomic_write, atomic_write_text, cache_dir

# faiss's OpenMP threads busy-wait for work between parallel regions unless told otherwise; on a few cores shared
# with other work the spinning threads take the cores the searching thread needs (this module's tests took 114 s
# instead of 11 s on the shared 2-core machine). Read when faiss loads, so it must precede the import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import faiss  # noqa: E402

KINDS = ("auto", "exact", "hnsw", "ivfpq")
FILE_FORMAT = "fashion-assistant-index/1"
# Batches smaller than this search on one thread. faiss splits a search across queries (and a flat scan of one
# query across blocks); for a single dialog turn waking a second OpenMP thread on a core that is busy with other
# work costs more than it saves: on the shared 2-core machine an exact batch-1 top-50 search over the 35k catalog
# took 1.8 ms on one thread and 12 ms on two. Evaluation batches split their queries over `IndexConfig.threads`
# (there 2 threads gained ~3-10% on batches of 64). Measured in benchmarks/index_latency.py.
SINGLE_THREAD_BELOW = 8
MIN_APPROXIMATE = 1000  # fewer vectors than this are searched exactly whatever the kind (and PQ could not train)


class IndexFileError(ValueError):
    """A saved index that is missing, truncated, corrupt or not for these vectors: rebuild it."""


@dataclass
class IndexConfig:
    """Which faiss index to build and how to search it (the `index:` config section).

    Defaults are the values tuned in benchmarks/index_latency.py to keep batch-1 top-50 search at a few ms
    with recall@50 >= 0.95 against exact search on one million vectors.
    """

    kind: str = "auto"  # auto: exact up to exact_threshold vectors, then `large_kind`
    # The hybrid ranking (retriever + BM25 + constraints) scores every item over an exact index and re-ranks
    # candidates over an approximate one; both took the same time at 35k items and candidates 40% less at 175k
    # (benchmarks/scale_latency.py), so approximate from 50k (index-only search alone would gain only later).
    exact_threshold: int = 50_000
    large_kind: str = "hnsw"  # what `auto` builds beyond the threshold: hnsw or ivfpq
    hnsw_m: int = 32  # graph links per vector (memory ~ 2 * M * 4 bytes per vector on top of the vectors)
    hnsw_ef_construction: int = 64
    hnsw_ef_search: int = 128  # search-time: raised to k (+ excluded rows) when that is larger
    ivf_nlist: int = 2048  # capped at size / 39 so every list gets enough training points
    ivf_nprobe: int = 64  # lists visited per query
    pq_m: int = 32  # sub-quantizers = bytes per vector code (the largest divisor of the dimension up to this)
    pq_refine: int = 8  # re-rank k * pq_refine PQ candidates with the exact vectors (0: PQ scores only)
    ivf_train_size: int = 100_000  # k-means / PQ training sample (10 k-means iterations)
    threads: int = 2  # threads for building and for batches of >= SINGLE_THREAD_BELOW queries (0: all cores)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"index kind must be one of {KINDS}, not {self.kind!r}")
        if self.large_kind not in ("hnsw", "ivfpq"):
            raise ValueError(f"index large_kind must be 'hnsw' or 'ivfpq', not {self.large_kind!r}")

    def resolved_kind(self, size: int) -> str:
        """The kind built for `size` vectors (below MIN_APPROXIMATE vectors always exact: nothing to gain)."""
        if size < MIN_APPROXIMATE:
            return "exact"
        if self.kind != "auto":
            return self.kind
        return "exact" if size <= self.exact_threshold else self.large_kind

    def build_key(self, size: int) -> dict:
        """The settings that change what is built (search-time settings such as efSearch do not)."""
        kind = self.resolved_kind(size)
        if kind == "hnsw":
            return {"kind": kind, "hnsw_m": self.hnsw_m, "hnsw_ef_construction": self.hnsw_ef_construction}
        if kind == "ivfpq":
            return {"kind": kind, "ivf_nlist": self.ivf_nlist, "pq_m": self.pq_m, "pq_refine": self.pq_refine > 0,
                    "ivf_train_size": self.ivf_train_size}
        return {"kind": kind}


def _threads(config: IndexConfig) -> int:
    return config.threads if config.threads > 0 else os.cpu_count() or 1


def _as_matrix(vectors: np.ndarray, name: str, dim: int | None = None) -> np.ndarray:
    array = np.asarray(vectors)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] == 0:
        raise ValueError(f"{name} must be a (rows, dim) array, got shape {array.shape}")
    if dim is not None and array.shape[1] != dim:
        raise ValueError(f"{name} have dimension {array.shape[1]}, the index has {dim}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    return array


def _pq_subquantizers(dim: int, wanted: int) -> int:
    """The largest divisor of `dim` not above `wanted` (faiss PQ needs dim % m == 0)."""
    return max(m for m in range(1, min(wanted, dim) + 1) if dim % m == 0)


def _ivf_part(index: faiss.Index) -> faiss.IndexIVF | None:
    base = faiss.downcast_index(index.base_index) if isinstance(index, faiss.IndexRefine) else index
    return base if isinstance(base, faiss.IndexIVF) else None


class VectorIndex:
    """A faiss inner-product index over catalog rows; `search` returns scores and rows, best first."""

    def __init__(self, index: faiss.Index, kind: str, config: IndexConfig, build_seconds: float | None = None
                 ) -> None:
        self.index = index
        self.kind = kind
        self.config = config
        self.build_seconds = build_seconds  # how long building took (kept in the saved description)

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def __repr__(self) -> str:
        return f"VectorIndex({self.kind}, {self.size} x {self.dim})"

    @classmethod
    def build(cls, vectors: np.ndarray, config: IndexConfig | None = None) -> VectorIndex:
        """Index L2-normalised float32 vectors (row i = catalog row i) with the kind the config picks."""
        config = config or IndexConfig()
        vectors = _as_matrix(vectors, "vectors")
        size, dim = vectors.shape
        if size == 0:
            raise ValueError("cannot index zero vectors")
        kind = config.resolved_kind(size)
        started = time.perf_counter()
        faiss.omp_set_num_threads(_threads(config))
        if kind == "exact":
            index: faiss.Index = faiss.IndexFlatIP(dim)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = config.hnsw_ef_construction
        else:
            nlist = max(1, min(config.ivf_nlist, size // 39))
            quantizer = faiss.IndexFlatIP(dim)
            # 8-bit codes need 39 * 256 training points; small catalogs get fewer centroids per sub-quantizer.
            bits = int(np.clip(np.floor(np.log2(size / 39)), 4, 8))
            ivf = faiss.IndexIVFPQ(quantizer, dim, nlist, _pq_subquantizers(dim, config.pq_m), bits,
                                   faiss.METRIC_INNER_PRODUCT)  # the faiss wrappers keep `quantizer` alive
            ivf.cp.niter = 10
            index = faiss.IndexRefineFlat(ivf) if config.pq_refine > 0 else ivf
            sample = np.random.default_rng(0).permutation(size)[: config.ivf_train_size]
            index.train(vectors[np.sort(sample)])
        index.add(vectors)
        return cls(index, kind, config, round(time.perf_counter() - started, 3))

    def _params(self, fetch: int, selector: faiss.IDSelector | None) -> faiss.SearchParameters | None:
        config = self.config
        if self.kind == "hnsw":
            return faiss.SearchParametersHNSW(efSearch=max(config.hnsw_ef_search, fetch), sel=selector)
        ivf = _ivf_part(self.index)
        if ivf is not None:
            ivf_params = faiss.SearchParametersIVF(nprobe=min(config.ivf_nprobe, ivf.nlist), sel=selector)
            if isinstance(self.index, faiss.IndexRefine):
                return faiss.IndexRefineSearchParameters(k_factor=float(max(1, config.pq_refine)),
                                                         base_index_params=ivf_params)
            return ivf_params
        return faiss.SearchParameters(sel=selector) if selector is not None else None

    def _raw_search(self, queries: np.ndarray, fetch: int, selector: faiss.IDSelector | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
        faiss.omp_set_num_threads(1 if len(queries) < SINGLE_THREAD_BELOW else _threads(self.config))
        return self.index.search(queries, fetch, params=self._params(fetch, selector))

    def search(self, queries: np.ndarray, k: int, exclude: Sequence[Collection[int]] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k rows by inner product for each query, skipping each query's `exclude` rows (items shown).

        Returns (scores (B, k) float32, rows (B, k) int64), best first; when fewer than k rows remain the
        tail is padded with row -1 and score -inf. Exclusion needs no rebuild: one batched search fetches
        k + (most excluded) rows and drops the excluded; a query an approximate index left short is searched
        again with a faiss IDSelector that skips its excluded rows inside the index.
        """
        queries = _as_matrix(queries, "queries", self.dim)
        if k < 1:
            raise ValueError(f"k must be at least 1, not {k}")
        if exclude is not None and len(exclude) != len(queries):
            raise ValueError(f"exclude has {len(exclude)} entries for {len(queries)} queries")
        excluded = [{int(r) for r in rows if 0 <= int(r) < self.size} for rows in (exclude or [()] * len(queries))]
        most_excluded = max((len(rows) for rows in excluded), default=0)
        fetch = min(k + most_excluded, self.size)
        raw_scores, raw_rows = self._raw_search(queries, fetch)
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        rows = np.full((len(queries), k), -1, dtype=np.int64)
        if most_excluded == 0:
            found = raw_rows >= 0
            rows[:, :fetch] = np.where(found, raw_rows, -1)
            scores[:, :fetch] = np.where(found, raw_scores, -np.inf)
            return scores, rows
        for q, skip in enumerate(excluded):
            keep = raw_rows[q] >= 0
            if skip:
                keep &= ~np.isin(raw_rows[q], np.fromiter(skip, dtype=np.int64))
            found_rows, found_scores = raw_rows[q][keep][:k], raw_scores[q][keep][:k]
            if skip and len(found_rows) < min(k, self.size - len(skip)):
                selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(np.fromiter(skip, dtype=np.int64)))
                again_scores, again_rows = self._raw_search(queries[q: q + 1], k, selector)
                keep = again_rows[0] >= 0
                found_rows, found_scores = again_rows[0][keep], again_scores[0][keep]
            rows[q, : len(found_rows)] = found_rows
            scores[q, : len(found_rows)] = found_scores
        return scores, rows

    def search_within(self, query: np.ndarray, k: int, rows: np.ndarray) -> np.ndarray:
        """The top-k of `rows` (catalog rows allowed, e.g. those fitting a filter) for one query, best first:
        the index searched with a faiss IDSelectorBitmap over them (fewer than k found: -1 pads). An HNSW graph
        walks past the rows not allowed, so it may miss some of a very small `rows`: score those directly."""
        query = _as_matrix(query, "query", self.dim)[:1]
        allowed = np.zeros(self.size, dtype=bool)
        allowed[rows] = True
        bitmap = np.packbits(allowed, bitorder="little")  # kept alive while faiss reads it
        selector = faiss.IDSelectorBitmap(self.size, faiss.swig_ptr(bitmap))
        fetch = min(k, len(rows))
        found = np.full(k, -1, dtype=np.int64)
        if fetch:
            found[:fetch] = self._raw_search(query, fetch, selector)[1][0]
        return found

    def save(self, path: Path) -> Path:
        """Write the index to `path` and its description + checksum to `path`.json, each atomically."""
        path = Path(path)
        atomic_write(path, lambda tmp: faiss.write_index(self.index, str(tmp)))
        meta = {"format": FILE_FORMAT, "kind": self.kind, "size": self.size, "dim": self.dim,
                "sha256": _file_sha256(path), "faiss": faiss.__version__, "build_seconds": self.build_seconds,
                "config": dataclasses.asdict(self.config)}
        atomic_write_text(_meta_path(path), json.dumps(meta, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: Path, config: IndexConfig | None = None) -> VectorIndex:
        """Read a saved index; search settings come from `config` (else the saved one).

        Raises IndexFileError when the file is missing, does not match its checksum (truncated, overwritten,
        half-copied) or cannot be parsed, so a damaged file never answers a query.
        """
        path = Path(path)
        meta_path = _meta_path(path)
        if not path.exists() or not meta_path.exists():
            raise IndexFileError(f"{path}: no saved index (needs {path.name} and {meta_path.name}); build it")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if meta.get("format") != FILE_FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, expected {FILE_FORMAT!r}")
            saved_config = IndexConfig(**meta["config"])
        except (ValueError, KeyError, TypeError) as error:
            raise IndexFileError(f"{meta_path}: unreadable index description ({error}); rebuild the index") from None
        if _file_sha256(path) != meta["sha256"]:
            raise IndexFileError(f"{path}: contents do not match the checksum in {meta_path.name} "
                                 "(truncated or damaged); rebuild the index")
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as error:
            raise IndexFileError(f"{path}: faiss cannot read it ({str(error).splitlines()[0]}); "
                                 "rebuild the index") from None
        if index.ntotal != meta["size"] or index.d != meta["dim"]:
            raise IndexFileError(f"{path}: holds {index.ntotal} x {index.d}, its description says "
                                 f"{meta['size']} x {meta['dim']}; rebuild the index")
        return cls(index, meta["kind"], config or saved_config, meta.get("build_seconds"))


class AttributeIndex:
    """Catalog rows by attribute value (an inverted index, as a search engine keeps for its filters): which rows
    have an allowed value of every constrained attribute and no excluded one, found from the shortest postings."""

    def __init__(self, attributes: Sequence[Mapping[str, str]]) -> None:
        self.size = len(attributes)
        self.codes: dict[str, np.ndarray] = {}
        self.value_codes: dict[str, dict[str, int]] = {}
        self.postings: dict[str, list[np.ndarray]] = {}
        names = dict.fromkeys(name for row in attributes for name in row)
        for name in names:
            table: dict[str, int] = {}
            codes = np.array([table.setdefault(row[name], len(table)) if name in row else -1 for row in attributes],
                             dtype=np.int32)
            order = np.argsort(codes, kind="stable")
            bounds = np.searchsorted(codes[order], np.arange(len(table) + 1))
            self.codes[name], self.value_codes[name] = codes, table
            self.postings[name] = [order[bounds[c]: bounds[c + 1]] for c in range(len(table))]

    def rows(self, allowed: Mapping[str, Collection[str]], excluded: Mapping[str, Collection[str]]) -> np.ndarray:
        """Sorted rows whose value is one of `allowed[name]` for every name and none of `excluded[name]` (a name
        the catalog lacks is ignored)."""
        allowed = {name: {self.value_codes[name][v] for v in values if v in self.value_codes[name]}
                   for name, values in allowed.items() if name in self.codes}
        excluded = {name: [self.value_codes[name][v] for v in values if v in self.value_codes[name]]
                    for name, values in excluded.items() if name in self.codes}
        if any(not codes for codes in allowed.values()):
            return np.zeros(0, dtype=np.int64)
        if allowed:
            shortest = min(allowed, key=lambda name: sum(len(self.postings[name][c]) for c in allowed[name]))
            found = np.sort(np.concatenate([self.postings[shortest][c] for c in allowed[shortest]]))
        else:
            found = np.arange(self.size, dtype=np.int64)
        # posting lists hold their rows in order, and filtering keeps it: the result is sorted
        for name, codes in allowed.items():
            found = found[np.isin(self.codes[name][found], list(codes))]
        for name, codes in excluded.items():
            if codes:
                found = found[~np.isin(self.codes[name][found], codes)]
        return found


def _meta_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def cached_index(vectors: np.ndarray, config: IndexConfig | None = None, key: str | None = None,
                 directory: Path | None = None) -> VectorIndex:
    """The index for these vectors from `directory` (default: the cache's `index/`), built and saved if absent.

    `key` names the vectors (e.g. the feature cache's backbone + catalog fingerprint) and must change when they
    do; without one the vectors' bytes are hashed. A saved index that fails to load (damaged) or holds another
    number or width of vectors is rebuilt.
    """
    config = config or IndexConfig()
    vectors = _as_matrix(vectors, "vectors")
    if key is None:
        key = hashlib.sha256(vectors.tobytes()).hexdigest()[:16]
    build_key = json.dumps({"shape": vectors.shape, **config.build_key(len(vectors))}, sort_keys=True)
    path = Path(directory or cache_dir() / "index") / (
        f"{key}-{hashlib.sha256(build_key.encode()).hexdigest()[:12]}.faiss")
    try:
        index = VectorIndex.load(path, config)
        if (index.size, index.dim) == vectors.shape:
            return index
    except IndexFileError:
        pass
    index = VectorIndex.build(vectors, config)
    index.save(path)
    return index


def clustered_vectors(count: int, dim: int = 256, clusters: int = 1000, latent_dim: int = 32, spread: float = 0.75,
                      seed: int = 0) -> np.ndarray:
    """Synthetic L2-normalised vectors shaped like image embeddings, for tests and benchmarks.

    A mixture of `clusters` Gaussians (standard deviation `spread` around unit-variance centres, so that they
    overlap) in a `latent_dim`-dimensional space (a low intrinsic dimension, as real embeddings have), mapped into
    `dim` dimensions by a fixed random linear map, plus a little isotropic noise.
    """
    rng = np.random.default_rng(seed)
    structure = np.random.default_rng(12345)  # the same clusters and map for every seed: queries share the data
    centers = structure.standard_normal((clusters, latent_dim)).astype(np.float32)
    mapping = structure.standard_normal((latent_dim, dim)).astype(np.float32) / np.sqrt(latent_dim)
    out = np.empty((count, dim), dtype=np.float32)
    for start in range(0, count, 65_536):
        n = min(65_536, count - start)
        latent = centers[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, latent_dim), np.float32)
        block = latent @ mapping + 0.1 * rng.standard_normal((n, dim), np.float32)
        out[start: start + n] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out
