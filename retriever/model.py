"""The attribute-aware dialog retriever: a transformer over the dialog history giving a query vector per turn."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from assistant.core.catalog import Catalog
from assistant.core.dialog import DialogState, ScoreRanker, ShownImage
from assistant.core.storage import atomic_write
from retriever.text import FeedbackTextEncoder

FILE_FORMAT = "fashion-assistant-retriever/1"
ITEM_SPACES = ("learned", "backbone")
# Token types in the history: a turn separator, the shown item's image, "no item shown", its attributes, words.
SEPARATOR, IMAGE, NO_ITEM, ATTRIBUTE, TEXT, PAD = range(6)
STATIC_DIM = 384  # MiniLM's wordpiece vectors


@dataclass
class RetrieverShape:
    """The network's architecture and inputs (saved with the weights)."""

    feature_dim: int  # the backbone's embedding size (ItemFeatures vectors)
    attribute_names: list[str] = field(default_factory=list)
    attribute_values: list[list[str]] = field(default_factory=list)  # per name, its known values
    width: int = 256
    layers: int = 4
    heads: int = 4
    feedforward: int = 512
    dropout: float = 0.1
    max_turns: int = 8  # longer dialogs keep their latest turns
    max_text_pieces: int = 24
    max_title_pieces: int = 16
    text_mode: str = "contextual"  # contextual: frozen MiniLM token vectors too; static: wordpiece vectors only
    item_space: str = "learned"  # learned: item tower (image, text, attributes, title); backbone: ItemFeatures.item
    use_attributes: bool = True  # False: the no-attributes ablation (no attribute tokens anywhere)

    def __post_init__(self) -> None:
        if self.item_space not in ITEM_SPACES:
            raise ValueError(f"item_space must be one of {ITEM_SPACES}, not {self.item_space!r}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")

    @property
    def output_dim(self) -> int:
        return self.width if self.item_space == "learned" else self.feature_dim


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

    def to(self, device: torch.device) -> HistoryBatch:
        return HistoryBatch(**{name: value.to(device) for name, value in vars(self).items()})


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

    def __init__(self, shape: RetrieverShape, static_table: torch.Tensor, attribute_words: torch.Tensor) -> None:
        super().__init__()
        self.shape = shape
        width = shape.width
        self.register_buffer("static_table", static_table, persistent=False)
        self.register_buffer("attribute_words", attribute_words, persistent=False)  # (tokens, 384)
        self.type_embedding = nn.Embedding(PAD + 1, width)
        self.turn_embedding = nn.Embedding(shape.max_turns + 1, width)
        self.attribute_delta = nn.Embedding(len(attribute_words), width)
        self.piece_projection = nn.Linear(STATIC_DIM, width, bias=False)
        self.image_projection = nn.Linear(shape.feature_dim, width, bias=False)
        self.context_projection = nn.Linear(STATIC_DIM, width) if shape.text_mode == "contextual" else None
        self.layers = nn.ModuleList(HistoryLayer(width, shape.heads, shape.feedforward, shape.dropout)
                                    for _ in range(shape.layers))
        self.query_centering = Centering(width)
        self.query_norm = nn.LayerNorm(width)
        self.query_head = nn.Linear(width, shape.output_dim)
        if shape.item_space == "learned":
            self.item_text_projection = nn.Linear(shape.feature_dim, width, bias=False)
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
        if self.shape.item_space == "backbone":
            return F.normalize(items.item, dim=-1)
        hidden = self.image_projection(items.image) + self.item_text_projection(items.text)
        if self.shape.use_attributes:
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
        x = x + self.image_projection(batch.images)[batch.image_index] * (kind == IMAGE).unsqueeze(-1)
        is_text = (kind == TEXT).unsqueeze(-1)
        x = x + self.piece_projection(self.static_table[batch.piece]) * is_text
        if self.context_projection is not None:
            x = x + self.context_projection(batch.contexts)[batch.context_index] * is_text
        valid = kind != PAD
        size = kind.shape[1]
        allowed = (turn.unsqueeze(1) <= turn.unsqueeze(2)) & valid.unsqueeze(1)
        allowed |= torch.eye(size, dtype=torch.bool, device=kind.device)
        hidden = x
        for layer in self.layers:
            hidden = layer(hidden, allowed)
        turns = int(batch.turns.max())
        one_hot = F.one_hot(turn.clamp(max=turns), turns + 1)[..., :turns].float() * valid.unsqueeze(-1)
        sums = torch.einsum("blt,bld->btd", one_hot, hidden).cumsum(1)
        counts = one_hot.sum(1).cumsum(1).clamp(min=1).unsqueeze(-1)
        pooled = self.query_centering(sums / counts)
        return F.normalize(self.query_head(self.query_norm(pooled)), dim=-1)


