"""Use cases for who may call the API and what an app hides: tokens, secrets, data sources.

Tokens are `ns_` + 43 random url-safe characters (256 bits); only their SHA-256 is stored, and
a presented token is looked up by its hash (a preimage-resistant, fixed-length key: timing
reveals nothing usable). The admin token comes from NIGHTSHIFT_ADMIN_TOKEN or is generated at
first start and printed once.

Secret values are encrypted at rest with Fernet (AES-128-CBC + HMAC-SHA256) under
NIGHTSHIFT_SECRET_KEY, or a key generated at first start into `nightshift.key` (mode 0600).
They never come back through the API: lists show names (and a source's driver and host).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from nightshift.clock import Clock
from nightshift.config import Settings
from nightshift.domain.access import ApiToken, SecretEntry, SecretKind
from nightshift.errors import InvalidInput, NightshiftError
from nightshift.stats import RESERVED_APP, SYSTEM_APP
from nightshift.store.base import Store

log = logging.getLogger("nightshift")

TOKEN_PREFIX = "ns_"
ADMIN_NAME = "admin"
SECRET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
SOURCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
MAX_SECRET_BYTES = 64 * 1024


class SecretKeyError(NightshiftError):
    """The secret key is missing, malformed, or does not open what the database holds."""

    code = "secret_key"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a token's name and the app it is limited to (None: admin)."""

    name: str
    app: str | None
    token_id: int | None = None  # None for NIGHTSHIFT_ADMIN_TOKEN

    @property
    def is_admin(self) -> bool:
        return self.app is None

    def sees(self, app: str) -> bool:
        return self.app is None or self.app == app


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: ApiToken
    secret: str  # shown once, never stored


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class AccessService:
    def __init__(self, store: Store, clock: Clock, settings: Settings) -> None:
        self.store = store
        self.clock = clock
        self.settings = settings
        admin = settings.admin_token
        self._admin_hash = hash_token(admin) if admin else None
        self._fernet: Fernet | None = None

    # -- start --------------------------------------------------------------------------------
    def bootstrap(self) -> str | None:
        """At start: generate the admin token when NIGHTSHIFT_ADMIN_TOKEN is unset and none was
        generated before (it is logged once, here, and stored hashed), and load or create the
        secret key. Returns the generated token, if any."""
        self.cipher()
        if self._admin_hash is not None:
            return None
        token = new_token()
        if not self.store.ensure_bootstrap_token(ADMIN_NAME, hash_token(token), self.clock.now()):
            return None
        log.warning(
            "generated the admin API token (shown this once; only its hash is stored): %s",
            token,
        )
        return token

    # -- tokens -------------------------------------------------------------------------------
    def authenticate(self, token: str | None) -> Principal | None:
        """The caller a bearer token stands for, or None (unknown, revoked or missing)."""
        if not token or len(token) > 200:
            return None
        digest = hash_token(token)
        if self._admin_hash is not None and hmac.compare_digest(digest, self._admin_hash):
            return Principal(ADMIN_NAME, None)
        found = self.store.find_token(digest)
        if found is None or not hmac.compare_digest(found.token_hash, digest):
            return None
        return Principal(found.name, found.app, found.id)

    def create_token(self, name: str, app: str | None) -> IssuedToken:
        name = name.strip()
        if not 1 <= len(name) <= 200:
            raise InvalidInput("must be 1 to 200 characters", field="name")
        if "\x00" in name:  # PostgreSQL cannot store it: refused on every database
            raise InvalidInput("must not contain the NUL character (\\u0000)", field="name")
        if app == SYSTEM_APP:
            raise InvalidInput(RESERVED_APP, field="app")
        secret = new_token()
        token = self.store.create_token(name, app, hash_token(secret), self.clock.now())
        return IssuedToken(token, secret)

    def list_tokens(self, after_id: int | None, limit: int) -> list[ApiToken]:
        return self.store.list_tokens(after_id=after_id, limit=limit)

    def revoke_token(self, token_id: int) -> None:
        self.store.revoke_token(token_id, self.clock.now())

    # -- secrets ------------------------------------------------------------------------------
    def list_secrets(self, app: str, kind: SecretKind) -> list[SecretEntry]:
        self.store.get_app(app)
        return self.store.list_secrets(app, kind)

    def put_secret(self, app: str, name: str, value: str) -> SecretEntry:
        if not SECRET_NAME.match(name):
            raise InvalidInput(
                "must start with a letter or _ and hold only letters, digits and _ (128 at most)",
                field="name",
            )
        _check_size(value)
        return self.store.put_secret(
            app, SecretKind.SECRET, name, self._encrypt(value), {}, self.clock.now()
        )

    def put_source(self, app: str, name: str, url: str) -> SecretEntry:
        if not SOURCE_NAME.match(name):
            raise InvalidInput(
                "must start with a letter or digit and hold only letters, digits, _ . - "
                "(100 at most)",
                field="name",
            )
        _check_size(url)
        try:
            parsed = make_url(url.strip())
        except (ArgumentError, ValueError):
            raise InvalidInput(
                "is not a database URL (driver://user:pass@host/db)", "url"
            ) from None
        info = {"driver": parsed.get_backend_name(), "host": parsed.host}
        return self.store.put_secret(
            app, SecretKind.SOURCE, name, self._encrypt(url.strip()), info, self.clock.now()
        )

    def delete_secret(self, app: str, kind: SecretKind, name: str) -> None:
        self.store.delete_secret(app, kind, name)

    def reveal(self, app: str, kind: SecretKind, name: str) -> str:
        """A secret's plain value, for executors; never for API answers."""
        ciphertext = self.store.get_secret_value(app, kind, name)
        try:
            return self.cipher().decrypt(ciphertext.encode()).decode()
        except InvalidToken:
            raise SecretKeyError(
                f"{kind} {name!r} of app {app!r} was encrypted with another secret key"
            ) from None

    def _encrypt(self, value: str) -> str:
        return self.cipher().encrypt(value.encode()).decode()

    def cipher(self) -> Fernet:
        if self._fernet is None:
            self._fernet = Fernet(load_secret_key(self.settings))
        return self._fernet


def _check_size(value: str) -> None:
    if len(value.encode()) > MAX_SECRET_BYTES:
        raise InvalidInput(f"is longer than {MAX_SECRET_BYTES // 1024} KiB", field="value")


def load_secret_key(settings: Settings) -> bytes:
    """NIGHTSHIFT_SECRET_KEY, else the key file, created (mode 0600) when missing."""
    if settings.secret_key:
        return _checked_key(settings.secret_key.strip().encode(), "NIGHTSHIFT_SECRET_KEY")
    path = Path(settings.secret_key_file)
    if path.is_file():
        return _checked_key(path.read_bytes().strip(), str(path))
    key = Fernet.generate_key()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it meanwhile: use theirs
        return _checked_key(path.read_bytes().strip(), str(path))
    with os.fdopen(fd, "wb") as fh:
        fh.write(key + b"\n")
    log.warning(
        "NIGHTSHIFT_SECRET_KEY is not set: generated a key for secrets in %s (mode 0600). "
        "Back it up; every process that reads secrets needs the same key.",
        path.resolve(),
    )
    return key


def _checked_key(key: bytes, where: str) -> bytes:
    try:
        Fernet(key)
    except (ValueError, TypeError):
        raise SecretKeyError(
            f"{where} is not a Fernet key (32 url-safe base64 bytes); make one with "
            "`python -c 'from cryptography.fernet import Fernet; "
            "print(Fernet.generate_key().decode())'`"
        ) from None
    return key
