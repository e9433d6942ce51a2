"""Training the dialog retriever on simulated dialogs: rollouts through the dialog loop, contrastive loss per turn."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from assistant.core.catalog import Catalog, Item
from assistant.core.dialog import DialogState, run_dialogs, seeded_rng
from assistant.core.storage import atomic_write, atomic_write_text
from retriever.baselines import RandomRanker
from retriever.model import DialogRetriever, ItemInputs, RetrieverRanker

RETRIEVER_FILE = "retriever.safetensors"
TRAIN_STATE_FILE = "retriever-train-state.safetensors"
TRAIN_LOG_FILE = "retriever-train-log.json"
STATE_FORMAT = "fashion-assistant-retriever-train-state/1"
# Settings that do not change what a run computes: a run may resume when only these differ.
RUN_INDEPENDENT = ("device", "threads", "progress", "feedback_constraints", "lexical_weight")


@dataclass
class RetrieverConfig:
    """The `retriever:` config section: network shape, simulated dialogs, optimisation."""

    width: int = 128
    layers: int = 2
    heads: int = 4
    feedforward: int = 256
    dropout: float = 0.1
    max_turns: int = 8
    text_mode: str = "static"  # static (MiniLM wordpiece vectors) or contextual (+ frozen MiniLM token outputs)
    item_space: str = "learned"  # learned item tower, or "backbone" (queries in ItemFeatures.item space)
    use_attributes: bool = True  # False trains the no-attributes ablation
    # At inference, items contradicting attribute values the feedback asked for (or ruled out) rank below the
    # rest; the retriever orders each group. Training rollouts always rank with the retriever alone.
    feedback_constraints: bool = True
    # At inference: + this x BM25 of the feedback's words over titles and labels (hybrid search; 0: off). 0.1 was
    # best of 0-0.3 on the real catalog's validation split (success@10 at turn 1: 0.475 without, 0.648 with).
    lexical_weight: float = 0.1
    turns: int = 5  # turns per simulated dialog
    epochs: int = 8
    dialogs_per_epoch: int = 4096
    opening_fraction: float = 0.3  # dialogs that open with a described request instead of a random item
    simulator_fraction: float = 0.5  # share of dialogs answered by the trained simulator (rest: template shopper)
    random_shown_epochs: int = 1  # curriculum: the first epochs show random items instead of the top result
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 60
    hard_negatives: int = 8  # top results of each rollout turn used as negatives
    random_negatives: int = 1024  # catalog items drawn per step as extra negatives
    seed: int = 0
    device: str = "auto"  # auto: cuda when present, else cpu
    amp: bool = True  # mixed precision on CUDA
    threads: int = 0  # CPU threads for torch (0: torch's default)
    progress: bool = True

    def shape_fields(self) -> dict[str, Any]:
        names = ("width", "layers", "heads", "feedforward", "dropout", "max_turns", "text_mode", "item_space",
                 "use_attributes")
        return {name: getattr(self, name) for name in names}

    def run_key(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in RUN_INDEPENDENT}


class MixedUser:
    """Answers each dialog with one of several users, chosen with the given weights by a seeded draw on the
    target (so one dialog keeps one user); a batch goes to each user in one call."""

    def __init__(self, users: Sequence[Any], weights: Sequence[float], seed: int = 0) -> None:
        if len(users) != len(weights) or not users or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError("MixedUser needs one non-negative weight per user, not all zero")
        self.users = list(users)
        self.cumulative = np.cumsum(np.asarray(weights, dtype=np.float64) / sum(weights))
        self.seed = seed

    def pick(self, target: Item) -> int:
        draw = seeded_rng(self.seed, "user", target.id).random()
        return int(min(np.searchsorted(self.cumulative, draw, side="right"), len(self.users) - 1))

    def respond(self, shown: Item, target: Item, turn: int) -> str:
        return self.users[self.pick(target)].respond(shown, target, turn)

    def respond_batch(self, shown: Sequence[Item], targets: Sequence[Item], turns: Sequence[int]) -> list[str]:
        replies: list[str] = [""] * len(shown)
        picks = [self.pick(t) for t in targets]
        for u, user in enumerate(self.users):
            chosen = [i for i, p in enumerate(picks) if p == u]
            if not chosen:
                continue
            if hasattr(user, "respond_batch"):
                answers = user.respond_batch([shown[i] for i in chosen], [targets[i] for i in chosen],
                                             [turns[i] for i in chosen])
            else:
                answers = [user.respond(shown[i], targets[i], turns[i]) for i in chosen]
            for i, answer in zip(chosen, answers, strict=True):
                replies[i] = answer
        return replies

    def describe(self, target: Item) -> str:
        describer = next((u for u in self.users if hasattr(u, "describe")), None)
        if describer is None:
            raise ValueError("none of the users can describe a target (needs a TemplateUser)")
        return describer.describe(target)


def mixed_user(simulator: Any | None, template: Any, simulator_fraction: float, seed: int = 0) -> Any:
    """The rollout user: the simulator for `simulator_fraction` of dialogs, the template shopper for the rest."""
    if simulator is None or simulator_fraction <= 0:
        return template
    if simulator_fraction >= 1:
        return MixedUser([simulator, template], [1.0, 0.0], seed)
    return MixedUser([simulator, template], [simulator_fraction, 1 - simulator_fraction], seed)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _distributed() -> tuple[int, int]:
    """(rank, world size), starting the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def simulate(ranker, catalog: Catalog, user: Any, targets: np.ndarray, config: RetrieverConfig, seed: int,
             rank: int = 0, world: int = 1) -> list[DialogState]:
    """Rollout histories for `targets`: each opens with a random item or a described request, then shows the
    ranker's top unshown item each turn. Under DDP each process plays every world-th dialog and all share them."""
    rng = np.random.default_rng(seed)
    offsets = rng.integers(1, len(catalog), len(targets))
    opening = rng.random(len(targets)) < config.opening_fraction
    mine = np.arange(rank, len(targets), world)
    start_rows = [None if opening[i] else int((targets[i] + offsets[i]) % len(catalog)) for i in mine]
    openings = [user.describe(catalog.items[targets[i]]) if opening[i] else None for i in mine]
    run = run_dialogs(ranker, catalog, targets[mine], user, config.turns, start_rows, openings,
                      page_size=max(config.hard_negatives, 1), track_ranks=False)
    if world == 1:
        return run.states
    gathered: list[list[DialogState] | None] = [None] * world
    dist.all_gather_object(gathered, run.states)
    states: list[DialogState] = [None] * len(targets)  # type: ignore[list-item]
    for r, part in enumerate(gathered):
        for i, state in zip(range(r, len(targets), world), part, strict=True):
            states[i] = state
    return states


