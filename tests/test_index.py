"""The faiss index: exact search, exclusion of shown items, approximate recall, saving, damaged files."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from assistant.vision.index import IndexConfig, IndexFileError, VectorIndex, cached_index, clustered_vectors


def brute_force(queries: np.ndarray, vectors: np.ndarray, k: int, exclude=None) -> tuple[np.ndarray, np.ndarray]:
    scores = queries @ vectors.T
    for q, rows in enumerate(exclude or []):
        scores[q, list(rows)] = -np.inf
    rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, rows, axis=1), rows


def assert_exact_top_k(scores: np.ndarray, rows: np.ndarray, queries: np.ndarray, vectors: np.ndarray,
                       expected_scores: np.ndarray, expected_rows: np.ndarray) -> None:
    """The same top-k as brute force, where rows whose scores differ by float rounding may swap places."""
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)
    np.testing.assert_allclose(np.einsum("qd,qkd->qk", queries, vectors[rows]), scores, atol=1e-5)
    assert all(len(set(r)) == len(r) for r in rows)
    assert (rows == expected_rows).mean() > 0.99


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]))


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return clustered_vectors(4000, dim=64, clusters=100, latent_dim=16, seed=0)


@pytest.fixture(scope="module")
def queries() -> np.ndarray:
    return clustered_vectors(64, dim=64, clusters=100, latent_dim=16, seed=1)


def test_exact_search_equals_numpy_top_k(vectors, queries):
    index = VectorIndex.build(vectors, IndexConfig(kind="auto"))
    assert index.kind == "exact" and index.size == 4000 and index.dim == 64
    scores, rows = index.search(queries, 20)
    expected_scores, expected_rows = brute_force(queries, vectors, 20)
    assert_exact_top_k(scores, rows, queries, vectors, expected_scores, expected_rows)
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    one_scores, one_rows = index.search(queries[3], 20)  # a single (dim,) query works as a batch of one
    np.testing.assert_array_equal(one_rows[0], rows[3])


def test_auto_picks_approximate_beyond_threshold(vectors):
    assert VectorIndex.build(vectors, IndexConfig(exact_threshold=1000)).kind == "hnsw"
    assert VectorIndex.build(vectors, IndexConfig(exact_threshold=1000, large_kind="ivfpq")).kind == "ivfpq"
    assert VectorIndex.build(vectors[:999], IndexConfig(kind="ivfpq")).kind == "exact"  # too few to approximate
    with pytest.raises(ValueError, match="index kind"):
        IndexConfig(kind="annoy")


def test_exclusion_skips_shown_rows_and_returns_the_next_best(vectors, queries):
    index = VectorIndex.build(vectors, IndexConfig(kind="exact"))
    _, best = brute_force(queries, vectors, 30)
    # Per query a different set: its own top rows at scattered ranks, plus rows far down the list.
    exclude = [set(best[q, :: 3 + q % 4].tolist()) | {q, 4000 + q} for q in range(len(queries))]
    scores, rows = index.search(queries, 10, exclude=exclude)
    expected_scores, expected_rows = brute_force(queries, vectors, 10,
                                                 [{r for r in e if r < 4000} for e in exclude])
    for q in range(len(queries)):
        assert not set(rows[q]) & exclude[q]
    assert_exact_top_k(scores, rows, queries, vectors, expected_scores, expected_rows)


def test_exclusion_with_approximate_indexes_never_returns_excluded(vectors, queries):
    exact = VectorIndex.build(vectors, IndexConfig(kind="exact"))
    _, best = exact.search(queries, 100)
    exclude = [set(best[q].tolist()) for q in range(len(queries))]  # many shown items: the 100 best
    _, truth = exact.search(queries, 10, exclude=exclude)
    for kind in ("hnsw", "ivfpq"):
        index = VectorIndex.build(vectors, IndexConfig(kind=kind, ivf_nprobe=16))
        _, rows = index.search(queries, 10, exclude=exclude)
        assert all(not set(rows[q]) & exclude[q] for q in range(len(queries))), kind
        assert (rows >= 0).all(), kind
        assert recall(rows, truth) >= 0.85, kind


def test_an_approximate_index_left_short_by_exclusion_pads_instead_of_returning_shown_rows():
    vectors = clustered_vectors(2000, dim=32, clusters=20, latent_dim=8)
    index = VectorIndex.build(vectors, IndexConfig(kind="ivfpq", ivf_nprobe=1, pq_refine=0))
    _, reachable = index.search(vectors[:1], 2000)  # one probed list: what this query can reach at all
    reachable = reachable[0][reachable[0] >= 0]
    assert 20 < len(reachable) < 2000
    shown = set(reachable[:-3].tolist())
    _, rows = index.search(vectors[:1], 10, exclude=[shown])
    assert set(rows[0, :3].tolist()) == set(reachable[-3:].tolist()) and (rows[0, 3:] == -1).all()


def test_fewer_rows_than_k_are_padded():
    vectors = clustered_vectors(12, dim=16, clusters=3, latent_dim=4)
    index = VectorIndex.build(vectors, IndexConfig(kind="exact"))
    scores, rows = index.search(vectors[:2], 10, exclude=[{0, 1, 2, 3, 4}, set()])
    assert sorted(rows[0, :7].tolist()) == list(range(5, 12)) and (rows[0, 7:] == -1).all()
    assert np.isneginf(scores[0, 7:]).all() and (rows[1] >= 0).all()
    scores, rows = index.search(vectors[:1], 20)
    assert sorted(rows[0, :12].tolist()) == list(range(12)) and (rows[0, 12:] == -1).all()


def test_bad_queries_are_refused(vectors):
    index = VectorIndex.build(vectors[:100], IndexConfig(kind="exact"))
    with pytest.raises(ValueError, match="dimension 32"):
        index.search(np.zeros((1, 32), np.float32), 5)
    with pytest.raises(ValueError, match="NaN"):
        index.search(np.full((1, 64), np.nan, np.float32), 5)
    with pytest.raises(ValueError, match="exclude has 2 entries"):
        index.search(vectors[:1], 5, exclude=[{1}, {2}])


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_approximate_recall_against_exact(vectors, queries, kind):
    _, truth = VectorIndex.build(vectors, IndexConfig(kind="exact")).search(queries, 50)
    index = VectorIndex.build(vectors, IndexConfig(kind=kind, ivf_nprobe=16))
    assert index.kind == kind
    _, rows = index.search(queries, 50)
    assert recall(rows, truth) >= 0.9


@pytest.mark.parametrize("kind", ["exact", "hnsw", "ivfpq"])
def test_save_load_roundtrip_gives_identical_results(vectors, queries, tmp_path, kind):
    index = VectorIndex.build(vectors, IndexConfig(kind=kind))
    path = index.save(tmp_path / f"{kind}.faiss")
    loaded = VectorIndex.load(path)
    assert (loaded.kind, loaded.size, loaded.dim) == (kind, 4000, 64)
    exclude = [{q} for q in range(len(queries))]
    for before, after in zip(index.search(queries, 25, exclude), loaded.search(queries, 25, exclude), strict=True):
        np.testing.assert_array_equal(before, after)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{kind}.faiss", f"{kind}.faiss.json"]  # no tmp left


def test_damaged_index_files_raise_clear_errors(vectors, tmp_path):
    path = VectorIndex.build(vectors, IndexConfig(kind="hnsw")).save(tmp_path / "items.faiss")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(IndexFileError, match="checksum"):
        VectorIndex.load(path)
    path.write_bytes(b"\x00" * 4096)  # garbage, even with a checksum that matches it
    meta = path.with_name("items.faiss.json")
    description = json.loads(meta.read_text())
    description["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    meta.write_text(json.dumps(description))
    with pytest.raises(IndexFileError, match="faiss cannot read it"):
        VectorIndex.load(path)
    meta.unlink()
    with pytest.raises(IndexFileError, match="no saved index"):
        VectorIndex.load(path)


def test_cached_index_reuses_and_rebuilds_a_damaged_file(vectors, queries, tmp_path):
    config = IndexConfig(kind="exact")
    first = cached_index(vectors, config, directory=tmp_path)
    (saved,) = tmp_path.glob("*.faiss")
    stamp = saved.stat().st_mtime_ns
    again = cached_index(vectors, config, directory=tmp_path)
    assert saved.stat().st_mtime_ns == stamp and again.size == first.size  # loaded, not rebuilt
    saved.write_bytes(saved.read_bytes()[:1000])
    rebuilt = cached_index(vectors, config, directory=tmp_path)
    assert_exact_top_k(*rebuilt.search(queries, 10), queries, vectors, *brute_force(queries, vectors, 10))
    other = cached_index(vectors[:3000], config, directory=tmp_path)  # other vectors: another file
    assert other.size == 3000 and len(list(tmp_path.glob("*.faiss"))) == 2
