"""The terminal chat and the shopping session under it: numbers pick references, text refines, each turn logged."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from assistant.chat import chat
from assistant.core.messages import EMPTY_MESSAGE_PROMPT, UploadError
from assistant.core.store import SQLiteStore, read_dialogs
from assistant.session import ShoppingSession


def run_chat(assistant, lines: list[str], data_dir: Path | None = None) -> tuple[str, ShoppingSession]:
    output = io.StringIO()
    session = chat(assistant, io.StringIO("".join(line + "\n" for line in lines)), output, data_dir=data_dir)
    return output.getvalue(), session


def listed_ids(text: str) -> list[list[str]]:
    """The item ids of each printed result list, in order."""
    blocks, current = [], []
    for line in text.splitlines():
        match = re.match(r"\s*(\d+)\. .* \[(\S+)\]$", line.removeprefix("> "))
        if match:
            if match.group(1) == "1" and current:
                blocks.append(current)
                current = []
            current.append(match.group(2))
    return blocks + ([current] if current else [])


def test_chat_refines_with_a_picked_reference_and_logs_every_turn(demo_assistant, tmp_path: Path) -> None:
    text, session = run_chat(demo_assistant, ["a red dress", "3", "in blue", "shorter", "pick 1", "quit"], tmp_path)
    browsing, *lists = listed_ids(text)
    assert [len(ids) for ids in [browsing, *lists]] == [12, 12, 12, 12]
    assert "Reference: " in text and "Understood: " in text and text.rstrip().endswith("Bye.")
    [dialog] = list(read_dialogs(tmp_path))
    assert dialog["source"] == "cli"
    assert [t["text"] for t in dialog["turns"]] == ["a red dress", "in blue", "shorter"]
    assert [t["shown"] for t in dialog["turns"]] == lists
    assert dialog["turns"][1]["reference"] == lists[0][2] and dialog["turns"][1]["clicked"]
    assert dialog["turns"][2]["reference"] == lists[1][0] and not dialog["turns"][2]["clicked"]
    assert dialog["final_pick"] == lists[2][0] == session.picked.id


def test_chat_handles_empty_bad_numbers_reset_and_end_of_input(demo_assistant, tmp_path: Path) -> None:
    text, session = run_chat(demo_assistant, ["", "   ", "99", "pick 1", "black trousers", "reset", "a skirt"],
                             tmp_path)
    assert text.count(EMPTY_MESSAGE_PROMPT) == 2
    assert "Choose a number from 1 to 12." in text and "Say what you are looking for first" in text
    assert "Starting over." in text and text.rstrip().endswith("Bye.")
    assert [len(ids) for ids in listed_ids(text)] == [12, 12, 12, 12]  # first page, answer, new first page, answer
    dialogs = list(read_dialogs(tmp_path))
    assert [[t["text"] for t in d["turns"]] for d in dialogs] == [["black trousers"], ["a skirt"]]
    assert dialogs[0]["final_pick"] is None  # "pick 1" before any dialog chose nothing
    assert session.turns == 1


def test_chat_starts_from_a_catalog_item_number(demo_assistant) -> None:
    text, session = run_chat(demo_assistant, ["5", "with short sleeves"])
    browsing, *lists = listed_ids(text)
    assert lists[0][0] == browsing[4]  # a similar-items page that starts with the chosen item itself
    assert len(lists) == 2 and browsing[4] not in lists[1]
    assert session.turns == 2


def test_chat_reports_an_unusable_photo_and_goes_on(demo_assistant, tmp_path: Path) -> None:
    (tmp_path / "notes.jpg").write_text("not a photo")
    text, _ = run_chat(demo_assistant, [f"photo {tmp_path / 'notes.jpg'}", f"photo {tmp_path / 'absent.png'}",
                                        "a dress"])
    assert "not an image I can read" in text and "did not arrive" in text
    assert [len(ids) for ids in listed_ids(text)] == [12, 12]  # the first page, then the answer to "a dress"


def test_session_keeps_state_across_messages_and_restarts_clean(demo_assistant, tmp_path: Path) -> None:
    log = SQLiteStore(tmp_path)
    session = ShoppingSession(demo_assistant, log)
    assert not session.started and len(session.results) == 12 and session.reference is None
    long_message = "a green " + "very " * 300 + "long coat"
    outcome = session.say(long_message)
    assert outcome.advanced and outcome.note and len(outcome.text) <= 500
    first_id = session.id
    assert session.reference == session.results[0]
    session.click(session.results[4])
    clicked = session.results[4]
    assert session.reference == clicked
    session.say("in black")
    assert session.clicked is None and clicked not in session.results  # what was talked about is not shown again
    with pytest.raises(UploadError):
        bad = tmp_path / "bad.png"
        bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
        session.photo(bad)
    assert session.id == first_id and session.turns == 2  # a bad upload changes nothing
    session.restart()
    assert session.id != first_id and not session.started and session.turns == 0
    log.close()
    [dialog] = list(read_dialogs(tmp_path))
    assert dialog["session"] == first_id and len(dialog["turns"]) == 2


def test_session_starts_from_a_photo(demo_assistant, tmp_path: Path) -> None:
    item = demo_assistant.catalog.items[7]
    photo = tmp_path / "photo.png"
    demo_assistant.catalog.open_image(item).save(photo)
    session = ShoppingSession(demo_assistant)
    assert session.photo(photo).advanced
    assert session.reference_is_photo and session.reference is None and len(session.results) == 12
    assert item in session.results[:3]  # the photo's own item is among the closest look-alikes
    session.say("in red")
    assert not session.reference_is_photo and session.reference == session.results[0]
    logged = session.turns
    assert logged == 2
