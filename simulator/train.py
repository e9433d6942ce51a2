"""Training the user simulator: template-shopper (and human) captions, checkpoints, resume, early stopping, DDP."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from assistant.core.catalog import Catalog, caption_pairs_digest
from assistant.core.training import (
    Distributed,
    MixedPrecision,
    read_checkpoint,
    resolve_device,
    save_checkpoint,
    set_learning_rate,
    warmup_cosine,
)
from simulator.captioner import (
    SETTINGS_FILE,
    AttributeVocab,
    FeatureLookup,
    SimulatorConfig,
    SimulatorModel,
)
from simulator.pairs import training_triplets
from simulator.paraphrase_user import ParaphraseUser
from simulator.template_user import TemplateUser
from simulator.tokenizer import BOS_ID, EOS_ID, PAD_ID, CaptionTokenizer

RESUME_FILE = "simulator.resume.safetensors"
FINETUNE_RESUME_FILE = "simulator.finetune-resume.safetensors"


@dataclass
class CaptionData:
    """Triplets as tensors: item rows of each pair and the bos/eos-framed caption ids (padded)."""

    references: torch.Tensor  # (M,) rows into features/attributes
    targets: torch.Tensor  # (M,)
    captions: torch.Tensor  # (M, T)
    features: torch.Tensor  # (N, D)
    attributes: torch.Tensor  # (N, K)
    titles: torch.Tensor  # (N, L)

    def __len__(self) -> int:
        return len(self.references)

    def batch(self, rows: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, ...]:
        """Model inputs and caption ids for the given triplet rows, trimmed to the longest caption."""
        captions = self.captions[rows]
        captions = captions[:, : int((captions != PAD_ID).sum(1).max())]
        ref, tgt = self.references[rows], self.targets[rows]
        return tuple(t.to(device) for t in (self.features[ref], self.features[tgt], self.attributes[ref],
                                            self.attributes[tgt], self.titles[ref], self.titles[tgt], captions))


def caption_data(triplets: Sequence[tuple[str, str, str]], catalog: Catalog, lookup: FeatureLookup,
                 model: SimulatorModel) -> CaptionData:
    ids = sorted({r for r, _, _ in triplets} | {t for _, t, _ in triplets})
    row = {item_id: n for n, item_id in enumerate(ids)}
    pieces = model.tokenizer.encode([caption for _, _, caption in triplets])
    max_tokens = model.config.max_caption_tokens
    captions = torch.full((len(triplets), max_tokens + 2), PAD_ID, dtype=torch.long)
    for n, caption in enumerate(pieces):
        framed = [BOS_ID, *caption[:max_tokens], EOS_ID]
        captions[n, : len(framed)] = torch.tensor(framed)
    return CaptionData(
        references=torch.tensor([row[r] for r, _, _ in triplets]),
        targets=torch.tensor([row[t] for _, t, _ in triplets]),
        captions=captions,
        features=torch.from_numpy(lookup.vectors(ids)),
        attributes=torch.tensor([model.attributes.encode(catalog[i].attributes) for i in ids]),
        titles=model.title_ids([catalog[i].title for i in ids]))


def sum_loss(network: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over the caption tokens, and how many tokens it covers."""
    *pair, captions = inputs
    logits = network(*pair, captions[:, :-1])
    labels = captions[:, 1:]
    loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=PAD_ID, reduction="sum")
    return loss, int((labels != PAD_ID).sum())


