"""The user simulator's model: a relative captioner over two items' features and attributes, decoded by generate().

The "encoder" is a short sequence of vectors describing the pair (after Fashion IQ's relative captioner):
the reference's and target's projected features and their difference, one token per attribute for the
reference value, the target value and their difference (each also marked changed / unchanged), and the
caption pieces of both titles (a shopper sees the brand and style name). A small GPT-2 decoder with
cross-attention over that sequence writes the caption; greedy, beam and nucleus decoding all come from
`transformers`' `generate()`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel

from assistant.core.catalog import Catalog, Item
from assistant.core.storage import atomic_write, atomic_write_text
from assistant.core.training import load_module_weights, module_weights
from simulator.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, CaptionTokenizer

WEIGHTS_FILE, TOKENIZER_FILE, SETTINGS_FILE = "simulator.safetensors", "simulator.spm", "simulator.json"
DECODINGS = ("greedy", "beam", "sample")
UNKNOWN = "<unk>"
MAX_VALUE_PIECES = 8  # caption pieces spelling an attribute value (longer values are cut)
ROLES = ("reference feature", "target feature", "feature difference",
         "reference attribute", "target attribute", "attribute difference", "reference title", "target title")


class AttributeVocab:
    """`name=value` tokens for the attributes a catalog has, with an `<unk>` per attribute.

    A value the vocabulary never saw, or an attribute an item lacks, becomes its attribute's `<unk>`,
    so the model runs on catalogs it was not trained on.
    """

    def __init__(self, values: Mapping[str, Sequence[str]]) -> None:
        self.values = {name: list(vals) for name, vals in values.items()}
        self.names = list(self.values)
        self.tokens: list[str] = []
        self._ids: dict[tuple[str, str], int] = {}
        for name, vals in self.values.items():
            for value in [UNKNOWN, *vals]:
                self._ids[(name, value)] = len(self.tokens)
                self.tokens.append(f"{name}={value}")

    @classmethod
    def from_catalog(cls, catalog: Catalog) -> AttributeVocab:
        """Every attribute value of the catalog, most frequent first."""
        return cls({name: [v for v, _ in counts.most_common()] for name, counts in catalog.vocabulary().items()})

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, attributes: Mapping[str, str]) -> list[int]:
        """One token per known attribute name, in vocabulary order."""
        return [self._ids.get((name, attributes.get(name, UNKNOWN)), self._ids[(name, UNKNOWN)])
                for name in self.names]

    def value_texts(self) -> list[str]:
        """The words of each token's value ('' for `<unk>`), for sharing the caption embeddings."""
        return ["" if token.endswith(f"={UNKNOWN}") else token.split("=", 1)[1] for token in self.tokens]


@dataclass
class SimulatorConfig:
    """The `simulator:` config section, saved beside the weights: network size, data, optimisation, stopping and
    decoding (defaults: fpi-cpu). The sizes the data decide (feature width, vocabularies) are saved beside it."""

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
    paraphrase_fraction: float = 0.0  # share of the pairs (train and val) captioned by the paraphrase shopper's train
    # bank: the template's facets in varied words, so that sampled rollouts vary their phrasing as people do
    human_pairs: bool = True  # add the catalog's human caption pairs (Fashion IQ, `train --dialogs`) from train
    human_repeats: int = 4  # times each human pair joins the training pairs (they are few beside the template's)
    finetune_steps: int = 500  # steps of `train --from MODEL_DIR` (fine-tuning the saved weights)
    finetune_learning_rate: float = 1e-3
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
    device: str = "auto"  # "auto" (cuda, then mps, then cpu), "cpu", "cuda"
    amp: bool = True  # mixed precision, on CUDA only
    threads: int = 0  # torch CPU threads (0: torch's default)


