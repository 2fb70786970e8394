"""One storage helper: a SQLite URL means the same file to the idempotency store, the
saga store and the outbox (SQLAlchemy's meaning), and bad URLs, table names and
unreachable databases raise mailbag's own errors with the password masked."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from mailbag.broker.errors import ConfigurationError, MailbagError, StoreUnavailable
from mailbag.broker.storage import MEMORY, check_identifier, open_postgres, parse_url, sqlite_path
from mailbag.publishers.outbox import open_outbox
from mailbag.workers.saga.store import SagaState
from mailbag.workers.saga.store import open_store as open_saga_store
from mailbag.workers.stores import open_store as open_idempotency_store


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///data/app.db", "data/app.db"),
        ("sqlite:////data/app.db", "/data/app.db"),
        ("sqlite:///app.db?table=t", "app.db"),
        ("sqlite://", MEMORY),
        ("sqlite:///:memory:", MEMORY),
    ],
)
def test_a_sqlite_url_reads_as_sqlalchemy_reads_it(url, path):
    assert sqlite_path(url) == path


@pytest.mark.parametrize("url", ["sqlite:app.db", "sqlite://host/app.db", "SQLITE:app.db"])
def test_a_sqlite_url_in_another_shape_is_refused(url):
    with pytest.raises(ConfigurationError, match=r"write sqlite:///relative\.db, sqlite:////absolute\.db"):
        parse_url(url)


def test_postgres_options_of_mailbag_leave_the_dsn_and_the_rest_stay():
    parsed = parse_url("postgres://u:pw@h:5/db?table=t&pool=3&sslmode=disable", own=("table", "pool"))
    assert (parsed.scheme, parsed.options) == ("postgresql", {"table": "t", "pool": "3"})
    assert parsed.target == "postgresql://u:pw@h:5/db?sslmode=disable"


def test_an_unknown_scheme_is_a_configuration_error_with_the_password_masked():
    with pytest.raises(ConfigurationError) as caught:
        parse_url("mysql://me:secret@db/x", what="saga store")
    assert "mysql://me:***@db/x" in str(caught.value) and "secret" not in str(caught.value)
    assert isinstance(caught.value, MailbagError)


@pytest.mark.parametrize("name", ["t;drop", "1t", "", "a.b.c", "x" * 64])
def test_unsafe_identifiers_are_refused(name):
    with pytest.raises(ConfigurationError, match="invalid outbox table name"):
        check_identifier(name, "outbox table", qualified=True)


def test_a_schema_qualified_name_passes_only_where_allowed():
    assert check_identifier("shop.outbox", qualified=True) == "shop.outbox"
    with pytest.raises(ConfigurationError):
        check_identifier("shop.outbox")


async def test_an_unreachable_postgres_is_store_unavailable_with_the_password_masked():
    with pytest.raises(StoreUnavailable) as caught:
        await open_postgres("postgresql://app:hunter2@127.0.0.1:1/shop")
    assert "postgresql://app:***@127.0.0.1:1/shop" in str(caught.value) and "hunter2" not in str(caught.value)


async def test_every_store_opens_the_same_file_for_the_same_relative_url(tmp_path, monkeypatch):
    # Given one relative URL, run from tmp_path
    monkeypatch.chdir(tmp_path)
    url = "sqlite:///data/app.db"
    # When the idempotency store, the saga store and the outbox open it
    idempotency = await open_idempotency_store(url)
    await idempotency.claim("k", lease=30)
    await idempotency.close()
    sagas = await open_saga_store(url)
    await sagas.insert(SagaState("order", "o-1"))
    await sagas.close()
    async with open_outbox(url) as outbox:
        await outbox.stats()
    # Then all three wrote their tables into tmp_path/data/app.db, and nothing went to /data
    with sqlite3.connect(tmp_path / "data" / "app.db") as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"mailbag_idempotency", "saga_states", "mailbag_outbox"} <= tables
    assert not Path("/data/app.db").exists()


def test_the_outbox_refuses_an_in_memory_database():
    with pytest.raises(ConfigurationError, match="database file"):
        open_outbox("sqlite://")