def contrastive_loss(network, retriever: DialogRetriever, items: ItemInputs, states: Sequence[DialogState],
                     targets: np.ndarray, candidate_pool: np.ndarray, device: torch.device, rank: int, world: int,
                     autocast) -> tuple[torch.Tensor, int]:
    """Softmax over candidates (the batch's targets, each turn's top results, random items) at every turn.

    The whole batch's candidates are encoded by every process; each process scores its own dialogs, and the
    loss is scaled so DDP's gradient average equals the loss of the whole batch on one process.
    """
    hard = [row for state in states for turn in state.turns for row in turn.results]
    candidates = np.unique(np.concatenate([targets, np.asarray(hard, dtype=np.int64), candidate_pool]))
    position = {int(row): i for i, row in enumerate(candidates)}
    valid = np.zeros((len(states), max(len(s.turns) for s in states)), dtype=bool)
    masked: list[tuple[int, int, int]] = []  # (dialog, turn, candidate) pairs already shown by that turn
    for b, state in enumerate(states):
        shown_so_far: set[int] = set()
        for t, turn in enumerate(state.turns):
            if isinstance(turn.shown, int):
                shown_so_far.add(turn.shown)
            valid[b, t] = int(targets[b]) not in shown_so_far
            masked += [(b, t, position[r]) for r in shown_so_far if r in position]
    total_valid = int(valid.sum())
    mine = list(range(rank, len(states), world))
    history = retriever.history_batch([states[b] for b in mine], items).to(device)
    with autocast():
        queries, item_vectors = network(history, items.rows(torch.from_numpy(candidates)).to(device))
        logits = (queries.float() @ item_vectors.float().T) * network_scale(network)
    local = {b: i for i, b in enumerate(mine)}
    hits = np.array([(local[b], t, c) for b, t, c in masked if b in local and t < logits.shape[1]],
                    dtype=np.int64).reshape(-1, 3)
    mask = torch.zeros(logits.shape, dtype=torch.bool)
    mask[tuple(torch.from_numpy(hits).T)] = True
    logits = logits.masked_fill(mask.to(device), float("-inf"))
    labels = torch.tensor([position[int(targets[b])] for b in mine], device=device)
    losses = F.cross_entropy(logits.transpose(1, 2), labels[:, None].expand(-1, logits.shape[1]),
                             reduction="none")
    keep = torch.from_numpy(valid[mine][:, : logits.shape[1]]).to(device)
    loss = torch.where(keep, losses, torch.zeros_like(losses)).sum() / max(total_valid, 1) * world
    return loss, total_valid


def network_scale(network) -> torch.Tensor:
    module = network.module if isinstance(network, DistributedDataParallel) else network
    return module.logit_scale.exp().clamp(max=100.0)


