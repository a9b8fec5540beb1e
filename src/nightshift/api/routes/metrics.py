"""`GET /metrics`: Prometheus text format; needs the admin token (see nightshift.metrics)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response

from nightshift.api.auth import Admin
from nightshift.metrics import CONTENT_TYPE, Metrics, build_metrics

router = APIRouter(tags=["metrics"])


def _metrics(request: Request) -> Metrics:
    """The runtime's (with its worker); an app served without a runtime gets store metrics."""
    state = request.app.state
    if getattr(state, "metrics", None) is None:
        service = state.nightshift.service
        state.metrics = build_metrics(service.store, service.clock, service.settings)
    return state.metrics


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE: {}}}})
async def metrics(_: Admin, request: Request) -> Response:
    body = await asyncio.to_thread(_metrics(request).render)
    return Response(body, media_type=CONTENT_TYPE)
