"""Attribute labels predicted from image embeddings (and, for colour, the foreground's colour features): small
per-attribute heads with calibrated confidence, filling a catalog's missing labels."""

from __future__ import annotations

import functools
import json
import re
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
from assistant.core.colours import describe_label
from assistant.core.storage import atomic_write
from assistant.core.training import load_module_weights, module_weights, resolve_device
from assistant.vision.features import colour_features

OTHER = "<other>"  # the class that single-valued values with fewer than `min_count` training items are folded into
FILE_FORMAT = "fashion-assistant-attributes/1"
CALIBRATION_BINS = 15  # equal-width confidence bins of the expected calibration error
COLOUR_SCALE_FLOOR = 0.05  # least scale a colour feature is standardised by (histogram bins rarely filled)


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
    colour_features: bool = True  # heads also read the image's foreground colour features
    colour_heads: list[str] | None = None  # heads that read them; None: every head (it helps articleType too)
    colour_dropout: float = 0.1  # share of training rows whose colour features are hidden, as for a bare photo

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.min_count < 1:
            raise ValueError("attributes epochs, batch_size and min_count must be at least 1")
        if not 0.0 <= self.dropout < 1.0 or not 0.0 < self.threshold < 1.0 or not 0.0 <= self.colour_dropout < 1.0:
            raise ValueError("attributes dropout and colour_dropout must be in [0, 1) and threshold in (0, 1)")

    def sees_colour(self, name: str) -> bool:
        """Whether the head of attribute `name` reads the colour features."""
        if not self.colour_features:
            return False
        return self.colour_heads is None or name in self.colour_heads


def is_colour_name(name: str) -> bool:
    return re.search(r"colou?r", name, re.IGNORECASE) is not None


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
    """Standardise the embedding (and the colour features), then one small MLP (or linear layer) per attribute;
    a head marked in `sees_colour` reads [embedding, colour features], the others the embedding."""

    def __init__(self, dim: int, sizes: Sequence[int], hidden: int, dropout: float, colour_dim: int = 0,
                 sees_colour: Sequence[bool] = ()) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        self.sees_colour = list(sees_colour) or [False] * len(sizes)
        if colour_dim:
            self.register_buffer("colour_mean", torch.zeros(colour_dim))
            self.register_buffer("colour_scale", torch.ones(colour_dim))

        def head(inputs: int, classes: int) -> nn.Module:
            if hidden <= 0:
                return nn.Sequential(nn.Dropout(dropout), nn.Linear(inputs, classes))
            return nn.Sequential(nn.Linear(inputs, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, classes))

        self.heads = nn.ModuleList(head(dim + colour_dim * sees, classes)
                                   for classes, sees in zip(sizes, self.sees_colour, strict=True))

    @property
    def colour_dim(self) -> int:
        return int(self.colour_mean.shape[0]) if hasattr(self, "colour_mean") else 0

    def forward(self, embeddings: torch.Tensor, colour: torch.Tensor | None = None) -> list[torch.Tensor]:
        x = (embeddings - self.mean) / self.scale
        with_colour = x
        if self.colour_dim:
            if colour is None:  # no pixels (a photo path without them): the hidden-colour rows of training
                colour = torch.zeros(len(x), self.colour_dim, device=x.device)
            with_colour = torch.cat([x, (colour - self.colour_mean) / self.colour_scale], dim=1)
        return [head(with_colour if sees else x) for head, sees in zip(self.heads, self.sees_colour, strict=True)]


def _check_embeddings(embeddings: np.ndarray, catalog: Catalog) -> np.ndarray:
    array = np.asarray(embeddings, dtype=np.float32)
    if array.ndim != 2 or len(array) != len(catalog):
        raise ValueError(f"embeddings must be ({len(catalog)}, dim), one row per catalog item in catalog order; "
                         f"got shape {array.shape}")
    return array


