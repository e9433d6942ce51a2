"""The attribute-aware dialog retriever: a transformer over the dialog history giving a query vector per turn."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from assistant.core.catalog import Catalog
from assistant.core.constraints import FIT_TOLERANCE
from assistant.core.dialog import DialogState, ScoreRanker, ShownImage, top_rows
from assistant.core.reader import SemanticReader, Understanding
from assistant.core.storage import atomic_write
from assistant.core.training import load_module_weights, module_weights
from assistant.vision.index import AttributeIndex
from retriever.text import FeedbackTextEncoder

FILE_FORMAT = "fashion-assistant-retriever/2"
SHAPE_FORMAT = "fashion-assistant-retriever/1"  # before config and shape were one: read by a converter in load
ITEM_SPACES = ("learned", "backbone")
# Token types in the history: a turn separator, the shown item's image, "no item shown", its attributes, words;
# with `read_feedback`, after PAD: the values the reader understood the dialog so far to want, and to rule out.
SEPARATOR, IMAGE, NO_ITEM, ATTRIBUTE, TEXT, PAD, WANTED, RULED = range(8)
STATIC_DIM = 384  # MiniLM's wordpiece vectors
MAX_TEXT_PIECES = 24  # wordpieces read of each turn's feedback
MAX_TITLE_PIECES = 16  # wordpieces read of each item's title
MAX_READ_VALUES = 4  # values of one attribute read into tokens (the most credited wanted ones)
MAX_READ_TOKENS = 16  # reading tokens per turn


# Settings that do not change what a run computes: a run may resume when only these differ.
RUN_INDEPENDENT = ("device", "threads", "progress", "feedback_constraints", "lexical_weight")

CANDIDATES = 100  # candidate rows from each source: the index's nearest, BM25's best, the nearest fitting rows
SCORE_ALL_FITTING = 20_000  # up to this many rows fitting the constraints are all scored, not searched for


# Fields added after models were trained, with the default that leaves them out of a run's key.
ADDED_LATER = {"label_dropout": 0.0, "read_feedback": False, "read_dropout": 0.0}


@dataclass
class RetrieverConfig:
    """The `retriever:` config section, saved beside the weights: network shape, simulated dialogs, optimisation,
    inference. The sizes the data decide (feature width, attribute vocabulary) are saved beside it."""

    width: int = 128
    layers: int = 2
    heads: int = 4
    feedforward: int = 256
    dropout: float = 0.1
    max_turns: int = 8
    text_mode: str = "static"  # static (MiniLM wordpiece vectors) or contextual (+ frozen MiniLM token outputs)
    item_space: str = "learned"  # learned item tower, or "backbone" (queries in ItemFeatures.item space)
    use_attributes: bool = True  # False trains the no-attributes ablation
    # Each turn also reads the semantic reader's understanding of the dialog so far (assistant.core.reader: the
    # values wanted, with credit, and ruled out) as attribute tokens: the shopper's own words, however phrased,
    # reach the retriever as the catalog's values.
    read_feedback: bool = False
    # In training, each reading token is dropped with this probability: the reader misses words a shopper uses
    # that it never met, and the retriever must then read those words itself.
    read_dropout: float = 0.0
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
    simulator_fraction: float = 0.5  # share of dialogs answered by the trained simulator
    paraphrase_fraction: float = 0.0  # share answered by the paraphrase shopper's train bank (rest: template shopper)
    random_shown_epochs: int = 1  # curriculum: the first epochs show random items instead of the top result
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 60
    hard_negatives: int = 8  # top results of each rollout turn used as negatives
    random_negatives: int = 1024  # catalog items drawn per step as extra negatives
    human_repeats: int = 4  # times each logged human pair (`train --dialogs`) joins an epoch's dialogs
    # Thin-catalog augmentation: each epoch this share of items reads with its colour, season, occasion and other
    # labels unknown (only the kind of item and who it is for kept) and its title without colour words, so the
    # retriever learns to see those facets in the image (0: off).
    label_dropout: float = 0.0
    finetune_epochs: int = 1  # epochs of `train --from MODEL_DIR` (fine-tuning the saved weights)
    finetune_learning_rate: float = 3e-4
    seed: int = 0
    device: str = "auto"  # auto: cuda, then mps, then cpu
    amp: bool = True  # mixed precision on CUDA
    threads: int = 0  # CPU threads for torch (0: torch's default)
    progress: bool = True

    def __post_init__(self) -> None:
        if self.item_space not in ITEM_SPACES:
            raise ValueError(f"item_space must be one of {ITEM_SPACES}, not {self.item_space!r}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")

    def keyed(self) -> dict[str, Any]:
        """The fields as a run's key holds them: fields added later are left out while at their default, so
        model directories trained before them keep their key."""
        return {k: v for k, v in asdict(self).items() if ADDED_LATER.get(k, object()) != v}

    def run_key(self) -> dict[str, Any]:
        return {k: v for k, v in self.keyed().items() if k not in RUN_INDEPENDENT}


class AttributeVocabulary:
    """Attribute (name, value) tokens: id 0 pads, each name has an `unknown` id, then one id per known value."""

    def __init__(self, names: Sequence[str], values: Sequence[Sequence[str]]) -> None:
        self.names = list(names)
        self.values = [list(v) for v in values]
        self.unknown: dict[str, int] = {}
        self.ids: dict[tuple[str, str], int] = {}
        next_id = 1
        for name, name_values in zip(self.names, self.values, strict=True):
            self.unknown[name] = next_id
            next_id += 1
            for value in name_values:
                self.ids[(name, value)] = next_id
                next_id += 1
        self.size = next_id

    @classmethod
    def from_catalog(cls, catalog: Catalog) -> AttributeVocabulary:
        vocabulary = catalog.vocabulary()
        names = list(vocabulary)
        return cls(names, [sorted(vocabulary[name]) for name in names])

    def encode(self, attributes: Mapping[str, str]) -> list[int]:
        """One id per attribute name (its unknown id when the item lacks the name or has an unseen value)."""
        return [self.ids.get((name, attributes.get(name, "")), self.unknown[name]) for name in self.names]


@dataclass
class ItemInputs:
    """Per catalog row, what the retriever reads about an item: backbone vectors, attribute ids, title pieces."""

    image: torch.Tensor  # (N, D) float32 ItemFeatures.image
    text: torch.Tensor  # (N, D) float32 ItemFeatures.text (the backbone's reading of title and labels)
    item: torch.Tensor  # (N, D) float32 ItemFeatures.item (what the backbone indexes)
    attributes: torch.Tensor  # (N, A) int64
    title: torch.Tensor  # (N, P) int64 wordpiece ids, 0 pads

    def __len__(self) -> int:
        return len(self.image)

    def rows(self, rows: torch.Tensor) -> ItemInputs:
        return ItemInputs(self.image[rows], self.text[rows], self.item[rows], self.attributes[rows], self.title[rows])

    def to(self, device: torch.device) -> ItemInputs:
        return ItemInputs(self.image.to(device), self.text.to(device), self.item.to(device), self.attributes.to(device),
                          self.title.to(device))


@dataclass
class HistoryBatch:
    """Dialog histories laid out as token rows (B, L) for the network; vectors are gathered by index."""

    kind: torch.Tensor  # token type
    turn: torch.Tensor  # turn index within the window (max_turns for padding)
    attribute: torch.Tensor  # attribute id (attribute tokens)
    piece: torch.Tensor  # wordpiece id (text tokens)
    image_index: torch.Tensor  # row of `images` (image tokens), 0 elsewhere
    images: torch.Tensor  # (M + 1, D) shown items' image vectors, row 0 unused
    context_index: torch.Tensor  # row of `contexts` (text tokens, contextual mode), 0 elsewhere
    contexts: torch.Tensor  # (K + 1, 384) MiniLM wordpiece vectors, row 0 unused
    turns: torch.Tensor  # (B,) number of turns in each window
    credit: torch.Tensor  # (B, L) float: a wanted value's credit (reading tokens), 1 elsewhere

    def to(self, device: torch.device) -> HistoryBatch:
        return HistoryBatch(**{name: value.to(device) for name, value in vars(self).items()})

    def reading(self) -> torch.Tensor:
        """(B, L) bool: the reader's tokens (WANTED, RULED)."""
        return (self.kind == WANTED) | (self.kind == RULED)


