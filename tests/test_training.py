"""The shared training helpers: the schedule keeps every model's old numbers, devices, checkpoints, DDP sharding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from assistant.core.training import (
    Distributed,
    module_weights,
    read_checkpoint,
    resolve_device,
    save_checkpoint,
    warmup_cosine,
)

# (step, learning rate) as the three schedules this one replaced computed them, written out by the old code.
# Backbone (lr 5e-4, 4 epochs x 12 steps: warmup min(100, 48 // 10) = 4, cosine to 0 at 48).
BACKBONE = [(0, 0.000125), (3, 0.0005), (4, 0.0005), (20, 0.00035385375325047166), (47, 6.369713474366212e-07)]
# Backbone, fpi-cpu (lr 1e-3, 6 epochs x 117 steps: warmup 70, total 702).
BACKBONE_FPI = [(0, 1.4285714285714285e-05), (69, 0.001), (70, 0.001), (400, 0.000465231958770485),
                (701, 6.177385484029685e-09)]
# Retriever (lr 1e-3, warmup 60, 4 epochs x 128 steps; clamped at 0 past the end).
RETRIEVER = [(0, 1.6666666666666667e-05), (59, 0.001), (60, 0.001), (300, 0.0004514237581535571),
             (511, 1.2077057557680071e-08), (600, 0.0)]
# Simulator (lr 3e-3, warmup 100, max_steps 6000, decaying to a tenth of the peak and held there).
SIMULATOR = [(0, 3e-05), (99, 0.003), (100, 0.003), (3000, 0.0016859377039409962), (5999, 0.0003000001913812931),
             (6000, 0.00030000000000000003), (7000, 0.00030000000000000003)]


@pytest.mark.parametrize(("expected", "peak", "warmup", "total", "floor"), [
    (BACKBONE, 5e-4, 4, 48, 0.0), (BACKBONE_FPI, 1e-3, 70, 702, 0.0), (RETRIEVER, 1e-3, 60, 512, 0.0),
    (SIMULATOR, 3e-3, 100, 6000, 0.1)])
def test_one_schedule_gives_each_old_schedules_numbers(
        expected: list[tuple[int, float]], peak: float, warmup: int, total: int, floor: float) -> None:
    # to the last bit or two: the backbone's copy divided after multiplying by pi
    assert [warmup_cosine(step, peak, warmup, total, floor) for step, _ in expected] == pytest.approx(
        [rate for _, rate in expected], rel=1e-14, abs=0)


def test_device_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("LOCAL_RANK", "3")  # torchrun's rank on this machine picks the GPU
    assert resolve_device("cuda") == torch.device("cuda", 3)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda", 3)


class Tied(nn.Module):
    """An embedding and an output layer sharing one weight, as a tied language-model head does."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(11, 4)
        self.head = nn.Linear(4, 11, bias=False)
        self.head.weight = self.embedding.weight
        self.norm = nn.LayerNorm(4)


def _train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> list[float]:
    losses = []
    for _ in range(steps):
        tokens = torch.randint(0, 11, (8,))  # the global RNG: restored by the checkpoint
        logits = model.head(nn.functional.dropout(model.norm(model.embedding(tokens)), 0.2))
        loss = nn.functional.cross_entropy(logits, tokens)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def test_checkpoint_resumes_weights_moments_and_random_draws_exactly(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Tied()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
    _train_steps(model, optimizer, 3)
    path = save_checkpoint(tmp_path / "state.safetensors", model, optimizer, "run-a", {"step": 3, "log": [1.5]},
                           extra={"bytes": torch.arange(5, dtype=torch.uint8)})
    assert "head.weight" not in module_weights(model)  # the tied weight is stored once
    straight = _train_steps(model, optimizer, 4)

    torch.manual_seed(123)  # another process, other random state
    fresh = Tied()
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=0.05)
    checkpoint = read_checkpoint(path, "run-a")
    assert checkpoint is not None and checkpoint.counters == {"step": 3, "log": [1.5]}
    assert checkpoint.extra["bytes"].tolist() == [0, 1, 2, 3, 4]
    checkpoint.restore(fresh, fresh_optimizer)
    assert fresh.head.weight is fresh.embedding.weight
    assert _train_steps(fresh, fresh_optimizer, 4) == straight


def test_checkpoint_of_another_run_or_damaged_is_ignored(tmp_path: Path) -> None:
    model = Tied()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    path = save_checkpoint(tmp_path / "state.safetensors", model, optimizer, "run-a", {"step": 1})
    assert read_checkpoint(path, "run-b") is None
    assert read_checkpoint(tmp_path / "missing.safetensors", "run-a") is None
    path.write_bytes(path.read_bytes()[:200])
    assert read_checkpoint(path, "run-a") is None


def test_one_process_is_rank_0_of_1(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with Distributed(torch.device("cpu")) as ranks:
        assert (ranks.rank, ranks.world, ranks.main, ranks.active) == (0, 1, True, False)
        assert list(ranks.shard(range(5))) == [0, 1, 2, 3, 4]
        assert ranks.gather_shards(["a", "b"], 2) == ["a", "b"]
        assert ranks.total(2.0, 3.0) == [2.0, 3.0]
        module = nn.Linear(2, 2)
        assert ranks.wrap(module) is module
