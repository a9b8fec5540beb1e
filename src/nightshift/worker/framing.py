"""multiprocessing's message framing, for sockets read without blocking on the event loop: a
signed 4-byte big-endian length, or -1 and an 8-byte length for a message over 2 GiB. The
other end uses a plain `multiprocessing.connection.Connection`."""

from __future__ import annotations

import socket
import struct

HEADER = struct.Struct("!i")
LONG_HEADER = struct.Struct("!Q")
RECV_SIZE = 1 << 16


def frame(data: bytes) -> bytes:
    """`data` framed as `Connection.send_bytes` frames it."""
    if len(data) <= 0x7FFFFFFF:
        return HEADER.pack(len(data)) + data
    return HEADER.pack(-1) + LONG_HEADER.pack(len(data)) + data


def complete_frames(buffer: bytearray) -> tuple[list[bytearray], int]:
    """The messages of the complete frames at the start of `buffer`, and how many bytes those
    frames take (the caller deletes them once handled; an incomplete frame waits for more)."""
    messages = []
    end, pos = len(buffer), 0
    while end - pos >= 4:
        (size,) = HEADER.unpack_from(buffer, pos)
        start = pos + 4
        if size == -1:
            if end - pos < 12:
                break
            (size,) = LONG_HEADER.unpack_from(buffer, start)
            start += 8
        if end - start < size:
            break
        pos = start + size
        messages.append(buffer[start:pos])
    return messages, pos


def receive(sock: socket.socket, buffer: bytearray, reads: int) -> bool:
    """Append to `buffer` what the socket holds, without waiting (at most `reads` chunks of
    RECV_SIZE, so that one chatty peer cannot hog the loop). True once the peer has closed its
    end (or the socket broke)."""
    for _ in range(reads):
        try:
            data = sock.recv(RECV_SIZE, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True
        if not data:
            return True
        buffer += data
        if len(data) < RECV_SIZE:
            return False
    return False