class Centering(nn.Module):
    """Subtracts a running mean of its inputs (kept without gradient, averaged over DDP processes).

    Vectors made of shared parts (token types, common labels, stop words) all point one way at first; taking the
    common part away keeps queries (and items) from collapsing onto it, so the contrast between them can learn.
    """

    def __init__(self, width: int, momentum: float = 0.05) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("seen", torch.zeros((), dtype=torch.bool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                batch_mean = x.detach().reshape(-1, x.shape[-1]).float().mean(0)
                if dist.is_available() and dist.is_initialized():
                    dist.all_reduce(batch_mean)
                    batch_mean /= dist.get_world_size()
                self.mean.copy_(torch.where(self.seen, self.mean.lerp(batch_mean, self.momentum), batch_mean))
                self.seen.fill_(True)
        return x - self.mean


class HistoryLayer(nn.Module):
    """A pre-norm transformer layer whose attention takes a per-dialog (B, L, L) mask of allowed pairs.

    Its residual branches start at zero, so an untrained network passes its input tokens straight through.
    """

    def __init__(self, width: int, heads: int, feedforward: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.attention_norm = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.feedforward_norm = nn.LayerNorm(width)
        self.feedforward = nn.Sequential(nn.Linear(width, feedforward), nn.GELU(), nn.Dropout(dropout),
                                         nn.Linear(feedforward, width), nn.Dropout(dropout))
        for last in (self.out, self.feedforward[3]):
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        size, length, width = x.shape
        q, k, v = self.qkv(self.attention_norm(x)).view(size, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed.unsqueeze(1),
                                                  dropout_p=self.dropout if self.training else 0.0)
        x = x + F.dropout(self.out(attended.transpose(1, 2).reshape(size, length, width)), self.dropout,
                          self.training)
        return x + self.feedforward(self.feedforward_norm(x))


class RetrieverNetwork(nn.Module):
    """Query encoder over the history (block-causal over turns, mean-pooled per turn) and an item tower.

    Both towers read words, labels and pictures through the same projections: a wordpiece of the feedback and the
    same wordpiece in a title share one vector, an attribute value starts as the vector of its words, and a shown
    item's image and a catalog item's image share one projection. With the transformer's residual branches at
    zero, an untrained retriever already prefers items like the ones shown and matching the words said; training
    learns the rest (negation, replacing a value, which turn counts).
    """

    def __init__(self, config: RetrieverConfig, feature_dim: int, static_table: torch.Tensor,
                 attribute_words: torch.Tensor) -> None:
        super().__init__()
        self.config = config
        self.feature_dim = feature_dim
        self.output_dim = config.width if config.item_space == "learned" else feature_dim
        width = config.width
        self.register_buffer("static_table", static_table, persistent=False)
        self.register_buffer("attribute_words", attribute_words, persistent=False)  # (tokens, 384)
        self.type_embedding = nn.Embedding(RULED + 1 if config.read_feedback else PAD + 1, width)
        self.turn_embedding = nn.Embedding(config.max_turns + 1, width)
        self.attribute_delta = nn.Embedding(len(attribute_words), width)
        self.piece_projection = nn.Linear(STATIC_DIM, width, bias=False)
        self.image_projection = nn.Linear(feature_dim, width, bias=False)
        self.context_projection = nn.Linear(STATIC_DIM, width) if config.text_mode == "contextual" else None
        self.layers = nn.ModuleList(HistoryLayer(width, config.heads, config.feedforward, config.dropout)
                                    for _ in range(config.layers))
        self.query_centering = Centering(width)
        self.query_norm = nn.LayerNorm(width)
        self.query_head = nn.Linear(width, self.output_dim)
        if config.item_space == "learned":
            self.item_text_projection = nn.Linear(feature_dim, width, bias=False)
            self.item_centering = Centering(width)
            self.item_norm = nn.LayerNorm(width)
            self.item_mlp = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 2 * width), nn.GELU(),
                                          nn.Linear(2 * width, width))
            nn.init.zeros_(self.item_mlp[3].weight)
            nn.init.zeros_(self.item_mlp[3].bias)
            nn.init.eye_(self.query_head.weight)
            nn.init.zeros_(self.query_head.bias)
        if self.context_projection is not None:
            nn.init.zeros_(self.context_projection.weight)
            nn.init.zeros_(self.context_projection.bias)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        for embedding in (self.type_embedding, self.turn_embedding):
            nn.init.normal_(embedding.weight, std=0.02)
        nn.init.zeros_(self.attribute_delta.weight)

    def forward(self, history: HistoryBatch, items: ItemInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """(queries after each turn, item vectors): one call so DistributedDataParallel sees both towers."""
        return self.encode_history(history), self.encode_items(items)

    def attribute_vectors(self, ids: torch.Tensor) -> torch.Tensor:
        """Attribute tokens: the projected words of the value plus a learned correction (0 for padding)."""
        vectors = self.piece_projection(self.attribute_words[ids]) + self.attribute_delta(ids)
        return vectors * (ids > 0).unsqueeze(-1)

    def encode_items(self, items: ItemInputs) -> torch.Tensor:
        """(N, output_dim) L2-normalised item vectors."""
        if self.config.item_space == "backbone":
            return F.normalize(items.item, dim=-1)
        hidden = self.image_projection(items.image) + self.item_text_projection(items.text)
        if self.config.use_attributes:
            hidden = hidden + self.attribute_vectors(items.attributes).sum(1)
        present = (items.title > 0).unsqueeze(-1).float()
        title = (self.static_table[items.title] * present).sum(1) / present.sum(1).clamp(min=1)
        hidden = hidden + self.piece_projection(title)
        return F.normalize(self.item_norm(self.item_centering(hidden + self.item_mlp(hidden))), dim=-1)

    def encode_history(self, batch: HistoryBatch) -> torch.Tensor:
        """(B, max turns in batch, output_dim) L2-normalised query after each turn (block-causal: turn t's query
        sees turns <= t only, so one pass gives every turn's query)."""
        kind, turn = batch.kind, batch.turn
        x = self.type_embedding(kind) + self.turn_embedding(turn)
        x = x + self.attribute_vectors(batch.attribute) * (kind == ATTRIBUTE).unsqueeze(-1)
        # a wanted value's token starts as its attribute vector (by credit), a ruled-out one's as its opposite
        read_sign = (kind == WANTED) * batch.credit - (kind == RULED).float()
        x = x + self.attribute_vectors(batch.attribute) * read_sign.unsqueeze(-1)
        x = x + self.image_projection(batch.images)[batch.image_index] * (kind == IMAGE).unsqueeze(-1)
        is_text = (kind == TEXT).unsqueeze(-1)
        x = x + self.piece_projection(self.static_table[batch.piece]) * is_text
        if self.context_projection is not None:
            x = x + self.context_projection(batch.contexts)[batch.context_index] * is_text
        valid = kind != PAD
        # a turn's reading is of the whole dialog so far: later turns see their own, not an earlier one
        reading = batch.reading()
        size = kind.shape[1]
        same_turn = turn.unsqueeze(1) == turn.unsqueeze(2)
        allowed = (turn.unsqueeze(1) <= turn.unsqueeze(2)) & valid.unsqueeze(1) & (~reading.unsqueeze(1) | same_turn)
        allowed |= torch.eye(size, dtype=torch.bool, device=kind.device)
        hidden = x
        for layer in self.layers:
            hidden = layer(hidden, allowed)
        turns = int(batch.turns.max())
        one_hot = F.one_hot(turn.clamp(max=turns), turns + 1)[..., :turns].float() * valid.unsqueeze(-1)
        history, latest = one_hot * (~reading).unsqueeze(-1), one_hot * reading.unsqueeze(-1)
        sums = torch.einsum("blt,bld->btd", history, hidden).cumsum(1) + torch.einsum("blt,bld->btd", latest, hidden)
        counts = (history.sum(1).cumsum(1) + latest.sum(1)).clamp(min=1).unsqueeze(-1)
        pooled = self.query_centering(sums / counts)
        return F.normalize(self.query_head(self.query_norm(pooled)), dim=-1)


class DialogRetriever:
    """The trained retriever: network, attribute vocabulary and feedback text encoder, with save/load."""

    def __init__(self, config: RetrieverConfig, feature_dim: int, vocabulary: AttributeVocabulary,
                 network: RetrieverNetwork | None = None, text_encoder: FeedbackTextEncoder | None = None) -> None:
        self.config = config
        self.feature_dim = feature_dim
        self.vocabulary = vocabulary
        self.text = text_encoder or FeedbackTextEncoder(config.text_mode, MAX_TEXT_PIECES)
        if network is None:
            table = FeedbackTextEncoder.static_table()
            network = RetrieverNetwork(config, feature_dim, table, self._attribute_words(table))
        self.network = network

    def _attribute_words(self, table: torch.Tensor) -> torch.Tensor:
        """(attribute tokens, 384): each value's mean MiniLM wordpiece vector (zero for padding and unknowns)."""
        words = torch.zeros((self.vocabulary.size, STATIC_DIM))
        pieces = self.text.pieces([value for _, value in self.vocabulary.ids])
        for token, value_pieces in zip(self.vocabulary.ids.values(), pieces, strict=True):
            if len(value_pieces):
                words[token] = table[torch.from_numpy(value_pieces)].mean(0)
        return words

    @classmethod
    def create(cls, catalog: Catalog, feature_dim: int, config: RetrieverConfig) -> DialogRetriever:
        """A fresh retriever of `config` whose attribute vocabulary is the catalog's."""
        return cls(config, feature_dim, AttributeVocabulary.from_catalog(catalog))

    @property
    def device(self) -> torch.device:
        return self.network.logit_scale.device

    # ---- inputs ---------------------------------------------------------------------------------------------

    def item_inputs(self, catalog: Catalog, features, attributes: Sequence[Mapping[str, str]] | None = None
                    ) -> ItemInputs:
        """The catalog's rows as retriever inputs; `attributes` (e.g. predicted for unlabelled items) replaces
        the catalog's labels when given."""
        if list(features.ids) != catalog.ids:
            raise ValueError("item features are not in the catalog's order (recompute them for this catalog)")
        labels = attributes if attributes is not None else [item.attributes for item in catalog]
        titles = self.text.pieces([item.title for item in catalog], MAX_TITLE_PIECES)
        title = torch.zeros((len(catalog), MAX_TITLE_PIECES), dtype=torch.long)
        for row, pieces in enumerate(titles):
            title[row, : len(pieces)] = torch.from_numpy(pieces)
        return ItemInputs(torch.as_tensor(np.asarray(features.image), dtype=torch.float32),
                          torch.as_tensor(np.asarray(features.text), dtype=torch.float32),
                          torch.as_tensor(np.asarray(features.item), dtype=torch.float32),
                          torch.tensor([self.vocabulary.encode(a) for a in labels], dtype=torch.long), title)

    def reading_tokens(self, understanding: Understanding) -> tuple[list[int], list[int], list[float]]:
        """(token types, attribute ids, credits) of what the reader understood: the most credited wanted values of
        each attribute, then the ruled-out ones (values outside the retriever's vocabulary are left out)."""
        tokens: list[tuple[int, int, float]] = []
        for name, values in understanding.wanted.items():
            for value, credit in sorted(values.items(), key=lambda pair: -pair[1])[:MAX_READ_VALUES]:
                if (name, value) in self.vocabulary.ids and credit > 0:
                    tokens.append((WANTED, self.vocabulary.ids[(name, value)], float(credit)))
        for name, values in understanding.ruled_out.items():
            tokens += [(RULED, self.vocabulary.ids[(name, value)], 1.0) for value in sorted(values)[:MAX_READ_VALUES]
                       if (name, value) in self.vocabulary.ids]
        kinds, ids, credits = zip(*tokens[:MAX_READ_TOKENS], strict=True) if tokens else ((), (), ())
        return list(kinds), list(ids), list(credits)

    def reader_over(self, rows: Sequence[Mapping[str, str]] | None = None, **options) -> SemanticReader:
        """A semantic reader of the feedback into this retriever's attribute values (`rows`: the catalog's
        attributes, for "darker than this one")."""
        return SemanticReader(dict(zip(self.vocabulary.names, self.vocabulary.values, strict=True)), rows, **options)

    def history_batch(self, states: Sequence[DialogState], items: ItemInputs, use_attributes: bool = True,
                      reader: SemanticReader | None = None) -> HistoryBatch:
        """Lay out each dialog's latest `max_turns` turns as tokens: per turn a separator, the shown item's image
        (or a no-item token), its attribute tokens, the feedback's wordpieces, and (`read_feedback`) `reader`'s
        understanding of the dialog up to that turn."""
        shape = self.config
        use_attributes = use_attributes and shape.use_attributes
        if shape.read_feedback and reader is None:
            raise ValueError("this retriever reads the feedback through a SemanticReader: pass one")
        windows = [state.turns[-shape.max_turns:] for state in states]
        if shape.read_feedback:
            reader.read_all(turn.feedback for state in states for turn in state.turns)
        readings = [list(reader.understandings(state))[-len(window):] if shape.read_feedback else [None] * len(window)
                    for state, window in zip(states, windows, strict=True)]
        encoded = iter(self.text.encode([turn.feedback for window in windows for turn in window]))
        attribute_count = len(self.vocabulary.names) if use_attributes else 0
        images: list[torch.Tensor] = [torch.zeros(1, self.feature_dim)]
        contexts: list[np.ndarray] = [np.zeros((1, STATIC_DIM), dtype=np.float16)]
        image_rows = context_rows = 1
        columns: list[tuple[list[int], ...]] = []
        credit_rows: list[list[float]] = []
        for window, understandings in zip(windows, readings, strict=True):
            kinds, turn_ids, attribute_ids, pieces, image_index, context_index = [], [], [], [], [], []
            credits: list[float] = []
            for t, (turn, understanding) in enumerate(zip(window, understandings, strict=True)):
                text = next(encoded)
                n_text = min(len(text.pieces), MAX_TEXT_PIECES)
                shown = turn.shown
                if shown is None:
                    head, head_attributes, image_at = [SEPARATOR, NO_ITEM], [0, 0], 0
                else:
                    if isinstance(shown, ShownImage):
                        images.append(torch.as_tensor(shown.image, dtype=torch.float32).reshape(1, -1))
                        attribute_row = self.vocabulary.encode(shown.attributes)
                    else:
                        images.append(items.image[shown: shown + 1])
                        attribute_row = items.attributes[shown].tolist()
                    image_at, image_rows = image_rows, image_rows + 1
                    head = [SEPARATOR, IMAGE] + [ATTRIBUTE] * attribute_count
                    head_attributes = [0, 0] + (attribute_row if use_attributes else [])
                read_kinds, read_ids, read_credits = self.reading_tokens(understanding) if understanding else \
                    ([], [], [])
                n_read = len(read_kinds)
                kinds += head + [TEXT] * n_text + read_kinds
                turn_ids += [t] * (len(head) + n_text + n_read)
                attribute_ids += head_attributes + [0] * n_text + read_ids
                pieces += [0] * len(head) + text.pieces[:n_text].tolist() + [0] * n_read
                image_index += [0, image_at] + [0] * (len(head) - 2 + n_text + n_read)
                credits += [1.0] * (len(head) + n_text) + read_credits
                if text.context is not None and n_text:
                    contexts.append(text.context[:n_text])
                    context_index += [0] * len(head) + list(range(context_rows, context_rows + n_text))
                    context_rows += n_text
                else:
                    context_index += [0] * (len(head) + n_text)
                context_index += [0] * n_read
            columns.append((kinds, turn_ids, attribute_ids, pieces, image_index, context_index))
            credit_rows.append(credits)
        length = max(len(c[0]) for c in columns)
        fill = (PAD, shape.max_turns, 0, 0, 0, 0)
        padded = np.array([[column + [value] * (length - len(column)) for column, value in zip(row, fill,
                                                                                              strict=True)]
                           for row in columns], dtype=np.int64)  # (B, 6, L)
        kind, turn, attribute, piece, image_index, context_index = torch.from_numpy(padded).unbind(1)
        credit = torch.tensor([row + [1.0] * (length - len(row)) for row in credit_rows], dtype=torch.float32)
        return HistoryBatch(kind, turn, attribute, piece, image_index, torch.cat(images), context_index,
                            torch.from_numpy(np.concatenate(contexts).astype(np.float32)),
                            torch.tensor([len(w) for w in windows], dtype=torch.long), credit)

    def _eval_mode(self) -> None:
        """Dropout off for inference; walking every module to say so costs a served turn ~10% of its time."""
        if self.network.training:
            self.network.eval()

    # ---- vectors --------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def item_vectors(self, items: ItemInputs, batch_size: int = 8192) -> np.ndarray:
        """(N, output_dim) float32 item vectors to index."""
        self._eval_mode()
        out = [self.network.encode_items(items.rows(torch.arange(s, min(s + batch_size, len(items)))
                                                    ).to(self.device)).float().cpu()
               for s in range(0, len(items), batch_size)]
        return torch.cat(out).numpy()

    @torch.inference_mode()
    def query_vectors(self, states: Sequence[DialogState], items: ItemInputs, use_attributes: bool = True,
                      batch_size: int = 256, reader: SemanticReader | None = None) -> np.ndarray:
        """(B, output_dim) float32 query after each dialog's latest turn."""
        self._eval_mode()
        out = []
        for start in range(0, len(states), batch_size):
            chunk = states[start: start + batch_size]
            batch = self.history_batch(chunk, items, use_attributes, reader).to(self.device)
            queries = self.network.encode_history(batch)
            out.append(queries[torch.arange(len(chunk)), batch.turns - 1].float().cpu())
        return torch.cat(out).numpy()

    # ---- files ----------------------------------------------------------------------------------------------

    def save(self, path: Path, extra: Mapping[str, object] | None = None) -> Path:
        """Weights, config, feature width and attribute vocabulary in one safetensors file, written atomically."""
        vocabulary = {"names": self.vocabulary.names, "values": self.vocabulary.values}
        metadata = {"format": FILE_FORMAT, "config": json.dumps(asdict(self.config)),
                    "feature_dim": str(self.feature_dim), "vocabulary": json.dumps(vocabulary, ensure_ascii=False),
                    "extra": json.dumps(dict(extra or {}))}
        tensors = module_weights(self.network)
        return atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=metadata))

    @classmethod
    def load(cls, path: Path, device: str | torch.device = "cpu") -> DialogRetriever:
        """A saved retriever; a missing or damaged file raises a ValueError naming it."""
        path = Path(path)
        if not path.exists():
            raise ValueError(f"{path}: no trained retriever here; train one first")
        try:
            with safe_open(str(path), "pt") as handle:
                metadata = handle.metadata() or {}
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}
            config, feature_dim, vocabulary = _saved_settings(metadata)
        except Exception as error:  # safetensors raises several types for damaged files
            raise ValueError(f"{path}: not a readable retriever file ({error})") from error
        retriever = cls(config, feature_dim, vocabulary)
        load_module_weights(retriever.network, tensors)
        retriever.network.to(device).eval()
        return retriever


