"""The one dialog loop: turns, rankers, batched simulated dialogs (training, evaluation) and one shopper's Dialog."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from PIL import Image

from assistant.core.catalog import Catalog, Item

PAGE_SIZE = 12  # items on one page of results: the app, the terminal chat and the HTTP API


def seeded_rng(*parts: object) -> random.Random:
    """A random generator fixed by its parts, the same in every process and whatever was drawn before."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode("utf-8"), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


@dataclass(frozen=True)
class ShownImage:
    """A shopper's photo standing in for a shown item: its backbone image vector and predicted attributes."""

    image: np.ndarray  # (D,) L2-normalised, in the space of ItemFeatures.image
    attributes: dict[str, str] = field(default_factory=dict, hash=False)


Shown = int | ShownImage  # a catalog row, or a photo


@dataclass
class Turn:
    """One turn: what the shopper was looking at (None when starting from words), what they said, the ranking."""

    shown: Shown | None
    feedback: str
    results: list[int] = field(default_factory=list)  # catalog rows, best first


@dataclass
class DialogState:
    """A dialog's history; rankers read it, the loop appends to it."""

    turns: list[Turn] = field(default_factory=list)

    def shown_rows(self) -> set[int]:
        """Catalog rows the shopper has been shown (never shown again)."""
        return {turn.shown for turn in self.turns if isinstance(turn.shown, int)}

    def next_shown(self) -> int | None:
        """The highest-ranked item of the last ranking not shown before: what the shopper talks about next."""
        if not self.turns:
            return None
        shown = self.shown_rows()
        return next((row for row in self.turns[-1].results if row not in shown), None)


class Ranker(Protocol):
    """Ranks the catalog for dialogs: the trained retriever and every baseline implement it."""

    def scores(self, states: Sequence[DialogState]) -> np.ndarray:
        """(len(states), catalog size) scores, higher is better."""
        ...

    def rank(self, states: Sequence[DialogState], k: int, exclude: Sequence[set[int]]) -> np.ndarray:
        """(len(states), k) best rows per dialog, skipping each dialog's `exclude` rows (-1 pads)."""
        ...


def top_rows(scores: np.ndarray, k: int, exclude: Sequence[set[int]]) -> np.ndarray:
    """The k best rows of each score row, skipping excluded rows; -1 pads when fewer remain."""
    scores = np.array(scores, dtype=np.float64, copy=True)
    for b, rows in enumerate(exclude):
        if rows:
            scores[b, list(rows)] = -np.inf
    k_eff = min(k, scores.shape[1])
    part = np.argpartition(-scores, k_eff - 1, axis=1)[:, :k_eff]
    order = np.take_along_axis(part, np.argsort(-np.take_along_axis(scores, part, 1), axis=1, kind="stable"), 1)
    out = np.full((len(scores), k), -1, dtype=np.int64)
    valid = np.isfinite(np.take_along_axis(scores, order, 1))
    out[:, :k_eff] = np.where(valid, order, -1)
    return out


class ScoreRanker:
    """Base for rankers that score the whole catalog: `rank` takes the top of `scores`."""

    def scores(self, states: Sequence[DialogState]) -> np.ndarray:
        raise NotImplementedError

    def rank(self, states: Sequence[DialogState], k: int, exclude: Sequence[set[int]]) -> np.ndarray:
        return top_rows(self.scores(states), k, exclude)


def advance(ranker: Ranker, states: Sequence[DialogState], shown: Sequence[Shown | None], feedback: Sequence[str],
            k: int = PAGE_SIZE, with_scores: bool = False) -> np.ndarray | None:
    """One turn for a batch of dialogs: append (shown, feedback), rank, store each dialog's top-k results.

    With `with_scores` the ranker scores the whole catalog (evaluation needs the target's exact rank) and
    the scores are returned; otherwise it is asked for the top k only (an index search, fast for one shopper).
    """
    for state, looked_at, text in zip(states, shown, feedback, strict=True):
        state.turns.append(Turn(looked_at, text))
    exclude = [state.shown_rows() for state in states]
    scores = ranker.scores(states) if with_scores else None
    rows = top_rows(scores, k, exclude) if scores is not None else ranker.rank(states, k, exclude)
    for state, ranked in zip(states, rows, strict=True):
        state.turns[-1].results = [int(r) for r in ranked if r >= 0]
    return scores


