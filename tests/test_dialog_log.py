"""The dialog log: turns survive a killed writer, threads and processes share it, export gives training pairs."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from assistant.core.catalog import CaptionPair
from assistant.core.dialog_log import DialogLog, export_dialogs, read_caption_pairs, read_dialogs

REPO = Path(__file__).resolve().parent.parent


def _log_dialog(log: DialogLog, session: str, pick: str | None) -> None:
    log.log_turn(session, 0, "text", "a red dress", None, ["a", "b", "c"], understood={"colour": "red"})
    log.log_turn(session, 1, "feedback", "longer sleeves", "b", ["d", "e"], clicked=True)
    log.log_turn(session, 2, "feedback", "in blue", "d", ["f", "g"])
    if pick:
        log.log_pick(session, pick)


def test_log_keeps_turns_in_order_with_every_field(tmp_path: Path) -> None:
    log = DialogLog(tmp_path, source="app", catalog="fp123")
    _log_dialog(log, "s1", "g")
    log.close()
    [dialog] = list(read_dialogs(tmp_path))
    assert dialog["session"] == "s1" and dialog["source"] == "app" and dialog["catalog"] == "fp123"
    assert dialog["final_pick"] == "g"
    assert [t["kind"] for t in dialog["turns"]] == ["text", "feedback", "feedback"]
    assert [t["reference"] for t in dialog["turns"]] == [None, "b", "d"]
    assert [t["clicked"] for t in dialog["turns"]] == [False, True, False]
    assert dialog["turns"][0]["shown"] == ["a", "b", "c"]
    assert dialog["turns"][0]["understood"] == {"colour": "red"}
    connection = sqlite3.connect(tmp_path / "dialogs.sqlite")
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_unknown_turn_kind_is_refused(tmp_path: Path) -> None:
    log = DialogLog(tmp_path)
    with pytest.raises(ValueError, match="turn kind"):
        log.log_turn("s", 0, "shout", "hi", None, [])


def test_export_writes_pairs_to_the_final_pick_and_whole_dialogs(tmp_path: Path) -> None:
    log = DialogLog(tmp_path)
    _log_dialog(log, "finished", pick="g")
    _log_dialog(log, "abandoned", pick=None)
    log.log_turn("picked-what-was-talked-about", 0, "item", None, "x", ["x", "y"], clicked=True)
    log.log_turn("picked-what-was-talked-about", 1, "feedback", "shorter", "x", ["y"])
    log.log_pick("picked-what-was-talked-about", "x")
    log.close()
    out = tmp_path / "export" / "dialogs.jsonl"
    counts = export_dialogs(tmp_path / "dialogs.sqlite", out)
    assert counts == {"dialogs": 3, "finished": 2, "pairs": 2, "turns": 8}
    # the opening request has no reference, and words about the pick itself say nothing about a difference
    assert read_caption_pairs(out) == [CaptionPair("b", "g", "longer sleeves"), CaptionPair("d", "g", "in blue")]
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    dialogs = [r for r in records if r["kind"] == "dialog"]
    assert [d["session"] for d in dialogs] == ["finished", "abandoned", "picked-what-was-talked-about"]
    assert [len(d["turns"]) for d in dialogs] == [3, 3, 2]


def test_export_of_a_missing_log_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no dialog log"):
        export_dialogs(tmp_path / "nowhere", tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()


def test_threads_and_a_second_process_write_to_one_log(tmp_path: Path) -> None:
    log = DialogLog(tmp_path)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for turn in range(20):
                log.log_turn(f"thread-{n}", turn, "feedback", f"turn {turn}", "r", [str(turn)])
        except BaseException as error:  # surfaced by the assert below
            errors.append(error)

    other_process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        from assistant.core.dialog_log import DialogLog
        log = DialogLog({str(tmp_path)!r}, source="cli")
        for turn in range(20):
            log.log_turn("process", turn, "feedback", "more", "r", ["x"])
        """)], cwd=REPO)
    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert other_process.wait(timeout=60) == 0
    assert not errors
    dialogs = {d["session"]: d for d in read_dialogs(tmp_path)}
    assert sorted(dialogs) == ["process", "thread-0", "thread-1", "thread-2", "thread-3"]
    assert all(len(d["turns"]) == 20 for d in dialogs.values())
    assert dialogs["process"]["source"] == "cli"


def test_a_killed_writer_loses_no_logged_turn(tmp_path: Path) -> None:
    """SIGKILL right after a turn was acknowledged: every acknowledged turn is in the log."""
    script = textwrap.dedent(f"""
        import sys
        from assistant.core.dialog_log import DialogLog
        log = DialogLog({str(tmp_path)!r})
        turn = 0
        while True:
            log.log_turn("victim", turn, "feedback", "turn %d" % turn, "r", ["x"] * 12)
            print(turn, flush=True)
            turn += 1
        """)
    writer = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
    acknowledged = -1
    deadline = time.monotonic() + 60
    while acknowledged < 30 and time.monotonic() < deadline:
        acknowledged = int(writer.stdout.readline())
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(timeout=30)
    writer.stdout.close()
    assert acknowledged >= 30
    [dialog] = list(read_dialogs(tmp_path))
    turns = [t["turn"] for t in dialog["turns"]]
    assert turns[: acknowledged + 1] == list(range(acknowledged + 1))
