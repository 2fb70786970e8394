"""The SQL idempotency stores (SQLite, PostgreSQL) write concurrent claims, completes
and releases in shared transactions (group commit), the Redis store in shared
pipelines, and the SQL stores answer keys they saw completed from memory; none of it
changes what a caller is told."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from mailbag.broker.errors import StoreUnavailable
from mailbag.workers.stores import open_store
from tests.conformance.env import eventually
from tests.workers.conftest import opened_store


@pytest.fixture(params=["sqlite", "postgres", "redis"])
async def batched_store(request, tmp_path):
    async with opened_store(request.param, tmp_path, request) as store:
        yield store


def _batches(store) -> list[int]:
    """Record how many operations each written batch carried, from now on."""
    sizes: list[int] = []
    write = store._batches.write

    async def counted(batch):
        answers = await write(batch)
        sizes.append(len(answers))
        return answers

    store._batches.write = counted
    return sizes


async def test_concurrent_claims_and_completes_share_batches_and_each_caller_gets_its_own_answer(batched_store):
    # Given 200 handlers claiming their keys at once
    store = batched_store
    sizes = _batches(store)
    claims = await asyncio.gather(*(store.claim(f"k{n}", lease=30) for n in range(200)))
    # Then every key was claimed with a token of its own, in far fewer transactions
    assert [c.status for c in claims] == ["claimed"] * 200
    assert len({c.token for c in claims}) == 200
    assert sum(sizes) == 200 and len(sizes) < 20
    # When they all complete at once, each outcome is recorded for its key
    await asyncio.gather(*(store.complete(f"k{n}", c.token, f'{{"n": {n}}}', ttl=60) for n, c in enumerate(claims)))
    again = await asyncio.gather(*(store.claim(f"k{n}", lease=30) for n in range(200)))
    assert [(c.status, c.outcome) for c in again] == [("done", f'{{"n": {n}}}') for n in range(200)]


async def test_duplicates_claimed_in_one_batch_get_one_claim_and_the_rest_wait(batched_store):
    answers = await asyncio.gather(*(batched_store.claim("same", lease=30) for _ in range(20)))
    assert sorted(a.status for a in answers) == ["busy"] * 19 + ["claimed"]
    assert all(0 < a.retry_in <= 30 for a in answers if a.status == "busy")


async def test_a_completed_key_is_known_to_another_store_on_the_same_database(transactional_store, tmp_path):
    # Given a key completed through one store object (and remembered by it)
    claim = await transactional_store.claim("k", lease=30)
    await transactional_store.complete("k", claim.token, '"first"', ttl=60)
    # Then a second store on the same database, with nothing in memory, reads it from disk
    url = (
        f"sqlite:///{transactional_store.path}"
        if transactional_store.mark == "?"
        else f"postgresql://postgres@127.0.0.1:5432/test?table={transactional_store.table}"
    )
    other = await open_store(url)
    try:
        assert (await other.claim("k", lease=30)) == (await transactional_store.claim("k", lease=30))
        assert (await other.claim("k", lease=30)).outcome == '"first"'
    finally:
        await other.close()


async def test_a_database_error_reaches_every_caller_of_the_batch_as_store_unavailable(transactional_store):
    # Given the store's table dropped under it
    async with transactional_store.connection() as conn:
        await transactional_store.fetch(conn, f"DROP TABLE {transactional_store.table}")
    # When handlers claim at once, each of them gets StoreUnavailable
    results = await asyncio.gather(
        *(transactional_store.claim(f"k{n}", lease=30) for n in range(10)), return_exceptions=True
    )
    assert all(isinstance(r, StoreUnavailable) for r in results), results
    # Then once the table is back the store works again
    await transactional_store.setup()
    assert (await transactional_store.claim("k0", lease=30)).status == "claimed"


async def test_sqlite_records_survive_closing_the_store(tmp_path):
    url = f"sqlite:///{tmp_path}/idem.db"
    store = await open_store(url)
    claim = await store.claim("k", lease=30)
    await store.complete("k", claim.token, "null", ttl=60)
    await store.close()
    reopened = await open_store(url)
    try:
        assert (await reopened.claim("k", lease=30)).status == "done"
    finally:
        await reopened.close()


async def test_a_batch_waits_off_the_loop_while_a_transactional_handler_holds_sqlite_s_write_lock(tmp_path):
    # Given a transactional run holding SQLite's write lock on the store's file
    store = await open_store(f"sqlite:///{tmp_path}/idem.db")
    try:
        async with store.transaction("held", ttl=60) as txn:
            # When another handler claims its key meanwhile
            claiming = asyncio.create_task(store.claim("other", lease=30))
            await asyncio.wait({claiming}, timeout=0.1)  # give the claim its turn on the loop
            # Then the loop is free: the transaction goes on and commits
            assert not claiming.done()
            await txn.record('"booked"')
        # And the claim gets the lock once it is released
        assert (await asyncio.wait_for(claiming, 30)).status == "claimed"
        assert (await store.claim("held", lease=30)).outcome == '"booked"'
    finally:
        await store.close()


@pytest.mark.parametrize("error", [RuntimeError("a bug in the driver"), asyncio.CancelledError()])
async def test_an_error_the_store_did_not_list_is_store_unavailable_for_its_batch_and_cancels_no_caller(
    batched_store, error
):
    # Given a store whose next batch write raises an error outside its driver's list
    store = batched_store
    write = store._batches.write
    failures = [error]

    async def failing_once(batch):
        if failures:
            raise failures.pop()
        return await write(batch)

    store._batches.write = failing_once
    # When handlers claim at once, each of them gets StoreUnavailable, none is cancelled
    results = await asyncio.gather(*(store.claim(f"k{n}", lease=30) for n in range(10)), return_exceptions=True)
    assert all(isinstance(r, StoreUnavailable) for r in results), results
    # Then the next batch is written as usual
    assert (await store.claim("k0", lease=30)).status == "claimed"


async def test_a_postgresql_connection_that_failed_client_side_is_terminated_not_reused(tmp_path, request):
    # Given a PostgreSQL store and one of its pooled connections
    async with opened_store("postgres", tmp_path, request) as store:
        # When a call on it fails in the client (asyncpg's protocol in an unknown state)
        with pytest.raises(asyncpg.InternalClientError):
            async with store.connection() as conn:
                pid = conn.get_server_pid()
                raise asyncpg.InternalClientError("cannot switch to state 12; another operation is in progress")

        # Then that connection is closed (its server process goes), and the store answers on another
        async def gone() -> bool:
            async with store.connection() as other:
                return not await other.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid)

        await eventually(gone, timeout=10, what="the broken connection's backend to end")
        assert (await store.claim("k", lease=30)).status == "claimed"


async def test_a_claim_whose_batch_committed_but_failed_is_taken_over_by_its_retry(transactional_store):
    # Given a SQL store whose next batch commits and then fails (the COMMIT's answer lost)
    store = transactional_store
    write_batch = store.write_batch
    lost = [ConnectionResetError("connection reset by peer")]

    async def answer_lost(steps):
        answers = await write_batch(steps)
        if lost:
            raise lost.pop()
        return answers

    store.write_batch = answer_lost
    # When a claim goes in that batch, its caller gets StoreUnavailable
    with pytest.raises(StoreUnavailable):
        await store.claim("k", lease=30)
    # Then its retry takes the key at once, rather than finding it held for the lease
    assert (await store.claim("k", lease=30)).status == "claimed"
