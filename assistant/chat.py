"""The terminal chat: one ShoppingSession at a time, a number picks the reference, text refines."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import IO, Any

from assistant.core.catalog import Item
from assistant.core.messages import format_understood, key_attributes
from assistant.core.store import open_store
from assistant.session import ShoppingSession

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
    """The shopping dialog in a terminal, until `quit` or end of input; stores its dialogs in `data_dir` (a
    folder, .sqlite file or PostgreSQL URL) when given."""
    store = open_store(data_dir, source="cli", catalog=assistant.catalog.fingerprint) if data_dir else None
    session = ShoppingSession(assistant, store)
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
        if store is not None:
            store.close()
    print("Bye.", file=output)
    return session
