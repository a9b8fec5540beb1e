"""Who holds a lease, and whether that holder is known to be dead (for recovery at start-up)."""

from __future__ import annotations

import os
import secrets
import socket


def make_owner() -> str:
    """`host:pid:nonce` — the nonce tells a restarted process apart from one reusing its pid."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def is_dead(owner: str, me: str) -> bool:
    """True only when certain: the owner ran on this host and its process is gone."""
    try:
        host, pid_text, _nonce = owner.rsplit(":", 2)
        pid = int(pid_text)
    except ValueError:
        return False
    if host != socket.gethostname() or owner == me:
        return False
    if pid == os.getpid():
        return True  # our own pid with another nonce: a predecessor in this container
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
