"""Baseline rankers run through the same dialog loop: random, keyword (BM25), attribute filter, single-turn."""

from __future__ import annotations

from collections.abc import Sequence

import bm25s
import numpy as np
from cachetools import LRUCache
from scipy import sparse

from assistant.core.catalog import Catalog
from assistant.core.constraints import FeedbackConstraints, FeedbackReader
from assistant.core.dialog import DialogState, ScoreRanker, ShownImage
from assistant.core.feedback import STOP_WORDS, singular, tokenize

CHAMPIONS = 300  # rows kept per term, its highest-scoring, for candidate search (every row of a rarer term)
TIE_BREAK = 1e-6  # a fixed, tiny per-item offset so equal scores rank in a seeded random order


def _tie_break(size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(size) * TIE_BREAK


def search_terms(text: str) -> list[str]:
    """Content words as a search box indexes them: lowercase, singular, no stop words."""
    return [singular(t) for t in tokenize(text) if t.isalnum() and t not in STOP_WORDS]


class RandomRanker(ScoreRanker):
    """Ranks the catalog at random (a fresh seeded draw per call)."""

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size = size
        self.rng = np.random.default_rng(seed)

    def scores(self, states: Sequence[DialogState]) -> np.ndarray:
        return self.rng.random((len(states), self.size))


class KeywordRanker(ScoreRanker):
    """A shop's search box: BM25 over each item's title and attribute values, queried with every feedback word
    so far (asserted attribute values in the catalog's own words), leaving out words of negated values.

    The inverted index is bm25s's (Lucene's idf, ATIRE's term frequency part: (k1 + 1) tf / (tf + k1 norm)); a
    query scores only the postings of its terms, and `row_scores` reads a few rows' scores without scoring all.
    `candidates` finds the best rows from each term's champion list (its CHAMPIONS highest-scoring rows: the
    tiered index of Manning, Raghavan & Schuetze, ch. 7), so a big catalog is never scored whole.
    """

    def __init__(self, catalog: Catalog, k1: float = 1.2, b: float = 0.75, seed: int = 0) -> None:
        self.reader = FeedbackReader(catalog)
        documents = [search_terms(" ".join([item.title, *item.attributes.values()])) for item in catalog]
        self.index = bm25s.BM25(k1=k1, b=b, method="atire", idf_method="lucene", dtype="float64")
        self.index.index(documents, show_progress=False)
        scores = self.index.scores
        # per term (columns): the rows holding it, sorted, and its score in each
        self.postings = sparse.csc_matrix((scores["data"], scores["indices"], scores["indptr"]),
                                          shape=(len(catalog), len(scores["indptr"]) - 1))
        self.postings.sort_indices()
        self.tie_break = _tie_break(len(catalog), seed)
        self.champions = [self._champions(term) for term in range(self.postings.shape[1])]
        self._last_terms: tuple[tuple[str, ...] | None, np.ndarray] = (None, np.zeros(0, dtype=np.int64))

    def _posting(self, term: int) -> tuple[np.ndarray, np.ndarray]:
        start, end = self.postings.indptr[term], self.postings.indptr[term + 1]
        return self.postings.indices[start:end], self.postings.data[start:end]

    def _champions(self, term: int) -> np.ndarray:
        rows, scores = self._posting(term)
        return rows if len(rows) <= CHAMPIONS else rows[np.argpartition(-scores, CHAMPIONS - 1)[:CHAMPIONS]]

    def query_terms(self, state: DialogState) -> list[str]:
        asserted, negated = self.reader.constraints(state)
        ruled_out = {term for values in negated.values() for value in values for term in search_terms(value)}
        terms = [t for turn in state.turns for t in search_terms(" ".join(self.reader.parse(turn.feedback).words))]
        terms += [t for value in asserted.values() for t in search_terms(value)]
        return [t for t in dict.fromkeys(terms) if t not in ruled_out]

    def term_ids(self, state: DialogState) -> np.ndarray:
        """The index's ids of the dialog's query terms (each once; words no item has are left out)."""
        feedback = tuple(turn.feedback for turn in state.turns)
        last = self._last_terms  # one turn asks for its terms several times (candidates, scores); read once
        if last[0] == feedback:
            return last[1]
        vocabulary = self.index.vocab_dict
        terms = dict.fromkeys(search_terms(" ".join(self.query_terms(state))))
        ids = np.array([vocabulary[t] for t in terms if t and t in vocabulary], dtype=np.int64)
        self._last_terms = feedback, ids
        return ids

    def state_scores(self, state: DialogState) -> np.ndarray:
        """(catalog size,) BM25 scores for one dialog, summed over its terms' postings."""
        ids = self.term_ids(state)
        matched = self.index.get_scores_from_ids(ids) if len(ids) else np.zeros(len(self.tie_break))
        return matched + self.tie_break

    def scores(self, states: Sequence[DialogState]) -> np.ndarray:
        return np.stack([self.state_scores(state) for state in states])

    def row_scores(self, state: DialogState, rows: np.ndarray) -> np.ndarray:
        """BM25 scores of some catalog rows only (the same values `scores` gives them)."""
        scores = self.tie_break[rows].copy()
        for term in self.term_ids(state):
            posting, term_scores = self._posting(term)
            at = np.minimum(np.searchsorted(posting, rows), len(posting) - 1)
            scores += np.where(posting[at] == rows, term_scores[at], 0.0)
        return scores

    def candidates(self, state: DialogState, count: int, within: np.ndarray | None = None) -> np.ndarray:
        """Up to `count` rows with the best BM25 scores among the query terms' champion rows (only rows of the
        sorted `within` when given); rows matching no query term are never candidates."""
        ids = self.term_ids(state)
        if not len(ids):
            return np.zeros(0, dtype=np.int64)
        rows = np.unique(np.concatenate([self.champions[term] for term in ids]))
        if within is not None and len(within):  # sorted: look the few candidates up in it rather than sort it
            rows = rows[within[np.minimum(np.searchsorted(within, rows), len(within) - 1)] == rows]
        elif within is not None:
            return np.zeros(0, dtype=np.int64)
        if len(rows) > count:
            rows = rows[np.argpartition(-self.row_scores(state, rows), count - 1)[:count]]
        return rows


TEXTS_CACHED = 16384  # feedback strings whose backbone text vectors are kept (least recently used dropped)


class TextVectors:
    """The backbone's text vectors for feedback strings, the recent ones cached (bounded: memory stays flat)."""

    def __init__(self, backbone) -> None:
        self.backbone = backbone
        self._cache: LRUCache = LRUCache(maxsize=TEXTS_CACHED)

    def __call__(self, texts: list[str]) -> np.ndarray:
        found = {t: self._cache[t] for t in dict.fromkeys(texts) if t in self._cache}
        missing = [t for t in dict.fromkeys(texts) if t not in found]
        if missing:
            fresh = dict(zip(missing, self.backbone.encode_texts(missing), strict=True))
            found.update(fresh)
            self._cache.update(fresh)
        return np.stack([found[t] for t in texts])


class AttributeFilterRanker(ScoreRanker):
    """Faceted search: items matching the attribute values asked for so far (and none ruled out) first,
    each group ordered by the backbone's text-image similarity to the feedback."""

    def __init__(self, catalog: Catalog, image_vectors: np.ndarray, backbone, seed: int = 0) -> None:
        self.constraints = FeedbackConstraints(catalog)
        self.backbone = backbone
        self.image_vectors = np.asarray(image_vectors, dtype=np.float32)
        self.tie_break = _tie_break(len(catalog), seed)
        self._text_vectors = TextVectors(backbone)

    def scores(self, states: Sequence[DialogState]) -> np.ndarray:
        texts = [" ".join(turn.feedback for turn in state.turns) or "item" for state in states]
        similarity = self._text_vectors(texts) @ self.image_vectors.T
        return self.constraints.apply(similarity, states) + self.tie_break


class SingleTurnRanker(ScoreRanker):
    """The composed query with no history (the CFQ paper's VA): the last shown item's image vector plus the last
    feedback's text vector, compared with the items' image vectors."""

    def __init__(self, image_vectors: np.ndarray, backbone, seed: int = 0) -> None:
        self.backbone = backbone
        self.image_vectors = np.asarray(image_vectors, dtype=np.float32)
        self.tie_break = _tie_break(len(self.image_vectors), seed)
        self._text_vectors = TextVectors(backbone)

    def scores(self, states: Sequence[DialogState]) -> np.ndarray:
        texts = [state.turns[-1].feedback or "item" for state in states]
        queries = self._text_vectors(texts)
        for b, state in enumerate(states):
            shown = state.turns[-1].shown
            if shown is not None:
                queries[b] = queries[b] + (shown.image if isinstance(shown, ShownImage) else self.image_vectors[shown])
        return queries @ self.image_vectors.T + self.tie_break
