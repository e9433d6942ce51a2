"""Shared test fixtures: offline environment, the real Fashion Product Images catalog, a small demo catalog, a tiny
trained model and a real PostgreSQL server."""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from assistant.core.store import PostgresMissing, temporary_postgres

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch/faiss load: idle threads sleep

REPO = Path(__file__).resolve().parent.parent
FPI_ROOT = Path(os.environ.get("FASHION_ASSISTANT_FPI", REPO.parent / "shared/data/fashion-product-images-small"))


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never read or write the user's own cache."""
    os.environ["FASHION_ASSISTANT_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def fpi_root() -> Path:
    """The real catalog beside the repo (../shared/data/fashion-product-images-small, or $FASHION_ASSISTANT_FPI)."""
    if not (FPI_ROOT / "styles.csv").exists():
        if os.environ.get("CI"):
            pytest.fail(f"the real catalog is missing at {FPI_ROOT}; CI must have ../shared beside the clone")
        pytest.skip("the real Fashion Product Images catalog is not beside the repo")
    return FPI_ROOT


@pytest.fixture(scope="session")
def real_catalog(fpi_root: Path):
    """The whole real catalog, loaded once per test session."""
    from assistant.core.loaders import load_catalog

    return load_catalog(fpi_root)


def _on_one_thread(target: Callable, args: tuple, kwargs: dict) -> None:
    import torch
    from tqdm import auto, std

    # First, before any torch op: with one thread torch never enters an OpenMP parallel region, and a forked
    # child that did would wait forever at a barrier for the parent's OpenMP worker threads (fork copies none).
    torch.set_num_threads(1)
    # The progress bars' lock is shared between processes: a child killed while writing its bar would hold it
    # forever, and the parent's next progress bar (every later test's) would wait on it. The child gets its own.
    for bar in {std.tqdm, auto.tqdm}:
        bar.set_lock(threading.RLock())
    target(*args, **kwargs)


@pytest.fixture(scope="session")
def forked() -> Callable[..., multiprocessing.Process]:
    """forked(target, *args, **kwargs): target run in a started fork of this process, on one torch thread.

    A fork starts at once with everything already imported, where a fresh interpreter spends seconds importing
    torch, transformers and open_clip again; the tests that kill a run midway use it.
    """
    def start(target: Callable, *args, **kwargs) -> multiprocessing.Process:
        process = multiprocessing.get_context("fork").Process(target=_on_one_thread, args=(target, args, kwargs))
        process.start()
        return process

    return start


TINY_CONFIG = REPO / "tests" / "tiny.yaml"


@pytest.fixture(scope="session")
def demo_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model trained once per test session with the tiny config on 300 demo items (all stages but metrics)."""
    from assistant.core.config import STAGES
    from assistant.pipeline import train

    out = tmp_path_factory.mktemp("demo-model")
    train("demo:300", TINY_CONFIG, out, stages=STAGES[:-1], progress=False)
    return out


@pytest.fixture(scope="session")
def demo_assistant(demo_model_dir: Path):
    """The tiny demo model over its 300-item demo catalog, through the public API."""
    from assistant.api import Assistant

    return Assistant.load(demo_model_dir, "demo:300", progress=False)


class ShardLog:
    """What each DDP rank took as its share: `record` in a rank's process, then `calls` checks all ranks' logs."""

    def record(self, distributed: type, out: Path, rank: int) -> None:
        """From now on this process appends every `distributed.shard` (assistant.core.training.Distributed) it
        takes to out/shards-<rank>.jsonl."""
        out.mkdir(parents=True, exist_ok=True)
        path, shard = out / f"shards-{rank}.jsonl", distributed.shard

        def recording(ranks, items: Sequence) -> Sequence:
            share = shard(ranks, items)
            with path.open("a") as handle:
                handle.write(json.dumps([ranks.rank, ranks.world, [int(i) for i in items],
                                         [int(i) for i in share]]) + "\n")
            return share

        distributed.shard = recording

    def calls(self, out: Path, world: int) -> int:
        """How many shards each rank took, after asserting that every rank knew it was one of `world` and that
        at each shard the ranks' shares were disjoint, non-empty and together the whole."""
        per_rank = [[json.loads(line) for line in (out / f"shards-{rank}.jsonl").read_text().splitlines()]
                    for rank in range(world)]
        assert len({len(shards) for shards in per_rank}) == 1 and per_rank[0], [len(s) for s in per_rank]
        for calls in zip(*per_rank, strict=True):
            assert [(rank, size) for rank, size, _, _ in calls] == [(rank, world) for rank in range(world)]
            whole, shares = calls[0][2], [share for *_, share in calls]
            assert all(call[2] == whole for call in calls) and all(shares)
            assert sorted(i for share in shares for i in share) == sorted(whole)
        return len(per_rank[0])


@pytest.fixture(scope="session")
def shard_log() -> ShardLog:
    return ShardLog()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL server for the test session (a new cluster in a temp dir, on loopback), stopped after."""
    try:
        with temporary_postgres() as url:
            yield url
    except PostgresMissing as missing:
        pytest.skip(str(missing))
