"""Training the dialog retriever on simulated dialogs: rollouts through the dialog loop, contrastive loss per turn."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from assistant.core.catalog import CaptionPair, Catalog, Item, caption_pairs_digest, thin_labels
from assistant.core.dialog import DialogState, Turn, run_dialogs, seeded_rng
from assistant.core.feedback import attribute_kind
from assistant.core.reader import SemanticReader
from assistant.core.storage import atomic_write_text
from assistant.core.training import (
    Distributed,
    MixedPrecision,
    read_checkpoint,
    resolve_device,
    save_checkpoint,
    set_learning_rate,
    warmup_cosine,
)
from retriever.baselines import RandomRanker
from retriever.model import (
    PAD,
    DialogRetriever,
    HistoryBatch,
    ItemInputs,
    RetrieverConfig,
    RetrieverRanker,
)

RETRIEVER_FILE = "retriever.safetensors"
TRAIN_STATE_FILE = "retriever-train-state.safetensors"
FINETUNE_STATE_FILE = "retriever-finetune-state.safetensors"
# What a fine-tune must share with the saved retriever; the other fields only steer training.
SHAPE_FIELDS = ("width", "layers", "heads", "feedforward", "max_turns", "text_mode", "item_space", "use_attributes")
TRAIN_LOG_FILE = "retriever-train-log.json"
TRAINING_READINGS = 200_000  # messages' readings a training run keeps (an epoch's rollouts say ~40k)

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
        """The opening request, by the user who answers this target's dialog when it can describe (the first user
        that can otherwise: the trained simulator only answers)."""
        user = self.users[self.pick(target)]
        describer = user if hasattr(user, "describe") else next((u for u in self.users if hasattr(u, "describe")),
                                                                None)
        if describer is None:
            raise ValueError("none of the users can describe a target (needs a TemplateUser)")
        return describer.describe(target)


def mixed_user(simulator: Any | None, template: Any, simulator_fraction: float, seed: int = 0,
               paraphrase: Any | None = None, paraphrase_fraction: float = 0.0) -> Any:
    """The rollout user: the simulator for `simulator_fraction` of dialogs, the paraphrase shopper for
    `paraphrase_fraction`, the template shopper for the rest (a user that is None gets no dialogs)."""
    for name, share in (("simulator_fraction", simulator_fraction), ("paraphrase_fraction", paraphrase_fraction)):
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"retriever {name} must lie in [0, 1], not {share}")
    if simulator_fraction + paraphrase_fraction > 1.0 + 1e-9:
        raise ValueError(f"retriever simulator_fraction + paraphrase_fraction must be at most 1, not "
                         f"{simulator_fraction} + {paraphrase_fraction}")
    mix = [(user, share) for user, share in ((simulator, simulator_fraction), (paraphrase, paraphrase_fraction))
           if user is not None and share > 0]
    if not mix:
        return template
    rest = max(0.0, 1.0 - sum(share for _, share in mix))
    return MixedUser([user for user, _ in mix] + [template], [share for _, share in mix] + [rest], seed)


def simulate(ranker, catalog: Catalog, user: Any, targets: np.ndarray, config: RetrieverConfig, seed: int,
             ranks: Distributed) -> list[DialogState]:
    """Rollout histories for `targets`: each opens with a random item or a described request, then shows the
    ranker's top unshown item each turn. Under DDP each process plays every world-th dialog and all share them."""
    rng = np.random.default_rng(seed)
    offsets = rng.integers(1, len(catalog), len(targets))
    opening = rng.random(len(targets)) < config.opening_fraction
    mine = np.asarray(ranks.shard(np.arange(len(targets))))
    start_rows = [None if opening[i] else int((targets[i] + offsets[i]) % len(catalog)) for i in mine]
    openings = [user.describe(catalog.items[targets[i]]) if opening[i] else None for i in mine]
    run = run_dialogs(ranker, catalog, targets[mine], user, config.turns, start_rows, openings,
                      page_size=max(config.hard_negatives, 1), track_ranks=False)
    return ranks.gather_shards(run.states, len(targets))


def human_dialogs(catalog: Catalog, pairs: Sequence[CaptionPair]) -> tuple[list[DialogState], np.ndarray]:
    """Logged human pairs as one-turn dialogs: the shopper looked at the reference, said the caption and picked
    the target ("this is it"). Pairs naming an item outside `catalog` are left out."""
    kept = [p for p in pairs if p.reference in catalog and p.target in catalog and p.reference != p.target]
    states = [DialogState([Turn(catalog.index_of(p.reference), p.caption)]) for p in kept]
    return states, np.asarray([catalog.index_of(p.target) for p in kept], dtype=np.int64)


