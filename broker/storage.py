"""The one way mailbag's stores reach SQL databases: the idempotency stores, the saga
store and the transactional outbox all parse their URLs, check their table names and
open their SQLite and PostgreSQL connections here.

A SQLite URL means what it means in SQLAlchemy:

- `sqlite:///relative/path.db` (three slashes): a file relative to the working directory;
- `sqlite:////absolute/path.db` (four slashes): an absolute path;
- `sqlite://` or `sqlite:///:memory:`: in memory, gone with the process.

Every SQLite connection runs in WAL mode (readers never block the writer, and other
processes on the host share the file) with `synchronous=FULL` unless its user says
otherwise: a commit returns once the write-ahead log is on disk, so a power cut loses
no committed transaction (a transactional handler's writes are committed together
with the record that acks its message). `synchronous=NORMAL` (the idempotency store's
ordinary records, see `mailbag.workers.stores.sqlite`) survives a crash of the process
but may lose the last commits before a power cut or an OS crash. A busy timeout makes
a writer wait its turn instead of failing under contention.

aiosqlite and asyncpg are imported when a connection is opened, never at `import
mailbag` time: an application that uses neither does not load them.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlencode, urlsplit, urlunsplit

from mailbag.broker.errors import ConfigurationError, StoreUnavailable
from mailbag.broker.url import mask_url, query_options

if TYPE_CHECKING:
    import aiosqlite
    import asyncpg

T = TypeVar("T")

#: SQLite's name for a database that lives in the process only
MEMORY = ":memory:"

#: how long a SQLite writer waits for another to finish before failing, in seconds
BUSY_TIMEOUT = 30.0

#: URL schemes for PostgreSQL, as libpq and asyncpg accept them
POSTGRES_SCHEMES = ("postgresql", "postgres")

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


@dataclass(frozen=True)
class StorageUrl:
    """A parsed store URL. `target` is the SQLite file (or `MEMORY`) for `sqlite`, and
    the DSN for `postgresql` with mailbag's own options taken out of its query;
    `options` holds those options."""

    scheme: str
    target: str
    options: dict[str, str] = field(default_factory=dict)

    @property
    def sqlite(self) -> bool:
        return self.scheme == "sqlite"


def parse_url(url: str, *, own: Iterable[str] = ("table",), what: str = "store") -> StorageUrl:
    """Split a `sqlite://` or `postgresql://` URL; `own` names the query options that
    are mailbag's (the rest of a PostgreSQL URL's query goes to the driver). Anything
    else raises `ConfigurationError` naming `what` the URL was for, password masked."""
    scheme = urlsplit(url).scheme.lower()
    options = query_options(url)
    if scheme == "sqlite":
        return StorageUrl("sqlite", sqlite_path(url, what=what), options)
    if scheme in POSTGRES_SCHEMES:
        mine = {k: v for k, v in options.items() if k in own}
        rest = {k: v for k, v in options.items() if k not in own}
        dsn = urlunsplit(urlsplit(url)._replace(scheme="postgresql", query=urlencode(rest)))
        return StorageUrl("postgresql", dsn, mine)
    raise ConfigurationError(
        f"unknown {what} URL {mask_url(url)!r}; expected sqlite:///relative.db, sqlite:////absolute.db"
        " or postgresql://user@host/db"
    )


def sqlite_path(url: str, *, what: str = "store") -> str:
    """The file a `sqlite:` URL names, in SQLAlchemy's meaning (see the module text)."""
    parts = urlsplit(url)
    if not url.lower().startswith("sqlite://") or parts.netloc:
        raise ConfigurationError(
            f"invalid SQLite {what} URL {mask_url(url)!r}: write sqlite:///relative.db, sqlite:////absolute.db"
            " or sqlite:// (in memory)"
        )
    return parts.path[1:] or MEMORY


def check_identifier(name: str, what: str = "table", *, qualified: bool = False) -> str:
    """`name` if it is safe to put in SQL as an identifier: letters, digits and '_'
    (and, when `qualified`, one `schema.` in front); otherwise `ConfigurationError`."""
    parts = name.split(".")
    if len(parts) > (2 if qualified else 1) or not all(_IDENTIFIER.match(p) for p in parts):
        shape = "[schema.]name" if qualified else "a name"
        raise ConfigurationError(f"invalid {what} name {name!r}: use {shape} of letters, digits and '_'")
    return name


