"""API tokens, secrets and data sources: what authenticates a caller and what an app hides."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Row, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from nightshift.domain.access import ApiToken, SecretEntry, SecretKind
from nightshift.domain.models import JSON
from nightshift.errors import Conflict, NotFound
from nightshift.store.sql.engine import Transactions
from nightshift.store.tables import api_tokens, app_secrets, apps

BOOTSTRAP = "admin"


class AccessStore:
    _tx: Transactions

    # -- tokens -------------------------------------------------------------------------------
    def create_token(self, name: str, app: str | None, token_hash: str, now: datetime) -> ApiToken:
        with self._tx.write() as conn:
            if app is not None and not _app_exists(conn, app):
                raise NotFound("app", app)
            try:
                with conn.begin_nested():
                    row = conn.execute(
                        insert(api_tokens)
                        .values(name=name, app=app, token_hash=token_hash, created_at=now)
                        .returning(*api_tokens.c)
                    ).one()
            except IntegrityError as exc:
                raise Conflict("a token with this secret exists already") from exc
            return _token(row)

    def ensure_bootstrap_token(self, name: str, token_hash: str, now: datetime) -> bool:
        with self._tx.write() as conn:
            taken = conn.execute(
                select(api_tokens.c.id).where(
                    api_tokens.c.bootstrap == BOOTSTRAP, api_tokens.c.revoked_at.is_(None)
                )
            ).first()
            if taken is not None:
                return False
            try:
                # The unique bootstrap key decides between processes starting together.
                with conn.begin_nested():
                    conn.execute(
                        insert(api_tokens).values(
                            name=name,
                            app=None,
                            token_hash=token_hash,
                            bootstrap=BOOTSTRAP,
                            created_at=now,
                        )
                    )
            except IntegrityError:
                return False
            return True

    def find_token(self, token_hash: str) -> ApiToken | None:
        with self._tx.read() as conn:
            row = conn.execute(
                select(api_tokens).where(
                    api_tokens.c.token_hash == token_hash, api_tokens.c.revoked_at.is_(None)
                )
            ).first()
        return _token(row) if row is not None else None

    def list_tokens(
        self, *, app: str | None = None, after_id: int | None = None, limit: int | None = None
    ) -> list[ApiToken]:
        query = (
            select(api_tokens).where(api_tokens.c.revoked_at.is_(None)).order_by(api_tokens.c.id)
        )
        if app is not None:
            query = query.where(api_tokens.c.app == app)
        if after_id is not None:
            query = query.where(api_tokens.c.id > after_id)
        if limit is not None:
            query = query.limit(limit)
        with self._tx.read() as conn:
            return [_token(r) for r in conn.execute(query)]

    def revoke_token(self, token_id: int, now: datetime) -> ApiToken:
        with self._tx.write() as conn:
            row = conn.execute(
                update(api_tokens)
                .where(api_tokens.c.id == token_id, api_tokens.c.revoked_at.is_(None))
                .values(revoked_at=now, bootstrap=None)
                .returning(*api_tokens.c)
            ).first()
        if row is None:
            raise NotFound("token", token_id)
        return _token(row)

    # -- secrets and sources ------------------------------------------------------------------
    def put_secret(
        self, app: str, kind: SecretKind, name: str, value: str, info: JSON, now: datetime
    ) -> SecretEntry:
        key = _secret_key(app, kind, name)
        with self._tx.write() as conn:
            if not _app_exists(conn, app):
                raise NotFound("app", app)
            updated = conn.execute(
                update(app_secrets)
                .where(*key)
                .values(value=value, info=info, updated_at=now)
                .returning(*app_secrets.c)
            ).first()
            if updated is None:
                updated = conn.execute(
                    insert(app_secrets)
                    .values(
                        app=app,
                        kind=str(kind),
                        name=name,
                        value=value,
                        info=info,
                        created_at=now,
                        updated_at=now,
                    )
                    .returning(*app_secrets.c)
                ).one()
            return _secret(updated)

    def list_secrets(self, app: str, kind: SecretKind) -> list[SecretEntry]:
        query = (
            select(*[c for c in app_secrets.c if c.name != "value"])
            .where(app_secrets.c.app == app, app_secrets.c.kind == str(kind))
            .order_by(app_secrets.c.name)
        )
        with self._tx.read() as conn:
            return [_secret(r) for r in conn.execute(query)]

    def get_secret_value(self, app: str, kind: SecretKind, name: str) -> str:
        with self._tx.read() as conn:
            value = conn.execute(
                select(app_secrets.c.value).where(*_secret_key(app, kind, name))
            ).scalar()
        if value is None:
            raise NotFound(str(kind), name)
        return value

    def delete_secret(self, app: str, kind: SecretKind, name: str) -> None:
        with self._tx.write() as conn:
            if conn.execute(delete(app_secrets).where(*_secret_key(app, kind, name))).rowcount == 0:
                raise NotFound(str(kind), name)


def _app_exists(conn: Any, app: str) -> bool:
    return conn.execute(select(apps.c.name).where(apps.c.name == app)).first() is not None


def _secret_key(app: str, kind: SecretKind, name: str) -> tuple[Any, ...]:
    return (app_secrets.c.app == app, app_secrets.c.kind == str(kind), app_secrets.c.name == name)


def _token(row: Row[Any]) -> ApiToken:
    m = row._mapping
    return ApiToken(
        id=m["id"],
        name=m["name"],
        app=m["app"],
        token_hash=m["token_hash"],
        created_at=m["created_at"],
        bootstrap=m["bootstrap"] is not None,
    )


def _secret(row: Row[Any]) -> SecretEntry:
    m = row._mapping
    return SecretEntry(
        app=m["app"],
        kind=SecretKind(m["kind"]),
        name=m["name"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        info=dict(m["info"] or {}),
    )
