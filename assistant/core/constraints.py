"""Feedback constraints room: the attribute values a dialog asked for or ruled out, applied to any ranker's scores."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

import numpy as np
from cachetools import LRUCache

from assistant.core.catalog import Catalog
from assistant.core.dialog import DialogState
from assistant.core.feedback import AttributeParser, ParsedFeedback

PARSED_CACHED = 65536  # parsed messages kept (least recently used dropped): a server's memory stays bounded
PENALTY = 10.0  # per contradicted attribute: far below any similarity score, so fitting items always rank first


class FeedbackReader:
    """What a dialog's feedback says so far, read with an AttributeParser (later turns override earlier)."""

    def __init__(self, catalog: Catalog) -> None:
        self.parser = AttributeParser(catalog.vocabulary())
        self._cache: LRUCache = LRUCache(maxsize=PARSED_CACHED)
        self._cache_lock = threading.Lock()  # an LRU cache is not thread-safe; a server reads from many threads

    def parse(self, text: str) -> ParsedFeedback:
        with self._cache_lock:
            parsed = self._cache.get(text)
        if parsed is None:
            parsed = self.parser.parse(text)
            with self._cache_lock:
                self._cache[text] = parsed
        return parsed

    def constraints(self, state: DialogState) -> tuple[dict[str, str], dict[str, set[str]]]:
        """(asserted value per attribute, negated values per attribute) over the whole dialog."""
        asserted: dict[str, str] = {}
        negated: dict[str, set[str]] = {}
        for turn in state.turns:
            parsed = self.parse(turn.feedback)
            for name, values in parsed.negated.items():
                negated.setdefault(name, set()).update(values)
                if asserted.get(name) in values:
                    del asserted[name]
            for name, value in parsed.asserted.items():
                asserted[name] = value
                negated.get(name, set()).discard(value)
        return asserted, negated


class FeedbackConstraints:
    """Hard constraints from the feedback: items whose attributes contradict a value the shopper asked for, or
    have a value they ruled out, sink below every item that fits (one PENALTY per contradicted attribute).

    `attributes` (one dict per catalog row) may hold predicted values for items without labels; an item with no
    value for an attribute counts as contradicting a request for it.
    """

    def __init__(self, catalog: Catalog, attributes: Sequence[Mapping[str, str]] | None = None) -> None:
        self.reader = FeedbackReader(catalog)
        rows = attributes if attributes is not None else [item.attributes for item in catalog]
        self.size = len(rows)
        self.codes: dict[str, np.ndarray] = {}
        self.value_codes: dict[str, dict[str, int]] = {}
        for name in catalog.attribute_names():
            values = [row.get(name) for row in rows]
            table = {value: code for code, value in enumerate(dict.fromkeys(v for v in values if v is not None))}
            self.value_codes[name] = table
            self.codes[name] = np.array([table.get(v, -1) if v is not None else -1 for v in values], dtype=np.int32)

    def mismatches(self, state: DialogState) -> np.ndarray | None:
        """Per catalog row, how many of the dialog's constraints it breaks (None: the dialog set none)."""
        asserted, negated = self.reader.constraints(state)
        count = None
        for name in self.codes.keys() & (asserted.keys() | negated.keys()):
            codes, table = self.codes[name], self.value_codes[name]
            broken = np.zeros(self.size, dtype=bool)
            if name in asserted:
                broken |= codes != table.get(asserted[name], -2)
            unwanted = [table[v] for v in negated.get(name, ()) if v in table]
            if unwanted:
                broken |= np.isin(codes, unwanted)
            count = broken.astype(np.float32) if count is None else count + broken
        return count

    def apply(self, scores: np.ndarray, states: Sequence[DialogState]) -> np.ndarray:
        """`scores` (dialogs x catalog rows) with PENALTY subtracted per broken constraint, in place."""
        for row, state in enumerate(states):
            broken = self.mismatches(state)
            if broken is not None:
                scores[row] -= PENALTY * broken
        return scores
