"""Request and response bodies of tokens, secrets and data sources (names only ever)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from nightshift.api.schemas import Input, Time
from nightshift.domain.access import ApiToken, SecretEntry


# -- tokens -------------------------------------------------------------------------------------
class TokenCreate(Input):
    name: Annotated[str, Field(min_length=1, max_length=200)]
    app: str | None = Field(None, description="the one app the token may use; null: admin")


class TokenOut(BaseModel):
    id: int
    name: str
    app: str | None
    created_at: Time


class TokenCreated(TokenOut):
    token: str = Field(description="the secret: shown this once, only its hash is stored")


class TokenList(BaseModel):
    items: list[TokenOut]
    next_cursor: str | None


def token_out(token: ApiToken) -> TokenOut:
    return TokenOut(id=token.id, name=token.name, app=token.app, created_at=token.created_at)


# -- secrets and sources ------------------------------------------------------------------------
class SecretOut(BaseModel):
    name: str
    updated_at: Time


class SecretList(BaseModel):
    items: list[SecretOut]


class SecretPut(Input):
    value: str


class SourceOut(BaseModel):
    name: str
    driver: str | None
    host: str | None
    updated_at: Time


class SourceList(BaseModel):
    items: list[SourceOut]


class SourcePut(Input):
    url: str = Field(description="a database URL, e.g. postgresql://user:pass@host/db")


def secret_out(entry: SecretEntry) -> SecretOut:
    return SecretOut(name=entry.name, updated_at=entry.updated_at)


def source_out(entry: SecretEntry) -> SourceOut:
    return SourceOut(
        name=entry.name,
        driver=entry.info.get("driver"),
        host=entry.info.get("host"),
        updated_at=entry.updated_at,
    )
