"""Training the user simulator: template-shopper (and human) captions, checkpoints, resume, early stopping, DDP."""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from assistant.core.catalog import Catalog
from assistant.core.storage import atomic_write
from simulator.captioner import (
    SETTINGS_FILE,
    AttributeVocab,
    FeatureLookup,
    SimulatorModel,
)
from simulator.pairs import training_triplets
from simulator.template_user import TemplateUser
from simulator.tokenizer import BOS_ID, EOS_ID, PAD_ID, CaptionTokenizer

RESUME_FILE = "simulator.resume.safetensors"


@dataclass
class SimulatorConfig:
    """The `simulator:` config section: network size, data, optimisation and stopping (defaults: fpi-cpu)."""

    feature: str = "item"  # which ItemFeatures vectors describe an item: "item" or "image"
    n_embd: int = 128
    n_layer: int = 2
    n_head: int = 4
    encoder_layers: int = 0  # transformer layers over the pair sequence before the decoder reads it
    dropout: float = 0.0  # dropout is costly on CPU and generated triplets are plentiful
    max_caption_tokens: int = 32
    title_tokens: int = 12  # caption pieces of each title the model sees (0: none)
    vocab_size: int = 2000  # upper bound; the tokenizer is sized to the corpus
    triplets: int = 40000  # template-shopper training pairs from the train split
    val_pairs: int = 500  # template-shopper pairs from the val split
    similar_fraction: float = 0.7  # share of pairs whose reference is similar to the target (as in rollouts)
    max_facets: int = 2  # the template shopper it learns from: differences named per turn
    title_words: int = 1  # ... and title words (brand, style) named per turn
    human_pairs: bool = True  # add the catalog's human caption pairs (Fashion IQ) from the train split
    batch_size: int = 64  # global batch, split across DDP ranks
    learning_rate: float = 3e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    max_steps: int = 6000
    eval_every: int = 250  # steps between validation + checkpoint
    patience: int = 4  # evaluations without a better validation loss before stopping
    max_minutes: float = 0.0  # wall-clock budget (0: none); training stops at the next evaluation past it
    seed: int = 0
    beams: int = 4
    top_p: float = 0.9
    device: str = "auto"  # "auto", "cpu", "cuda"
    amp: bool = True  # mixed precision, on CUDA only
    threads: int = 0  # torch CPU threads (0: torch's default)

    def shape(self) -> dict:
        """The network-size fields, as `SimulatorModel.build` takes them."""
        return dict(n_embd=self.n_embd, n_layer=self.n_layer, n_head=self.n_head, encoder_layers=self.encoder_layers,
                    dropout=self.dropout, max_caption_tokens=self.max_caption_tokens, title_tokens=self.title_tokens)


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
    max_tokens = model.network.shape.max_caption_tokens
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


def learning_rate(step: int, config: SimulatorConfig) -> float:
    """Linear warmup, then cosine decay to a tenth of the peak at max_steps."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps))
    return config.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


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


class Distributed:
    """Rank and world size, starting a process group when launched by torchrun (WORLD_SIZE > 1)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.started_here = False
        if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            self.started_here = True
        self.active = dist.is_initialized()
        self.rank = dist.get_rank() if self.active else 0
        self.world = dist.get_world_size() if self.active else 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def total(self, *values: float) -> list[float]:
        """Sums of per-rank numbers over all ranks."""
        if not self.active:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def share(self, value: object) -> object:
        """Rank 0's value, on every rank."""
        if not self.active:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def close(self) -> None:
        if self.started_here:
            dist.destroy_process_group()


def pick_device(config: SimulatorConfig) -> torch.device:
    if config.device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    return torch.device(config.device)


def run_fingerprint(catalog: Catalog, lookup: FeatureLookup, config: SimulatorConfig) -> str:
    """What a checkpoint must match to be resumed: catalog, feature width and the config (less runtime fields)."""
    settings = {k: v for k, v in asdict(config).items() if k not in ("device", "max_minutes", "threads")}
    record = json.dumps([catalog.fingerprint, lookup.dim, settings], sort_keys=True)
    return hashlib.sha256(record.encode("utf-8")).hexdigest()[:16]


