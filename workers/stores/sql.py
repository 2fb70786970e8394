"""What the SQL stores (SQLite, PostgreSQL) share: one table, and the statements and
steps that claim, complete and release a key in it, in a transaction or not.

A record is (key, token, outcome, expires_at); outcome NULL means a run holds it.
Claiming is one atomic upsert that only overwrites an expired record, so no lock is
held between statements. In a transaction, the upsert of a key another open
transaction has written waits for that one to end: a concurrent duplicate waits, then
sees the outcome.

Group commit: the claims, completes and releases that concurrent handlers ask for
while a batch is being written queue up and go in the next batch, one transaction
(so one disk flush) for all of them; each caller returns once its batch committed, so
nothing is acknowledged that is not on disk. Claims of a batch are one multi-row
upsert, completes one `UPDATE ... FROM (VALUES ...)`, releases one `DELETE`; both
drivers keep the statements prepared (sqlite3's statement cache, asyncpg's per connection). Keys this
process saw completed are answered from memory until their record expires: a done
record never changes before then, whoever holds the database.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Generator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, TypeVar

from mailbag.broker.storage import check_identifier
from mailbag.workers.stores import Claim, Transaction, TransactionalStore, new_token
from mailbag.workers.stores.batches import Batches, Op

DEFAULT_TABLE = "mailbag_idempotency"

T = TypeVar("T")
#: statements to run, each `(sql, args)`; the rows of each are sent back, and the
#: generator returns the answers
Steps = Generator[tuple[str, Sequence[Any]], list[tuple[Any, ...]] | None, T]

#: a claim whose record vanished between two statements asks again this soon
_RACE_RETRY = 0.05


class SqlStore(TransactionalStore):
    """Subclasses say how to reach the database; statements use `$1`-style numbered
    parameters, written with `mark` (`$` for PostgreSQL, `?` for SQLite)."""

    mark = "$"
    #: opens a transaction that writes (SQLite's IMMEDIATE takes the write lock at once)
    sql_begin = "BEGIN"
    #: the driver's errors, raised to callers as `StoreUnavailable`
    errors: tuple[type[BaseException], ...] = (OSError,)
    #: how often expired records are swept out, in seconds
    SWEEP_EVERY = 600.0
    #: most keys one statement carries (4 values each; old SQLite builds bind at most 999)
    CHUNK = 200
    #: how many completed keys are answered from memory (the most recent)
    REMEMBER = 50_000

    def __init__(self, table: str = DEFAULT_TABLE, clock: Callable[[], float] = time.time) -> None:
        self.table = check_identifier(table, "idempotency table")
        self.clock = clock
        self._next_sweep = 0.0
        self._batches = Batches(self._write, self.errors, "the idempotency store")
        #: key -> token of claims whose batch failed, so may have committed: the key's next
        #: claim here goes with the same token and takes the record over, rather than
        #: find it held until the lease ran out
        self._unanswered: OrderedDict[str, str] = OrderedDict()
        #: key -> (outcome, expires at) of records this process saw completed
        self._done: OrderedDict[str, tuple[str, float]] = OrderedDict()
        #: (statement, how many keys) -> its text: each size is written once, and the
        #: drivers keep each text prepared
        self._statements: dict[tuple[str, int], str] = {}
        t, p = table, self.mark
        self.sql_create = (
            f"CREATE TABLE IF NOT EXISTS {t} (key TEXT PRIMARY KEY, token TEXT NOT NULL, "
            f"outcome TEXT, expires_at DOUBLE PRECISION NOT NULL)"
        )
        self.sql_complete = f"UPDATE {t} SET outcome = {p}1, expires_at = {p}2 WHERE key = {p}3 AND token = {p}4"
        self.sql_sweep = f"DELETE FROM {t} WHERE expires_at <= {p}1"
        self.sql_extend = (
            f"UPDATE {t} SET expires_at = {p}1 WHERE key = {p}2 AND token = {p}3 AND outcome IS NULL RETURNING key"
        )

    def statement(self, name: str, n: int) -> str:
        """The text of statement `name` for `n` keys (see `_write_sql`)."""
        text = self._statements.get((name, n))
        if text is None:
            text = self._statements[name, n] = self._write_sql(name, n)
        return text

    def _write_sql(self, name: str, n: int) -> str:
        """`take`: upsert n claims (key, token, expires_at each, then now), writing only
        where no record is, it expired, or it is the same token's unfinished claim (one
        whose batch failed, taken again), returning the tokens that took. `read`: the
        records of n keys. `complete`: n (key, token, outcome, expires_at), applied
        where the token still holds the key, returning those keys. `release`: delete
        n (key, token)."""
        t, p = self.table, self.mark
        if name == "take":
            return (
                f"INSERT INTO {t} (key, token, outcome, expires_at) VALUES "
                + ", ".join(f"({p}{3 * i + 1}, {p}{3 * i + 2}, NULL, {p}{3 * i + 3})" for i in range(n))
                + f" ON CONFLICT (key) DO UPDATE SET token = excluded.token, outcome = NULL,"
                f" expires_at = excluded.expires_at WHERE {t}.expires_at <= {p}{3 * n + 1}"
                f" OR ({t}.token = excluded.token AND {t}.outcome IS NULL) RETURNING token"
            )
        if name == "read":
            keys = ", ".join(f"{p}{i}" for i in range(1, n + 1))
            return f"SELECT key, outcome, expires_at FROM {t} WHERE key IN ({keys})"
        if name == "complete":
            values = ", ".join(
                f"({p}{4 * i + 1}, {p}{4 * i + 2}, {p}{4 * i + 3}, CAST({p}{4 * i + 4} AS DOUBLE PRECISION))"
                for i in range(n)
            )
            return (
                f"UPDATE {t} SET outcome = v.column3, expires_at = v.column4 FROM (VALUES {values}) AS v"
                f" WHERE {t}.key = v.column1 AND {t}.token = v.column2 RETURNING {t}.key"
            )
        if name == "release":
            pairs = ", ".join(f"({p}{2 * i + 1}, {p}{2 * i + 2})" for i in range(n))
            return f"DELETE FROM {t} WHERE (key, token) IN (VALUES {pairs})"
        raise ValueError(name)

    # -- what a backend provides ------------------------------------------------

    @abstractmethod
    def connection(self) -> Any:
        """`async with` a connection in autocommit mode. One that saw an error (a
        transaction cut short) is reset or closed before anyone reuses it."""

    @abstractmethod
    async def fetch(self, conn: Any, sql: str, *args: Any) -> list[tuple[Any, ...]]: ...

    async def begin(self, conn: Any) -> None:
        await self.fetch(conn, self.sql_begin)

    async def end(self, conn: Any, commit: bool) -> None:
        await self.fetch(conn, "COMMIT" if commit else "ROLLBACK")

    # -- the contract -----------------------------------------------------------

    async def setup(self) -> None:
        async with self.connection() as conn:
            await self.fetch(conn, self.sql_create)

    async def claim(self, key: str, lease: float) -> Claim:
        known = self._done.get(key)
        if known is not None:
            if known[1] > self.clock():
                return Claim("done", outcome=known[0])
            del self._done[key]
        token = self._unanswered.pop(key, None) or new_token()
        claim: Claim = await self._batches.submit("claim", key, lease, token)
        return claim

    async def complete(self, key: str, token: str, outcome: str, ttl: float) -> None:
        await self._batches.submit("complete", outcome, self.clock() + ttl, key, token)

    async def release(self, key: str, token: str) -> None:
        await self._batches.submit("release", key, token)

    async def close(self) -> None:
        await self._batches.close()

    async def extend(self, key: str, token: str, lease: float) -> bool:
        async with self.connection() as conn:
            return bool(await self.fetch(conn, self.sql_extend, self.clock() + lease, key, token))

    @asynccontextmanager
    async def transaction(self, key: str, ttl: float) -> AsyncIterator[Transaction]:
        async with self.connection() as conn:
            await self.begin(conn)
            try:
                claim = (await self.drive(conn, self._claim_steps([(key, ttl, new_token())])))[0]
                record = partial(self.fetch, conn, self.sql_complete)
                yield Transaction(claim, conn, lambda outcome: record(outcome, self.clock() + ttl, key, claim.token))
            except BaseException:
                await self.end(conn, commit=False)
                raise
            await self.end(conn, commit=True)

    # -- group commit -----------------------------------------------------------

    async def write_batch(self, steps: Steps[list[Any]]) -> list[Any]:
        """Run `steps` in one write transaction, committed before this returns. A
        backend whose driver blocks overrides it to run the whole batch in one go."""
        async with self.connection() as conn:
            await self.begin(conn)
            try:
                answers = await self.drive(conn, steps)
            except BaseException:
                await self.end(conn, commit=False)
                raise
            await self.end(conn, commit=True)
        return answers

    async def drive(self, conn: Any, steps: Steps[T]) -> T:
        """Run each statement `steps` yields on `conn`, sending back its rows."""
        rows: list[tuple[Any, ...]] | None = None
        try:
            while True:
                sql, args = steps.send(rows)
                rows = await self.fetch(conn, sql, *args)
        except StopIteration as stop:
            result: T = stop.value
            return result

    async def _write(self, batch: list[Op]) -> list[Any]:
        """One batch in one transaction; completes that stuck are remembered once it
        committed. A batch that failed may still have committed (the connection died
        with the COMMIT's answer on its way): its claims' tokens are kept for the keys'
        next claims (see `_unanswered`)."""
        try:
            answers = await self.write_batch(self._batch_steps(batch))
        except BaseException:
            for op in batch:
                if op.kind == "claim":
                    key, _, token = op.args
                    self._unanswered[key] = token
                    self._unanswered.move_to_end(key)
            while len(self._unanswered) > self.REMEMBER:
                self._unanswered.popitem(last=False)
            raise
        for op, answer in zip(batch, answers):
            if op.kind == "complete" and answer is not None:
                self._remember(*answer)
        return answers

    # -- the statements of a batch, as steps: (sql, args) -> rows ---------------

    def _batch_steps(self, batch: list[Op]) -> Steps[list[Any]]:
        """The batch as few statements: its completes, its releases, then its claims
        (so a duplicate claimed beside the run that completes sees it done). A
        complete's answer is its (key, outcome, expires) if it held the key."""
        now = self.clock()
        if now >= self._next_sweep:
            self._next_sweep = now + self.SWEEP_EVERY
            yield self.sql_sweep, (now,)
        answers: dict[int, Any] = {}
        of = {kind: [i for i, op in enumerate(batch) if op.kind == kind] for kind in ("complete", "release", "claim")}
        for chunk in _chunks(of["complete"], self.CHUNK):
            done = [batch[i].args for i in chunk]  # (outcome, expires, key, token)
            values = [v for outcome, expires, key, token in done for v in (key, token, outcome, expires)]
            rows = yield self.statement("complete", len(chunk)), values
            stuck = {row[0] for row in rows or ()}
            for i, (outcome, expires, key, _) in zip(chunk, done):
                answers[i] = (key, outcome, expires) if key in stuck else None
        for chunk in _chunks(of["release"], self.CHUNK):
            yield self.statement("release", len(chunk)), [v for i in chunk for v in batch[i].args]
            answers.update((i, None) for i in chunk)
        if of["claim"]:
            claims = yield from self._claim_steps([batch[i].args for i in of["claim"]])
            answers.update(zip(of["claim"], claims))
        return [answers[i] for i in range(len(batch))]

    def _claim_steps(self, claims: list[tuple[Any, ...]]) -> Steps[list[Claim]]:
        """Claim keys (key, lease, token) in few statements. A key asked for twice in one
        batch is written once: the first asker gets it and the others find it busy."""
        now = self.clock()
        tokens = [token for _, _, token in claims]
        first: dict[str, int] = {}
        for i, (key, _, _) in enumerate(claims):
            first.setdefault(key, i)
        unique = list(first.values())
        taken: set[str] = set()
        for chunk in _chunks(unique, self.CHUNK):
            values = [v for i in chunk for v in (claims[i][0], tokens[i], now + claims[i][1])]
            rows = yield self.statement("take", len(chunk)), (*values, now)
            taken.update(row[0] for row in rows or ())
        records: dict[str, tuple[Any, float]] = {}
        missing = [claims[i][0] for i in unique if tokens[i] not in taken]
        for keys in _chunks(missing, self.CHUNK):
            rows = yield self.statement("read", len(keys)), tuple(keys)
            records.update((key, (outcome, expires)) for key, outcome, expires in rows or ())
        answers = []
        for i, (key, _, _) in enumerate(claims):
            j = first[key]
            if tokens[j] in taken:
                answers.append(Claim("claimed", tokens[i]) if i == j else Claim("busy", retry_in=claims[j][1]))
            else:
                answers.append(_answer(records.get(key), now))
        return answers

    def _remember(self, key: str, outcome: str, expires: float) -> None:
        self._done[key] = (outcome, expires)
        self._done.move_to_end(key)
        while len(self._done) > self.REMEMBER:
            self._done.popitem(last=False)


def _answer(record: tuple[Any, float] | None, now: float) -> Claim:
    """What a claim that did not take a key says, from the key's record."""
    if record is None:
        return Claim("busy", retry_in=_RACE_RETRY)
    outcome, expires_at = record
    if outcome is not None:
        return Claim("done", outcome=outcome)
    return Claim("busy", retry_in=max(_RACE_RETRY, expires_at - now))


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
