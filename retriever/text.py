"""Feedback text as retriever tokens: MiniLM wordpieces with frozen static and contextual vectors, cached per string
(a bounded LRU of at most CACHE_BYTES)."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch
from cachetools import LRUCache
from safetensors import safe_open

from assistant.core.text_encoder import verified_minilm_folder

TEXT_MODES = ("static", "contextual")
CACHE_BYTES = 128 * 1024 * 1024  # the encoded strings kept: a long-running server's memory stays bounded


@dataclass(frozen=True)
class EncodedText:
    """One string as wordpieces: their ids and (contextual mode) MiniLM's output vector for each."""

    pieces: np.ndarray  # (n,) int64 wordpiece ids, no [CLS]/[SEP]
    context: np.ndarray | None  # (n, 384) float16, or None in static mode


def _encoded_bytes(encoded: EncodedText) -> int:
    return 200 + encoded.pieces.nbytes + (encoded.context.nbytes if encoded.context is not None else 0)


class FeedbackTextEncoder:
    """Turns shopper text into wordpiece tokens for the retriever, caching distinct strings (least recently used
    dropped past CACHE_BYTES).

    `static` gives wordpiece ids only (the model looks up MiniLM's frozen input embeddings);
    `contextual` also runs frozen MiniLM and keeps each wordpiece's output vector, so "not red" and
    "red" read differently and words a real shopper types land near known ones.
    """

    def __init__(self, mode: str = "contextual", max_pieces: int = 32, threads: int = 0) -> None:
        if mode not in TEXT_MODES:
            raise ValueError(f"text mode must be one of {TEXT_MODES}, not {mode!r}")
        from transformers import AutoModel, AutoTokenizer

        folder = verified_minilm_folder()
        self.mode = mode
        self.max_pieces = max_pieces
        self.threads = threads
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).eval() if mode == "contextual" else None
        self._cache: LRUCache = LRUCache(maxsize=CACHE_BYTES, getsizeof=_encoded_bytes)
        self._cache_lock = threading.Lock()  # an LRU cache is not thread-safe; a server encodes from many threads

    @staticmethod
    def static_table() -> torch.Tensor:
        """MiniLM's input wordpiece embeddings (vocab, 384): frozen vectors the model projects."""
        with safe_open(verified_minilm_folder() / "model.safetensors", "pt") as weights:
            return weights.get_tensor("embeddings.word_embeddings.weight").float()

    def pieces(self, texts: list[str], max_pieces: int | None = None) -> list[np.ndarray]:
        """Wordpiece ids of each text (lowercased by the tokenizer), truncated to `max_pieces`."""
        limit = max_pieces or self.max_pieces
        encoded = self.tokenizer(texts, add_special_tokens=False, truncation=True, max_length=limit)["input_ids"]
        return [np.asarray(ids, dtype=np.int64) for ids in encoded]

    def encode(self, texts: list[str], batch_size: int = 256) -> list[EncodedText]:
        """Each text's tokens; strings seen before come from the cache."""
        with self._cache_lock:
            encoded = {t: self._cache[t] for t in dict.fromkeys(texts) if t in self._cache}
        missing = [t for t in dict.fromkeys(texts) if t not in encoded]
        for start in range(0, len(missing), batch_size):
            chunk = missing[start: start + batch_size]
            if self.model is None:
                fresh = {text: EncodedText(ids, None) for text, ids in zip(chunk, self.pieces(chunk), strict=True)}
            else:
                fresh = self._encode_contextual(chunk)
            encoded.update(fresh)
            with self._cache_lock:
                self._cache.update(fresh)
        return [encoded[t] for t in texts]

    def _encode_contextual(self, texts: list[str]) -> dict[str, EncodedText]:
        batch = self.tokenizer(texts, truncation=True, max_length=self.max_pieces + 2, padding=True,
                               return_tensors="pt")
        previous_threads = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                hidden = self.model(**batch).last_hidden_state.to(torch.float16).numpy()
        finally:
            torch.set_num_threads(previous_threads)
        lengths = batch["attention_mask"].sum(1).tolist()
        return {text: EncodedText(ids[1: length - 1].astype(np.int64), vectors[1: length - 1].copy())
                for text, ids, vectors, length in zip(texts, batch["input_ids"].numpy(), hidden, lengths,
                                                      strict=True)}

    def cache_size(self) -> int:
        return len(self._cache)