def target_ranks(scores: np.ndarray, targets: np.ndarray, exclude: Sequence[set[int]]) -> np.ndarray:
    """1-based rank of each dialog's target among the rows it was not shown yet (ties count against it)."""
    target_scores = scores[np.arange(len(scores)), targets]
    ranks = np.empty(len(scores), dtype=np.int64)
    for b, rows in enumerate(exclude):
        better = scores[b] >= target_scores[b]
        better[targets[b]] = False
        if rows:
            better[list(rows)] = False
        ranks[b] = 1 + int(better.sum())
    return ranks


def _respond(user: Any, shown: list[Item], targets: list[Item], turn: int) -> list[str]:
    if not shown:
        return []
    if hasattr(user, "respond_batch"):
        return list(user.respond_batch(shown, targets, [turn] * len(shown)))
    return [user.respond(s, t, turn) for s, t in zip(shown, targets, strict=True)]


@dataclass
class DialogRun:
    """Simulated dialogs: each one's history and the target's rank after every turn (1 from the turn it is top)."""

    states: list[DialogState]
    targets: np.ndarray  # (B,) catalog rows
    ranks: np.ndarray  # (B, turns) int, 0 where a turn was not played (rank_tracking off)

    def found(self) -> np.ndarray:
        """(B,) whether the target reached rank 1 (it is then the next item shown and the shopper stops)."""
        return (self.ranks == 1).any(axis=1)


def run_dialogs(ranker: Ranker, catalog: Catalog, targets: Sequence[int], user: Any, turns: int,
                start_rows: Sequence[int | None], openings: Sequence[str | None] | None = None,
                page_size: int = PAGE_SIZE, track_ranks: bool = True) -> DialogRun:
    """Play a batch of dialogs in lockstep, each looking for its target row.

    Turn 1 is about `start_rows[b]` (the user says how the target differs from it) or, where that is None,
    the opening request `openings[b]`. Each later turn shows the highest-ranked item not shown before and the
    user answers about it. With `track_ranks` the ranker scores the whole catalog each turn and the target's
    rank is recorded; a dialog whose target reaches rank 1 is over (the shopper is shown it next) and keeps
    rank 1. Without it only the top `page_size` is asked for (training rollouts) and dialogs run all turns.
    """
    targets = np.asarray(targets, dtype=np.int64)
    openings = list(openings) if openings is not None else [None] * len(targets)
    if not len(targets) == len(start_rows) == len(openings):
        raise ValueError("run_dialogs needs one start row or opening per target")
    for b, (row, opening) in enumerate(zip(start_rows, openings, strict=True)):
        if row is None and not opening:
            raise ValueError(f"dialog {b}: needs a start row or an opening request")
    items = catalog.items
    states = [DialogState() for _ in targets]
    ranks = np.zeros((len(targets), turns), dtype=np.int64)
    finished = np.zeros(len(targets), dtype=bool)
    for turn in range(1, turns + 1):
        active = [b for b in range(len(targets)) if not finished[b]]
        if not active:
            ranks[:, turn - 1] = 1
            continue
        shown: dict[int, int | None] = {}
        for b in active:
            shown[b] = start_rows[b] if turn == 1 else states[b].next_shown()
        asking = [b for b in active if shown[b] is not None]
        replies = _respond(user, [items[shown[b]] for b in asking], [items[targets[b]] for b in asking], turn)
        feedback = dict(zip(asking, replies, strict=True))
        texts = [feedback[b] if b in feedback else (openings[b] if turn == 1 else "") for b in active]
        scores = advance(ranker, [states[b] for b in active], [shown[b] for b in active], texts, page_size,
                         with_scores=track_ranks)
        if scores is not None:
            exclude = [states[b].shown_rows() for b in active]
            turn_ranks = target_ranks(scores, targets[active], exclude)
            ranks[active, turn - 1] = turn_ranks
            finished[active] = turn_ranks == 1
        ranks[finished, turn - 1] = 1
    return DialogRun(states, targets, ranks)


@dataclass
class RankingContext:
    """What one shopper's Dialog needs: the catalog, the ranker (retriever + its index) and, for photos, the
    backbone (image vector) and an attribute predictor (the photo's attributes), plus image vectors to find
    look-alikes when a dialog starts from an item or photo without words."""

    catalog: Catalog
    ranker: Ranker
    image_vectors: np.ndarray  # (N, D) ItemFeatures.image, catalog order
    backbone: Any = None  # encode_images(list[PIL.Image]) -> (n, D); pixels(list[PIL.Image]) -> uint8 (n, 3, H, W)
    attribute_predictor: Any = None  # predict_photo(embedding, pixels) -> dict[str, str]

    def photo(self, image: Image.Image) -> ShownImage:
        """An uploaded photo as a ShownImage (needs the backbone; attributes, colour included, when a predictor
        is given)."""
        if self.backbone is None:
            raise ValueError("starting from a photo needs the backbone, and this assistant was built without one")
        image = image.convert("RGB")
        vector = np.asarray(self.backbone.encode_images([image]), dtype=np.float32)[0]
        attributes = self.attribute_predictor.predict_photo(vector, self.backbone.pixels([image])) \
            if self.attribute_predictor else {}
        return ShownImage(vector, dict(attributes))

    def look_alikes(self, vector: np.ndarray, k: int, exclude: set[int]) -> list[int]:
        """Rows whose image vectors are closest to `vector`."""
        rows = top_rows((self.image_vectors @ vector)[None], k, [exclude])[0]
        return [int(r) for r in rows if r >= 0]


