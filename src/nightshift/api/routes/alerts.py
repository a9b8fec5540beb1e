"""Alert rules (per job or per app) and the record of what each one sent."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from nightshift.access import Principal
from nightshift.alerts.rules import AlertRules
from nightshift.api import pagination
from nightshift.api.auth import Caller, scoped_app, visible_app
from nightshift.api.context import ApiContext, get_context
from nightshift.domain.alerts import AlertDelivery, AlertRule
from nightshift.errors import InvalidInput, NotFound

router = APIRouter(prefix="/alerts", tags=["alerts"])
Ctx = Annotated[ApiContext, Depends(get_context)]
Event = Literal["failed", "long_running"]


class AlertRuleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    app: str | None = Field(
        default=None, description="default: the app token's app, or the job's app"
    )
    job_id: int | None = Field(default=None, description="null: every job of the app")
    on: list[Event] = Field(default_factory=lambda: ["failed"])
    max_duration_s: float | None = Field(
        default=None, description="seconds; required for long_running"
    )
    webhook_url: str | None = None
    email: str | list[str] | None = Field(default=None, description="one or more addresses")
    enabled: bool = True


class AlertRulePatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job_id: int | None = None
    on: list[Event] | None = None
    max_duration_s: float | None = None
    webhook_url: str | None = None
    email: str | list[str] | None = None
    enabled: bool | None = None


class AlertRuleOut(BaseModel):
    id: int
    app: str
    job_id: int | None
    on: list[Event]
    max_duration_s: float | None
    webhook_url: str | None
    email: list[str]
    enabled: bool
    created_at: datetime
    updated_at: datetime


class AlertRuleList(BaseModel):
    items: list[AlertRuleOut]
    next_cursor: str | None


class DeliveryOut(BaseModel):
    id: int
    rule_id: int
    run_id: int
    event: Event
    channel: Literal["webhook", "email"]
    status: Literal["pending", "sending", "delivered", "failed"]
    attempts: int
    next_attempt_at: datetime | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    delivered_at: datetime | None


class DeliveryList(BaseModel):
    items: list[DeliveryOut]
    next_cursor: str | None


def rule_out(rule: AlertRule) -> AlertRuleOut:
    return AlertRuleOut(
        id=rule.id,
        app=rule.app,
        job_id=rule.job_id,
        on=[str(e) for e in rule.events],  # type: ignore[misc]
        max_duration_s=rule.max_duration_s,
        webhook_url=rule.webhook_url,
        email=list(rule.emails),
        enabled=rule.enabled,
        created_at=rule.created_at,
        updated_at=rule.updated_at,
    )


def delivery_out(d: AlertDelivery) -> DeliveryOut:
    return DeliveryOut(
        id=d.id,
        rule_id=d.rule_id,
        run_id=d.run_id,
        event=str(d.event),  # type: ignore[arg-type]
        channel=str(d.channel),  # type: ignore[arg-type]
        status=str(d.status),  # type: ignore[arg-type]
        attempts=d.attempts,
        next_attempt_at=d.next_attempt_at if d.status == "pending" else None,
        last_error=d.last_error,
        created_at=d.created_at,
        updated_at=d.updated_at,
        delivered_at=d.delivered_at,
    )


def _rules(ctx: ApiContext) -> AlertRules:
    service = ctx.service
    return AlertRules(service.store, service.clock, service.settings)


def _visible(caller: Principal, rules: AlertRules, rule_id: int) -> AlertRule:
    rule = rules.get(rule_id)
    if not caller.sees(rule.app):
        raise NotFound("alert", rule_id)
    return rule


def _app_for(caller: Principal, ctx: ApiContext, body: AlertRuleIn) -> str:
    app = body.app or caller.app
    if app is None and body.job_id is not None:
        try:
            app = ctx.service.store.get_job(body.job_id).app
        except NotFound:
            raise InvalidInput(f"no job {body.job_id}", field="job_id") from None
    if app is None:
        raise InvalidInput("is required (or give job_id)", field="app")
    return visible_app(caller, app)


@router.post("", status_code=201, response_model=AlertRuleOut)
def create_alert(body: AlertRuleIn, caller: Caller, ctx: Ctx) -> AlertRuleOut:
    """A rule: alert `on` a run failing for good and/or running longer than max_duration_s,
    by webhook (JSON POST) and/or e-mail, for one job or (job_id null) every job of an app."""
    app = _app_for(caller, ctx, body)
    data: dict[str, Any] = body.model_dump(exclude={"app"})
    return rule_out(_rules(ctx).create(app, data))


@router.get("", response_model=AlertRuleList)
def list_alerts(
    caller: Caller,
    ctx: Ctx,
    app: str | None = None,
    job_id: Annotated[int | None, Query(description="rules of this job only")] = None,
    limit: pagination.Limit = pagination.DEFAULT_LIMIT,
    cursor: pagination.Cursor = None,
) -> AlertRuleList:
    """Rules by id; an app token sees its own app's only."""
    after = pagination.decode_id("alert", cursor)
    app, empty = scoped_app(caller, app)
    if empty:
        return AlertRuleList(items=[], next_cursor=None)
    found = _rules(ctx).list_rules(app, job_id, after, limit + 1)
    page = found[:limit]
    more = len(found) > limit
    return AlertRuleList(
        items=[rule_out(r) for r in page],
        next_cursor=pagination.encode("alert", page[-1].id) if more else None,
    )


@router.get("/{rule_id}", response_model=AlertRuleOut)
def get_alert(rule_id: int, caller: Caller, ctx: Ctx) -> AlertRuleOut:
    return rule_out(_visible(caller, _rules(ctx), rule_id))


@router.patch("/{rule_id}", response_model=AlertRuleOut)
def update_alert(rule_id: int, body: AlertRulePatch, caller: Caller, ctx: Ctx) -> AlertRuleOut:
    """Change the fields given (`null` clears job_id, max_duration_s, webhook_url, email)."""
    rules = _rules(ctx)
    _visible(caller, rules, rule_id)
    changes = body.model_dump(include=body.model_fields_set)
    for key in ("on", "enabled"):
        if key in changes and changes[key] is None:
            raise InvalidInput("cannot be null", field=key)
    return rule_out(rules.update(rule_id, changes))


@router.delete("/{rule_id}", status_code=204, response_class=Response)
def delete_alert(rule_id: int, caller: Caller, ctx: Ctx) -> Response:
    rules = _rules(ctx)
    _visible(caller, rules, rule_id)
    rules.delete(rule_id)
    return Response(status_code=204)


@router.get("/{rule_id}/deliveries", response_model=DeliveryList)
def list_deliveries(
    rule_id: int,
    caller: Caller,
    ctx: Ctx,
    limit: pagination.Limit = pagination.DEFAULT_LIMIT,
    cursor: pagination.Cursor = None,
) -> DeliveryList:
    """What the rule sent, newest first: event, run, channel, status, attempts, last error."""
    rules = _rules(ctx)
    _visible(caller, rules, rule_id)
    before = pagination.decode_id("delivery", cursor)
    found = rules.deliveries(rule_id, before, limit + 1)
    page = found[:limit]
    more = len(found) > limit
    return DeliveryList(
        items=[delivery_out(d) for d in page],
        next_cursor=pagination.encode("delivery", page[-1].id) if more else None,
    )
