"""Every saga store keeps the same promises: insert once, read back what was written,
refuse an update over a version it did not read, find active and overdue sagas."""

import pytest

from mailbag.workers.saga.store import SagaConflict, SagaState, open_store


async def test_insert_once_and_read_back(store):
    state = SagaState("order", "o-1", {"items": [{"sku": "book", "quantity": 2}], "note": "café"})
    assert await store.insert(state) is True
    assert await store.insert(state.evolve(data={})) is False
    assert await store.get("order", "o-1") == state
    assert await store.get("order", "o-2") is None
    assert await store.get("other-saga", "o-1") is None


async def test_an_update_over_a_version_it_did_not_read_is_refused(store):
    await store.insert(SagaState("order", "o-1"))
    read = await store.get("order", "o-1")
    first = await store.update(read.evolve(step=1, deadline=50.0))
    assert first.version == 1 and (await store.get("order", "o-1")) == first
    with pytest.raises(SagaConflict):
        await store.update(read.evolve(status="compensating"))
    assert (await store.get("order", "o-1")).status == "running"


async def test_active_and_due_sagas(store):
    for saga_id, status, deadline in [
        ("a", "running", 10.0),
        ("b", "compensating", 30.0),
        ("c", "completed", None),
        ("d", "compensated", None),
    ]:
        await store.insert(SagaState("order", saga_id, status=status, deadline=deadline))
    await store.insert(SagaState("other", "e", deadline=1.0))
    assert [s.id for s in await store.active("order")] == ["a", "b"]
    assert [s.id for s in await store.due("order", 20.0)] == ["a"]
    assert [s.id for s in await store.due("order", 30.0)] == ["a", "b"]


async def test_an_unknown_store_url_is_refused_with_the_password_masked():
    with pytest.raises(ValueError, match=r"unknown saga store URL 'mysql://me:\*\*\*@db/x'"):
        await open_store("mysql://me:secret@db/x")