# -- SQLite -----------------------------------------------------------------------


#: what every SQLite connection runs first (see the module text)
PRAGMAS = (
    f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}",
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = FULL",
)


def connect_blocking(path: str, *, synchronous: str = "FULL", busy_timeout: float = BUSY_TIMEOUT) -> sqlite3.Connection:
    """A blocking autocommit `sqlite3` connection in WAL mode, for work that runs a
    whole transaction in one call; `synchronous` and `busy_timeout` as the caller
    needs (see the module text for what `NORMAL` may lose)."""
    try:
        _make_folder(path)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
    except (OSError, sqlite3.Error) as exc:
        raise StoreUnavailable(f"cannot open the SQLite database {path!r}: {exc}") from None
    return conn


async def open_sqlite(path: str) -> aiosqlite.Connection:
    """An autocommit aiosqlite connection to `path` (its folder created if missing),
    in WAL mode with `synchronous=FULL` and the busy timeout."""
    import aiosqlite

    try:
        _make_folder(path)
        conn = await aiosqlite.connect(path, isolation_level=None)
    except (OSError, sqlite3.Error) as exc:
        raise StoreUnavailable(f"cannot open the SQLite database {path!r}: {exc}") from None
    try:
        for pragma in PRAGMAS:
            await conn.execute(pragma)
    except sqlite3.Error as exc:
        await conn.close()
        raise StoreUnavailable(f"cannot use the SQLite database {path!r}: {exc}") from None
    return conn


def _make_folder(path: str) -> None:
    if path != MEMORY:
        Path(path).parent.mkdir(parents=True, exist_ok=True)


class SqliteThread:
    """One blocking `sqlite3` connection (`connect_blocking`) on a thread of its own.
    `run(work)` runs `work(connection)` there: a batch of statements costs one hand-off
    between threads, where aiosqlite costs one or more per statement, and on a busy
    machine each hand-off waits for the scheduler."""

    def __init__(self, path: str, *, synchronous: str = "FULL") -> None:
        self.path = path
        self.synchronous = synchronous
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mailbag-sqlite")
        self._conn: sqlite3.Connection | None = None

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._call, work)

    def _call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._conn is None:
            self._conn = connect_blocking(self.path, synchronous=self.synchronous)
        return work(self._conn)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._close)
        self._executor.shutdown(wait=False)

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class SqliteConnections:
    """A pool of autocommit connections to one SQLite file. A connection that saw an
    error (a transaction cut short, a cancelled statement) is closed, not reused."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._idle: list[aiosqlite.Connection] = []
        self._open: set[aiosqlite.Connection] = set()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[aiosqlite.Connection]:
        conn = self._idle.pop() if self._idle else await self._connect()
        try:
            yield conn
        except BaseException:
            self._open.discard(conn)
            await conn.close()
            raise
        self._idle.append(conn)

    async def _connect(self) -> aiosqlite.Connection:
        conn = await open_sqlite(self.path)
        self._open.add(conn)
        return conn

    async def close(self) -> None:
        self._idle.clear()
        while self._open:
            await self._open.pop().close()


async def fetch_sqlite(conn: aiosqlite.Connection, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """The rows of one statement (none for a statement that returns none)."""
    async with conn.execute(sql, args) as cursor:
        return [tuple(row) for row in await cursor.fetchall()]


# -- PostgreSQL -------------------------------------------------------------------


async def open_postgres_pool(dsn: str, *, max_size: int = 10) -> asyncpg.Pool:
    """An asyncpg pool on `dsn`; `StoreUnavailable` (password masked) if unreachable."""
    import asyncpg

    try:
        return await asyncpg.create_pool(dsn, min_size=1, max_size=max_size)
    except (OSError, asyncpg.PostgresError) as exc:
        raise StoreUnavailable(f"cannot reach PostgreSQL at {mask_url(dsn)}: {exc}") from None


async def open_postgres(dsn: str) -> asyncpg.Connection:
    """One asyncpg connection on `dsn`; `StoreUnavailable` (password masked) if unreachable."""
    import asyncpg

    try:
        return await asyncpg.connect(dsn)
    except (OSError, asyncpg.PostgresError) as exc:
        raise StoreUnavailable(f"cannot reach PostgreSQL at {mask_url(dsn)}: {exc}") from None
