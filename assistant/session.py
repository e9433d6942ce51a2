"""One shopper's session, the same for the Gradio app, the terminal chat and the HTTP API: start, refine, click,
pick, every turn stored; any process rebuilds a session from its stored turns and carries on."""

from __future__ import annotations

import logging
import os
import random
import threading
from dataclasses import dataclass, field
from typing import Any

import faiss
import torch
from PIL import Image
from threadpoolctl import threadpool_limits

from assistant.core.catalog import Item
from assistant.core.dialog import PAGE_SIZE, ShownImage
from assistant.core.messages import EMPTY_MESSAGE_PROMPT, clean_message, open_upload
from assistant.core.store import DialogStore, StoredTurn, TurnConflict, new_session_id

log = logging.getLogger(__name__)


_thread_settings = threading.local()


def turn_threads(count: int) -> None:
    """Rank the turns this thread plays with `count` torch, faiss and BLAS threads.

    A turn is too small to gain from more, and a server plays many at once: with the libraries' defaults (every
    core) the OpenBLAS workers that numpy calls from 32 request threads spin against each other, which on 2 cores
    made 32 concurrent API turns 10x slower. OpenMP (torch, faiss) keeps its setting per thread, so each thread
    sets it; the BLAS limit holds for the whole process.
    """
    if getattr(_thread_settings, "count", None) != count:
        torch.set_num_threads(count)
        faiss.omp_set_num_threads(count)
        threadpool_limits(count, user_api="blas")
        _thread_settings.count = count


class ForeignDialog(ValueError):
    """A stored dialog that was held over another catalog: its item ids mean nothing here."""


@dataclass
class TurnOutcome:
    """What one action did: whether the dialog moved, and a note for the shopper (a prompt, a truncation)."""

    advanced: bool
    note: str | None = None
    text: str | None = None  # the message as the dialog read it