def _learning_rate(config: RetrieverConfig, step: int, total: int) -> float:
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
    return config.learning_rate * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _save_state(path: Path, retriever: DialogRetriever, optimizer: torch.optim.Optimizer, epoch: int, step: int,
                config: RetrieverConfig, log: list[dict]) -> None:
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in retriever.network.state_dict().items()}
    optimizer_state = optimizer.state_dict()
    for param_id, state in optimizer_state["state"].items():
        for key, value in state.items():
            tensors[f"optimizer.{param_id}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    metadata = {"format": STATE_FORMAT, "epoch": str(epoch), "step": str(step),
                "run": json.dumps(config.run_key(), sort_keys=True), "log": json.dumps(log),
                "param_groups": json.dumps(optimizer_state["param_groups"])}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def _load_state(path: Path, retriever: DialogRetriever, optimizer: torch.optim.Optimizer, config: RetrieverConfig
                ) -> tuple[int, int, list[dict]] | None:
    """(epochs done, step, log) from a saved state of the same run, else None (a damaged file is ignored)."""
    try:
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != STATE_FORMAT or json.loads(metadata["run"]) != json.loads(
                    json.dumps(config.run_key(), sort_keys=True)):
                return None
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception:  # a truncated or foreign file: start over
        return None
    retriever.network.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, param_id, key = name.split(".", 2)
            state.setdefault(int(param_id), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(metadata["param_groups"])})
    return int(metadata["epoch"]), int(metadata["step"]), json.loads(metadata["log"])


def train_retriever(catalog: Catalog, features, user: Any, config: RetrieverConfig, out_dir: Path,
                    resume: bool = True, attributes: Sequence[dict[str, str]] | None = None) -> DialogRetriever:
    """Train on simulated dialogs over `catalog` (the training split) and save `out_dir/retriever.safetensors`.

    Each epoch plays `dialogs_per_epoch` rollouts of `turns` turns (a random first item or a described request;
    then the current retriever's top unshown item; `user` answers, and describes targets for openings), then
    trains on every turn of them. A state file after each epoch lets a killed run resume. Under torchrun
    (WORLD_SIZE > 1) rollouts and batches are split across processes (gloo on CPU, nccl on GPU).
    """
    out_dir = Path(out_dir)
    rank, world = _distributed()
    if config.threads:
        torch.set_num_threads(config.threads)
    device = _device(config.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
    torch.manual_seed(config.seed)
    retriever = DialogRetriever.create(catalog, int(np.asarray(features.image).shape[1]), **config.shape_fields())
    retriever.network.to(device)
    items = retriever.item_inputs(catalog, features, attributes)
    decay = [p for n, p in retriever.network.named_parameters() if p.ndim > 1 and "embedding" not in n]
    no_decay = [p for n, p in retriever.network.named_parameters() if not (p.ndim > 1 and "embedding" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.learning_rate)
    state_path = out_dir / TRAIN_STATE_FILE
    start_epoch, step, log = 0, 0, []
    if resume and state_path.exists():
        loaded = _load_state(state_path, retriever, optimizer, config)
        if loaded:
            start_epoch, step, log = loaded
    network: Any = retriever.network
    if world > 1:
        network = DistributedDataParallel(network, device_ids=[device.index] if device.type == "cuda" else None)
    use_amp = config.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    def autocast():
        return torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=use_amp)

    steps_per_epoch = math.ceil(config.dialogs_per_epoch / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    for epoch in range(start_epoch, config.epochs):
        started = time.time()
        rng = np.random.default_rng([config.seed, epoch])
        targets = rng.integers(0, len(catalog), config.dialogs_per_epoch)
        if epoch < config.random_shown_epochs:
            ranker: Any = RandomRanker(len(catalog), seed=config.seed + epoch)
        else:
            ranker = RetrieverRanker(retriever, items)
        states = simulate(ranker, catalog, user, targets, config, seed=config.seed * 1000 + epoch, rank=rank,
                          world=world)
        rollout_seconds = time.time() - started
        retriever.network.train()
        order = rng.permutation(len(states))
        losses = []
        bar = tqdm(range(steps_per_epoch), desc=f"retriever epoch {epoch + 1}/{config.epochs}",
                   disable=not config.progress or rank != 0, leave=False)
        for batch_number in bar:
            chosen = order[batch_number * config.batch_size: (batch_number + 1) * config.batch_size]
            pool = rng.choice(len(catalog), min(config.random_negatives, len(catalog)), replace=False)
            for group in optimizer.param_groups:
                group["lr"] = _learning_rate(config, step, total_steps)
            loss, _ = contrastive_loss(network, retriever, items, [states[i] for i in chosen], targets[chosen],
                                       pool, device, rank, world, autocast)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(retriever.network.parameters(), 1.0)
            scaler.step(optimizer)
            scaler.update()
            step += 1
            step_loss = loss.detach().float().cpu()
            if world > 1:
                dist.all_reduce(step_loss)
            losses.append(float(step_loss) / world)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        log.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "losses": losses,
                    "rollout_seconds": round(rollout_seconds, 2), "seconds": round(time.time() - started, 2),
                    "temperature": float(1 / network_scale(network).detach())})
        if rank == 0:
            _save_state(state_path, retriever, optimizer, epoch + 1, step, config, log)
            atomic_write_text(out_dir / TRAIN_LOG_FILE, json.dumps(log, indent=1) + "\n")
        if world > 1:
            dist.barrier()
    retriever.network.eval()
    if rank == 0:
        retriever.save(out_dir / RETRIEVER_FILE, {"config": dataclasses.asdict(config),
                                                  "epochs": [{k: v for k, v in e.items() if k != "losses"}
                                                             for e in log]})
    return retriever