class BatchPlan:
    """Which triplet rows make each global step's batch.

    Every epoch is a fresh seeded shuffle, cut into pools of 32 batches whose rows are sorted by caption
    length, so a batch holds captions of similar length (little padding); the batches are then shuffled.
    A step's batch depends only on (seed, step), so a resumed or data-parallel run sees the same batches.
    """

    POOL_BATCHES = 32

    def __init__(self, lengths: torch.Tensor, batch_size: int, seed: int) -> None:
        self.lengths = lengths
        self.batch_size = min(batch_size, len(lengths))
        self.seed = seed
        self.per_epoch = max(1, len(lengths) // self.batch_size)
        self._epoch: tuple[int, list[torch.Tensor]] | None = None

    def rows(self, step: int) -> torch.Tensor:
        epoch, position = divmod(step, self.per_epoch)
        if self._epoch is None or self._epoch[0] != epoch:
            self._epoch = (epoch, self._batches(epoch))
        return self._epoch[1][position]

    def _batches(self, epoch: int) -> list[torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(len(self.lengths), generator=generator)[: self.per_epoch * self.batch_size]
        batches: list[torch.Tensor] = []
        pool = self.batch_size * self.POOL_BATCHES
        for start in range(0, len(order), pool):
            chunk = order[start:start + pool]
            chunk = chunk[torch.argsort(self.lengths[chunk], stable=True)]
            batches.extend(chunk.split(self.batch_size))
        return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def run_fingerprint(catalog: Catalog, lookup: FeatureLookup, config: SimulatorConfig, fine_tune: bool = False) -> str:
    """What a checkpoint must match to be resumed: catalog, feature width, the config (less runtime fields), and
    the human pairs and fine-tuning when there are any."""
    settings = {k: v for k, v in asdict(config).items() if k not in ("device", "max_minutes", "threads")}
    extra = [caption_pairs_digest(catalog.caption_pairs)] if catalog.caption_pairs else []
    record = json.dumps([catalog.fingerprint, lookup.dim, settings] + extra + (["fine-tune"] if fine_tune else []),
                        sort_keys=True)
    return hashlib.sha256(record.encode("utf-8")).hexdigest()[:16]


def training_pairs(catalog: Catalog, config: SimulatorConfig) -> tuple[list, list]:
    """(train triplets, val triplets): shopper pairs from each split plus human pairs from train. A
    `paraphrase_fraction` of each split's pairs is captioned by the paraphrase shopper (its train bank; the
    held-aside bank stays for evaluation), the rest by the template shopper."""
    if not 0.0 <= config.paraphrase_fraction <= 1.0:
        raise ValueError(f"simulator paraphrase_fraction must lie in [0, 1], not {config.paraphrase_fraction}")
    train_catalog, val_catalog = catalog.split("train"), catalog.split("val")
    if len(train_catalog) < 2 or len(val_catalog) < 2:
        raise ValueError(f"{catalog.name}: too few items to train a simulator "
                         f"({len(train_catalog)} train, {len(val_catalog)} val)")

    def shopper_pairs(split: Catalog, count: int, seed: int) -> list[tuple[str, str, str]]:
        paraphrased = round(count * config.paraphrase_fraction)
        triplets = training_triplets(split, count - paraphrased, seed=seed, similar_fraction=config.similar_fraction,
                                     user=TemplateUser(split, seed=config.seed, max_facets=config.max_facets,
                                                       title_words=config.title_words))
        if paraphrased:
            triplets += training_triplets(split, paraphrased, seed=seed + 7919,
                                          similar_fraction=config.similar_fraction,
                                          user=ParaphraseUser(split, seed=config.seed, max_facets=config.max_facets,
                                                              title_words=config.title_words, bank="train"))
        return triplets

    train = shopper_pairs(train_catalog, config.triplets, config.seed)
    if config.human_pairs:
        train += [(p.reference, p.target, p.caption) for p in train_catalog.caption_pairs] * config.human_repeats
    return train, shopper_pairs(val_catalog, config.val_pairs, config.seed + 1)


@torch.no_grad()
def validation_loss(network: torch.nn.Module, data: CaptionData, batch_size: int, device: torch.device,
                    ranks: Distributed) -> float:
    """Mean token cross-entropy on the val triplets (each rank takes a share, the sums are combined)."""
    was_training = network.training
    network.eval()
    total, tokens = 0.0, 0
    rows = ranks.shard(torch.argsort((data.captions != PAD_ID).sum(1)))  # similar lengths together
    for start in range(0, len(rows), batch_size):
        loss, count = sum_loss(network, data.batch(rows[start:start + batch_size], device))
        total, tokens = total + float(loss), tokens + count
    network.train(was_training)
    total, tokens = ranks.total(total, tokens)
    return total / max(tokens, 1)


def train_simulator(catalog: Catalog, features, config: SimulatorConfig, out_dir: Path,
                    resume: bool = True, fine_tune: bool = False) -> SimulatorModel:
    """Train the relative captioner on `catalog`'s train split; the best model (by val loss) ends up in `out_dir`.

    A killed run resumes from its last checkpoint (`simulator.resume.safetensors`) when `resume` is true and
    the catalog, features and config are the same; a finished run with the same inputs is simply loaded.
    With `fine_tune`, the simulator already in `out_dir` (its tokenizer and weights) trains `finetune_steps`
    more steps instead. Launched by torchrun, each rank trains on its share of every global batch (DDP).
    """
    device = resolve_device(config.device)
    with Distributed(device) as ranks:
        return _train(catalog, features, config, Path(out_dir), resume, fine_tune, device, ranks)


def _train(catalog: Catalog, features, config: SimulatorConfig, out_dir: Path, resume: bool, fine_tune: bool,
           device: torch.device, ranks: Distributed) -> SimulatorModel:
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    lookup = FeatureLookup(features, config.feature)
    fingerprint = run_fingerprint(catalog, lookup, config, fine_tune)
    resume_path = out_dir / (FINETUNE_RESUME_FILE if fine_tune else RESUME_FILE)
    if resume and (out_dir / SETTINGS_FILE).exists():
        finished = json.loads((out_dir / SETTINGS_FILE).read_text(encoding="utf-8")).get("training_run", {})
        if finished.get("finished") and finished.get("fingerprint") == fingerprint:
            return SimulatorModel.load(out_dir, device)
    # a checkpoint of other inputs is ignored (and overwritten)
    saved = read_checkpoint(resume_path, fingerprint) if resume else None

    train_triplets, val_triplets = training_pairs(catalog, config)
    start = SimulatorModel.load(out_dir) if fine_tune else None
    attributes = start.attributes if start else AttributeVocab.from_catalog(catalog.split("train"))
    if start is not None:
        tokenizer = start.tokenizer
    elif saved is not None:
        tokenizer = CaptionTokenizer(saved.extra["tokenizer"].numpy().tobytes())
    else:
        trained = CaptionTokenizer.train([c for _, _, c in train_triplets], config.vocab_size) if ranks.main else None
        tokenizer = CaptionTokenizer(ranks.share(trained.model_proto if trained else None))

    torch.manual_seed(config.seed)
    model = SimulatorModel.build(tokenizer, attributes, lookup.dim, config, getattr(features, "backbone_id", ""))
    if start is not None:
        model.network.load_state_dict(start.network.state_dict())
    network = model.network.to(device)
    max_steps = config.finetune_steps if fine_tune else config.max_steps
    learning_rate = config.finetune_learning_rate if fine_tune else config.learning_rate
    optimizer = torch.optim.AdamW(network.parameters(), lr=learning_rate, weight_decay=config.weight_decay)
    state = {"fingerprint": fingerprint, "step": 0, "best_val_loss": None, "best_step": 0, "bad_evals": 0,
             "elapsed_s": 0.0, "cpu_s": 0.0, "history": [], "world_size": ranks.world}
    if saved is not None:
        saved.restore(network, optimizer)
        state = {**saved.counters, "world_size": ranks.world}
    trainer = ranks.wrap(network)
    tokenizer_bytes = {"tokenizer": torch.frombuffer(bytearray(tokenizer.model_proto), dtype=torch.uint8)}

    train_data = caption_data(train_triplets, catalog, lookup, model)
    val_data = caption_data(val_triplets, catalog, lookup, model)
    plan = BatchPlan((train_data.captions != PAD_ID).sum(1), config.batch_size, config.seed)
    precision = MixedPrecision(device, config.amp)

    def evaluate_and_checkpoint(train_loss: float) -> bool:
        """Validation, best-model save, resume checkpoint; True when training should stop."""
        val_loss = validation_loss(network, val_data, config.batch_size, device, ranks)
        state["history"].append({"step": state["step"], "train_loss": round(train_loss, 4),
                                 "val_loss": round(val_loss, 4), "elapsed_s": round(state["elapsed_s"], 1),
                                 "cpu_s": round(state["cpu_s"], 1)})
        improved = state["best_val_loss"] is None or val_loss < state["best_val_loss"] - 1e-4
        if improved:
            state.update(best_val_loss=val_loss, best_step=state["step"], bad_evals=0)
        else:
            state["bad_evals"] += 1
        if ranks.main:
            if improved:
                model.training_run = training_record(state, config, len(train_triplets), finished=False)
                model.save(out_dir)
            save_checkpoint(resume_path, network, optimizer, fingerprint, state, extra=tokenizer_bytes)
        ranks.barrier()
        out_of_time = config.max_minutes > 0 and state["elapsed_s"] > 60 * config.max_minutes
        return state["bad_evals"] >= config.patience or out_of_time

    network.train()
    started = time.perf_counter() - state["elapsed_s"]
    cpu_started = time.process_time() - state["cpu_s"]  # this process's CPU time, all threads
    window_loss, window_tokens = 0.0, 0.0
    progress = tqdm(total=max_steps, initial=state["step"], desc="simulator", unit="step",
                    disable=None if ranks.main else True, dynamic_ncols=True)
    stop = state["step"] >= max_steps or state["bad_evals"] >= config.patience
    while not stop:
        step = state["step"]
        # linear warmup, then cosine decay to a tenth of the peak at max_steps
        set_learning_rate(optimizer, warmup_cosine(step, learning_rate, config.warmup_steps, max_steps,
                                                   floor=0.1))
        inputs = train_data.batch(ranks.shard(plan.rows(step)), device)
        with precision.autocast():
            loss_sum, tokens = sum_loss(trainer, inputs)
        global_loss, global_tokens = ranks.total(loss_sum.item(), tokens)
        # DDP averages gradients over ranks, so scaling by world / global tokens gives the token mean of the batch.
        precision.step(loss_sum * ranks.world / global_tokens, optimizer, clip_norm=1.0,
                       parameters=network.parameters())
        window_loss, window_tokens = window_loss + global_loss, window_tokens + global_tokens
        state["step"] = step + 1
        state["elapsed_s"] = time.perf_counter() - started
        state["cpu_s"] = time.process_time() - cpu_started
        progress.update(1)
        progress.set_postfix(loss=f"{global_loss / global_tokens:.3f}")
        if state["step"] % config.eval_every == 0 or state["step"] >= max_steps:
            stop = evaluate_and_checkpoint(window_loss / max(window_tokens, 1))
            window_loss, window_tokens = 0.0, 0.0
            stop = stop or state["step"] >= max_steps
    progress.close()

    if ranks.main:
        best = SimulatorModel.load(out_dir)
        best.training_run = training_record(state, config, len(train_triplets), finished=True)
        best.save(out_dir)
        resume_path.unlink(missing_ok=True)
    ranks.barrier()
    return SimulatorModel.load(out_dir, device)


def training_record(state: dict, config: SimulatorConfig, triplets: int, finished: bool) -> dict:
    """What simulator.json says about the run that made the weights."""
    return {"finished": finished, "fingerprint": state["fingerprint"], "world_size": state["world_size"],
            "triplets": triplets, "steps": state["step"], "best_step": state["best_step"],
            "best_val_loss": state["best_val_loss"], "elapsed_s": round(state["elapsed_s"], 1),
            "cpu_s": round(state["cpu_s"], 1),
            "history": state["history"]}
