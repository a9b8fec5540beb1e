"""Opaque cursors for list endpoints: `?limit=&cursor=` in, `next_cursor` out.

A cursor names the last key a page ended on, tagged with the list it belongs to, so one from
another list is refused rather than misread.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import Query

from nightshift.errors import InvalidInput

Limit = Annotated[int, Query(ge=1, le=500, description="items per page")]
Cursor = Annotated[str | None, Query(description="`next_cursor` of the previous page")]
DEFAULT_LIMIT = 50


def encode(kind: str, key: object) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{key}".encode()).decode().rstrip("=")


def decode(kind: str, cursor: str | None) -> str | None:
    """The key a cursor holds, or None for the first page; InvalidInput("cursor") otherwise."""
    if cursor is None or cursor == "":
        return None
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    tag, sep, key = text.partition(":")
    if tag != kind or not sep or not key:
        raise InvalidInput("is not a cursor of this list", field="cursor")
    return key


def decode_id(kind: str, cursor: str | None) -> int | None:
    key = decode(kind, cursor)
    if key is None:
        return None
    if not key.isdigit():
        raise InvalidInput("is not a cursor of this list", field="cursor")
    return int(key)