def _saved_settings(metadata: Mapping[str, str]) -> tuple[RetrieverConfig, int, AttributeVocabulary]:
    """(config, feature width, attribute vocabulary) from a retriever file's metadata. Files written before the
    config and the network's shape were one dataclass hold a "shape" and the config they were trained with in
    "extra": merged here."""
    if metadata.get("format") == FILE_FORMAT:
        vocabulary = json.loads(metadata["vocabulary"])
        return (RetrieverConfig(**json.loads(metadata["config"])), int(metadata["feature_dim"]),
                AttributeVocabulary(vocabulary["names"], vocabulary["values"]))
    if metadata.get("format") != SHAPE_FORMAT:
        raise ValueError(f"format {metadata.get('format')!r}, expected {FILE_FORMAT!r}")
    shape: dict[str, Any] = json.loads(metadata["shape"])
    if (shape.get("max_text_pieces", MAX_TEXT_PIECES), shape.get("max_title_pieces", MAX_TITLE_PIECES)) != (
            MAX_TEXT_PIECES, MAX_TITLE_PIECES):
        raise ValueError(f"text and title pieces {shape['max_text_pieces']}, {shape['max_title_pieces']} "
                         f"(this code reads {MAX_TEXT_PIECES} and {MAX_TITLE_PIECES})")
    names = {f.name for f in fields(RetrieverConfig)}
    trained_with = json.loads(metadata.get("extra", "{}")).get("config", {})
    config = RetrieverConfig(**{**trained_with, **{k: v for k, v in shape.items() if k in names}})
    return config, int(shape["feature_dim"]), AttributeVocabulary(shape["attribute_names"], shape["attribute_values"])