def save_resume_state(path: Path, network: torch.nn.Module, optimizer: torch.optim.Optimizer,
                      tokenizer: CaptionTokenizer, state: dict) -> None:
    """Weights, optimizer moments, tokenizer and the loop's state in one safetensors file (one atomic write)."""
    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    tensors["tokenizer"] = torch.frombuffer(bytearray(tokenizer.model_proto), dtype=torch.uint8)
    tensors.pop("model/decoder.lm_head.weight", None)  # tied to the word embeddings
    optimizer_state = optimizer.state_dict()
    for index, moments in optimizer_state["state"].items():
        for key, value in moments.items():
            tensors[f"optimizer/{index}/{key}"] = value.detach().cpu().contiguous()
    metadata = {"state": json.dumps(state), "param_groups": json.dumps(optimizer_state["param_groups"])}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def resume_tokenizer(path: Path) -> CaptionTokenizer:
    """The tokenizer a resume checkpoint was trained with."""
    with safe_open(str(path), "pt") as handle:
        return CaptionTokenizer(handle.get_tensor("tokenizer").numpy().tobytes())


def load_resume_state(path: Path, network: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Restore the weights and optimizer `save_resume_state` wrote; returns the loop's state."""
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    model_state = {k.removeprefix("model/"): v for k, v in tensors.items() if k.startswith("model/")}
    model_state["decoder.lm_head.weight"] = model_state["decoder.transformer.wte.weight"]
    network.load_state_dict(model_state)
    moments: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer/"):
            _, index, name = key.split("/", 2)
            moments.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": moments, "param_groups": json.loads(metadata["param_groups"])})
    return json.loads(metadata["state"])


def read_resume_state(path: Path) -> dict | None:
    """The loop state of a resume checkpoint, or None if it is missing or unreadable (then training restarts)."""
    try:
        with safe_open(str(path), "pt") as handle:
            return json.loads(handle.metadata()["state"])
    except Exception:  # a missing or damaged checkpoint only means starting over
        return None


def training_pairs(catalog: Catalog, config: SimulatorConfig) -> tuple[list, list]:
    """(train triplets, val triplets): template-shopper pairs from each split plus human pairs from train."""
    train_catalog, val_catalog = catalog.split("train"), catalog.split("val")
    if len(train_catalog) < 2 or len(val_catalog) < 2:
        raise ValueError(f"{catalog.name}: too few items to train a simulator "
                         f"({len(train_catalog)} train, {len(val_catalog)} val)")
    def shopper(catalog: Catalog) -> TemplateUser:
        return TemplateUser(catalog, seed=config.seed, max_facets=config.max_facets, title_words=config.title_words)

    train = training_triplets(train_catalog, config.triplets, seed=config.seed,
                              similar_fraction=config.similar_fraction, user=shopper(train_catalog))
    if config.human_pairs:
        train += [(p.reference, p.target, p.caption) for p in train_catalog.caption_pairs]
    val = training_triplets(val_catalog, config.val_pairs, seed=config.seed + 1,
                            similar_fraction=config.similar_fraction, user=shopper(val_catalog))
    return train, val


@torch.no_grad()
def validation_loss(network: torch.nn.Module, data: CaptionData, batch_size: int, device: torch.device,
                    ranks: Distributed) -> float:
    """Mean token cross-entropy on the val triplets (each rank takes a share, the sums are combined)."""
    was_training = network.training
    network.eval()
    total, tokens = 0.0, 0
    rows = torch.argsort((data.captions != PAD_ID).sum(1))[ranks.rank::ranks.world]  # similar lengths together
    for start in range(0, len(rows), batch_size):
        loss, count = sum_loss(network, data.batch(rows[start:start + batch_size], device))
        total, tokens = total + float(loss), tokens + count
    network.train(was_training)
    total, tokens = ranks.total(total, tokens)
    return total / max(tokens, 1)


def train_simulator(catalog: Catalog, features, config: SimulatorConfig, out_dir: Path,
                    resume: bool = True) -> SimulatorModel:
    """Train the relative captioner on `catalog`'s train split; the best model (by val loss) ends up in `out_dir`.

    A killed run resumes from its last checkpoint (`simulator.resume.safetensors`) when `resume` is true and
    the catalog, features and config are the same; a finished run with the same inputs is simply loaded.
    Launched by torchrun, each rank trains on its share of every global batch (DDP).
    """
    out_dir = Path(out_dir)
    device = pick_device(config)
    ranks = Distributed(device)
    try:
        return _train(catalog, features, config, out_dir, resume, device, ranks)
    finally:
        ranks.close()


def _train(catalog: Catalog, features, config: SimulatorConfig, out_dir: Path, resume: bool, device: torch.device,
           ranks: Distributed) -> SimulatorModel:
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    lookup = FeatureLookup(features, config.feature)
    fingerprint = run_fingerprint(catalog, lookup, config)
    resume_path = out_dir / RESUME_FILE
    if resume and (out_dir / SETTINGS_FILE).exists():
        finished = json.loads((out_dir / SETTINGS_FILE).read_text(encoding="utf-8")).get("training_run", {})
        if finished.get("finished") and finished.get("fingerprint") == fingerprint:
            return SimulatorModel.load(out_dir, device)
    saved = read_resume_state(resume_path) if resume else None
    if saved is not None and saved.get("fingerprint") != fingerprint:
        saved = None  # a checkpoint of other inputs: start over (and overwrite it)

    train_triplets, val_triplets = training_pairs(catalog, config)
    attributes = AttributeVocab.from_catalog(catalog.split("train"))
    if saved is not None:
        tokenizer = resume_tokenizer(resume_path)
    else:
        trained = CaptionTokenizer.train([c for _, _, c in train_triplets], config.vocab_size) if ranks.main else None
        tokenizer = CaptionTokenizer(ranks.share(trained.model_proto if trained else None))

    torch.manual_seed(config.seed)
    model = SimulatorModel.build(tokenizer, attributes, lookup.dim, config.feature,
                                 getattr(features, "backbone_id", ""), **config.shape())
    model.beams, model.top_p = config.beams, config.top_p
    network = model.network.to(device)
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    state = {"fingerprint": fingerprint, "step": 0, "best_val_loss": None, "best_step": 0, "bad_evals": 0,
             "elapsed_s": 0.0, "cpu_s": 0.0, "history": []}
    if saved is not None:
        state = load_resume_state(resume_path, network, optimizer)
    trainer = DistributedDataParallel(network) if ranks.active else network

    train_data = caption_data(train_triplets, catalog, lookup, model)
    val_data = caption_data(val_triplets, catalog, lookup, model)
    plan = BatchPlan((train_data.captions != PAD_ID).sum(1), config.batch_size, config.seed)
    use_amp = config.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

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
            save_resume_state(resume_path, network, optimizer, tokenizer, state)
        ranks.barrier()
        out_of_time = config.max_minutes > 0 and state["elapsed_s"] > 60 * config.max_minutes
        return state["bad_evals"] >= config.patience or out_of_time

    network.train()
    started = time.perf_counter() - state["elapsed_s"]
    cpu_started = time.process_time() - state["cpu_s"]  # this process's CPU time, all threads
    window_loss, window_tokens = 0.0, 0.0
    progress = tqdm(total=config.max_steps, initial=state["step"], desc="simulator", unit="step",
                    disable=None if ranks.main else True, dynamic_ncols=True)
    stop = state["step"] >= config.max_steps or state["bad_evals"] >= config.patience
    while not stop:
        step = state["step"]
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        rows = plan.rows(step)[ranks.rank::ranks.world]
        inputs = train_data.batch(rows, device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
            loss_sum, tokens = sum_loss(trainer, inputs)
        global_loss, global_tokens = ranks.total(loss_sum.item(), tokens)
        # DDP averages gradients over ranks, so scaling by world / global tokens gives the token mean of the batch.
        scaler.scale(loss_sum * ranks.world / global_tokens).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(network.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        window_loss, window_tokens = window_loss + global_loss, window_tokens + global_tokens
        state["step"] = step + 1
        state["elapsed_s"] = time.perf_counter() - started
        state["cpu_s"] = time.process_time() - cpu_started
        progress.update(1)
        progress.set_postfix(loss=f"{global_loss / global_tokens:.3f}")
        if state["step"] % config.eval_every == 0 or state["step"] >= config.max_steps:
            stop = evaluate_and_checkpoint(window_loss / max(window_tokens, 1))
            window_loss, window_tokens = 0.0, 0.0
            stop = stop or state["step"] >= config.max_steps
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
    return {"finished": finished, "fingerprint": state["fingerprint"], "config": asdict(config),
            "triplets": triplets, "steps": state["step"], "best_step": state["best_step"],
            "best_val_loss": state["best_val_loss"], "elapsed_s": round(state["elapsed_s"], 1),
            "cpu_s": round(state["cpu_s"], 1),
            "history": state["history"]}
