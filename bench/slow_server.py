"""A loopback HTTP server that answers every request after a fixed delay (the http benchmark).

    python bench/slow_server.py --port 8999 --delay 1.0

GET /stats answers at once with {"requests": n, "max_inflight": m, "first": t0, "last": t1}
(monotonic seconds of the first request's arrival and the last answer); GET /arrivals with
every request's arrival time (monotonic seconds), to see how the client paced them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import uvicorn

STATE: dict = {"requests": 0, "inflight": 0, "max_inflight": 0, "first": None, "last": None}
ARRIVALS: list[float] = []


def make_app(delay: float):  # type: ignore[no-untyped-def]
    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            return
        if scope["path"] == "/stats":
            body = json.dumps(STATE).encode()
        elif scope["path"] == "/arrivals":
            body = json.dumps(ARRIVALS).encode()
        else:
            STATE["requests"] += 1
            STATE["inflight"] += 1
            STATE["max_inflight"] = max(STATE["max_inflight"], STATE["inflight"])
            ARRIVALS.append(time.monotonic())
            if STATE["first"] is None:
                STATE["first"] = ARRIVALS[0]
            try:
                await asyncio.sleep(delay)
            finally:
                STATE["inflight"] -= 1
            STATE["last"] = time.monotonic()
            body = b'{"ok": true}'
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=1.0)
    args = parser.parse_args()
    uvicorn.run(
        make_app(args.delay),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        backlog=4096,
        timeout_keep_alive=30,
    )


if __name__ == "__main__":
    main()
