"""Feedback constraints room: the values a dialog asked for or ruled out, as soft ranked penalties on any scores."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

import numpy as np
from cachetools import LRUCache

from assistant.core.catalog import Catalog, vocabulary_of
from assistant.core.dialog import DialogState
from assistant.core.feedback import AttributeParser, ParsedFeedback, attribute_kind
from assistant.core.reader import SemanticReader

PARSED_CACHED = 65536  # parsed messages kept (least recently used dropped): a server's memory stays bounded
PENALTY = 10.0  # what not fitting every constraint costs at least: far below any similarity score
# How much each facet weighs when an item falls short of it (the kind of item first, then who it is for, then
# colour, then pattern / occasion / season / anything else), in units of PENALTY.
PRIORITY = {"category": 8.0, "gender": 4.0, "colour": 2.0}
OTHER_PRIORITY = 1.0
FIT_TOLERANCE = 1e-4  # a shortfall below this counts as fitting
# A predicted value is a guess (baseColour top-1 is about 0.66 on the real held-out split), so a shortfall read
# from an attribute head's probabilities costs this much score per priority unit instead of a place below every
# item that fits: the retriever's and BM25's scores still order items the head is unsure about. The part of it that
# is the head's probability of a value the shopper ruled out costs RULED_WEIGHT instead. Chosen on dev material
# only (benchmarks/constraint_weights.py, thin labels: the request benchmark's dev half, 300 val dialogs per
# shopper): predicted 1 / 0.5 / 0.25 gave precision@12 0.887 / 0.876 / 0.864 and template success@10 at turn 5
# 0.927 / 0.967 / 0.967 (paraphrase shopper 0.857 / 0.910 / 0.940); a ruled-out value's probability at weight 3
# cleans more negation pages (0.875 vs 0.688) but costs dialogs (template 0.910, paraphrase 0.850), as the template
# shopper's "not like this one" rules out the shown colour, which a target the head is unsure of may share.
PREDICTED_WEIGHT = 0.5
RULED_WEIGHT = PREDICTED_WEIGHT


class FeedbackReader:
    """What a dialog's feedback says so far in the catalog's exact words (AttributeParser; later turns override
    earlier): the keyword baseline's reader, as a shop's search box reads."""

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


Probabilities = Mapping[str, tuple[np.ndarray, Sequence[str], np.ndarray]]  # name -> (rows, values, (rows, values))


def facet_priority(name: str) -> float:
    return PRIORITY.get(attribute_kind(name), OTHER_PRIORITY)


class FeedbackConstraints:
    """Soft, ranked constraints from the feedback (read by a SemanticReader).

    Per constrained attribute an item earns a credit in [0, 1]: the credit of its value among the wanted ones
    (1 for the value asked for, partial for a neighbouring shade or a unisex item), 0 for a ruled-out value. Its
    penalty is PENALTY x (1 + the facets' priority-weighted shortfalls) when it falls short anywhere, else 0: items
    that fit everything come first; among the rest the most important facets and the nearest values win, and
    the ranker's own score orders equal penalties.

    `attributes` (one dict per catalog row) may hold predicted values for items without labels; `probabilities`
    (attribute -> (rows, the head's values, row x value probabilities)) makes those rows count by confidence:
    their credit is the expected credit under the attribute head, and their shortfall costs PREDICTED_WEIGHT per
    priority unit of score, not a tier below the items that fit (RULED_WEIGHT for the probability of a ruled-out
    value). An item with no value earns no credit.
    """

    def __init__(self, catalog: Catalog, attributes: Sequence[Mapping[str, str]] | None = None,
                 probabilities: Probabilities | None = None, reader: SemanticReader | None = None,
                 predicted_weight: float = PREDICTED_WEIGHT, ruled_weight: float = RULED_WEIGHT) -> None:
        rows = attributes if attributes is not None else [item.attributes for item in catalog]
        # the values to read the words into are those of the rows, predicted ones included: a thin catalog with
        # no colour labels still has predicted colours to rank by
        vocabulary = vocabulary_of(rows, catalog.attribute_names())
        self.reader = reader or SemanticReader(vocabulary, rows)
        self.size = len(rows)
        self.codes: dict[str, np.ndarray] = {}
        self.value_codes: dict[str, dict[str, int]] = {}
        for name in vocabulary:
            values = [row.get(name) for row in rows]
            table = {value: code for code, value in enumerate(dict.fromkeys(v for v in values if v is not None))}
            self.value_codes[name] = table
            self.codes[name] = np.array([table.get(v, -1) if v is not None else -1 for v in values], dtype=np.int32)
        self.soft: dict[str, tuple[np.ndarray, list[str], np.ndarray]] = {}
        self.predicted: dict[str, np.ndarray] = {}  # attribute -> per row, whether its value is a prediction
        for name, (predicted_rows, values, matrix) in (probabilities or {}).items():
            if name in self.codes and len(predicted_rows):
                self.soft[name] = (np.asarray(predicted_rows, dtype=np.int64), list(values),
                                   np.asarray(matrix, dtype=np.float32))
                self.predicted[name] = np.zeros(self.size, dtype=bool)
                self.predicted[name][self.soft[name][0]] = True
        self.predicted_weight, self.ruled_weight = predicted_weight, ruled_weight

    def _credits(self, name: str, wanted: Mapping[str, float] | None, ruled: set[str],
                 rows: np.ndarray | None) -> np.ndarray:
        """Per row, the credit it earns for one attribute's constraint."""
        table = self.value_codes[name]
        def credit_of(value: str) -> float:
            if value in ruled:
                return 0.0
            return float(wanted.get(value, 0.0)) if wanted is not None else 1.0
        by_code = np.array([credit_of(value) for value in table] + [0.0], dtype=np.float32)  # last: no value
        codes = self.codes[name] if rows is None else self.codes[name][rows]
        credits = by_code[codes]
        if name in self.soft:
            predicted_rows, values, matrix = self.soft[name]
            expected = matrix @ np.array([credit_of(value) for value in values], dtype=np.float32)
            if rows is None:
                credits[predicted_rows] = expected
            else:
                position = {int(r): i for i, r in enumerate(predicted_rows)}
                picks = [(i, position[int(r)]) for i, r in enumerate(rows) if int(r) in position]
                if picks:
                    at, source = map(list, zip(*picks, strict=True))
                    credits[at] = expected[source]
        return credits

    def _ruled_mass(self, name: str, ruled: set[str], rows: np.ndarray | None) -> np.ndarray:
        """Per row, the attribute head's probability that the item has a ruled-out value (0 on labelled rows)."""
        if name not in self.soft or not ruled:
            return np.zeros(self.size if rows is None else len(rows), dtype=np.float32)
        predicted_rows, values, matrix = self.soft[name]
        by_row = np.zeros(self.size, dtype=np.float32)
        by_row[predicted_rows] = matrix @ np.array([value in ruled for value in values], dtype=np.float32)
        return by_row if rows is None else by_row[rows]

    def shortfalls(self, state: DialogState, rows: Sequence[int] | None = None) -> dict[str, np.ndarray]:
        """Attribute -> per row 1 - credit, for every attribute the dialog constrains."""
        wanted, ruled_out = self.reader.constraints(state)
        return self._shortfalls(wanted, ruled_out, None if rows is None else np.asarray(rows, dtype=np.int64))

    def _shortfalls(self, wanted: Mapping[str, Mapping[str, float]], ruled_out: Mapping[str, set[str]],
                    rows: np.ndarray | None) -> dict[str, np.ndarray]:
        return {name: 1.0 - self._credits(name, wanted.get(name), ruled_out.get(name, set()), rows)
                for name in self.codes.keys() & (wanted.keys() | ruled_out.keys())}

    def penalties(self, state: DialogState, rows: Sequence[int] | None = None) -> np.ndarray | None:
        """Per row (all catalog rows when None) the penalty to subtract: 0 when it fits everything, else
        PENALTY x (1 + priority-weighted shortfalls) for labels, plus the weighted shortfalls of predicted values;
        None when the dialog set no constraint."""
        wanted, ruled_out = self.reader.constraints(state)
        chosen = None if rows is None else np.asarray(rows, dtype=np.int64)
        shortfalls = self._shortfalls(wanted, ruled_out, chosen)
        if not shortfalls:
            return None
        labelled = np.zeros(len(next(iter(shortfalls.values()))), dtype=np.float32)
        guessed = np.zeros_like(labelled)
        for name, short in shortfalls.items():
            weighted = facet_priority(name) * short
            predicted = self.predicted.get(name)
            if predicted is None:
                labelled += weighted
                continue
            if chosen is not None:
                predicted = predicted[chosen]
            ruled = facet_priority(name) * self._ruled_mass(name, ruled_out.get(name, set()), chosen)
            labelled += np.where(predicted, 0.0, weighted)
            guessed += np.where(predicted, self.predicted_weight * (weighted - ruled) + self.ruled_weight * ruled, 0.0)
        tier = np.where(labelled > FIT_TOLERANCE, PENALTY * (1.0 + labelled), 0.0)
        return (tier + guessed).astype(np.float32)

    def mismatches(self, state: DialogState) -> np.ndarray | None:
        """Per catalog row, how many constrained attributes it falls short of (None: the dialog set none)."""
        shortfalls = self.shortfalls(state)
        if not shortfalls:
            return None
        return sum((short > FIT_TOLERANCE).astype(np.float32) for short in shortfalls.values())

    def apply(self, scores: np.ndarray, states: Sequence[DialogState]) -> np.ndarray:
        """`scores` (dialogs x catalog rows) less each dialog's penalties, in place."""
        for row, state in enumerate(states):
            penalty = self.penalties(state)
            if penalty is not None:
                scores[row] -= penalty
        return scores
