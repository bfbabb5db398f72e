"""The SQLite state store's file: its connections, settings (pragmas), versioned schema, and
how SQLite's errors become the catalog's.

The file is in WAL mode, so readers never wait for a writer and several processes on one
machine can share it (the scheduler and the aggregator). A single statement is atomic on its
own; every read-modify-write runs in a ``BEGIN IMMEDIATE`` transaction, which takes the file's
one write lock before reading, so it cannot interleave with another writer, in this process or
another one. A writer that finds the lock taken waits up to the busy timeout.

Durability: ``synchronous=NORMAL`` (the default) writes each commit to the write-ahead log
before it returns and flushes the log to the disk at checkpoints. A committed transaction
survives a killed process (SIGKILL included: the log is in the operating system's cache,
which outlives the process), and the file is never left inconsistent; only a power cut or a
kernel crash may roll back the last commits, as Redis with ``appendfsync everysec`` may lose
its last second. ``FULL`` flushes the log at every commit, so those survive a power cut too,
at the cost of one disk flush per write (milliseconds; heartbeats are writes).

The schema is versioned by ``PRAGMA user_version``: ``MIGRATIONS[i]`` takes a file from
version i to i + 1, so a later change appends a migration and files of every earlier version
are brought up to date when opened.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from fedstream.errors import StorageUnusable, Unavailable

Synchronous = Literal["full", "normal"]

# One table per role, every key scoped by tenant; records are JSON (``fedstream.state.records``).
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        "CREATE TABLE agents (tenant TEXT NOT NULL, agent_id TEXT NOT NULL, record TEXT NOT NULL,"
        " heartbeat REAL NOT NULL, PRIMARY KEY (tenant, agent_id)) WITHOUT ROWID",
        "CREATE TABLE runs (tenant TEXT NOT NULL, run_id TEXT NOT NULL, created_unix REAL NOT NULL,"
        " record TEXT NOT NULL, PRIMARY KEY (tenant, run_id)) WITHOUT ROWID",
        "CREATE INDEX runs_by_age ON runs (tenant, created_unix, run_id)",
        "CREATE TABLE rounds (tenant TEXT NOT NULL, run_id TEXT NOT NULL, round INTEGER NOT NULL,"
        " record TEXT NOT NULL, PRIMARY KEY (tenant, run_id, round)) WITHOUT ROWID",
        "CREATE TABLE aggregations (tenant TEXT NOT NULL, journal TEXT NOT NULL, run_id TEXT NOT NULL,"
        " round INTEGER NOT NULL, finished INTEGER NOT NULL, record TEXT NOT NULL,"
        " PRIMARY KEY (tenant, journal, run_id, round)) WITHOUT ROWID",
        "CREATE TABLE documents (tenant TEXT NOT NULL, kind TEXT NOT NULL, doc_id TEXT NOT NULL,"
        " record TEXT NOT NULL, PRIMARY KEY (tenant, kind, doc_id)) WITHOUT ROWID",
        "CREATE TABLE marks (tenant TEXT NOT NULL, scope TEXT NOT NULL, key TEXT NOT NULL,"
        " PRIMARY KEY (tenant, scope, key)) WITHOUT ROWID",
        "CREATE TABLE leases (tenant TEXT NOT NULL, name TEXT NOT NULL, holder TEXT NOT NULL,"
        " expires REAL NOT NULL, PRIMARY KEY (tenant, name)) WITHOUT ROWID",
    ),
    (
        # The audit log: entries by sequence number, action and actor as columns to filter on.
        "CREATE TABLE audit (tenant TEXT NOT NULL, seq INTEGER NOT NULL, action TEXT NOT NULL,"
        " actor TEXT NOT NULL, record TEXT NOT NULL, PRIMARY KEY (tenant, seq)) WITHOUT ROWID",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


class Database:
    """One SQLite file, and a pool of connections to it that threads take one at a time.

    Raises StorageUnusable when the file cannot be created, opened or written, is not a
    database, or was written by a newer schema.
    """

    def __init__(self, path: Path, busy_timeout_s: float = 30.0, synchronous: Synchronous = "normal") -> None:
        self.path = path
        self.busy_timeout_s = busy_timeout_s
        self.synchronous = synchronous
        self._lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._closed = False
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with self.connection() as conn:
                self._wal(conn)
                self._migrate(conn)
        except (OSError, sqlite3.Error) as e:
            self.close()
            raise StorageUnusable(f"cannot use the state file {path}: {_not_a_directory(path) or _reason(e)}") from e
        except StorageUnusable:
            self.close()
            raise

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions; every transaction below is explicit.
        conn = sqlite3.connect(
            self.path, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA synchronous={self.synchronous.upper()}")
        return conn

    def _wal(self, conn: sqlite3.Connection) -> None:
        """Switches the file to WAL (once: the mode is kept in the file). Another process doing
        the same at the same moment may hold the lock it needs; that is waited out."""
        give_up = time.monotonic() + self.busy_timeout_s
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > give_up:
                    raise
                time.sleep(0.05)
        if str(mode).lower() != "wal":
            raise StorageUnusable(
                f"cannot use the state file {self.path}: its file system does not support SQLite's "
                f"WAL mode (journal mode {mode}); use a local disk"
            )

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Brings the schema up to SCHEMA_VERSION in one transaction (DDL is transactional)."""
        with self._transaction(conn):
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise StorageUnusable(
                    f"cannot use the state file {self.path}: it was written by a newer fedstream "
                    f"(schema version {version}; this one knows up to {SCHEMA_VERSION})"
                )
            for migration in MIGRATIONS[version:]:
                for statement in migration:
                    conn.execute(statement)
            # Written even when unchanged: a file this process cannot write fails here, at start.
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @staticmethod
    @contextlib.contextmanager
    def _transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")

    @contextlib.contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        """A connection of this thread's own until the block ends (a single statement on it is
        atomic); raises Unavailable once the store is closed."""
        with self._lock:
            if self._closed:
                raise Unavailable(f"sqlite file {self.path} is closed")
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._connect()
        try:
            yield conn
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            with self._lock:
                if self._closed:
                    conn.close()
                else:
                    self._idle.append(conn)

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A connection in a ``BEGIN IMMEDIATE`` transaction, committed when the block ends and
        rolled back when it raises: the block's reads and writes are one atomic step."""
        with self.connection() as conn, self._transaction(conn):
            yield conn

    def close(self) -> None:
        """Closes every connection; the store cannot be used after."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def _not_a_directory(path: Path) -> str:
    """"afile is a file, not a directory" when a directory the path runs through is a file; "" otherwise."""
    for parent in reversed(path.parents):
        if parent.exists() and not parent.is_dir():
            return f"{parent} is a file, not a directory"
    return ""


def _reason(e: BaseException) -> str:
    """Why a file could not be used, in words for an operator."""
    text = f"{e.strerror} ({e.filename})" if isinstance(e, OSError) and e.strerror and e.filename else str(e)
    if isinstance(e, PermissionError) or "readonly" in text or "unable to open" in text:
        return f"{text}; the file and its directory must be writable by this process"
    return text