class DialogRetriever:
    """The trained retriever: network, attribute vocabulary and feedback text encoder, with save/load."""

    def __init__(self, shape: RetrieverShape, network: RetrieverNetwork | None = None,
                 text_encoder: FeedbackTextEncoder | None = None) -> None:
        self.shape = shape
        self.vocabulary = AttributeVocabulary(shape.attribute_names, shape.attribute_values)
        self.text = text_encoder or FeedbackTextEncoder(shape.text_mode, shape.max_text_pieces)
        if network is None:
            table = FeedbackTextEncoder.static_table()
            network = RetrieverNetwork(shape, table, self._attribute_words(table))
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
    def create(cls, catalog: Catalog, feature_dim: int, **shape: object) -> DialogRetriever:
        """A fresh retriever whose attribute vocabulary is the catalog's."""
        vocabulary = AttributeVocabulary.from_catalog(catalog)
        return cls(RetrieverShape(feature_dim, vocabulary.names, vocabulary.values, **shape))

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
        titles = self.text.pieces([item.title for item in catalog], self.shape.max_title_pieces)
        title = torch.zeros((len(catalog), self.shape.max_title_pieces), dtype=torch.long)
        for row, pieces in enumerate(titles):
            title[row, : len(pieces)] = torch.from_numpy(pieces)
        return ItemInputs(torch.as_tensor(np.asarray(features.image), dtype=torch.float32),
                          torch.as_tensor(np.asarray(features.text), dtype=torch.float32),
                          torch.as_tensor(np.asarray(features.item), dtype=torch.float32),
                          torch.tensor([self.vocabulary.encode(a) for a in labels], dtype=torch.long), title)

    def history_batch(self, states: Sequence[DialogState], items: ItemInputs, use_attributes: bool = True
                      ) -> HistoryBatch:
        """Lay out each dialog's latest `max_turns` turns as tokens: per turn a separator, the shown item's image
        (or a no-item token), its attribute tokens, the feedback's wordpieces."""
        shape = self.shape
        use_attributes = use_attributes and shape.use_attributes
        windows = [state.turns[-shape.max_turns:] for state in states]
        encoded = iter(self.text.encode([turn.feedback for window in windows for turn in window]))
        attribute_count = len(self.vocabulary.names) if use_attributes else 0
        images: list[torch.Tensor] = [torch.zeros(1, shape.feature_dim)]
        contexts: list[np.ndarray] = [np.zeros((1, STATIC_DIM), dtype=np.float16)]
        image_rows = context_rows = 1
        columns: list[tuple[list[int], ...]] = []
        for window in windows:
            kinds, turn_ids, attribute_ids, pieces, image_index, context_index = [], [], [], [], [], []
            for t, turn in enumerate(window):
                text = next(encoded)
                n_text = min(len(text.pieces), shape.max_text_pieces)
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
                kinds += head + [TEXT] * n_text
                turn_ids += [t] * (len(head) + n_text)
                attribute_ids += head_attributes + [0] * n_text
                pieces += [0] * len(head) + text.pieces[:n_text].tolist()
                image_index += [0, image_at] + [0] * (len(head) - 2 + n_text)
                if text.context is not None and n_text:
                    contexts.append(text.context[:n_text])
                    context_index += [0] * len(head) + list(range(context_rows, context_rows + n_text))
                    context_rows += n_text
                else:
                    context_index += [0] * (len(head) + n_text)
            columns.append((kinds, turn_ids, attribute_ids, pieces, image_index, context_index))
        length = max(len(c[0]) for c in columns)
        fill = (PAD, shape.max_turns, 0, 0, 0, 0)
        padded = np.array([[column + [value] * (length - len(column)) for column, value in zip(row, fill,
                                                                                              strict=True)]
                           for row in columns], dtype=np.int64)  # (B, 6, L)
        kind, turn, attribute, piece, image_index, context_index = torch.from_numpy(padded).unbind(1)
        return HistoryBatch(kind, turn, attribute, piece, image_index, torch.cat(images), context_index,
                            torch.from_numpy(np.concatenate(contexts).astype(np.float32)),
                            torch.tensor([len(w) for w in windows], dtype=torch.long))

    # ---- vectors --------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def item_vectors(self, items: ItemInputs, batch_size: int = 8192) -> np.ndarray:
        """(N, output_dim) float32 item vectors to index."""
        self.network.eval()
        out = [self.network.encode_items(items.rows(torch.arange(s, min(s + batch_size, len(items)))
                                                    ).to(self.device)).float().cpu()
               for s in range(0, len(items), batch_size)]
        return torch.cat(out).numpy()

    @torch.inference_mode()
    def query_vectors(self, states: Sequence[DialogState], items: ItemInputs, use_attributes: bool = True,
                      batch_size: int = 256) -> np.ndarray:
        """(B, output_dim) float32 query after each dialog's latest turn."""
        self.network.eval()
        out = []
        for start in range(0, len(states), batch_size):
            chunk = states[start: start + batch_size]
            batch = self.history_batch(chunk, items, use_attributes).to(self.device)
            queries = self.network.encode_history(batch)
            out.append(queries[torch.arange(len(chunk)), batch.turns - 1].float().cpu())
        return torch.cat(out).numpy()

    # ---- files ----------------------------------------------------------------------------------------------

    def save(self, path: Path, extra: Mapping[str, object] | None = None) -> Path:
        """Weights and shape in one safetensors file, written atomically."""
        tensors = {name: value.detach().cpu().contiguous() for name, value in self.network.state_dict().items()}
        metadata = {"format": FILE_FORMAT, "shape": json.dumps(asdict(self.shape)),
                    "extra": json.dumps(dict(extra or {}))}
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
            if metadata.get("format") != FILE_FORMAT:
                raise ValueError(f"format {metadata.get('format')!r}, expected {FILE_FORMAT!r}")
            shape = RetrieverShape(**json.loads(metadata["shape"]))
        except Exception as error:  # safetensors raises several types for damaged files
            raise ValueError(f"{path}: not a readable retriever file ({error})") from error
        retriever = cls(shape)
        retriever.network.load_state_dict(tensors)
        retriever.network.to(device).eval()
        return retriever


