"""Attribute labels predicted from image embeddings: small per-attribute heads, filling a catalog's missing labels."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from assistant.core.catalog import Catalog
from assistant.core.storage import atomic_write
from assistant.core.training import load_module_weights, module_weights, resolve_device

OTHER = "<other>"  # the class that single-valued values with fewer than `min_count` training items are folded into
FILE_FORMAT = "fashion-assistant-attributes/1"


@dataclass
class AttributeConfig:
    """How the attribute heads are built and trained (the `attributes:` config section)."""

    attributes: list[str] | None = None  # None: every attribute the training items carry
    multi_label: list[str] | None = None  # None: attributes whose values are mostly comma-separated lists
    hidden: int = 512  # hidden units per head (0: a linear head)
    dropout: float = 0.2
    epochs: int = 40
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.05
    min_count: int = 5  # rarer values fold into OTHER (single-valued) or are dropped (multi-label)
    threshold: float = 0.5  # a multi-label value is predicted when its probability reaches this
    seed: int = 0
    device: str = "auto"  # auto: cuda, then mps, then cpu

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.min_count < 1:
            raise ValueError("attributes epochs, batch_size and min_count must be at least 1")
        if not 0.0 <= self.dropout < 1.0 or not 0.0 < self.threshold < 1.0:
            raise ValueError("attributes dropout must be in [0, 1) and threshold in (0, 1)")


@dataclass
class Head:
    """One attribute's classes: `values` in logit order (single-valued: OTHER last when rare values existed)."""

    name: str
    multi_label: bool
    values: list[str]
    majority: str  # most frequent training value (single-valued) or value in most training lists (multi-label)


def split_values(value: str) -> list[str]:
    """The values of a multi-label attribute: its comma-separated parts."""
    return [part.strip() for part in value.split(",") if part.strip()]


class _Heads(nn.Module):
    """Standardise the embedding, then one small MLP (or linear layer) per attribute."""

    def __init__(self, dim: int, sizes: Sequence[int], hidden: int, dropout: float) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))

        def head(classes: int) -> nn.Module:
            if hidden <= 0:
                return nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, classes))
            return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, classes))

        self.heads = nn.ModuleList(head(classes) for classes in sizes)

    def forward(self, embeddings: torch.Tensor) -> list[torch.Tensor]:
        x = (embeddings - self.mean) / self.scale
        return [head(x) for head in self.heads]


def _check_embeddings(embeddings: np.ndarray, catalog: Catalog) -> np.ndarray:
    array = np.asarray(embeddings, dtype=np.float32)
    if array.ndim != 2 or len(array) != len(catalog):
        raise ValueError(f"embeddings must be ({len(catalog)}, dim), one row per catalog item in catalog order; "
                         f"got shape {array.shape}")
    return array