def _check_colour(colour: np.ndarray | None, rows: int) -> np.ndarray | None:
    if colour is None:
        return None
    array = np.asarray(colour, dtype=np.float32)
    if array.ndim != 2 or len(array) != rows:
        raise ValueError(f"colour features must be ({rows}, dim), one row per embedding; got shape {array.shape}")
    return array


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    """ECE: over equal-width confidence bins, the share of items times |accuracy - mean confidence|."""
    confidence, correct = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    if not len(confidence):
        return 0.0
    which = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    gap = np.bincount(which, weights=correct, minlength=bins) - np.bincount(which, weights=confidence,
                                                                            minlength=bins)
    return float(np.abs(gap).sum() / count.sum())


@functools.cache
def colour_families(value: str) -> frozenset[str]:
    """The basic colours a colour label belongs to (the soft constraints' reading of labels)."""
    return describe_label(value).families


def same_colour_family(guess: str, truth: str) -> bool:
    """A guess of the right colour family: the label itself, or one sharing a basic colour ("Navy Blue", "Blue")."""
    return guess == truth or bool(colour_families(guess) & colour_families(truth))


class AttributePredictor:
    """Per-attribute heads over image embeddings (colour heads also over colour features): train on labelled items,
    calibrate on held-out ones, predict, fill gaps, evaluate, save.

    `colour` arguments are the items' foreground colour features (`ItemFeatures.colour`, rows as the embeddings');
    None (a bare photo vector) reads as the hidden-colour rows the colour heads were also trained on.
    """

    def __init__(self, heads: list[Head], model: _Heads, config: AttributeConfig,
                 temperatures: Sequence[float] | None = None) -> None:
        self.heads = heads
        self.model = model
        self.config = config
        self.temperatures = list(temperatures) if temperatures is not None else [1.0] * len(heads)
        if len(self.temperatures) != len(heads):
            raise ValueError(f"{len(self.temperatures)} temperatures for {len(heads)} heads")
        self.device = resolve_device(config.device)
        self.model.to(self.device).eval()

    @property
    def names(self) -> list[str]:
        return [head.name for head in self.heads]

    @property
    def colour_dim(self) -> int:
        """The width of the colour features the colour heads read (0: no head reads them)."""
        return self.model.colour_dim

    def head(self, name: str) -> Head:
        for head in self.heads:
            if head.name == name:
                return head
        raise KeyError(f"no attribute head {name!r}; the predictor has {self.names}")

    @classmethod
    def train(cls, embeddings: np.ndarray, catalog: Catalog, rows_train: Sequence[int],
              config: AttributeConfig | None = None, rows_val: Sequence[int] | None = None,
              colour: np.ndarray | None = None) -> AttributePredictor:
        """Train one head per attribute on the `rows_train` items that carry it (embeddings in catalog order).

        Items whose embedding is all zeros (an image that could not be read) are left out. With `colour` the
        heads `config.sees_colour` picks read it beside the embedding (without it, none does). With `rows_val`,
        the epoch with the best mean validation accuracy is kept and each head's temperature is then fitted on
        those items (`calibrate`).
        """
        config = config or AttributeConfig()
        embeddings = _check_embeddings(embeddings, catalog)
        colour = _check_colour(colour, len(embeddings))
        if colour is None and config.colour_features:
            config = replace(config, colour_features=False)
        rows_train = np.asarray(rows_train, dtype=np.int64)
        rows_train = rows_train[np.any(embeddings[rows_train] != 0, axis=1)]
        heads = _make_heads(catalog, rows_train, config)
        if not heads:
            raise ValueError("no attribute has labels on the training items; nothing to learn")
        sees_colour = [config.sees_colour(head.name) for head in heads]
        colour_dim = colour.shape[1] if colour is not None and any(sees_colour) else 0
        torch.manual_seed(config.seed)
        model = _Heads(embeddings.shape[1], [len(h.values) for h in heads], config.hidden, config.dropout,
                       colour_dim, sees_colour)
        x_train = torch.from_numpy(embeddings[rows_train])
        model.mean.copy_(x_train.mean(0))
        model.scale.copy_(x_train.std(0).clamp_min(1e-6))
        c_train = None
        if colour_dim:
            c_train = torch.from_numpy(colour[rows_train])
            # standardised as training shows them: a `colour_dropout` share of rows hidden (zeros)
            keep = 1.0 - config.colour_dropout
            mean = keep * c_train.mean(0)
            variance = keep * (c_train.var(0) + c_train.mean(0) ** 2) - mean ** 2
            model.colour_mean.copy_(mean)
            model.colour_scale.copy_(variance.clamp_min(0.0).sqrt().clamp_min(COLOUR_SCALE_FLOOR))
        predictor = cls(heads, model, config)
        validation = None if rows_val is None else (embeddings, catalog, rows_val, colour)
        predictor._fit(x_train, c_train, [_targets(catalog, rows_train, h) for h in heads], validation)
        if rows_val is not None:
            predictor.calibrate(embeddings, catalog, rows_val, colour)
        return predictor

    def _fit(self, x_train: torch.Tensor, c_train: torch.Tensor | None, targets: list[torch.Tensor],
             validation: tuple[np.ndarray, Catalog, Sequence[int], np.ndarray | None] | None) -> None:
        config, device = self.config, self.device
        model = self.model
        x_train = x_train.to(device)
        c_train = None if c_train is None else c_train.to(device)
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
                colour = None
                if c_train is not None:  # a `colour_dropout` share of rows with their colour features hidden
                    shown = torch.rand(len(batch), generator=shuffle) >= config.colour_dropout
                    colour = c_train[batch.to(device)] * shown.to(device)[:, None]
                batch = batch.to(device)
                logits = model(x_train[batch], colour)
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
    def _logits(self, embeddings: np.ndarray, colour: np.ndarray | None, batch_size: int) -> list[torch.Tensor]:
        """Each head's raw logits (N, classes) on the CPU."""
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or embeddings.shape[1] != self.model.mean.shape[0]:
            raise ValueError(f"embeddings must be (N, {self.model.mean.shape[0]}), got shape {embeddings.shape}")
        colour = _check_colour(colour, len(embeddings)) if self.colour_dim else None
        if colour is not None and colour.shape[1] != self.colour_dim:
            raise ValueError(f"colour features must be (N, {self.colour_dim}), got shape {colour.shape}")
        chunks: list[list[torch.Tensor]] = [[] for _ in self.heads]
        for start in range(0, len(embeddings), batch_size):
            x = torch.from_numpy(embeddings[start: start + batch_size]).to(self.device)
            c = None if colour is None else torch.from_numpy(colour[start: start + batch_size]).to(self.device)
            for out, chunk in zip(self.model(x, c), chunks, strict=True):
                chunk.append(out.float().cpu())
        return [torch.cat(chunk) if chunk else torch.zeros((0, len(head.values)))
                for head, chunk in zip(self.heads, chunks, strict=True)]

    def predict_proba(self, embeddings: np.ndarray, colour: np.ndarray | None = None, batch_size: int = 4096,
                      calibrated: bool = True) -> dict[str, np.ndarray]:
        """Attribute name -> (N, classes) probabilities over `head(name).values` (softmax; sigmoid if multi-label),
        each head's logits divided by its fitted temperature unless `calibrated` is False."""
        logits = self._logits(embeddings, colour, batch_size)
        out = {}
        for head, scores, temperature in zip(self.heads, logits, self.temperatures, strict=True):
            scores = scores / temperature if calibrated else scores
            out[head.name] = (scores.sigmoid() if head.multi_label else scores.softmax(-1)).numpy()
        return out

    def calibrate(self, embeddings: np.ndarray, catalog: Catalog, rows: Sequence[int],
                  colour: np.ndarray | None = None) -> list[float]:
        """Fit each head's temperature on the labelled `rows` items (held out from training): the one scalar
        dividing its logits that minimises their negative log-likelihood (LBFGS). Returns the temperatures."""
        embeddings = _check_embeddings(embeddings, catalog)
        colour = _check_colour(colour, len(embeddings))
        rows = np.asarray(rows, dtype=np.int64)
        logits = self._logits(embeddings[rows], None if colour is None else colour[rows], batch_size=4096)
        self.temperatures = [_fit_temperature(head, scores, _targets(catalog, rows, head))
                             for head, scores in zip(self.heads, logits, strict=True)]
        return self.temperatures

    def top_k(self, embeddings: np.ndarray, k: int = 3, colour: np.ndarray | None = None
              ) -> list[dict[str, list[tuple[str, float]]]]:
        """Per item, per attribute: the k most probable values with their probabilities (OTHER left out)."""
        probabilities = self.predict_proba(embeddings, colour)
        out: list[dict[str, list[tuple[str, float]]]] = [{} for _ in range(len(embeddings))]
        for head in self.heads:
            named = probabilities[head.name].copy()
            if OTHER in head.values:
                named[:, head.values.index(OTHER)] = -1.0
            order = np.argsort(-named, axis=1)[:, :k]
            for row, (item, best) in enumerate(zip(out, order, strict=True)):
                item[head.name] = [(head.values[c], float(named[row, c])) for c in best]
        return out

    def predict_photo(self, embedding: np.ndarray, pixels: torch.Tensor) -> dict[str, str]:
        """One photo's attributes from its image vector and its pixels as the backbone takes them (uint8
        (1, 3, H, W), letterboxed as the catalog's images are), whose foreground colour the heads also read."""
        colour = colour_features(pixels) if self.config.colour_features else None
        return self.predict(np.asarray(embedding, dtype=np.float32)[None], colour)[0]

    def predict(self, embeddings: np.ndarray, colour: np.ndarray | None = None) -> list[dict[str, str]]:
        """Per item, attribute name -> predicted value (never OTHER; multi-label values joined by ', ')."""
        probabilities = self.predict_proba(embeddings, colour)
        out: list[dict[str, str]] = [{} for _ in range(len(embeddings))]
        for head in self.heads:
            for item, value in zip(out, _decide(head, probabilities[head.name], self.config.threshold), strict=True):
                item[head.name] = value
        return out

    def fill_missing(self, catalog: Catalog, embeddings: np.ndarray, colour: np.ndarray | None = None
                     ) -> tuple[Catalog, set[tuple[str, str]]]:
        """A copy of the catalog where items lacking a predicted attribute get the predicted value.

        Returns the new catalog and the (item id, attribute name) pairs that were predicted, not labelled.
        """
        embeddings = _check_embeddings(embeddings, catalog)
        colour = _check_colour(colour, len(embeddings))
        gaps = [row for row, item in enumerate(catalog) if any(name not in item.attributes for name in self.names)]
        predicted: set[tuple[str, str]] = set()
        items = list(catalog.items)
        values_of_gaps = self.predict(embeddings[gaps], None if colour is None else colour[gaps]) if gaps else []
        for row, values in zip(gaps, values_of_gaps, strict=True):
            item = items[row]
            missing = {name: value for name, value in values.items() if name not in item.attributes}
            predicted.update((item.id, name) for name in missing)
            items[row] = replace(item, attributes={**item.attributes, **missing})
        filled = Catalog(items, name=catalog.name, root=catalog.root, report=catalog.report,
                         caption_pairs=catalog.caption_pairs)
        return filled, predicted

    def evaluate(self, embeddings: np.ndarray, catalog: Catalog, rows: Sequence[int] | None = None,
                 colour: np.ndarray | None = None, calibrated: bool = True) -> dict[str, dict]:
        """Per attribute, over the `rows` items labelled with it: top-1 accuracy, the majority-class baseline, the
        expected calibration error of the top-1 confidence (`ece`, CALIBRATION_BINS bins) and the head's
        temperature; for a single-valued colour head also `colour_family_accuracy` (`same_colour_family`).

        Multi-label attributes: accuracy is whether the most probable value is among the item's values
        (precision@1), the baseline whether the training set's most common value is; `f1` is micro-F1 of
        the thresholded prediction. Items whose true value was folded into OTHER count as misses.
        """
        embeddings = _check_embeddings(embeddings, catalog)
        colour = _check_colour(colour, len(embeddings))
        rows = np.arange(len(catalog)) if rows is None else np.asarray(rows, dtype=np.int64)
        probabilities = self.predict_proba(embeddings[rows], None if colour is None else colour[rows],
                                           calibrated=calibrated)
        report: dict[str, dict] = {}
        for head, temperature in zip(self.heads, self.temperatures, strict=True):
            labelled = [(i, catalog.items[row].attributes[head.name]) for i, row in enumerate(rows)
                        if head.name in catalog.items[row].attributes]
            result: dict = {"items": len(labelled), "multi_label": head.multi_label, "majority_value": head.majority,
                            "temperature": round(temperature if calibrated else 1.0, 4)}
            if labelled:
                at = [i for i, _ in labelled]
                probs = probabilities[head.name][at]
                if head.multi_label:
                    truth = [set(split_values(value)) for _, value in labelled]
                    top1 = [head.values[c] for c in probs.argmax(1)]
                    chosen = [set(split_values(v)) for v in _decide(head, probs, self.config.threshold)]
                    hits = sum(len(c & t) for c, t in zip(chosen, truth, strict=True))
                    result["f1"] = 2 * hits / max(1, sum(map(len, chosen)) + sum(map(len, truth)))
                    correct = np.array([p in t for p, t in zip(top1, truth, strict=True)])
                    confidence = probs.max(1)
                    result["majority_baseline"] = float(np.mean([head.majority in t for t in truth]))
                else:
                    truth = [value for _, value in labelled]
                    guesses = _decide(head, probs, self.config.threshold)
                    correct = np.array([g == t for g, t in zip(guesses, truth, strict=True)])
                    confidence = probs[np.arange(len(guesses)), [head.values.index(g) for g in guesses]]
                    result["majority_baseline"] = float(np.mean([head.majority == t for t in truth]))
                    if is_colour_name(head.name):
                        result["colour_family_accuracy"] = float(np.mean(
                            [same_colour_family(g, t) for g, t in zip(guesses, truth, strict=True)]))
                result["accuracy"] = float(correct.mean())
                result["ece"] = expected_calibration_error(confidence, correct)
            report[head.name] = result
        return report

    def save(self, path: Path) -> Path:
        """One safetensors file: the weights, with the config, the value vocabulary and the temperatures as JSON
        metadata."""
        state = module_weights(self.model)
        metadata = {"format": FILE_FORMAT, "config": json.dumps(asdict(self.config)),
                    "heads": json.dumps([asdict(h) for h in self.heads], ensure_ascii=False),
                    "temperatures": json.dumps(self.temperatures)}
        return atomic_write(Path(path), lambda tmp: save_file(state, str(tmp), metadata=metadata))

    @classmethod
    def load(cls, path: Path, device: str | None = None) -> AttributePredictor:
        """Read a saved predictor (onto `device`, default the saved config's); clear errors for bad files.

        Files saved before colour features and calibration load as heads without them (temperature 1)."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no saved attribute predictor")
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
            if metadata.get("format") != FILE_FORMAT:
                raise ValueError(f"format {metadata.get('format')!r}, expected {FILE_FORMAT!r}")
            config = AttributeConfig(**{"colour_features": False, **json.loads(metadata["config"])})
            heads = [Head(**h) for h in json.loads(metadata["heads"])]
            temperatures = json.loads(metadata.get("temperatures", "null"))
            state = load_file(str(path))
        except (SafetensorError, ValueError, KeyError, TypeError, OSError) as error:
            raise ValueError(f"{path}: not a readable attribute predictor ({error})") from None
        if device is not None:
            config = replace(config, device=device)
        colour_dim = int(state["colour_mean"].shape[0]) if "colour_mean" in state else 0
        sees_colour = [config.sees_colour(h.name) for h in heads] if colour_dim else []
        model = _Heads(state["mean"].shape[0], [len(h.values) for h in heads], config.hidden, config.dropout,
                       colour_dim, sees_colour)
        try:
            load_module_weights(model, state)
            return cls(heads, model, config, temperatures)
        except (RuntimeError, ValueError) as error:
            raise ValueError(f"{path}: weights do not match its heads ({str(error).splitlines()[0]})") from None


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


def _fit_temperature(head: Head, logits: torch.Tensor, target: torch.Tensor) -> float:
    """The temperature T minimising the negative log-likelihood of logits / T (LBFGS over log T)."""
    labelled = target[:, -1] > 0 if head.multi_label else target >= 0
    if not labelled.any():
        return 1.0
    log_temperature = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.LBFGS([log_temperature], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = _loss(head, logits / log_temperature.exp(), target)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_temperature.detach().exp())


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
