"""Who may call the API and what an app keeps hidden: API tokens, secrets and data sources."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from nightshift.domain.models import JSON


@dataclass(frozen=True, slots=True)
class ApiToken:
    """A stored token: only the SHA-256 of its secret is kept. `app` None: an admin token."""

    id: int
    name: str
    app: str | None
    token_hash: str
    created_at: datetime
    bootstrap: bool = False  # the admin token generated at first start


class SecretKind(StrEnum):
    SECRET = "secret"  # a value a job reads by name (`env.NAME` in workflows)
    SOURCE = "source"  # a SQL data source: its database URL


@dataclass(frozen=True, slots=True)
class SecretEntry:
    """What may be shown of a secret: its name and, for sources, the non-secret `info`."""

    app: str
    kind: SecretKind
    name: str
    created_at: datetime
    updated_at: datetime
    info: JSON = field(default_factory=dict)