class RetrieverRanker(ScoreRanker):
    """The retriever as a Ranker over one catalog: inner products of queries with the item vectors, through a
    VectorIndex when one is given (fast top-k for one shopper).

    With `constraints` (assistant.core.constraints.FeedbackConstraints) items contradicting an attribute value the
    feedback asked for or ruled out rank below every item that fits; the retriever orders each group. With
    `lexical` (a keyword ranker, e.g. BM25 over titles) `lexical_weight` times its score is added: hybrid search,
    so that a brand or product word the shopper types counts as exactly as a search box counts it.

    `scores` is the exact hybrid score of every item (evaluation). `rank` with an approximate index (HNSW or IVF:
    IndexConfig.exact_threshold decides by catalog size, at the crossover measured in
    benchmarks/scale_latency.py) never scores the whole catalog: it takes candidates (the index's nearest items to the
    query; the best BM25 rows from the keyword ranker's inverted index; the rows fitting the feedback's
    constraints, found in an AttributeIndex over `attributes` and searched in the index with a faiss
    IDSelector, or all of them when they are few) and re-ranks their union by the exact hybrid score.

    A retriever that reads the feedback (`read_feedback`) reads it through `reader`, else the constraints' reader,
    else one over its own attribute values.
    """

    def __init__(self, retriever: DialogRetriever, items: ItemInputs, item_vectors: np.ndarray | None = None,
                 index=None, use_attributes: bool = True, constraints=None, lexical=None,
                 lexical_weight: float = 0.0, attributes: Sequence[Mapping[str, str]] | None = None,
                 reader: SemanticReader | None = None) -> None:
        self.retriever = retriever
        if reader is None and retriever is not None and retriever.config.read_feedback:
            reader = constraints.reader if constraints is not None else retriever.reader_over(attributes)
        self.reader = reader
        self.items = items
        self.item_vectors = item_vectors if item_vectors is not None else retriever.item_vectors(items)
        self.index = index
        self.use_attributes = use_attributes
        self.constraints = constraints
        self.lexical = lexical if lexical_weight > 0 else None
        self.lexical_weight = lexical_weight
        self.filter = AttributeIndex(attributes) if attributes is not None and constraints is not None else None

    def queries(self, states: Sequence[DialogState]) -> np.ndarray:
        return self.retriever.query_vectors(states, self.items, self.use_attributes, reader=self.reader)

    def scores(self, states: Sequence[DialogState]) -> np.ndarray:
        scores = self.queries(states) @ self.item_vectors.T
        if self.lexical is not None:
            scores = scores + self.lexical_weight * self.lexical.scores(states).astype(scores.dtype)
        return self.constraints.apply(scores, states) if self.constraints is not None else scores

    def rank(self, states: Sequence[DialogState], k: int, exclude: Sequence[set[int]]) -> np.ndarray:
        # without BM25 or constraints the index alone answers; the feedback is read only when that could be so
        if self.index is None:
            return super().rank(states, k, exclude)
        if self.lexical is None and (self.constraints is None or not any(
                any(self.constraints.reader.constraints(state)) for state in states)):
            return self.index.search(self.queries(states), k, exclude)[1]
        if self.index.kind == "exact" or (self.constraints is not None and self.filter is None):
            return super().rank(states, k, exclude)
        queries = self.queries(states)
        nearest = self.index.search(queries, CANDIDATES, exclude)[1]
        out = np.full((len(states), k), -1, dtype=np.int64)
        for b, state in enumerate(states):
            skip = np.fromiter(exclude[b], dtype=np.int64, count=len(exclude[b]))
            rows = self._candidates(state, queries[b], nearest[b], k, skip)
            if rows is None:  # too few items fit the constraints even loosened by one: score them all
                out[b] = super().rank([state], k, [exclude[b]])[0]
                continue
            scores = self.item_vectors[rows] @ queries[b]
            if self.lexical is not None:
                scores = scores + self.lexical_weight * self.lexical.row_scores(state, rows).astype(scores.dtype)
            penalty = self.constraints.penalties(state, rows) if self.constraints is not None else None
            if penalty is not None:
                scores -= penalty
            best = top_rows(scores[None], k, [set()])[0]
            out[b, : (best >= 0).sum()] = rows[best[best >= 0]]
        return out

    def _candidates(self, state: DialogState, query: np.ndarray, nearest: np.ndarray, k: int, skip: np.ndarray
                    ) -> np.ndarray | None:
        """Sorted candidate rows for one dialog (none of `skip`), or None when the constraints leave too few."""
        pools = [nearest[nearest >= 0]]
        if self.lexical is not None:
            pools.append(self.lexical.candidates(state, CANDIDATES))
        fitting = self._fitting(state, k + len(skip))
        if fitting is not None:
            fitting = fitting[~np.isin(fitting, skip)]  # a few rows shown: a linear pass, no sort of a big set
            if len(fitting) < k:
                return None
            if len(fitting) <= SCORE_ALL_FITTING:
                pools.append(fitting)
            else:
                pools.append(self.index.search_within(query, CANDIDATES, fitting))
                if self.lexical is not None:
                    pools.append(self.lexical.candidates(state, CANDIDATES, within=fitting))
        rows = np.unique(np.concatenate(pools))
        return np.setdiff1d(rows[rows >= 0], skip, assume_unique=True)

    def _fitting(self, state: DialogState, needed: int) -> np.ndarray | None:
        """Rows with a fully credited value of every constrained attribute and no ruled-out one (penalty 0); when
        fewer than `needed` are, the rows falling short on at most one attribute (those rank next); None without
        constraints."""
        if self.filter is None:
            return None
        wanted, ruled_out = self.constraints.reader.constraints(state)
        if not wanted and not ruled_out:
            return None
        allowed = {name: {v for v, credit in credits.items() if credit >= 1.0 - FIT_TOLERANCE}
                   for name, credits in wanted.items()}
        fitting = self.filter.rows(allowed, ruled_out)
        if len(fitting) >= needed:
            return fitting
        loosened = [self.filter.rows({n: v for n, v in allowed.items() if n != name}, ruled_out) for name in allowed]
        loosened += [self.filter.rows(allowed, {n: v for n, v in ruled_out.items() if n != name}) for name in ruled_out]
        return np.unique(np.concatenate([fitting, *loosened]))
