"""Training helpers every model shares: device, warmup-cosine schedule, torchrun/DDP, mixed precision, checkpoints."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from assistant.core.storage import atomic_write

CHECKPOINT_FORMAT = "fashion-assistant-checkpoint/1"
T = TypeVar("T")

log = logging.getLogger(__name__)


def resolve_device(name: str = "auto") -> torch.device:
    """`auto`: CUDA when present, else Apple's MPS, else the CPU; or the named device. A CUDA device without an
    index is this process's own GPU under torchrun (LOCAL_RANK), else GPU 0."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def warmup_cosine(step: int, peak: float, warmup: int, total: int, floor: float = 0.0) -> float:
    """The learning rate at `step` (from 0): linear warmup to `peak` over `warmup` steps, then a cosine decay to
    `floor` x `peak` at step `total`, held there after."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def set_learning_rate(optimizer: torch.optim.Optimizer, learning_rate: float) -> None:
    """Every parameter group's learning rate, for the coming step."""
    for group in optimizer.param_groups:
        group["lr"] = learning_rate


class MixedPrecision:
    """Autocast and loss scaling: on CUDA bf16 where supported, else fp16 with a GradScaler; fp32 elsewhere."""

    def __init__(self, device: torch.device, enabled: bool = True) -> None:
        self.device = device
        self.enabled = enabled and device.type == "cuda"
        self.dtype = torch.bfloat16 if self.enabled and torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.enabled and self.dtype == torch.float16)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward pass's precision."""
        return torch.autocast(self.device.type, dtype=self.dtype) if self.enabled else contextlib.nullcontext()

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, clip_norm: float | None = None,
             parameters: Iterable[torch.Tensor] = ()) -> None:
        """Backward through the (scaled) loss, clip the gradient norm of `parameters` to `clip_norm` when given,
        step the optimizer (skipped by the scaler on inf/nan gradients), clear the gradients."""
        self.scaler.scale(loss).backward()
        if clip_norm is not None:
            self.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(parameters, clip_norm)
        self.scaler.step(optimizer)
        self.scaler.update()
        optimizer.zero_grad(set_to_none=True)


