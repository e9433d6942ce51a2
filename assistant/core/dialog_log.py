"""The shoppers' dialogs, one SQLite transaction per turn, and their export as training pairs and whole dialogs."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from assistant.core.catalog import CaptionPair
from assistant.core.storage import atomic_write

LOG_FILE = "dialogs.sqlite"
TURN_KINDS = ("text", "photo", "item", "feedback")
SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    catalog TEXT NOT NULL,
    started_at REAL NOT NULL,
    final_pick TEXT,
    picked_at REAL
);
CREATE TABLE IF NOT EXISTS turns (
    session_id TEXT NOT NULL REFERENCES sessions(session_id),
    turn INTEGER NOT NULL,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    text TEXT,
    reference TEXT,
    clicked INTEGER NOT NULL,
    shown TEXT NOT NULL,
    understood TEXT NOT NULL,
    PRIMARY KEY (session_id, turn)
);
"""


def log_path(data: str | os.PathLike) -> Path:
    """The log file of a data folder (or the file itself when given one)."""
    path = Path(data)
    return path if path.suffix == ".sqlite" else path / LOG_FILE


def new_session_id() -> str:
    return uuid.uuid4().hex


class DialogLog:
    """Appends turns and final picks to `<data_dir>/dialogs.sqlite`; safe to share between threads and processes.

    WAL journal with synchronous=FULL: a turn is on disk when `log_turn` returns, so a killed process
    (or a lost machine) keeps every turn logged before it.
    """

    def __init__(self, data_dir: str | os.PathLike, source: str = "app", catalog: str = "") -> None:
        self.path = log_path(data_dir)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.source = source
        self.catalog = catalog
        self._lock = threading.Lock()
        self._connection = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute("PRAGMA synchronous=FULL")
        with self._connection:
            self._connection.executescript(SCHEMA)

    def _ensure_session(self, session_id: str) -> None:
        self._connection.execute(
            "INSERT OR IGNORE INTO sessions (session_id, source, catalog, started_at) VALUES (?, ?, ?, ?)",
            (session_id, self.source, self.catalog, time.time()))

    def log_turn(self, session_id: str, turn: int, kind: str, text: str | None, reference: str | None,
                 shown: list[str], clicked: bool = False, understood: dict[str, str] | None = None) -> None:
        """One turn: how it came (`text`, `photo`, `item` or `feedback`), the words, the reference, what was shown."""
        if kind not in TURN_KINDS:
            raise ValueError(f"turn kind must be one of {TURN_KINDS}, not {kind!r}")
        with self._lock, self._connection:
            self._ensure_session(session_id)
            self._connection.execute(
                "INSERT OR REPLACE INTO turns VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (session_id, turn, time.time(), kind, text, reference, int(clicked),
                 json.dumps(list(shown)), json.dumps(understood or {}, ensure_ascii=False)))

    def log_pick(self, session_id: str, item_id: str) -> None:
        """The shopper's final pick ("this is it") for the session."""
        with self._lock, self._connection:
            self._ensure_session(session_id)
            self._connection.execute("UPDATE sessions SET final_pick = ?, picked_at = ? WHERE session_id = ?",
                                     (item_id, time.time(), session_id))

    def close(self) -> None:
        with self._lock:
            self._connection.close()


def read_dialogs(data: str | os.PathLike) -> Iterator[dict]:
    """Every logged dialog, oldest first: session fields plus its turns in order."""
    path = log_path(data)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no dialog log here (the app and `chat --data` write one)")
    connection = sqlite3.connect(path, timeout=30)
    connection.row_factory = sqlite3.Row
    try:
        sessions = connection.execute("SELECT * FROM sessions ORDER BY started_at, session_id").fetchall()
        for session in sessions:
            turns = connection.execute("SELECT * FROM turns WHERE session_id = ? ORDER BY turn",
                                       (session["session_id"],)).fetchall()
            yield {
                "session": session["session_id"], "source": session["source"], "catalog": session["catalog"],
                "started_at": session["started_at"], "final_pick": session["final_pick"],
                "turns": [{"turn": t["turn"], "at": t["at"], "kind": t["kind"], "text": t["text"],
                           "reference": t["reference"], "clicked": bool(t["clicked"]), "shown": json.loads(t["shown"]),
                           "understood": json.loads(t["understood"])} for t in turns],
            }
    finally:
        connection.close()


def training_pairs(dialog: dict) -> list[CaptionPair]:
    """(reference, final pick, the words said about the reference) for each worded turn of a finished dialog."""
    target = dialog["final_pick"]
    if not target:
        return []
    return [CaptionPair(turn["reference"], target, turn["text"]) for turn in dialog["turns"]
            if turn["text"] and turn["reference"] and turn["reference"] != target]


def export_dialogs(db: str | os.PathLike, out_jsonl: str | os.PathLike) -> dict[str, int]:
    """Write the log as JSONL: `{"kind": "pair", reference, target, caption, session}` lines, then one
    `{"kind": "dialog", ...}` line per dialog. `db` is a data folder or the .sqlite file. Returns the counts."""
    lines: list[str] = []
    dialog_lines: list[str] = []
    counts = {"dialogs": 0, "finished": 0, "pairs": 0, "turns": 0}
    for dialog in read_dialogs(db):
        counts["dialogs"] += 1
        counts["turns"] += len(dialog["turns"])
        counts["finished"] += dialog["final_pick"] is not None
        for pair in training_pairs(dialog):
            lines.append(json.dumps({"kind": "pair", "reference": pair.reference, "target": pair.target,
                                     "caption": pair.caption, "session": dialog["session"]}, ensure_ascii=False))
            counts["pairs"] += 1
        dialog_lines.append(json.dumps({"kind": "dialog", **dialog}, ensure_ascii=False))
    text = "".join(line + "\n" for line in lines + dialog_lines)
    atomic_write(Path(out_jsonl), lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return counts


def read_caption_pairs(path: str | os.PathLike) -> list[CaptionPair]:
    """The `pair` lines of an exported file, as the simulator and retriever trainers read them."""
    pairs = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as error:
                raise ValueError(f"{path}:{line_number}: not JSON ({error})") from error
            if record.get("kind") == "pair":
                pairs.append(CaptionPair(str(record["reference"]), str(record["target"]), str(record["caption"])))
    return pairs
