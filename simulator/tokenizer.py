"""The simulator's caption tokenizer: a sentencepiece model trained on the training captions, saved as simulator.spm."""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from pathlib import Path

import sentencepiece as spm

from assistant.core.storage import atomic_write

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
SPECIAL_PIECES = 4
MIN_VOCAB = 32


def corpus_vocab_size(captions: Sequence[str], limit: int) -> int:
    """A vocabulary size that fits the corpus: its distinct words plus room for pieces, at most `limit`.

    Template captions use a few hundred words, so a fixed 8k vocabulary would not train; the unigram
    trainer needs fewer pieces than the corpus can support, and `hard_vocab_limit=False` lets it stop below.
    """
    words = {word for caption in captions for word in re.findall(r"\w+|[^\w\s]", caption.lower())}
    return max(MIN_VOCAB, min(limit, len(words) + SPECIAL_PIECES + 64))


class CaptionTokenizer:
    """Text <-> ids with fixed special ids: pad 0, bos 1, eos 2, unk 3."""

    def __init__(self, model_proto: bytes) -> None:
        self.model_proto = model_proto
        self.processor = spm.SentencePieceProcessor(model_proto=model_proto)

    @classmethod
    def train(cls, captions: Sequence[str], vocab_size: int = 2000) -> CaptionTokenizer:
        """Train a unigram model on the captions (lower-cased), sized to the corpus."""
        if not captions:
            raise ValueError("cannot train a caption tokenizer on no captions")
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter([caption.lower() for caption in captions]),
            model_writer=model,
            vocab_size=corpus_vocab_size(captions, vocab_size),
            hard_vocab_limit=False,
            model_type="unigram",
            character_coverage=1.0,
            pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID, unk_id=UNK_ID,
            num_threads=1,
            minloglevel=2,
        )
        return cls(model.getvalue())

    @property
    def vocab_size(self) -> int:
        return self.processor.get_piece_size()

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Piece ids of each text, without bos/eos."""
        return self.processor.encode([text.lower() for text in texts])

    def decode(self, ids: Sequence[Sequence[int]]) -> list[str]:
        """Texts of id sequences; pad, bos and eos are dropped."""
        return [self.processor.decode([i for i in row if i > EOS_ID]) for row in ids]

    def save(self, path: Path) -> Path:
        return atomic_write(path, lambda tmp: tmp.write_bytes(self.model_proto))

    @classmethod
    def load(cls, path: Path) -> CaptionTokenizer:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no caption tokenizer (simulator.spm) here")
        try:
            return cls(path.read_bytes())
        except RuntimeError as error:
            raise ValueError(f"{path}: not a sentencepiece model ({error})") from error