class Distributed:
    """This process's place in a torchrun launch (rank, world size), or rank 0 of 1 when launched plainly.

    With WORLD_SIZE > 1 in the environment it starts the process group from torchrun's variables (nccl on CUDA,
    gloo elsewhere) and ends it on `close`. Use as a context manager around a training run.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.started_here = False
        if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            self.started_here = True
        self.active = dist.is_initialized()
        self.rank = dist.get_rank() if self.active else 0
        self.world = dist.get_world_size() if self.active else 1

    def __enter__(self) -> Distributed:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def main(self) -> bool:
        """Whether this process writes files and reports (rank 0)."""
        return self.rank == 0

    def shard(self, items: Sequence[T]) -> Sequence[T]:
        """This rank's share: every world-th element from its rank on (a list, range, array or tensor)."""
        return items[self.rank::self.world]

    def gather_shards(self, part: Sequence[T], count: int) -> list[T]:
        """The whole list of `count` elements back from every rank's `shard` of it, on every rank."""
        if not self.active:
            return list(part)
        parts: list[list[T] | None] = [None] * self.world
        dist.all_gather_object(parts, list(part))
        whole: list[Any] = [None] * count
        for rank, values in enumerate(parts):
            whole[rank::self.world] = values
        return whole

    def total(self, *values: float) -> list[float]:
        """Sums of per-rank numbers over all ranks."""
        if not self.active:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def share(self, value: T) -> T:
        """Rank 0's value, on every rank."""
        if not self.active:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def wrap(self, module: nn.Module) -> nn.Module:
        """The module under DistributedDataParallel when there are several ranks, else itself."""
        if not self.active:
            return module
        return DistributedDataParallel(module, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def close(self) -> None:
        if self.started_here:
            dist.destroy_process_group()
            self.started_here = False


def _storage_key(tensor: torch.Tensor) -> tuple:
    return (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
            tensor.stride())


def _tied_names(module: nn.Module) -> set[str]:
    """State entries that are the very tensor of an earlier entry (tied weights, e.g. a tied LM head)."""
    seen: set[tuple] = set()
    tied = set()
    for name, tensor in module.state_dict().items():
        if tensor.numel() == 0:
            continue
        key = _storage_key(tensor)
        if key in seen:
            tied.add(name)
        seen.add(key)
    return tied


def module_weights(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's state as safetensors stores it: on the CPU, contiguous, each tied tensor once."""
    tied = _tied_names(module)
    return {name: tensor.detach().cpu().contiguous() for name, tensor in module.state_dict().items()
            if name not in tied}


def load_module_weights(module: nn.Module, weights: Mapping[str, torch.Tensor]) -> None:
    """Load what `module_weights` gave (tied tensors come back through the one they share); a RuntimeError when
    the names or shapes do not fit."""
    missing, unexpected = module.load_state_dict(dict(weights), strict=False)
    untied_missing = set(missing) - _tied_names(module)
    if untied_missing or unexpected:
        raise RuntimeError(f"weights do not fit the model: missing {sorted(untied_missing)}, "
                           f"unexpected {sorted(unexpected)}")


def _rng_state() -> dict[str, Any]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | os.PathLike, module: nn.Module, optimizer: torch.optim.Optimizer, run_key: str,
                    counters: Mapping[str, Any], extra: Mapping[str, torch.Tensor] | None = None) -> Path:
    """A resumable training state in one safetensors file, written atomically.

    It holds the module's weights, `extra` tensors, the optimizer's state and the torch RNG states (as
    `torch.save` bytes, read back with weights_only=True), the loop's JSON `counters` and the run they belong to.
    """
    buffer = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "rng": _rng_state()}, buffer)
    tensors = {f"model.{name}": tensor for name, tensor in module_weights(module).items()}
    tensors.update({f"extra.{name}": tensor.detach().cpu().contiguous() for name, tensor in (extra or {}).items()})
    tensors["state"] = torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)
    metadata = {"format": CHECKPOINT_FORMAT, "run_key": run_key, "counters": json.dumps(counters)}
    return atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


@dataclass
class Checkpoint:
    """A checkpoint read back: the loop's counters and extra tensors, and the state `restore` puts back."""

    counters: dict[str, Any]
    extra: dict[str, torch.Tensor]
    weights: dict[str, torch.Tensor]
    state: dict[str, Any]  # optimizer state_dict and RNG states

    def restore(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Weights into `module`, moments into `optimizer` (onto its parameters' device), and the RNG states."""
        load_module_weights(module, self.weights)
        optimizer.load_state_dict(self.state["optimizer"])
        _set_rng_state(self.state["rng"])


def read_checkpoint(path: str | os.PathLike, run_key: str | None = None) -> Checkpoint | None:
    """The checkpoint at `path` when it belongs to run `run_key` (any run when None); None when it is missing,
    of another run, or damaged (logged: training then starts afresh, and a damaged file costs only time)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != CHECKPOINT_FORMAT or run_key not in (None, metadata.get("run_key")):
                log.warning("%s is from another run (config or inputs changed); starting afresh", path.name)
                return None
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        state = torch.load(io.BytesIO(tensors.pop("state").numpy().tobytes()), map_location="cpu", weights_only=True)
        counters = json.loads(metadata["counters"])
    except Exception as error:  # safetensors and torch.load raise several types for damaged files
        log.warning("cannot resume from %s (%s); starting afresh", path.name, error)
        return None
    return Checkpoint(counters, _prefixed(tensors, "extra."), _prefixed(tensors, "model."), state)


def _prefixed(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {name.removeprefix(prefix): value for name, value in tensors.items() if name.startswith(prefix)}
