"""One shopper's session (start, refine, click, pick, each turn logged) and its terminal chat loop."""

from __future__ import annotations

import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from PIL import Image

from assistant.core.catalog import Item
from assistant.core.dialog_log import DialogLog, new_session_id
from assistant.core.messages import EMPTY_MESSAGE_PROMPT, clean_message, format_understood, key_attributes, open_upload

RESULTS_SHOWN = 12


@dataclass
class TurnOutcome:
    """What one action did: whether the dialog moved, and a note for the shopper (a prompt, a truncation)."""

    advanced: bool
    note: str | None = None
    text: str | None = None  # the message as the dialog read it


@dataclass
class ShoppingSession:
    """One shopper's dialog with the assistant; the app keeps one per browser tab, the terminal chat one at a time.

    `results` are the items on show; `reference` is the item the next message talks about: the one the shopper
    clicked, else the top result. Each turn is logged (when a log is given) before its results are returned.
    """

    assistant: Any
    log: DialogLog | None = None
    page_size: int = RESULTS_SHOWN
    id: str = field(default_factory=new_session_id)
    dialog: Any = None
    results: list[Item] = field(default_factory=list)
    clicked: Item | None = None
    photo_image: Image.Image | None = None
    picked: Item | None = None
    understood: dict[str, str] = field(default_factory=dict)
    turns: int = 0

    def __post_init__(self) -> None:
        if not self.results:
            self.results = self.browse_items()

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

    def _record(self, kind: str, text: str | None, reference: Item | None, results: list[Item]) -> None:
        self.results = list(results)[: self.page_size]
        self.understood = dict(self.assistant.understood(self.dialog))
        if self.log is not None:
            self.log.log_turn(self.id, self.turns, kind, text, reference.id if reference else None,
                              [item.id for item in self.results], clicked=self.clicked is not None,
                              understood=self.understood)
        self.turns += 1
        self.clicked = None

    def say(self, raw_text: str | None) -> TurnOutcome:
        """A typed message: starts the dialog (about the clicked item, if any) or refines the reference."""
        message = clean_message(raw_text)
        if not message.text:
            return TurnOutcome(False, EMPTY_MESSAGE_PROMPT)
        reference = self.reference
        clicked = self.clicked.id if self.clicked else None
        if self.started:
            results = self.dialog.reply(message.text, reference=clicked)
            self._record("feedback", message.text, reference, results)
        else:
            dialog = self.assistant.dialog()
            results = dialog.start(text=message.text, item=clicked)
            self.dialog = dialog
            self._record("text", message.text, reference, results)
        return TurnOutcome(True, message.note, message.text)

    def click(self, item: Item | str) -> TurnOutcome:
        """Make an item the reference; before any dialog, clicking starts one from it (similar items)."""
        item = self.assistant.catalog[item] if isinstance(item, str) else item
        if self.started:
            self.clicked = item
            return TurnOutcome(False)
        dialog = self.assistant.dialog()
        results = dialog.start(item=item.id)
        self.dialog = dialog
        self._record("item", None, item, results)
        self.clicked = item
        return TurnOutcome(True)

    def photo(self, path: str | os.PathLike) -> TurnOutcome:
        """Start a fresh dialog from an uploaded photo; a ValueError (UploadError for a bad file) says why not."""
        image = open_upload(path)
        dialog = self.assistant.dialog()
        results = dialog.start(image=image)
        self.restart()
        self.dialog = dialog
        self._record("photo", None, None, results)
        self.photo_image = image
        return TurnOutcome(True)

    def pick(self, item: Item | str | None = None) -> Item:
        """The shopper's final choice in this dialog: the given item, else the clicked one, else the top result."""
        if not self.started:
            raise ValueError("nothing to pick yet: say what you are looking for first")
        chosen = (self.assistant.catalog[item] if isinstance(item, str) else item) or self.clicked or self.results[0]
        self.picked = chosen
        if self.log is not None:
            self.log.log_pick(self.id, chosen.id)
        return chosen

    def restart(self) -> None:
        """Forget the dialog and start a new session (the old one stays in the log)."""
        self.id = new_session_id()
        self.dialog = None
        self.clicked = None
        self.photo_image = None
        self.picked = None
        self.understood = {}
        self.turns = 0
        self.results = self.browse_items()


HELP = ("Describe what you want; then say how to change it. A number makes that item the reference for your next "
        "message; 'pick N' marks your final choice; 'photo PATH' starts from a photo; 'reset' starts over; 'quit'.")


def _print_results(session: ShoppingSession, output: IO[str]) -> None:
    for number, item in enumerate(session.results, start=1):
        print(f"{number:3d}. {item.title} — {' · '.join(key_attributes(item))}  [{item.id}]", file=output)
    if session.started:
        print(f"Understood: {format_understood(session.understood)}", file=output)


def _item_number(text: str, session: ShoppingSession) -> Item | None:
    if text.isdigit() and 1 <= int(text) <= len(session.results):
        return session.results[int(text) - 1]
    return None


def chat(assistant: Any, input_stream: IO[str] = sys.stdin, output: IO[str] = sys.stdout,
         data_dir: str | os.PathLike | None = None) -> ShoppingSession:
    """The shopping dialog in a terminal, until `quit` or end of input; logs to `data_dir` when given."""
    log = DialogLog(data_dir, source="cli", catalog=assistant.catalog.fingerprint) if data_dir else None
    session = ShoppingSession(assistant, log)
    print(f"Fashion assistant over {len(assistant.catalog):,} items. {HELP}", file=output)
    _print_results(session, output)
    try:
        while True:
            print("> ", end="", file=output, flush=True)
            line = input_stream.readline()
            if not line:
                break
            command = " ".join(line.split())
            word, _, rest = command.partition(" ")
            if command.lower() in ("quit", "exit", "q"):
                break
            if command.lower() in ("help", "?"):
                print(HELP, file=output)
            elif command.lower() == "reset":
                session.restart()
                print("Starting over.", file=output)
                _print_results(session, output)
            elif word.lower() == "pick" and rest:
                item = _item_number(rest, session)
                if item is None:
                    print(f"Pick a number from 1 to {len(session.results)}.", file=output)
                elif not session.started:
                    print("Say what you are looking for first; then pick from what I show you.", file=output)
                else:
                    print(f"Your pick: {session.pick(item).title} [{item.id}]. Thank you!", file=output)
            elif word.lower() == "photo" and rest:
                try:
                    session.photo(Path(rest).expanduser())
                except ValueError as error:  # a bad file, or an assistant that cannot read photos
                    print(error, file=output)
                    continue
                _print_results(session, output)
            elif command.isdigit():
                item = _item_number(command, session)
                if item is None:
                    print(f"Choose a number from 1 to {len(session.results)}.", file=output)
                    continue
                outcome = session.click(item)
                if outcome.advanced:
                    _print_results(session, output)
                print(f"Reference: {item.title}. Now say how it should change.", file=output)
            else:
                outcome = session.say(line)
                if outcome.note:
                    print(outcome.note, file=output)
                if outcome.advanced:
                    _print_results(session, output)
    finally:
        if log is not None:
            log.close()
    print("Bye.", file=output)
    return session
