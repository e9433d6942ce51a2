"""The dialog store: every shopper's turns (enough to rebuild the dialog anywhere) and picks, in SQLite or
PostgreSQL, and their export as training pairs and whole dialogs."""

from __future__ import annotations

import base64
import json
import os
import pwd
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from psycopg_pool import ConnectionPool

from assistant.core.catalog import CaptionPair
from assistant.core.dialog import ShownImage
from assistant.core.storage import atomic_write

LOG_FILE = "dialogs.sqlite"
TURN_KINDS = ("text", "photo", "item", "feedback")
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
# DOUBLE PRECISION and INTEGER mean the same in both databases (SQLite reads the first as REAL).
SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    catalog TEXT NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    final_pick TEXT,
    picked_at DOUBLE PRECISION
);
CREATE TABLE IF NOT EXISTS turns (
    session_id TEXT NOT NULL REFERENCES sessions(session_id),
    turn INTEGER NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    kind TEXT NOT NULL,
    text TEXT,
    reference TEXT,
    clicked INTEGER NOT NULL,
    shown TEXT NOT NULL,
    understood TEXT NOT NULL,
    photo TEXT,
    PRIMARY KEY (session_id, turn)
)
"""
ENSURE_SESSION = ("INSERT INTO sessions (session_id, source, catalog, started_at) VALUES (?, ?, ?, ?) "
                  "ON CONFLICT (session_id) DO NOTHING")
INSERT_TURN = ("INSERT INTO turns (session_id, turn, at, kind, text, reference, clicked, shown, understood, photo) "
               "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
TURN_COLUMNS = "turn, at, kind, text, reference, clicked, shown, understood, photo"
SESSION_COLUMNS = "session_id, source, catalog, started_at, final_pick"


def new_session_id() -> str:
    return uuid.uuid4().hex


class TurnConflict(RuntimeError):
    """A turn number that is already stored: another request (a second tab, another replica) moved the dialog on."""


@dataclass(frozen=True)
class StoredTurn:
    """One stored turn: how it came (`text`, `photo`, `item`, `feedback`), the words, the item it was about (the
    clicked one when `clicked`), the item ids shown in answer, and for a photo its image vector and attributes."""

    turn: int
    kind: str
    text: str | None
    reference: str | None
    shown: list[str]
    clicked: bool = False
    understood: dict[str, str] = field(default_factory=dict)
    photo: ShownImage | None = None
    at: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """The turn as the export and the log readers see it (the photo's vector left out)."""
        return {"turn": self.turn, "at": self.at, "kind": self.kind, "text": self.text, "reference": self.reference,
                "clicked": self.clicked, "shown": list(self.shown), "understood": dict(self.understood)}


@dataclass(frozen=True)
class StoredDialog:
    """One session as stored: where it came from, over which catalog, its final pick and its turns in order."""

    session: str
    source: str
    catalog: str
    started_at: float
    final_pick: str | None
    turns: list[StoredTurn]

    def as_dict(self) -> dict[str, Any]:
        return {"session": self.session, "source": self.source, "catalog": self.catalog,
                "started_at": self.started_at, "final_pick": self.final_pick,
                "turns": [turn.as_dict() for turn in self.turns]}


def _photo_json(photo: ShownImage | None) -> str | None:
    if photo is None:
        return None
    vector = np.ascontiguousarray(photo.image, dtype=np.float32)
    return json.dumps({"vector": base64.b64encode(vector.tobytes()).decode("ascii"), "attributes": photo.attributes},
                      ensure_ascii=False)


def _photo_from_json(text: str | None) -> ShownImage | None:
    if not text:
        return None
    record = json.loads(text)
    vector = np.frombuffer(base64.b64decode(record["vector"]), dtype=np.float32).copy()
    return ShownImage(vector, dict(record["attributes"]))


def _turn_from_row(row: tuple) -> StoredTurn:
    turn, at, kind, text, reference, clicked, shown, understood, photo = row
    return StoredTurn(int(turn), kind, text, reference, json.loads(shown), bool(clicked), json.loads(understood),
                      _photo_from_json(photo), float(at))


class DialogStore:
    """Turns and picks of every session, safe to share between threads, processes and machines.

    A turn is stored in one transaction (its session row created with the first turn); storing a turn number
    that exists raises TurnConflict, so two writers can never both extend a dialog from the same state.
    Subclasses give the database: `SQLiteStore` (one file) and `PostgresStore` (a server, any number of replicas).
    """

    kind = ""

    def __init__(self, source: str = "app", catalog: str = "") -> None:
        self.source = source
        self.catalog = catalog

    def _write(self, statements: list[tuple[str, tuple]]) -> None:
        """Run the statements in one transaction; a duplicate key raises TurnConflict."""
        raise NotImplementedError

    def _read(self, sql: str, parameters: tuple = ()) -> list[tuple]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> DialogStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _session_row(self, session_id: str) -> tuple[str, tuple]:
        return ENSURE_SESSION, (session_id, self.source, self.catalog, time.time())

    def log_turn(self, session_id: str, turn: int, kind: str, text: str | None, reference: str | None,
                 shown: list[str], clicked: bool = False, understood: dict[str, str] | None = None,
                 photo: ShownImage | None = None) -> None:
        """Store one turn; it is durable (see the subclass) when this returns. TurnConflict if `turn` exists."""
        if kind not in TURN_KINDS:
            raise ValueError(f"turn kind must be one of {TURN_KINDS}, not {kind!r}")
        self._write([self._session_row(session_id),
                     (INSERT_TURN, (session_id, turn, time.time(), kind, text, reference, int(clicked),
                                    json.dumps(list(shown)), json.dumps(understood or {}, ensure_ascii=False),
                                    _photo_json(photo)))])

    def log_pick(self, session_id: str, item_id: str) -> None:
        """The shopper's final pick ("this is it") for the session."""
        self._write([self._session_row(session_id),
                     ("UPDATE sessions SET final_pick = ?, picked_at = ? WHERE session_id = ?",
                      (item_id, time.time(), session_id))])

    def turns(self, session_id: str, since: int = 0) -> list[StoredTurn]:
        """The session's turns numbered `since` and later, in order."""
        rows = self._read(f"SELECT {TURN_COLUMNS} FROM turns WHERE session_id = ? AND turn >= ? ORDER BY turn",
                          (session_id, since))
        return [_turn_from_row(row) for row in rows]

    def dialog(self, session_id: str) -> StoredDialog | None:
        """One session with all its turns, or None when no turn of it was stored."""
        rows = self._read(f"SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = ?", (session_id,))
        if not rows:
            return None
        session, source, catalog, started_at, final_pick = rows[0]
        return StoredDialog(session, source, catalog, float(started_at), final_pick, self.turns(session_id))

    def dialogs(self) -> Iterator[StoredDialog]:
        """Every session, oldest first."""
        for row in self._read("SELECT session_id FROM sessions ORDER BY started_at, session_id"):
            stored = self.dialog(row[0])
            if stored is not None:
                yield stored


class SQLiteStore(DialogStore):
    """The store in one SQLite file (`<data_dir>/dialogs.sqlite`), shared by the threads and processes of a machine.

    WAL journal with synchronous=NORMAL: a commit is in the WAL file (the OS's page cache) when `log_turn`
    returns, so a killed process never loses a stored turn and the file is never corrupt; the fsync is batched
    to WAL checkpoints (about every 1,000 pages, some thousands of turns), so a power cut or an OS crash can
    lose the turns since the last checkpoint.
    """

    kind = "sqlite"

    def __init__(self, location: str | os.PathLike, source: str = "app", catalog: str = "",
                 create: bool = True) -> None:
        super().__init__(source, catalog)
        self.path = sqlite_path(location)
        if not create and not self.path.exists():
            raise FileNotFoundError(f"{self.path}: no dialog log here (the app, the API and `chat --data` write one)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._connection = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute("PRAGMA synchronous=NORMAL")
        with self._lock:
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                for statement in SCHEMA.split(";"):
                    self._connection.execute(statement)
                columns = {row[1] for row in self._connection.execute("PRAGMA table_info(turns)")}
                if "photo" not in columns:  # a log written before photos were stored
                    self._connection.execute("ALTER TABLE turns ADD COLUMN photo TEXT")
                self._connection.execute("COMMIT")
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise

    def _write(self, statements: list[tuple[str, tuple]]) -> None:
        with self._lock:
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                for sql, parameters in statements:
                    self._connection.execute(sql, parameters)
            except sqlite3.IntegrityError as error:
                self._connection.execute("ROLLBACK")
                raise TurnConflict(str(error)) from error
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
            self._connection.execute("COMMIT")

    def _read(self, sql: str, parameters: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._connection.execute(sql, parameters).fetchall()

    def close(self) -> None:
        with self._lock:
            self._connection.close()


class PostgresStore(DialogStore):
    """The store in a PostgreSQL database (psycopg 3, a small connection pool per process), for replicas.

    Each turn is one transaction committed with the server's default `synchronous_commit`: the server has the
    turn in its flushed WAL when `log_turn` returns, so neither a killed replica nor a crashed server loses a
    stored turn; PostgreSQL batches the fsync of concurrent commits (group commit).
    """

    kind = "postgresql"

    def __init__(self, url: str, source: str = "app", catalog: str = "", pool_size: int = 4) -> None:
        super().__init__(source, catalog)
        self.url = url
        self._pool = ConnectionPool(url, min_size=1, max_size=pool_size, open=True, timeout=30,
                                    kwargs={"autocommit": True}, name="fashion-assistant")
        with self._pool.connection() as connection, connection.transaction():
            connection.execute("SELECT pg_advisory_xact_lock(7243901)")  # replicas starting together: one creates
            for statement in SCHEMA.split(";"):
                connection.execute(statement)

    def _write(self, statements: list[tuple[str, tuple]]) -> None:
        with self._pool.connection() as connection:
            try:
                with connection.transaction():
                    for sql, parameters in statements:
                        connection.execute(sql.replace("?", "%s"), parameters)
            except psycopg.errors.UniqueViolation as error:
                raise TurnConflict(str(error)) from error

    def _read(self, sql: str, parameters: tuple = ()) -> list[tuple]:
        with self._pool.connection() as connection:
            return connection.execute(sql.replace("?", "%s"), parameters).fetchall()

    def close(self) -> None:
        self._pool.close()


def sqlite_path(location: str | os.PathLike) -> Path:
    """The SQLite file of a data folder, a `.sqlite` file or a `sqlite:///path` URL."""
    text = os.fspath(location)
    path = Path(text.removeprefix("sqlite:///") if text.startswith("sqlite:///") else text)
    return path if path.suffix in (".sqlite", ".db") else path / LOG_FILE


def open_store(location: str | os.PathLike, source: str = "app", catalog: str = "", create: bool = True) -> DialogStore:
    """A store from where it lives: `postgresql://…` (PostgreSQL), else a data folder, `.sqlite` file or
    `sqlite:///path` (SQLite). With `create=False` a SQLite store that does not exist is a FileNotFoundError."""
    text = os.fspath(location)
    if text.startswith(POSTGRES_SCHEMES):
        return PostgresStore(text, source=source, catalog=catalog)
    return SQLiteStore(text, source=source, catalog=catalog, create=create)


def describe_store(location: str | os.PathLike) -> str:
    """Where a store lives, for a log line: the SQLite file, or the PostgreSQL URL without its password."""
    text = os.fspath(location)
    if text.startswith(POSTGRES_SCHEMES):
        info = psycopg.conninfo.conninfo_to_dict(text)
        return f"postgresql://{info.get('user', '')}@{info.get('host', '')}:{info.get('port', '')}/" \
               f"{info.get('dbname', '')}"
    return str(sqlite_path(text))


class PostgresMissing(RuntimeError):
    """PostgreSQL's server programs (initdb, pg_ctl) are not installed."""


def _postgres_program(name: str) -> str | None:
    """A PostgreSQL server program: on PATH, else the newest of Debian's /usr/lib/postgresql/*/bin."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]))
    return str(candidates[-1]) if candidates else None


@contextmanager
def temporary_postgres() -> Iterator[str]:
    """A throwaway PostgreSQL server (tests, benchmarks): a new cluster in a temp dir, listening on 127.0.0.1 only,
    stopped and deleted on exit; yields its URL. Run as the `postgres` user under root (initdb refuses root)."""
    initdb, pg_ctl = _postgres_program("initdb"), _postgres_program("pg_ctl")
    if not initdb or not pg_ctl:
        raise PostgresMissing("PostgreSQL's initdb/pg_ctl are not installed (apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="fashion-assistant-postgres-"))
    data = root / "data"
    as_user: list[str] = []
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(root, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    try:
        subprocess.run([*as_user, initdb, "-D", str(data), "-U", "assistant", "--auth=trust", "-E", "UTF8",
                        "--no-sync"], check=True, capture_output=True)
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-l", str(root / "server.log"), "-o",
                        f"-c listen_addresses=127.0.0.1 -p {port} -k {root}", "-w", "-t", "60", "start"],
                       check=True, capture_output=True)
        yield f"postgresql://assistant@127.0.0.1:{port}/postgres"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"],
                           capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def read_dialogs(location: str | os.PathLike) -> Iterator[dict]:
    """Every stored dialog, oldest first, as plain dicts: session fields plus its turns in order."""
    with open_store(location, create=False) as store:
        yield from (dialog.as_dict() for dialog in store.dialogs())


def training_pairs(dialog: dict) -> list[CaptionPair]:
    """(reference, final pick, the words said about the reference) for each worded turn of a finished dialog."""
    target = dialog["final_pick"]
    if not target:
        return []
    return [CaptionPair(turn["reference"], target, turn["text"]) for turn in dialog["turns"]
            if turn["text"] and turn["reference"] and turn["reference"] != target]


def export_dialogs(location: str | os.PathLike, out_jsonl: str | os.PathLike) -> dict[str, int]:
    """Write the store as JSONL: `{"kind": "pair", reference, target, caption, session}` lines, then one
    `{"kind": "dialog", ...}` line per dialog. `location` is a data folder, .sqlite file or PostgreSQL URL.
    Returns the counts."""
    lines: list[str] = []
    dialog_lines: list[str] = []
    counts = {"dialogs": 0, "finished": 0, "pairs": 0, "turns": 0}
    for dialog in read_dialogs(location):
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