class RetrieverRanker(ScoreRanker):
    """The retriever as a Ranker over one catalog: inner products of queries with the item vectors, through a
    VectorIndex when one is given (fast top-k for one shopper).

    With `constraints` (assistant.core.constraints.FeedbackConstraints) items contradicting an attribute value the
    feedback asked for or ruled out rank below every item that fits; the retriever orders each group. With
    `lexical` (a keyword ranker, e.g. BM25 over titles) `lexical_weight` times its score is added: hybrid search,
    so that a brand or product word the shopper types counts as exactly as a search box counts it.
    """

    def __init__(self, retriever: DialogRetriever, items: ItemInputs, item_vectors: np.ndarray | None = None,
                 index=None, use_attributes: bool = True, constraints=None, lexical=None,
                 lexical_weight: float = 0.0) -> None:
        self.retriever = retriever
        self.items = items
        self.item_vectors = item_vectors if item_vectors is not None else retriever.item_vectors(items)
        self.index = index
        self.use_attributes = use_attributes
        self.constraints = constraints
        self.lexical = lexical if lexical_weight > 0 else None
        self.lexical_weight = lexical_weight

    def queries(self, states: Sequence[DialogState]) -> np.ndarray:
        return self.retriever.query_vectors(states, self.items, self.use_attributes)

    def scores(self, states: Sequence[DialogState]) -> np.ndarray:
        scores = self.queries(states) @ self.item_vectors.T
        if self.lexical is not None:
            scores = scores + self.lexical_weight * self.lexical.scores(states).astype(scores.dtype)
        return self.constraints.apply(scores, states) if self.constraints is not None else scores

    def rank(self, states: Sequence[DialogState], k: int, exclude: Sequence[set[int]]) -> np.ndarray:
        # BM25 and constraints re-score every item; the feedback is read only when nothing else decides
        if (self.index is None or self.lexical is not None
                or (self.constraints is not None
                    and any(any(self.constraints.reader.constraints(state)) for state in states))):
            return super().rank(states, k, exclude)
        return self.index.search(self.queries(states), k, exclude)[1]