class Dialog:
    """One shopper's dialog: start from words, an item or a photo, then reply with how the items should change.

    Every ranking goes through the same `advance` step as training rollouts and evaluation. The item a reply
    is about defaults to the highest-ranked item not shown before (the current top-1); items the shopper
    has been shown are not shown again.
    """

    def __init__(self, context: RankingContext, page_size: int = PAGE_SIZE) -> None:
        self.context = context
        self.page_size = page_size
        self.state = DialogState()
        self._pending: Shown | None = None  # what the next reply is about when it is not the top result
        self._results: list[int] = []

    @property
    def turns(self) -> list[Turn]:
        return self.state.turns

    @property
    def results(self) -> list[Item]:
        """The items on show, best first."""
        return [self.context.catalog.items[row] for row in self._results]

    @property
    def reference(self) -> Item | ShownImage | None:
        """What the next reply is about by default: a started-from item or photo, else the top unshown result."""
        shown = self._next_shown()
        return self.context.catalog.items[shown] if isinstance(shown, int) else shown

    def start(self, text: str | None = None, item: Item | str | None = None,
              image: Image.Image | ShownImage | None = None) -> list[Item]:
        """Begin from an opening request, a catalog item (id or Item), or a photo, optionally with words.

        With words, the first turn is ranked by the retriever; an item or photo alone shows its look-alikes
        and becomes what the first reply is about. A photo already read (a ShownImage, as a stored dialog
        keeps it) starts the same dialog as the image it came from.
        """
        if self.state.turns or self._pending is not None:
            raise ValueError("this dialog has already started; make a new Dialog to start over")
        text = (text or "").strip()
        if item is not None and image is not None:
            raise ValueError("start from an item or from a photo, not both")
        shown: Shown | None = None
        if item is not None:
            shown = self._row(item)
        elif image is not None:
            shown = image if isinstance(image, ShownImage) else self.context.photo(image)
        if shown is None and not text:
            raise ValueError("say what you are looking for, or start from an item or a photo")
        if text:
            return self._turn(shown, text)
        vector = self.context.image_vectors[shown] if isinstance(shown, int) else shown.image
        exclude = {shown} if isinstance(shown, int) else set()
        self._pending = shown
        self._results = ([shown] if isinstance(shown, int) else []) + self.context.look_alikes(
            vector, self.page_size - len(exclude), exclude)
        return self.results

    def reply(self, text: str, reference: Item | str | None = None) -> list[Item]:
        """How the wanted item differs from `reference` (default: the current top result not shown before)."""
        text = (text or "").strip()
        if not text:
            raise ValueError("say how the item should change")
        if not self.state.turns and self._pending is None:
            raise ValueError("start the dialog first (Dialog.start)")
        shown = self._row(reference) if reference is not None else self._next_shown()
        return self._turn(shown, text)

    def show(self, items: Sequence[Item | str]) -> list[Item]:
        """Put `items` on show as the last turn's page instead of its ranking: a stored dialog played again keeps
        the page its shopper saw, even where the ranking breaks a near-tie the other way (a batched query differs
        from one alone in a float's last bits)."""
        rows = [self._row(item) for item in items]
        self._results = rows
        if self.state.turns and self._pending is None:
            self.state.turns[-1].results = list(rows)
        return self.results

    def _next_shown(self) -> Shown | None:
        if self._pending is not None:
            return self._pending
        return self.state.next_shown()

    def _row(self, item: Item | str) -> int:
        item_id = item.id if isinstance(item, Item) else str(item)
        if item_id not in self.context.catalog:
            raise ValueError(f"no item {item_id!r} in the catalog {self.context.catalog.name!r}")
        return self.context.catalog.index_of(item_id)

    def _turn(self, shown: Shown | None, text: str) -> list[Item]:
        self._pending = None
        advance(self.context.ranker, [self.state], [shown], [text], self.page_size)
        self._results = list(self.state.turns[-1].results)
        return self.results
