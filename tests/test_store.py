"""The dialog store on SQLite and on a real PostgreSQL server: turns in order with every field, a turn stored twice
is a conflict, photos come back, turns survive a killed writer, threads and processes share it, export gives
training pairs."""

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
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest

from assistant.cli import main
from assistant.core.catalog import CaptionPair
from assistant.core.dialog import ShownImage
from assistant.core.store import (
    DialogStore,
    PostgresStore,
    SQLiteStore,
    TurnConflict,
    export_dialogs,
    open_store,
    read_caption_pairs,
    read_dialogs,
)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def fresh_postgres(postgres_url: str) -> str:
    """A new, empty database on the session's PostgreSQL server."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return postgres_url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a store lives: a SQLite data folder, or a new PostgreSQL database."""
    return str(tmp_path) if request.param == "sqlite" else request.getfixturevalue("fresh_postgres")


@pytest.fixture
def store(location: str) -> Iterator[DialogStore]:
    with open_store(location, source="app", catalog="fp123") as opened:
        yield opened


def _log_dialog(log: DialogStore, session: str, pick: str | None) -> None:
    log.log_turn(session, 0, "text", "a red dress", None, ["a", "b", "c"], understood={"colour": "red"})
    log.log_turn(session, 1, "feedback", "longer sleeves", "b", ["d", "e"], clicked=True)
    log.log_turn(session, 2, "feedback", "in blue", "d", ["f", "g"])
    if pick:
        log.log_pick(session, pick)


def test_store_keeps_turns_in_order_with_every_field(store: DialogStore, location: str) -> None:
    _log_dialog(store, "s1", "g")
    store.close()
    [dialog] = list(read_dialogs(location))
    assert dialog["session"] == "s1" and dialog["source"] == "app" and dialog["catalog"] == "fp123"
    assert dialog["final_pick"] == "g"
    assert [t["kind"] for t in dialog["turns"]] == ["text", "feedback", "feedback"]
    assert [t["reference"] for t in dialog["turns"]] == [None, "b", "d"]
    assert [t["clicked"] for t in dialog["turns"]] == [False, True, False]
    assert dialog["turns"][0]["shown"] == ["a", "b", "c"]
    assert dialog["turns"][0]["understood"] == {"colour": "red"}
    assert isinstance(store, PostgresStore) or sqlite3.connect(store.path).execute(
        "PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_turn_stored_twice_is_a_conflict_and_changes_nothing(store: DialogStore) -> None:
    store.log_turn("s", 0, "text", "a coat", None, ["a", "b"])
    with pytest.raises(TurnConflict):
        store.log_turn("s", 0, "text", "a hat", None, ["c"])
    store.log_turn("s", 1, "feedback", "in red", "a", ["d"])
    assert [(t.turn, t.text, t.shown) for t in store.turns("s")] == [(0, "a coat", ["a", "b"]), (1, "in red", ["d"])]
    assert [t.turn for t in store.turns("s", since=1)] == [1] and store.turns("nobody") == []
    with pytest.raises(ValueError, match="turn kind"):
        store.log_turn("s", 2, "shout", "hi", None, [])
    assert store.dialog("nobody") is None and len(store.dialog("s").turns) == 2


def test_a_photo_turn_keeps_its_vector_and_attributes(store: DialogStore) -> None:
    vector = np.random.default_rng(0).standard_normal(48).astype(np.float32)
    store.log_turn("p", 0, "photo", None, None, ["x"], photo=ShownImage(vector, {"colour": "rouge ✓"}))
    [turn] = store.turns("p")
    assert turn.kind == "photo" and turn.photo.attributes == {"colour": "rouge ✓"}
    assert turn.photo.image.dtype == np.float32 and np.array_equal(turn.photo.image, vector)


def test_a_log_written_before_photos_were_stored_opens_and_grows(tmp_path: Path) -> None:
    old = sqlite3.connect(tmp_path / "dialogs.sqlite")
    old.executescript("""
        CREATE TABLE sessions (session_id TEXT PRIMARY KEY, source TEXT NOT NULL, catalog TEXT NOT NULL,
            started_at REAL NOT NULL, final_pick TEXT, picked_at REAL);
        CREATE TABLE turns (session_id TEXT NOT NULL REFERENCES sessions(session_id), turn INTEGER NOT NULL,
            at REAL NOT NULL, kind TEXT NOT NULL, text TEXT, reference TEXT, clicked INTEGER NOT NULL,
            shown TEXT NOT NULL, understood TEXT NOT NULL, PRIMARY KEY (session_id, turn));
        INSERT INTO sessions VALUES ('old', 'app', 'fp', 1.0, NULL, NULL);
        INSERT INTO turns VALUES ('old', 0, 1.0, 'text', 'a dress', NULL, 0, '["a"]', '{}');
        """)
    old.close()
    with SQLiteStore(tmp_path) as store:
        store.log_turn("old", 1, "feedback", "in red", "a", ["b"])
        assert [(t.text, t.photo) for t in store.turns("old")] == [("a dress", None), ("in red", None)]


def test_export_dialogs_command_reads_a_folder_or_a_postgresql_url(store: DialogStore, location: str,
                                                                  tmp_path: Path) -> None:
    _log_dialog(store, "finished", pick="g")
    store.close()
    out = tmp_path / "cli.jsonl"
    assert main(["export-dialogs", "--data", location, "--out", str(out)]) == 0  # a URL keeps its "//"
    assert read_caption_pairs(out) == [CaptionPair("b", "g", "longer sleeves"), CaptionPair("d", "g", "in blue")]


def test_export_writes_pairs_to_the_final_pick_and_whole_dialogs(store: DialogStore, location: str,
                                                                tmp_path: Path) -> None:
    log = store
    _log_dialog(log, "finished", pick="g")
    _log_dialog(log, "abandoned", pick=None)
    log.log_turn("picked-what-was-talked-about", 0, "item", None, "x", ["x", "y"], clicked=True)
    log.log_turn("picked-what-was-talked-about", 1, "feedback", "shorter", "x", ["y"])
    log.log_pick("picked-what-was-talked-about", "x")
    log.close()
    out = tmp_path / "export" / "dialogs.jsonl"
    counts = export_dialogs(location, out)
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


def test_threads_and_a_second_process_write_to_one_store(location: str) -> None:
    log = open_store(location)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for turn in range(20):
                log.log_turn(f"thread-{n}", turn, "feedback", f"turn {turn}", "r", [str(turn)])
        except BaseException as error:  # surfaced by the assert below
            errors.append(error)

    other_process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        from assistant.core.store import open_store
        log = open_store({location!r}, source="cli")
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
    log.close()
    dialogs = {d["session"]: d for d in read_dialogs(location)}
    assert sorted(dialogs) == ["process", "thread-0", "thread-1", "thread-2", "thread-3"]
    assert all(len(d["turns"]) == 20 for d in dialogs.values())
    assert dialogs["process"]["source"] == "cli"


def test_a_killed_writer_loses_no_stored_turn(location: str) -> None:
    """SIGKILL right after a turn was acknowledged: every acknowledged turn is in the log."""
    script = textwrap.dedent(f"""
        import sys
        from assistant.core.store import open_store
        log = open_store({location!r})
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
    [dialog] = list(read_dialogs(location))
    turns = [t["turn"] for t in dialog["turns"]]
    assert turns[: acknowledged + 1] == list(range(acknowledged + 1))
