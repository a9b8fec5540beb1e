"""The store's tokens, secrets and app management, against its spec, on every backend."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest

from nightshift.domain.access import SecretKind
from nightshift.errors import Conflict, NotFound
from nightshift.store import SqlStore
from nightshift.store.base import NewRun
from tests.factories import make_job

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def test_one_bootstrap_token_among_processes_starting_together(store: SqlStore) -> None:
    with ThreadPoolExecutor(8) as pool:
        won = list(
            pool.map(lambda n: store.ensure_bootstrap_token("admin", f"{n:064x}", NOW), range(8))
        )
    assert won.count(True) == 1
    (token,) = store.list_tokens()
    assert token.bootstrap and token.app is None
    assert not store.ensure_bootstrap_token("admin", "f" * 64, NOW)
    store.revoke_token(token.id, NOW)  # revoking frees the slot: the next start makes a new one
    assert store.find_token(token.token_hash) is None
    assert store.ensure_bootstrap_token("admin", "e" * 64, NOW)


def test_tokens_are_found_by_hash_listed_by_id_and_revoked(store: SqlStore) -> None:
    store.create_app("shop", NOW)
    first = store.create_token("ci", "shop", "a" * 64, NOW)
    second = store.create_token("ops", None, "b" * 64, NOW)
    assert store.find_token("a" * 64) == first and store.find_token("c" * 64) is None
    assert [t.id for t in store.list_tokens()] == [first.id, second.id]
    assert [t.id for t in store.list_tokens(after_id=first.id)] == [second.id]
    assert [t.id for t in store.list_tokens(app="shop")] == [first.id]
    with pytest.raises(Conflict):
        store.create_token("again", None, "a" * 64, NOW)
    with pytest.raises(NotFound):
        store.create_token("x", "ghost", "d" * 64, NOW)
    store.revoke_token(first.id, NOW)
    with pytest.raises(NotFound):
        store.revoke_token(first.id, NOW)
    assert [t.id for t in store.list_tokens()] == [second.id]


def test_secrets_upsert_list_by_name_and_delete(store: SqlStore) -> None:
    store.create_app("shop", NOW)
    store.put_secret("shop", SecretKind.SECRET, "B", "cipher-1", {}, NOW)
    store.put_secret("shop", SecretKind.SECRET, "A", "cipher-2", {}, NOW)
    store.put_secret("shop", SecretKind.SOURCE, "A", "cipher-3", {"driver": "sqlite"}, NOW)
    later = datetime(2026, 3, 3, tzinfo=UTC)
    replaced = store.put_secret("shop", SecretKind.SECRET, "B", "cipher-4", {}, later)
    assert replaced.created_at == NOW and replaced.updated_at == later
    assert [s.name for s in store.list_secrets("shop", SecretKind.SECRET)] == ["A", "B"]
    (source,) = store.list_secrets("shop", SecretKind.SOURCE)
    assert source.info == {"driver": "sqlite"}
    assert store.get_secret_value("shop", SecretKind.SECRET, "B") == "cipher-4"
    store.delete_secret("shop", SecretKind.SECRET, "B")
    with pytest.raises(NotFound):
        store.get_secret_value("shop", SecretKind.SECRET, "B")
    with pytest.raises(NotFound):
        store.delete_secret("shop", SecretKind.SECRET, "B")
    with pytest.raises(NotFound):
        store.put_secret("ghost", SecretKind.SECRET, "X", "c", {}, NOW)


def test_deleting_an_app_deletes_everything_it_owns(store: SqlStore) -> None:
    store.create_app("shop", NOW)
    with pytest.raises(Conflict):
        store.create_app("shop", NOW)
    job = store.create_job(make_job(NOW, app="shop"))
    run = store.enqueue(NewRun(job_id=job.id, run_at=NOW), NOW)
    store.create_token("ci", "shop", "a" * 64, NOW)
    store.put_secret("shop", SecretKind.SECRET, "K", "c", {}, NOW)
    other = store.create_job(make_job(NOW, app="other"))
    version = store.schedule_version()
    store.delete_app("shop")
    assert store.schedule_version() != version
    with pytest.raises(NotFound):
        store.get_job(job.id)
    with pytest.raises(NotFound):
        store.get_run(run.id)
    assert store.list_tokens() == [] and store.list_secrets("shop", SecretKind.SECRET) == []
    assert store.get_job(other.id).app == "other"
    with pytest.raises(NotFound):
        store.delete_app("shop")
    assert store.set_app_retention("other", 30).retention_days == 30
    assert store.get_runs([run.id, 12345]) == {}