def thin_item_inputs(retriever: DialogRetriever, catalog: Catalog, features,
                     attributes: Sequence[dict[str, str]] | None) -> ItemInputs:
    """The catalog's rows as a thin catalog has them: every label but the kind of item and who it is for unknown,
    colour words out of the titles (the backbone's vectors stay: they were read from the full catalog)."""
    names = [name for name in catalog.attribute_names() if attribute_kind(name) not in ("category", "gender")]
    rows = attributes if attributes is not None else [item.attributes for item in catalog]
    kept = [{name: value for name, value in row.items() if name not in names} for row in rows]
    return retriever.item_inputs(thin_labels(catalog, names), features, kept)


def mixed_item_inputs(items: ItemInputs, thin: ItemInputs, rows: np.ndarray) -> ItemInputs:
    """`items` with the rows where `rows` is True read from `thin` instead."""
    chosen = torch.from_numpy(rows)
    return ItemInputs(items.image, items.text, items.item,
                      torch.where(chosen[:, None], thin.attributes, items.attributes),
                      torch.where(chosen[:, None], thin.title, items.title))


def drop_readings(history: HistoryBatch, share: float, generator: torch.Generator) -> HistoryBatch:
    """`history` with each reading token (WANTED, RULED) turned into padding with probability `share`."""
    dropped = history.reading() & (torch.rand(history.kind.shape, generator=generator) < share)
    return dataclasses.replace(history, kind=history.kind.masked_fill(dropped, PAD))


def contrastive_loss(network, retriever: DialogRetriever, items: ItemInputs, states: Sequence[DialogState],
                     targets: np.ndarray, candidate_pool: np.ndarray, device: torch.device, ranks: Distributed,
                     precision: MixedPrecision, reader: SemanticReader | None = None, read_dropout: float = 0.0,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, int]:
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
    mine = list(ranks.shard(range(len(states))))
    history = retriever.history_batch([states[b] for b in mine], items, reader=reader)
    if read_dropout and generator is not None:
        history = drop_readings(history, read_dropout, generator)
    history = history.to(device)
    with precision.autocast():
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
    loss = torch.where(keep, losses, torch.zeros_like(losses)).sum() / max(total_valid, 1) * ranks.world
    return loss, total_valid


def network_scale(network) -> torch.Tensor:
    module = network.module if isinstance(network, DistributedDataParallel) else network
    return module.logit_scale.exp().clamp(max=100.0)


def train_retriever(catalog: Catalog, features, user: Any, config: RetrieverConfig, out_dir: Path,
                    resume: bool = True, attributes: Sequence[dict[str, str]] | None = None,
                    human_pairs: Sequence[CaptionPair] = (), start_from: Path | None = None) -> DialogRetriever:
    """Train on simulated dialogs over `catalog` (the training split) and save `out_dir/retriever.safetensors`.

    Each epoch plays `dialogs_per_epoch` rollouts of `turns` turns (a random first item or a described request;
    then the current retriever's top unshown item; `user` answers, and describes targets for openings), adds
    the logged `human_pairs` (`human_repeats` times each, as one-turn dialogs), then trains on every turn of
    them. With `start_from` (a saved retriever) it fine-tunes those weights for `finetune_epochs` instead.
    A checkpoint after each epoch lets a killed run resume. Under torchrun (WORLD_SIZE > 1) rollouts and
    batches are split across processes (gloo on CPU, nccl on GPU).
    """
    device = resolve_device(config.device)
    with Distributed(device) as ranks:
        return _train(catalog, features, user, config, Path(out_dir), resume, attributes, list(human_pairs),
                      start_from, device, ranks)