class RelativeCaptioner(nn.Module):
    """Pair encoder (features + attribute tokens) and a GPT-2 decoder cross-attending over it."""

    def __init__(self, config: SimulatorConfig, feature_dim: int, vocab_size: int, attribute_tokens: int,
                 attribute_slots: int) -> None:
        super().__init__()
        self.config = config
        self.feature_dim = feature_dim
        width = config.n_embd
        self.feature_projection = nn.Sequential(nn.LayerNorm(feature_dim), nn.Linear(feature_dim, width))
        self.attribute_embedding = nn.Embedding(attribute_tokens, width)
        self.role_embedding = nn.Embedding(len(ROLES), width)
        self.slot_embedding = nn.Embedding(attribute_slots + 1, width)  # slot 0: the feature tokens
        self.changed_embedding = nn.Embedding(2, width)  # on every attribute token: did this attribute change?
        self.title_position = nn.Embedding(max(config.title_tokens, 1), width)
        # Caption pieces spelling each attribute value; their (tied) decoder embeddings are added to the
        # value's own embedding, so saying a value the encoder holds is close to copying it.
        self.register_buffer("value_pieces", torch.zeros(attribute_tokens, MAX_VALUE_PIECES, dtype=torch.long))
        self.encoder: nn.TransformerEncoder | None = None  # optional: lets the pair's tokens see each other
        if config.encoder_layers:
            layer = nn.TransformerEncoderLayer(width, config.n_head, dim_feedforward=4 * width,
                                               dropout=config.dropout, batch_first=True, norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, config.encoder_layers, enable_nested_tensor=False)
        self.encoder_norm = nn.LayerNorm(width)
        for embedding in (self.attribute_embedding, self.role_embedding, self.slot_embedding, self.changed_embedding,
                          self.title_position):
            nn.init.normal_(embedding.weight, std=0.02)  # GPT-2's scale, so the spelled values are not drowned out
        self.decoder = GPT2LMHeadModel(GPT2Config(
            vocab_size=vocab_size, n_positions=config.max_caption_tokens + 2, n_embd=width,
            n_layer=config.n_layer, n_head=config.n_head, add_cross_attention=True,
            resid_pdrop=config.dropout, embd_pdrop=config.dropout, attn_pdrop=config.dropout,
            bos_token_id=BOS_ID, eos_token_id=EOS_ID, tie_word_embeddings=True))

    def set_value_pieces(self, pieces: Sequence[Sequence[int]]) -> None:
        """Store the caption-token spelling of every attribute token (truncated to MAX_VALUE_PIECES)."""
        table = torch.zeros_like(self.value_pieces)
        for row, ids in enumerate(pieces):
            ids = list(ids)[:MAX_VALUE_PIECES]
            table[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        self.value_pieces.copy_(table)

    def attribute_vectors(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, K) attribute token ids -> (B, K, width): own embedding + mean embedding of the value's pieces."""
        pieces = self.value_pieces[tokens]  # (B, K, P)
        mask = (pieces != PAD_ID).unsqueeze(-1).float()
        words = self.decoder.transformer.wte(pieces)
        spelled = (words * mask).sum(-2) / mask.sum(-2).clamp(min=1.0)
        return self.attribute_embedding(tokens) + spelled

    def encode(self, reference_features: torch.Tensor, target_features: torch.Tensor,
               reference_attributes: torch.Tensor, target_attributes: torch.Tensor,
               reference_titles: torch.Tensor, target_titles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The pair as a (B, 3 + 3K + 2L, width) sequence for the decoder's cross-attention, and its mask."""
        reference, target = self.feature_projection(reference_features), self.feature_projection(target_features)
        features = torch.stack([reference, target, target - reference], dim=1)  # (B, 3, width)
        ref_attr = self.attribute_vectors(reference_attributes)
        tgt_attr = self.attribute_vectors(target_attributes)
        changed = self.changed_embedding((reference_attributes != target_attributes).long())
        attributes = torch.cat([ref_attr, tgt_attr, tgt_attr - ref_attr], dim=1) + changed.repeat(1, 3, 1)  # (B, 3K, w)
        k = reference_attributes.shape[1]
        device = reference_features.device
        roles = torch.cat([torch.arange(3, device=device), torch.arange(3, 6, device=device).repeat_interleave(k)])
        slots = torch.cat([torch.zeros(3, dtype=torch.long, device=device),
                           torch.arange(1, k + 1, device=device).repeat(3)])
        pair = torch.cat([features, attributes], dim=1) + self.role_embedding(roles) + self.slot_embedding(slots)
        positions = self.title_position(torch.arange(reference_titles.shape[1], device=device))
        titles = [self.decoder.transformer.wte(ids) + positions + self.role_embedding.weight[role]
                  for role, ids in ((ROLES.index("reference title"), reference_titles),
                                    (ROLES.index("target title"), target_titles))]
        sequence = torch.cat([pair, *titles], dim=1)
        mask = torch.cat([torch.ones(pair.shape[:2], dtype=torch.bool, device=device),
                          reference_titles != PAD_ID, target_titles != PAD_ID], dim=1)
        if self.encoder is not None:
            sequence = self.encoder(sequence, src_key_padding_mask=~mask)
        return self.encoder_norm(sequence), mask.long()

    def forward(self, reference_features: torch.Tensor, target_features: torch.Tensor,
                reference_attributes: torch.Tensor, target_attributes: torch.Tensor,
                reference_titles: torch.Tensor, target_titles: torch.Tensor,
                caption_ids: torch.Tensor) -> torch.Tensor:
        """Next-token logits for `caption_ids` ((B, T), bos-first, pad-right): (B, T, vocab)."""
        memory, mask = self.encode(reference_features, target_features, reference_attributes, target_attributes,
                                   reference_titles, target_titles)
        return self.decoder(input_ids=caption_ids, attention_mask=(caption_ids != PAD_ID).long(),
                            encoder_hidden_states=memory, encoder_attention_mask=mask).logits


def generation_config(decoding: str, max_new_tokens: int, beams: int = 4, top_p: float = 0.9) -> GenerationConfig:
    """The `generate()` settings for greedy, beam or nucleus-sampling decoding."""
    common = dict(max_new_tokens=max_new_tokens, bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID,
                  suppress_tokens=[UNK_ID, PAD_ID, BOS_ID])
    if decoding == "greedy":
        return GenerationConfig(do_sample=False, num_beams=1, **common)
    if decoding == "beam":
        return GenerationConfig(do_sample=False, num_beams=beams, early_stopping=True, **common)
    if decoding == "sample":
        return GenerationConfig(do_sample=True, top_p=top_p, top_k=0, **common)
    raise ValueError(f"decoding must be one of {DECODINGS}, not {decoding!r}")


class FeatureLookup:
    """Rows of one feature matrix (`ItemFeatures.item` or `.image`) by item id."""

    def __init__(self, features, kind: str = "item") -> None:
        matrix = getattr(features, kind, None)
        if matrix is None:
            raise ValueError(f"the features have no {kind!r} vectors")
        self.matrix = np.asarray(matrix, dtype=np.float32)
        self.rows = {item_id: row for row, item_id in enumerate(features.ids)}

    @property
    def dim(self) -> int:
        return self.matrix.shape[1]

    def vectors(self, ids: Sequence[str]) -> np.ndarray:
        try:
            return self.matrix[[self.rows[i] for i in ids]]
        except KeyError as error:
            raise KeyError(f"no feature vector for item {error.args[0]!r}: compute the features for this "
                           "catalog first") from None


class SimulatorModel:
    """A trained relative captioner with its tokenizer and attribute vocabulary: items in, captions out."""

    def __init__(self, network: RelativeCaptioner, tokenizer: CaptionTokenizer, attributes: AttributeVocab,
                 feature_source: str = "", training_run: dict | None = None) -> None:
        self.network = network
        self.tokenizer = tokenizer
        self.attributes = attributes
        self.feature_source = feature_source  # the backbone id of the features it was trained on, when known
        self.training_run = training_run or {}

    @classmethod
    def build(cls, tokenizer: CaptionTokenizer, attributes: AttributeVocab, feature_dim: int,
              config: SimulatorConfig, feature_source: str = "") -> SimulatorModel:
        """A freshly initialised model of `config` sized for this tokenizer, vocabulary and feature width."""
        network = RelativeCaptioner(config, feature_dim, tokenizer.vocab_size, len(attributes), len(attributes.names))
        network.set_value_pieces(tokenizer.encode(attributes.value_texts()))
        return cls(network, tokenizer, attributes, feature_source)

    @property
    def config(self) -> SimulatorConfig:
        return self.network.config

    @property
    def feature_kind(self) -> str:
        return self.network.config.feature

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def lookup(self, features) -> FeatureLookup:
        lookup = FeatureLookup(features, self.feature_kind)
        source = getattr(features, "backbone_id", "")
        if self.feature_source and source and source != self.feature_source:
            raise ValueError(f"the simulator was trained on features of backbone {self.feature_source!r}, these come "
                             f"from {source!r}: compute the features with the backbone it was trained with")
        if lookup.dim != self.network.feature_dim:
            raise ValueError(f"the simulator was trained on {self.network.feature_dim}-d {self.feature_kind} "
                             f"features, these are {lookup.dim}-d: use the same backbone it was trained with")
        return lookup

    def inputs(self, references: Sequence[Item], targets: Sequence[Item],
               lookup: FeatureLookup) -> tuple[torch.Tensor, ...]:
        """Model inputs for item pairs: features, attribute tokens and title pieces of references and targets."""
        device = self.device
        return (torch.from_numpy(lookup.vectors([i.id for i in references])).to(device),
                torch.from_numpy(lookup.vectors([i.id for i in targets])).to(device),
                torch.tensor([self.attributes.encode(i.attributes) for i in references], device=device),
                torch.tensor([self.attributes.encode(i.attributes) for i in targets], device=device),
                self.title_ids([i.title for i in references]).to(device),
                self.title_ids([i.title for i in targets]).to(device))

    def title_ids(self, titles: Sequence[str]) -> torch.Tensor:
        """(B, title_tokens) caption pieces of each title, padded."""
        length = self.config.title_tokens
        table = torch.full((len(titles), length), PAD_ID, dtype=torch.long)
        for row, ids in enumerate(self.tokenizer.encode(titles)):
            table[row, : len(ids[:length])] = torch.tensor(ids[:length], dtype=torch.long)
        return table

    @torch.inference_mode()
    def caption(self, references: Sequence[Item], targets: Sequence[Item], features, decoding: str = "greedy",
                seed: int = 0, batch_size: int = 512, lookup: FeatureLookup | None = None) -> list[str]:
        """How each target differs from its reference, in words: one generate() call per batch of pairs."""
        if len(references) != len(targets):
            raise ValueError(f"{len(references)} references but {len(targets)} targets")
        lookup = lookup if lookup is not None else self.lookup(features)
        config = generation_config(decoding, self.config.max_caption_tokens, self.config.beams, self.config.top_p)
        was_training = self.network.training
        self.network.eval()
        captions: list[str] = []
        on_gpu = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=on_gpu):
            torch.manual_seed(seed)
            for start in range(0, len(references), batch_size):
                chunk = slice(start, start + batch_size)
                memory, mask = self.network.encode(*self.inputs(references[chunk], targets[chunk], lookup))
                bos = torch.full((memory.shape[0], 1), BOS_ID, dtype=torch.long, device=memory.device)
                ids = self.network.decoder.generate(input_ids=bos, attention_mask=torch.ones_like(bos),
                                                    encoder_hidden_states=memory, encoder_attention_mask=mask,
                                                    generation_config=config)
                captions.extend(self.tokenizer.decode(ids.tolist()))
        self.network.train(was_training)
        return captions

    @torch.inference_mode()
    def log_likelihood(self, references: Sequence[Item], targets: Sequence[Item], features,
                       captions: Sequence[str]) -> np.ndarray:
        """Log-probability the model gives each caption (its pieces and the end), for ranking or comparing decodings."""
        lookup = self.lookup(features)
        pieces = self.tokenizer.encode(captions)
        length = max(len(p) for p in pieces) + 2
        ids = torch.full((len(pieces), length), PAD_ID, dtype=torch.long)
        for row, caption in enumerate(pieces):
            ids[row, : len(caption) + 2] = torch.tensor([BOS_ID, *caption, EOS_ID])
        was_training = self.network.training
        self.network.eval()
        logits = self.network(*self.inputs(references, targets, lookup), ids[:, :-1].to(self.device))
        self.network.train(was_training)
        labels = ids[:, 1:].to(self.device)
        token_log_probs = torch.log_softmax(logits.float(), -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        return (token_log_probs * (labels != PAD_ID)).sum(1).cpu().numpy()

    def settings(self) -> dict:
        """What simulator.json holds: the config, the sizes the data decided, and the run that trained it."""
        return {"config": asdict(self.config), "feature_dim": self.network.feature_dim,
                "attributes": self.attributes.values, "feature_source": self.feature_source,
                "training_run": self.training_run}

    def save(self, directory: Path) -> Path:
        """simulator.safetensors + simulator.spm + simulator.json into `directory` (each written atomically)."""
        directory = Path(directory)
        state = module_weights(self.network)  # the LM head is tied to the word embeddings: stored once
        atomic_write(directory / WEIGHTS_FILE, lambda tmp: save_file(state, str(tmp)))
        self.tokenizer.save(directory / TOKENIZER_FILE)
        atomic_write_text(directory / SETTINGS_FILE, json.dumps(self.settings(), indent=2, ensure_ascii=False))
        return directory

    @classmethod
    def load(cls, directory: Path, device: str | torch.device = "cpu") -> SimulatorModel:
        """A model saved by `save` (or by training) in `directory`."""
        directory = Path(directory)
        missing = [n for n in (WEIGHTS_FILE, TOKENIZER_FILE, SETTINGS_FILE) if not (directory / n).exists()]
        if missing:
            raise FileNotFoundError(f"{directory}: not a simulator model directory (missing {', '.join(missing)})")
        try:
            settings = json.loads((directory / SETTINGS_FILE).read_text(encoding="utf-8"))
            config, feature_dim = _saved_config(settings)
            attributes = AttributeVocab(settings["attributes"])
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{directory / SETTINGS_FILE}: unreadable simulator settings ({error})") from error
        tokenizer = CaptionTokenizer.load(directory / TOKENIZER_FILE)
        network = RelativeCaptioner(config, feature_dim, tokenizer.vocab_size, len(attributes), len(attributes.names))
        try:
            state = load_file(str(directory / WEIGHTS_FILE))
        except Exception as error:  # safetensors raises its own error types for corrupt files
            raise ValueError(f"{directory / WEIGHTS_FILE}: unreadable weights ({error})") from error
        load_module_weights(network, state)
        return cls(network.to(device).eval(), tokenizer, attributes, settings["feature_source"],
                   settings.get("training_run"))


def _saved_config(settings: dict) -> tuple[SimulatorConfig, int]:
    """(config, feature width) from simulator.json. Files written before the config and the network's shape were
    one dataclass hold a "shape" and keep the rest of the config in the training record: merged here."""
    if "config" in settings:
        return SimulatorConfig(**settings["config"]), int(settings["feature_dim"])
    shape = settings["shape"]
    if shape.get("max_value_pieces", MAX_VALUE_PIECES) != MAX_VALUE_PIECES:
        raise ValueError(f"max_value_pieces {shape['max_value_pieces']} (this code spells values in "
                         f"{MAX_VALUE_PIECES} pieces)")
    names = {field.name for field in fields(SimulatorConfig)} - {"vocab_size"}  # the shape's is the tokenizer's
    trained_with = settings.get("training_run", {}).get("config", {})
    config = {**trained_with, **{k: v for k, v in shape.items() if k in names},
              "feature": settings["feature_kind"], "beams": settings["beams"], "top_p": settings["top_p"]}
    return SimulatorConfig(**config), int(shape["feature_dim"])
