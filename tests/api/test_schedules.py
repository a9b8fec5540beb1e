"""Schedule previews over HTTP: a saved job's next fires, and a schedule before saving it."""

from __future__ import annotations

from datetime import datetime

import pytest

pytestmark = pytest.mark.timeout(60)

# 02:30 does not exist in New York on 2026-03-08: that fire runs right after the change.
DST_FIRES = [
    "2026-03-07T02:30:00-05:00",
    "2026-03-08T03:00:00-04:00",
    "2026-03-09T02:30:00-04:00",
]


def test_next_fires_of_a_saved_job(admin) -> None:  # type: ignore[no-untyped-def]
    job = admin.post(
        "/jobs",
        json={
            "name": "night",
            "kind": "python",
            "config": {"function": "tests.jobs_worker:ok"},
            "schedule": "30 2 * * *",
            "timezone": "America/New_York",
        },
    ).json()
    fires = admin.get(
        f"/jobs/{job['id']}/next-fires", params={"count": 3, "from": "2026-03-07T00:00"}
    )
    assert fires.status_code == 200, fires.text
    assert fires.json() == {"fires": DST_FIRES}  # `from` without offset: the job's timezone
    utc = admin.get(
        f"/jobs/{job['id']}/next-fires", params={"count": 1, "from": "2026-03-07T07:31:00+00:00"}
    ).json()
    assert utc == {"fires": ["2026-03-08T03:00:00-04:00"]}
    default = admin.get(f"/jobs/{job['id']}/next-fires").json()["fires"]
    assert len(default) == 10  # from now: the first is the job's own timer
    assert datetime.fromisoformat(default[0]) == datetime.fromisoformat(job["next_fire_at"])

    manual = admin.post(
        "/jobs",
        json={"name": "manual", "kind": "python", "config": {"function": "tests.jobs_worker:ok"}},
    ).json()
    assert admin.get(f"/jobs/{manual['id']}/next-fires").json() == {"fires": []}

    for query, field in [
        ({"count": 0}, "count"),
        ({"count": 1001}, "count"),
        ({"from": "soon"}, "from"),
    ]:
        answer = admin.get(f"/jobs/{job['id']}/next-fires", params=query)
        assert answer.status_code == 422, (query, answer.text)
        assert answer.json()["error"]["field"] == field
    assert admin.get("/jobs/999999/next-fires").status_code == 404


def test_preview_before_saving(admin) -> None:  # type: ignore[no-untyped-def]
    answer = admin.get(
        "/schedules/preview",
        params={
            "schedule": "30 2 * * *",
            "timezone": "America/New_York",
            "count": 3,
            "from": "2026-03-07T00:00",
        },
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"fires": DST_FIRES}
    every = admin.get(
        "/schedules/preview",
        params={"schedule": "every 90s", "count": 2, "from": "2026-03-07T00:00:00+00:00"},
    ).json()
    assert every == {"fires": ["2026-03-07T00:01:30+00:00", "2026-03-07T00:03:00+00:00"]}

    for query, field, message in [
        ({"schedule": "61 * * * *"}, "schedule", "minute field '61': 61 is out of range 0-59"),
        ({"schedule": "0 9 * * funday"}, "schedule", "funday"),
        ({"schedule": "@reboot"}, "schedule", "no fire times"),
        ({}, "schedule", "is required"),
        ({"schedule": "9:00", "timezone": "Europe/Atlantis"}, "timezone", "unknown timezone"),
        ({"schedule": "9:00", "count": 0}, "count", ""),
        ({"schedule": "9:00", "from": "2026-02-30T00:00"}, "from", "ISO 8601"),
    ]:
        answer = admin.get("/schedules/preview", params=query)
        assert answer.status_code == 422, (query, answer.text)
        error = answer.json()["error"]
        assert error["field"] == field and message in error["message"], (query, error)