def _train(catalog: Catalog, features, user: Any, config: RetrieverConfig, out_dir: Path, resume: bool,
           attributes: Sequence[dict[str, str]] | None, human_pairs: list[CaptionPair], start_from: Path | None,
           device: torch.device, ranks: Distributed) -> DialogRetriever:
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    if start_from is None:
        retriever = DialogRetriever.create(catalog, int(np.asarray(features.image).shape[1]), config)
        epochs, learning_rate, state_path = config.epochs, config.learning_rate, out_dir / TRAIN_STATE_FILE
    else:
        retriever = DialogRetriever.load(start_from)
        differ = [k for k in SHAPE_FIELDS if getattr(retriever.config, k) != getattr(config, k)]
        if differ:
            raise ValueError(f"{start_from}: the saved retriever's {', '.join(differ)} differ from the config's")
        epochs, learning_rate = config.finetune_epochs, config.finetune_learning_rate
        state_path = out_dir / FINETUNE_STATE_FILE
    retriever.network.to(device)
    human_states, human_targets = human_dialogs(catalog, human_pairs)
    full_items = retriever.item_inputs(catalog, features, attributes)
    thin_items = thin_item_inputs(retriever, catalog, features, attributes) if config.label_dropout else None
    # every message of an epoch is read for its rollout and again for the loss: keep all of them
    reader = retriever.reader_over(attributes or [item.attributes for item in catalog],
                                   reading_cache=TRAINING_READINGS) if config.read_feedback else None
    decay = [p for n, p in retriever.network.named_parameters() if p.ndim > 1 and "embedding" not in n]
    no_decay = [p for n, p in retriever.network.named_parameters() if not (p.ndim > 1 and "embedding" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.learning_rate)
    key = config.run_key()
    if human_pairs or start_from is not None:  # (plain runs keep the key they always had)
        key |= {"fine_tune": start_from is not None, "human_pairs": caption_pairs_digest(human_pairs)}
    run_key = json.dumps(key, sort_keys=True)
    start_epoch, step, log = 0, 0, []
    saved = read_checkpoint(state_path, run_key) if resume else None
    if saved:
        saved.restore(retriever.network, optimizer)
        start_epoch, step, log = saved.counters["epoch"], saved.counters["step"], saved.counters["log"]
    network = ranks.wrap(retriever.network)
    precision = MixedPrecision(device, config.amp)
    repeats = config.human_repeats if len(human_states) else 0
    steps_per_epoch = math.ceil((config.dialogs_per_epoch + repeats * len(human_states)) / config.batch_size)
    total_steps = steps_per_epoch * epochs
    for epoch in range(start_epoch, epochs):
        started = time.time()
        rng = np.random.default_rng([config.seed, epoch] + ([1] if start_from is not None else []))
        generator = torch.Generator().manual_seed(config.seed * 1000 + epoch)  # reading dropout, seeded per epoch
        targets = rng.integers(0, len(catalog), config.dialogs_per_epoch)
        items = full_items if thin_items is None else \
            mixed_item_inputs(full_items, thin_items, rng.random(len(catalog)) < config.label_dropout)
        if epoch < config.random_shown_epochs and start_from is None:
            ranker: Any = RandomRanker(len(catalog), seed=config.seed + epoch)
        else:
            ranker = RetrieverRanker(retriever, items, reader=reader)
        states = simulate(ranker, catalog, user, targets, config, seed=config.seed * 1000 + epoch, ranks=ranks)
        states += human_states * repeats
        targets = np.concatenate([targets, np.tile(human_targets, repeats)])
        rollout_seconds = time.time() - started
        retriever.network.train()
        order = rng.permutation(len(states))
        losses = []
        bar = tqdm(range(steps_per_epoch), desc=f"retriever epoch {epoch + 1}/{epochs}",
                   disable=not config.progress or not ranks.main, leave=False)
        for batch_number in bar:
            chosen = order[batch_number * config.batch_size: (batch_number + 1) * config.batch_size]
            pool = rng.choice(len(catalog), min(config.random_negatives, len(catalog)), replace=False)
            set_learning_rate(optimizer, warmup_cosine(step, learning_rate, config.warmup_steps, total_steps))
            loss, _ = contrastive_loss(network, retriever, items, [states[i] for i in chosen], targets[chosen],
                                       pool, device, ranks, precision, reader, config.read_dropout, generator)
            precision.step(loss, optimizer, clip_norm=1.0, parameters=retriever.network.parameters())
            step += 1
            losses.append(ranks.total(float(loss.detach().float().cpu()))[0] / ranks.world)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        log.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "losses": losses,
                    "rollout_seconds": round(rollout_seconds, 2), "seconds": round(time.time() - started, 2),
                    "temperature": float(1 / network_scale(network).detach()), "world_size": ranks.world,
                    "human_dialogs": repeats * len(human_states), "fine_tune": start_from is not None})
        if ranks.main:
            save_checkpoint(state_path, retriever.network, optimizer, run_key,
                            {"epoch": epoch + 1, "step": step, "log": log})
            atomic_write_text(out_dir / TRAIN_LOG_FILE, json.dumps(log, indent=1) + "\n")
        ranks.barrier()
    retriever.network.eval()
    if ranks.main:
        retriever.save(out_dir / RETRIEVER_FILE, {"epochs": [{k: v for k, v in e.items() if k != "losses"}
                                                             for e in log]})
    return retriever