class AttributePredictor:
    """Per-attribute heads over image embeddings: train on labelled items, predict, fill gaps, evaluate, save."""

    def __init__(self, heads: list[Head], model: _Heads, config: AttributeConfig) -> None:
        self.heads = heads
        self.model = model
        self.config = config
        self.device = resolve_device(config.device)
        self.model.to(self.device).eval()

    @property
    def names(self) -> list[str]:
        return [head.name for head in self.heads]

    def head(self, name: str) -> Head:
        for head in self.heads:
            if head.name == name:
                return head
        raise KeyError(f"no attribute head {name!r}; the predictor has {self.names}")

    @classmethod
    def train(cls, embeddings: np.ndarray, catalog: Catalog, rows_train: Sequence[int],
              config: AttributeConfig | None = None, rows_val: Sequence[int] | None = None,
              ) -> AttributePredictor:
        """Train one head per attribute on the `rows_train` items that carry it (embeddings in catalog order).

        Items whose embedding is all zeros (an image that could not be read) are left out. With `rows_val`,
        the epoch with the best mean validation accuracy is kept.
        """
        config = config or AttributeConfig()
        embeddings = _check_embeddings(embeddings, catalog)
        rows_train = np.asarray(rows_train, dtype=np.int64)
        rows_train = rows_train[np.any(embeddings[rows_train] != 0, axis=1)]
        heads = _make_heads(catalog, rows_train, config)
        if not heads:
            raise ValueError("no attribute has labels on the training items; nothing to learn")
        torch.manual_seed(config.seed)
        model = _Heads(embeddings.shape[1], [len(h.values) for h in heads], config.hidden, config.dropout)
        x_train = torch.from_numpy(embeddings[rows_train])
        model.mean.copy_(x_train.mean(0))
        model.scale.copy_(x_train.std(0).clamp_min(1e-6))
        predictor = cls(heads, model, config)
        predictor._fit(x_train, [_targets(catalog, rows_train, h) for h in heads],
                       None if rows_val is None else (embeddings, catalog, rows_val))
        return predictor

    def _fit(self, x_train: torch.Tensor, targets: list[torch.Tensor],
             validation: tuple[np.ndarray, Catalog, Sequence[int]] | None) -> None:
        config, device = self.config, self.device
        model = self.model
        x_train = x_train.to(device)
        targets = [t.to(device) for t in targets]
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        steps_per_epoch = -(-len(x_train) // config.batch_size)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, pct_start=0.1,
                                                       total_steps=config.epochs * steps_per_epoch)
        shuffle = torch.Generator().manual_seed(config.seed)
        best_score, best_state = -1.0, None
        for _ in range(config.epochs):
            model.train()
            for batch in torch.randperm(len(x_train), generator=shuffle).split(config.batch_size):
                batch = batch.to(device)
                logits = model(x_train[batch])
                loss = sum(_loss(head, out, target[batch])
                           for head, out, target in zip(self.heads, logits, targets, strict=True))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
            model.eval()
            if validation is not None:
                report = self.evaluate(*validation)
                score = float(np.mean([r["accuracy"] for r in report.values() if r["items"]]))
                if score > best_score:
                    best_score = score
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if best_state is not None:
            model.load_state_dict(best_state)

    @torch.no_grad()
    def predict_proba(self, embeddings: np.ndarray, batch_size: int = 4096) -> dict[str, np.ndarray]:
        """Attribute name -> (N, classes) probabilities over `head(name).values` (softmax; sigmoid if multi-label)."""
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or embeddings.shape[1] != self.model.mean.shape[0]:
            raise ValueError(f"embeddings must be (N, {self.model.mean.shape[0]}), got shape {embeddings.shape}")
        chunks: list[list[np.ndarray]] = [[] for _ in self.heads]
        for start in range(0, len(embeddings), batch_size):
            x = torch.from_numpy(embeddings[start: start + batch_size]).to(self.device)
            for head, out, chunk in zip(self.heads, self.model(x), chunks, strict=True):
                chunk.append((out.sigmoid() if head.multi_label else out.softmax(-1)).float().cpu().numpy())
        return {head.name: np.concatenate(chunk) if chunk else np.zeros((0, len(head.values)), np.float32)
                for head, chunk in zip(self.heads, chunks, strict=True)}

    def top_k(self, embeddings: np.ndarray, k: int = 3) -> list[dict[str, list[tuple[str, float]]]]:
        """Per item, per attribute: the k most probable values with their probabilities (OTHER left out)."""
        probabilities = self.predict_proba(embeddings)
        out: list[dict[str, list[tuple[str, float]]]] = [{} for _ in range(len(embeddings))]
        for head in self.heads:
            named = probabilities[head.name].copy()
            if OTHER in head.values:
                named[:, head.values.index(OTHER)] = -1.0
            order = np.argsort(-named, axis=1)[:, :k]
            for row, (item, best) in enumerate(zip(out, order, strict=True)):
                item[head.name] = [(head.values[c], float(named[row, c])) for c in best]
        return out

    def predict(self, embeddings: np.ndarray) -> list[dict[str, str]]:
        """Per item, attribute name -> predicted value (never OTHER; multi-label values joined by ', ')."""
        probabilities = self.predict_proba(embeddings)
        out: list[dict[str, str]] = [{} for _ in range(len(embeddings))]
        for head in self.heads:
            for item, value in zip(out, _decide(head, probabilities[head.name], self.config.threshold), strict=True):
                item[head.name] = value
        return out

    def fill_missing(self, catalog: Catalog, embeddings: np.ndarray) -> tuple[Catalog, set[tuple[str, str]]]:
        """A copy of the catalog where items lacking a predicted attribute get the predicted value.

        Returns the new catalog and the (item id, attribute name) pairs that were predicted, not labelled.
        """
        embeddings = _check_embeddings(embeddings, catalog)
        gaps = [row for row, item in enumerate(catalog) if any(name not in item.attributes for name in self.names)]
        predicted: set[tuple[str, str]] = set()
        items = list(catalog.items)
        for row, values in zip(gaps, self.predict(embeddings[gaps]) if gaps else [], strict=True):
            item = items[row]
            missing = {name: value for name, value in values.items() if name not in item.attributes}
            predicted.update((item.id, name) for name in missing)
            items[row] = replace(item, attributes={**item.attributes, **missing})
        filled = Catalog(items, name=catalog.name, root=catalog.root, report=catalog.report,
                         caption_pairs=catalog.caption_pairs)
        return filled, predicted

    def evaluate(self, embeddings: np.ndarray, catalog: Catalog, rows: Sequence[int] | None = None
                 ) -> dict[str, dict]:
        """Per attribute, over the `rows` items labelled with it: top-1 accuracy and the majority-class baseline.

        Multi-label attributes: accuracy is whether the most probable value is among the item's values
        (precision@1), the baseline whether the training set's most common value is; `f1` is micro-F1 of
        the thresholded prediction. Items whose true value was folded into OTHER count as misses.
        """
        embeddings = _check_embeddings(embeddings, catalog)
        rows = np.arange(len(catalog)) if rows is None else np.asarray(rows, dtype=np.int64)
        probabilities = self.predict_proba(embeddings[rows])
        report: dict[str, dict] = {}
        for head in self.heads:
            labelled = [(i, catalog.items[row].attributes[head.name]) for i, row in enumerate(rows)
                        if head.name in catalog.items[row].attributes]
            result: dict = {"items": len(labelled), "multi_label": head.multi_label, "majority_value": head.majority}
            if labelled:
                at = [i for i, _ in labelled]
                probs = probabilities[head.name][at]
                if head.multi_label:
                    truth = [set(split_values(value)) for _, value in labelled]
                    top1 = [head.values[c] for c in probs.argmax(1)]
                    chosen = [set(split_values(v)) for v in _decide(head, probs, self.config.threshold)]
                    hits = sum(len(c & t) for c, t in zip(chosen, truth, strict=True))
                    result["f1"] = 2 * hits / max(1, sum(map(len, chosen)) + sum(map(len, truth)))
                    result["accuracy"] = float(np.mean([p in t for p, t in zip(top1, truth, strict=True)]))
                    result["majority_baseline"] = float(np.mean([head.majority in t for t in truth]))
                else:
                    truth = [value for _, value in labelled]
                    guesses = _decide(head, probs, self.config.threshold)
                    result["accuracy"] = float(np.mean([g == t for g, t in zip(guesses, truth, strict=True)]))
                    result["majority_baseline"] = float(np.mean([head.majority == t for t in truth]))
            report[head.name] = result
        return report

    def save(self, path: Path) -> Path:
        """One safetensors file: the weights, with the config and the value vocabulary as JSON metadata."""
        state = module_weights(self.model)
        metadata = {"format": FILE_FORMAT, "config": json.dumps(asdict(self.config)),
                    "heads": json.dumps([asdict(h) for h in self.heads], ensure_ascii=False)}
        return atomic_write(Path(path), lambda tmp: save_file(state, str(tmp), metadata=metadata))

    @classmethod
    def load(cls, path: Path, device: str | None = None) -> AttributePredictor:
        """Read a saved predictor (onto `device`, default the saved config's); clear errors for bad files."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no saved attribute predictor")
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
            if metadata.get("format") != FILE_FORMAT:
                raise ValueError(f"format {metadata.get('format')!r}, expected {FILE_FORMAT!r}")
            config = AttributeConfig(**json.loads(metadata["config"]))
            heads = [Head(**h) for h in json.loads(metadata["heads"])]
            state = load_file(str(path))
        except (SafetensorError, ValueError, KeyError, TypeError, OSError) as error:
            raise ValueError(f"{path}: not a readable attribute predictor ({error})") from None
        if device is not None:
            config = replace(config, device=device)
        model = _Heads(state["mean"].shape[0], [len(h.values) for h in heads], config.hidden, config.dropout)
        try:
            load_module_weights(model, state)
        except RuntimeError as error:
            raise ValueError(f"{path}: weights do not match its heads ({str(error).splitlines()[0]})") from None
        return cls(heads, model, config)


def _multi_label_names(catalog: Catalog, rows: np.ndarray, names: list[str]) -> set[str]:
    """Attributes whose labelled values are mostly comma-separated lists (like Fashion IQ's tags)."""
    lists: Counter = Counter()
    labelled: Counter = Counter()
    for row in rows:
        for name, value in catalog.items[row].attributes.items():
            labelled[name] += 1
            lists[name] += "," in value
    return {name for name in names if labelled[name] and lists[name] / labelled[name] >= 0.5}


def _make_heads(catalog: Catalog, rows: np.ndarray, config: AttributeConfig) -> list[Head]:
    counts: dict[str, Counter] = {}
    for row in rows:
        for name, value in catalog.items[row].attributes.items():
            counts.setdefault(name, Counter())[value] += 1
    names = [n for n in (config.attributes or list(counts)) if n in counts]
    missing = set(config.attributes or []) - set(names)
    if missing:
        raise ValueError(f"no training item carries attribute(s) {sorted(missing)}; known: {sorted(counts)}")
    multi = set(config.multi_label) if config.multi_label is not None else _multi_label_names(catalog, rows, names)
    heads = []
    for name in names:
        if name in multi:
            parts: Counter = Counter()
            for value, n in counts[name].items():
                for part in set(split_values(value)):
                    parts[part] += n
            values = sorted(v for v, n in parts.items() if n >= config.min_count)
            if values:
                heads.append(Head(name, True, values, parts.most_common(1)[0][0]))
            continue
        values = sorted(v for v, n in counts[name].items() if n >= config.min_count)
        if len(values) < len(counts[name]):
            values.append(OTHER)
        if len(values) >= 2 or (values and values[0] != OTHER):
            heads.append(Head(name, False, values, counts[name].most_common(1)[0][0]))
    return heads


def _targets(catalog: Catalog, rows: np.ndarray, head: Head) -> torch.Tensor:
    """Class index per row (-1: unlabelled) or, multi-label, a (rows, values + 1) multi-hot with a labelled flag."""
    position = {value: i for i, value in enumerate(head.values)}
    values = [catalog.items[row].attributes.get(head.name) for row in rows]
    if not head.multi_label:
        other = position.get(OTHER, -1)
        return torch.tensor([-1 if v is None else position.get(v, other) for v in values], dtype=torch.long)
    target = torch.zeros(len(rows), len(head.values) + 1)
    for i, value in enumerate(values):
        if value is not None:
            target[i, -1] = 1.0
            for part in split_values(value):
                if part in position:
                    target[i, position[part]] = 1.0
    return target


def _loss(head: Head, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if not head.multi_label:
        if (target >= 0).any():
            return nn.functional.cross_entropy(logits, target, ignore_index=-1)
        return logits.sum() * 0.0
    labelled = target[:, -1] > 0
    if not labelled.any():
        return logits.sum() * 0.0
    return nn.functional.binary_cross_entropy_with_logits(logits[labelled], target[labelled, :-1])


def _decide(head: Head, probabilities: np.ndarray, threshold: float) -> list[str]:
    """The predicted value string per row: best named class, or the multi-label values above `threshold`."""
    probabilities = probabilities.copy()
    if not head.multi_label:
        if OTHER in head.values:
            probabilities[:, head.values.index(OTHER)] = -1.0
        return [head.values[c] for c in probabilities.argmax(1)]
    decided = []
    for row in probabilities:
        chosen = [head.values[c] for c in np.flatnonzero(row >= threshold)] or [head.values[int(row.argmax())]]
        decided.append(", ".join(chosen))
    return decided