@dataclass
class ShoppingSession:
    """One shopper's dialog with the assistant: a browser tab of the app, the terminal chat, a dialog of the API.

    `results` are the items on show; `reference` is the item the next message talks about: the one the shopper
    clicked, else the top result. Each turn is stored (when a store is given) before its results are returned,
    with what it needs to be played again and the page it showed: `resume` on any process plays the turns again,
    each keeping its stored page (a batched ranking can break a near-tie the other way), so it rebuilds the same
    dialog, and `catch_up` plays the turns another process stored since. Its turns
    rank with `threads` torch threads in whichever thread plays them (a turn is too small to gain from more).
    """

    assistant: Any
    store: DialogStore | None = None
    page_size: int = PAGE_SIZE
    id: str = field(default_factory=new_session_id)
    dialog: Any = None
    results: list[Item] = field(default_factory=list)
    clicked: Item | None = None
    photo_image: Image.Image | None = None
    picked: Item | None = None
    understood: dict[str, str] = field(default_factory=dict)
    turns: int = 0
    threads: int = 1

    def __post_init__(self) -> None:
        if not self.results:
            self.results = self.browse_items()

    @classmethod
    def resume(cls, assistant: Any, store: DialogStore, session_id: str, threads: int = 1) -> ShoppingSession | None:
        """The stored session rebuilt by playing its turns again, or None when nothing of it is stored.

        ForeignDialog when it was held over another catalog.
        """
        stored = store.dialog(session_id)
        if stored is None:
            return None
        fingerprint = assistant.catalog.fingerprint
        if stored.catalog and fingerprint and stored.catalog != fingerprint:
            raise ForeignDialog(f"dialog {session_id} was held over another catalog ({stored.catalog}, "
                                f"this one is {fingerprint})")
        session = cls(assistant, store, id=session_id, threads=threads)
        for turn in stored.turns:
            session._replay(turn)
        if stored.final_pick and stored.final_pick in assistant.catalog:
            session.picked = assistant.catalog[stored.final_pick]
        return session

    def catch_up(self) -> int:
        """Play the turns another process (a second tab, another replica) stored since ours; how many."""
        if self.store is None:
            return 0
        later = self.store.turns(self.id, since=self.turns)
        for turn in later:
            self._replay(turn)
        return len(later)

    @property
    def started(self) -> bool:
        return self.dialog is not None

    @property
    def reference(self) -> Item | None:
        """The catalog item the next message is about: the clicked one, else the dialog's default (top result)."""
        if self.clicked is not None:
            return self.clicked
        default = self.dialog.reference if self.started else None
        return default if isinstance(default, Item) else None

    @property
    def reference_is_photo(self) -> bool:
        """Whether the next message is about the shopper's own photo (a dialog started from a photo)."""
        return self.started and self.clicked is None and self.dialog.reference is not None \
            and not isinstance(self.dialog.reference, Item)

    def browse_items(self) -> list[Item]:
        """A varied first page to click from before the shopper has said anything (different per session)."""
        items = self.assistant.catalog.items
        return random.Random(self.id).sample(items, min(self.page_size, len(items)))

    def _item(self, item: Item | str) -> Item:
        """A catalog item from an Item or an id; ValueError naming an id the catalog does not have."""
        if isinstance(item, Item):
            return item
        if item not in self.assistant.catalog:
            raise ValueError(f"no item {item!r} in the catalog")
        return self.assistant.catalog[item]

    def _record(self, kind: str, text: str | None, reference: Item | None, results: list[Item],
                photo: ShownImage | None = None) -> None:
        self.results = list(results)[: self.page_size]
        self.understood = dict(self.assistant.understood(self.dialog))
        if self.store is not None:
            try:
                self.store.log_turn(self.id, self.turns, kind, text, reference.id if reference else None,
                                    [item.id for item in self.results], clicked=self.clicked is not None,
                                    understood=self.understood, photo=photo)
            except TurnConflict:
                self._rebuild()  # our turn was not stored: become the stored dialog again, then say so
                raise
        self.turns += 1
        self.clicked = None

    def _rebuild(self) -> None:
        stored = ShoppingSession.resume(self.assistant, self.store, self.id, self.threads) \
            if self.store is not None else None
        fresh = stored or ShoppingSession(self.assistant, self.store, self.page_size, self.id, threads=self.threads)
        for name in ("dialog", "results", "clicked", "photo_image", "picked", "understood", "turns"):
            setattr(self, name, getattr(fresh, name))

    def _replay(self, turn: StoredTurn) -> None:
        """Play one stored turn again exactly as it was first played (nothing is stored again)."""
        turn_threads(self.threads)
        store, self.store = self.store, None
        try:
            if turn.kind == "feedback":
                self.clicked = self._item(turn.reference) if turn.clicked and turn.reference else None
                self.say(turn.text)
            elif turn.kind == "text":
                self.clicked = self._item(turn.reference) if turn.reference else None
                self.say(turn.text)
            elif turn.kind == "item":
                self.click(turn.reference)
            else:
                self._start_from_photo(turn.photo, turn.text)
        finally:
            self.store = store
        shown = [item.id for item in self.results]
        if shown != turn.shown and all(item_id in self.assistant.catalog for item_id in turn.shown):
            log.warning("dialog %s turn %d played again ranks other items than it showed; it keeps the stored page",
                        self.id, turn.turn)
            self.results = self.dialog.show(turn.shown)

    def say(self, raw_text: str | None, reference: Item | str | None = None) -> TurnOutcome:
        """A typed message: starts the dialog (about `reference` or the clicked item, if any) or refines the
        reference (`reference` when given, else the clicked item, else the top result)."""
        message = clean_message(raw_text)
        if not message.text:
            return TurnOutcome(False, EMPTY_MESSAGE_PROMPT)
        turn_threads(self.threads)
        if reference is not None:
            self.clicked = self._item(reference)
        reference = self.reference
        clicked = self.clicked.id if self.clicked else None
        if self.started:
            results = self.dialog.reply(message.text, reference=clicked)
            self._record("feedback", message.text, reference, results)
        else:
            dialog = self.assistant.dialog(page_size=self.page_size)
            results = dialog.start(text=message.text, item=clicked)
            self.dialog = dialog
            self._record("text", message.text, reference, results)
        return TurnOutcome(True, message.note, message.text)

    def click(self, item: Item | str) -> TurnOutcome:
        """Make an item the reference; before any dialog, clicking starts one from it (similar items)."""
        item = self._item(item)
        if self.started:
            self.clicked = item
            return TurnOutcome(False)
        turn_threads(self.threads)
        dialog = self.assistant.dialog(page_size=self.page_size)
        results = dialog.start(item=item.id)
        self.dialog = dialog
        self._record("item", None, item, results)
        self.clicked = item
        return TurnOutcome(True)

    def photo(self, path: str | os.PathLike, text: str | None = None) -> TurnOutcome:
        """Start a fresh dialog from an uploaded photo (and words about it, when given); a ValueError
        (UploadError for a bad file) says why not, and changes nothing."""
        image = open_upload(path)
        message = clean_message(text)
        turn_threads(self.threads)
        photo = self.assistant.context().photo(image)
        self.restart()
        self._start_from_photo(photo, message.text or None)
        self.photo_image = image
        return TurnOutcome(True, message.note, message.text or None)

    def _start_from_photo(self, photo: ShownImage, text: str | None) -> None:
        dialog = self.assistant.dialog(page_size=self.page_size)
        results = dialog.start(text=text, image=photo)
        self.dialog = dialog
        self._record("photo", text, None, results, photo=photo)

    def pick(self, item: Item | str | None = None) -> Item:
        """The shopper's final choice in this dialog: the given item, else the clicked one, else the top result."""
        if not self.started:
            raise ValueError("nothing to pick yet: say what you are looking for first")
        chosen = (self._item(item) if item is not None else None) or self.clicked or self.results[0]
        self.picked = chosen
        if self.store is not None:
            self.store.log_pick(self.id, chosen.id)
        return chosen

    def restart(self) -> None:
        """Forget the dialog and start a new session (the old one stays in the store)."""
        self.id = new_session_id()
        self.dialog = None
        self.clicked = None
        self.photo_image = None
        self.picked = None
        self.understood = {}
        self.turns = 0
        self.results = self.browse_items()
