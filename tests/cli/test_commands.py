"""The CLI's requests, rendering and errors, against a fake API server on loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from nightshift.cli.render import human_duration
from tests.cli.fake_api import JOB, RUN, FakeApi, Seen, error
from tests.integration.conftest import NIGHTSHIFT


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


# -- jobs ------------------------------------------------------------------------------------


def test_jobs_list_shows_a_table_and_sends_filters_and_token(fake: FakeApi, cli) -> None:  # type: ignore[no-untyped-def]
    fake.on("GET", "/jobs", {"items": [JOB], "next_cursor": None})
    out = cli("jobs", "list", "--app", "shop", "--disabled", "--tag", "sync", "--limit", "5")
    assert out.code == 0, out.stderr
    header = out.stdout.splitlines()[0]
    for column in ("ID", "App", "Name", "Kind", "Schedule", "Timezone", "State", "Next fire"):
        assert column in header
    assert "Last run" in header
    row = next(line for line in out.stdout.splitlines() if "type1" in line)
    for value in ("3", "shop", "http", "*/5 * * * *", "Europe/Paris", "active", "failed"):
        assert value in row
    seen = fake.last()
    assert seen.query == {"app": "shop", "enabled": "false", "tag": "sync", "limit": "5"}
    assert seen.headers["authorization"] == "Bearer s3cret"


def test_jobs_list_json_is_the_apis_and_all_follows_cursors(fake: FakeApi, cli) -> None:  # type: ignore[no-untyped-def]
    pages = {
        None: {"items": [JOB], "next_cursor": "c2"},
        "c2": {"items": [{**JOB, "id": 4}], "next_cursor": None},
    }
    fake.on_call("GET", "/jobs", lambda seen: (200, pages[seen.query.get("cursor")]))
    one = cli("jobs", "list", "--json")
    assert one.code == 0 and json.loads(one.stdout) == pages[None]
    every = cli("jobs", "list", "--all", "--json")
    assert json.loads(every.stdout) == {"items": [JOB, {**JOB, "id": 4}], "next_cursor": None}
    table = cli("jobs", "list")
    assert "more: --all, or --cursor c2" in table.stderr


def test_group_options_work_before_the_command_and_the_command_wins(fake: FakeApi, cli) -> None:  # type: ignore[no-untyped-def]
    fake.on("GET", "/jobs/3", JOB)
    out = cli(
        "jobs",
        "--url",
        fake.url,
        "--token",
        "group",
        "--json",
        "show",
        "3",
        NIGHTSHIFT_URL="http://127.0.0.1:1",
    )
    assert out.code == 0, out.stderr
    assert json.loads(out.stdout) == JOB and fake.last().headers["authorization"] == "Bearer group"
    cli("jobs", "--token", "group", "show", "3", "--token", "command")
    assert fake.last().headers["authorization"] == "Bearer command"


def test_jobs_show_lists_every_field(fake: FakeApi, cli) -> None:  # type: ignore[no-untyped-def]
    fake.on("GET", "/jobs/3", JOB)
    out = cli("jobs", "show", "3")
    assert out.code == 0
    for text in ("type1", "https://example.com/action", "Europe/Paris", "1, backoff 30 s", "1 min"):
        assert text in out.stdout


def test_jobs_create_from_flags_sends_the_job(fake: FakeApi, cli) -> None:  # type: ignore[no-untyped-def]
    fake.on("POST", "/jobs", {**JOB, "id": 9}, status=201)
    out = cli(
        "jobs", "create", "--name", "ping", "--app", "shop",
        "--url", "https://example.com/ping", "--method", "post",
        "--schedule", "every 5m", "--tz", "Europe/Paris", "--tag", "a", "--tag", "b",
        "--retries", "3", "--timeout", "30", "--overlap", "queue", "--low-priority",
        "--config", '{"headers": {"X-Id": "1"}}', "--set", "config.query.type=1",
    )  # fmt: skip
    assert out.code == 0, out.stderr
    assert out.stdout.startswith("job 9 created: shop/type1")
    assert fake.last("POST").body == {
        "name": "ping",
        "app": "shop",
        "kind": "http",
        "config": {
            "headers": {"X-Id": "1"},
            "url": "https://example.com/ping",
            "method": "post",
            "query": {"type": 1},
        },
        "schedule": "every 5m",
        "timezone": "Europe/Paris",
        "tags": ["a", "b"],
        "retries": {"max": 3},
        "timeout_s": 30.0,
        "overlap": "queue",
        "low_priority": True,
    }


def test_jobs_create_from_a_file_drops_read_only_fields_and_flags_win(fake: FakeApi, cli) -> None:  # type: ignore[no-untyped-def]
    fake.on("POST", "/jobs", JOB, status=201)
    out = cli("jobs", "create", "--file", "-", "--name", "copy", "--json", input=json.dumps(JOB))
    assert out.code == 0 and json.loads(out.stdout) == JOB
    sent = fake.last("POST").body
    assert sent["name"] == "copy" and sent["config"] == JOB["config"]
    assert not {"id", "next_fire_at", "last_run", "state", "created_at"} & set(sent)


def test_jobs_create_python_shorthand(fake: FakeApi, cli) -> None:  # type: ignore[no-untyped-def]
    fake.on("POST", "/jobs", JOB, status=201)
    cli("jobs", "create", "--name", "r", "--function", "myjobs:report")
    assert fake.last("POST").body == {
        "name": "r",
        "kind": "python",
        "config": {"function": "myjobs:report"},
    }


def test_jobs_edit_sends_only_the_changed_fields_merged(fake: FakeApi, cli) -> None:  # type: ignore[no-untyped-def]
    fake.on("GET", "/jobs/3", JOB)
    fake.on("PATCH", "/jobs/3", {**JOB, "schedule": "9:00"})
    out = cli(
        "jobs", "edit", "3", "--schedule", "9:00", "--retries", "2",
        "--set", "config.query.type=2", "--set", "description=nightly",
    )  # fmt: skip
    assert out.code == 0, out.stderr
    assert out.stdout.startswith("job 3 updated")
    assert fake.last("PATCH").body == {
        "schedule": "9:00",
        "retries": {"max": 2, "backoff_s": 30.0},
        "config": {**JOB["config"], "query": {"type": 2}},
        "description": "nightly",
    }


def test_jobs_edit_without_changes_is_bad_input(fake: FakeApi, cli) -> None:  # type: ignore[no-untyped-def]
    fake.on("GET", "/jobs/3", JOB)
    out = cli("jobs", "edit", "3")
    assert out.code == 2
    assert one_error_line(out.stderr).startswith("error: nothing to change")


def test_jobs_run_sends_params_and_priority(fake: FakeApi, cli) -> None:  # type: ignore[no-untyped-def]
    fake.on("POST", "/jobs/3/run", {**RUN, "status": "pending"}, status=202)
    out = cli(
        "jobs", "run", "3", "--params", '{"a": 1, "n": 0}', "--param", "n=5",
        "--param", "day=2026-03-02", "--low-priority",
    )  # fmt: skip
    assert out.code == 0 and out.stdout.strip() == "run 17 pending"
    assert fake.last("POST").body == {
        "params": {"a": 1, "n": 5, "day": "2026-03-02"},
        "low_priority": True,
    }
    cli("jobs", "run", "3")
    assert fake.last("POST").body == {}


TEST_ANSWER = {
    "run": {**RUN, "status": "succeeded", "duration_s": 0.25, "errors": False, "error": None},
    "request": {
        "method": "GET",
        "url": "https://example.com/action?type=1",
        "headers": {"authorization": "***"},
        "body": None,
    },
    "response": {"status": 200, "headers": {"content-type": "text/plain"}, "body": "pong",
                 "elapsed_ms": 120},
    "log": [{"at": "2026-03-02T09:00:01Z", "level": "INFO", "message": "GET … -> 200"}],
}  # fmt: skip


def test_jobs_test_prints_request_response_and_log(fake: FakeApi, cli) -> None:  # type: ignore[no-untyped-def]
    fake.on("POST", "/jobs/3/test", TEST_ANSWER)
    out = cli("jobs", "test", "3")
    assert out.code == 0, out.stderr
    text = out.stdout
    assert "run 17 succeeded in 250 ms" in text
    assert "GET https://example.com/action?type=1" in text and "authorization: ***" in text
    assert "status 200 in 120 ms" in text and "pong" in text
    assert "INFO" in text and "GET … -> 200" in text
    assert text.index("request") < text.index("response") < text.index("log")
    assert fake.last().body == {}
    as_json = cli("jobs", "test", "3", "--json", "--param", "who=cli")
    assert json.loads(as_json.stdout) == TEST_ANSWER
    assert fake.last().body == {"params": {"who": "cli"}}


def test_jobs_test_of_a_failing_job_exits_1(fake: FakeApi, cli) -> None:  # type: ignore[no-untyped-def]
    fake.on("POST", "/jobs/3/test", {**TEST_ANSWER, "run": {**RUN, "status": "failed"}})
    out = cli("jobs", "test", "3")
    assert out.code == 1 and "JobFailure: HTTP 500" in out.stdout


def test_jobs_test_that_times_out_exits_1(fake: FakeApi, cli) -> None:  # type: ignore[no-untyped-def]
    fake.on("POST", "/jobs/3/test", error("timeout", "the run did not finish in 60 s"), 504)
    out = cli("jobs", "test", "3")
    assert out.code == 1
    assert one_error_line(out.stderr) == (
        "error: the service answered 504: the run did not finish in 60 s"
    )


def test_jobs_preview_asks_the_service(fake: FakeApi, cli) -> None:  # type: ignore[no-untyped-def]
    fires = ["2026-03-02T09:00:00+01:00", "2026-03-03T09:00:00+01:00"]
    fake.on("GET", "/schedules/preview", {"fires": fires})
    out = cli("jobs", "preview", "9:00", "--tz", "Europe/Paris", "-n", "2", "--from", "2026-03-02")
    assert out.code == 0 and out.stdout.splitlines() == fires
    assert fake.last().query == {
        "schedule": "9:00",
        "timezone": "Europe/Paris",
        "count": "2",
        "from": "2026-03-02",
    }
    fake.on("GET", "/jobs/3/next-fires", {"fires": fires[:1]})
    saved = cli("jobs", "preview", "--job", "3", "--count", "1")
    assert saved.stdout.splitlines() == fires[:1] and fake.last().query == {"count": "1"}


def test_a_bad_schedule_is_one_line_and_exit_2(fake: FakeApi, cli) -> None:  # type: ignore[no-untyped-def]
    message = "minute field '61': 61 is out of range 0-59"
    fake.on("GET", "/schedules/preview", error("invalid_schedule", message, "schedule"), 422)
    out = cli("jobs", "preview", "61 * * * *")
    assert out.code == 2 and out.stdout == ""
    assert one_error_line(out.stderr) == f"error: schedule: {message}"


def test_jobs_delete_needs_yes_without_a_terminal(fake: FakeApi, cli) -> None:  # type: ignore[no-untyped-def]
    fake.on("GET", "/jobs/3", JOB)
    fake.on("DELETE", "/jobs/3", None, status=204)
    refused = cli("jobs", "delete", "3")
    assert refused.code == 2 and "--yes" in one_error_line(refused.stderr)
    assert not [s for s in fake.seen if s.method == "DELETE"]
    done = cli("jobs", "delete", "3", "--yes")
    assert done.code == 0 and done.stdout.strip() == "job 3 deleted"
    assert fake.last().method == "DELETE"


# -- runs ------------------------------------------------------------------------------------


def test_runs_list_shows_the_monitor_fields_readably(fake: FakeApi, cli) -> None:  # type: ignore[no-untyped-def]
    fake.on("GET", "/runs", {"items": [RUN], "next_cursor": None})
    out = cli("runs", "list", "--job", "3", "--status", "running,pending", "--status", "failed")
    assert out.code == 0, out.stderr
    header = out.stdout.splitlines()[0]
    columns = ["ID", "Job", "Status", "Created", "Waiting", "Started", "Duration", "Errors"]
    columns += ["Low priority", "Run by", "Progress", "Children", "Attempt"]
    positions = [header.index(c) for c in columns]
    assert positions == sorted(positions)
    row = next(line for line in out.stdout.splitlines() if "type1" in line)
    for value in ("17", "running", "1.2 s", "3 min", "yes", "ci-token", "45 %", "3/10, 1 failed"):
        assert value in row
    assert row.rstrip().endswith("2")  # attempt
    assert fake.last().query == {"job": "3", "status": "running,pending,failed"}


def test_runs_show_has_the_error_and_traceback(fake: FakeApi, cli) -> None:  # type: ignore[no-untyped-def]
    fake.on("GET", "/runs/17", RUN)
    out = cli("runs", "show", "17")
    assert out.code == 0
    for text in ("JobFailure: HTTP 500", "Traceback: boom", "ci-token", "retry of", "16"):
        assert text in out.stdout
    assert json.loads(cli("runs", "show", "17", "--json").stdout) == RUN


def test_runs_logs_filters_and_prints_lines(fake: FakeApi, cli) -> None:  # type: ignore[no-untyped-def]
    lines = [
        {"id": 1, "at": "2026-03-02T09:00:01Z", "level": "ERROR", "message": "[boom] failed"},
        {"id": 2, "at": "2026-03-02T09:00:02Z", "level": "INFO", "message": "retrying"},
    ]
    fake.on("GET", "/runs/17/logs", {"items": lines})
    out = cli("runs", "logs", "17", "--q", "boom", "--level", "error")
    assert out.code == 0
    printed = out.stdout.splitlines()
    assert len(printed) == 2 and "ERROR" in printed[0] and printed[0].endswith("[boom] failed")
    assert fake.last().query == {"q": "boom", "level": "error"}


# -- apps and tokens -------------------------------------------------------------------------


def test_apps_pause_and_resume_patch_the_switch(fake: FakeApi, cli) -> None:  # type: ignore[no-untyped-def]
    def patch(seen: Seen) -> tuple[int, object]:
        return 200, {"name": "shop", "schedules_enabled": seen.body["schedules_enabled"]}

    fake.on_call("PATCH", "/apps/shop", patch)
    out = cli("apps", "pause", "shop")
    assert out.stdout.strip() == "app shop: schedules paused"
    assert fake.last().body == {"schedules_enabled": False}
    out = cli("apps", "resume", "shop")
    assert out.stdout.strip() == "app shop: schedules on"
    assert fake.last().body == {"schedules_enabled": True}


def test_apps_list_and_create(fake: FakeApi, cli) -> None:  # type: ignore[no-untyped-def]
    app = {"name": "shop", "schedules_enabled": False, "retention_days": 7, "created_at": None}
    fake.on("GET", "/apps", {"items": [app], "next_cursor": None})
    fake.on("POST", "/apps", {**app, "schedules_enabled": True}, status=201)
    fake.on("PATCH", "/apps/shop", app)
    table = cli("apps", "list").stdout
    assert "Schedules" in table and "paused" in table and "7 days" in table
    out = cli("apps", "create", "shop", "--retention-days", "7", "--paused", "--json")
    assert json.loads(out.stdout) == app
    assert fake.last("POST").body == {"name": "shop"}
    assert fake.last("PATCH").body == {"retention_days": 7, "schedules_enabled": False}


def test_tokens_create_prints_the_secret_alone_on_stdout(fake: FakeApi, cli) -> None:  # type: ignore[no-untyped-def]
    created = {"id": 5, "name": "ci", "app": "shop", "token": "ns_abc", "created_at": None}
    fake.on("POST", "/tokens", created, status=201)
    out = cli("tokens", "create", "--name", "ci", "--app", "shop")
    assert out.code == 0 and out.stdout == "ns_abc\n"
    assert "shown only now" in out.stderr
    assert fake.last().body == {"name": "ci", "app": "shop"}


def test_tokens_list_and_revoke(fake: FakeApi, cli) -> None:  # type: ignore[no-untyped-def]
    fake.on(
        "GET", "/tokens", {"items": [{"id": 5, "name": "ci", "app": None}], "next_cursor": None}
    )
    fake.on("DELETE", "/tokens/5", None, status=204)
    assert "(admin)" in cli("tokens", "list").stdout
    out = cli("tokens", "revoke", "5")
    assert out.code == 0 and out.stdout.strip() == "token 5 revoked"


def _created(seen: Seen) -> tuple[int, dict]:  # type: ignore[type-arg]
    items = [
        {"id": 100 + i, "app": job.get("app", "default"), "name": job["name"]}
        for i, job in enumerate(seen.body["jobs"])
    ]
    return 201, {"items": items}


def test_jobs_import_sends_the_file_in_batches(fake: FakeApi, cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    fake.on_call("POST", "/jobs/bulk", _created)
    jobs = [{"name": f"j{i}", "kind": "python", "config": {"function": "m:f"}} for i in range(5)]
    path = tmp_path / "jobs.json"
    path.write_text(json.dumps(jobs))
    out = cli("jobs", "import", str(path), "--batch", "2")
    assert out.code == 0, out.stderr
    assert out.stdout.strip() == "5 jobs created in default"
    sent = [s.body["jobs"] for s in fake.seen if s.path == "/api/v1/jobs/bulk"]
    assert sent == [jobs[0:2], jobs[2:4], jobs[4:5]]


def test_jobs_import_reads_stdin_and_the_jobs_list_json(fake: FakeApi, cli) -> None:  # type: ignore[no-untyped-def]
    fake.on_call("POST", "/jobs/bulk", _created)
    listed = {"items": [JOB, {**JOB, "id": 4, "name": "type2"}], "next_cursor": None}
    out = cli("jobs", "import", "-", "--json", input=json.dumps(listed))
    assert out.code == 0, out.stderr
    assert [i["name"] for i in json.loads(out.stdout)["items"]] == ["type1", "type2"]
    sent = fake.last("POST").body["jobs"]
    assert sent[0]["config"] == JOB["config"]
    assert not {"id", "next_fire_at", "last_run", "state", "created_at"} & set(sent[0])
    wrapped = cli("jobs", "import", "-", input=json.dumps({"jobs": [{"name": "w"}]}))
    assert wrapped.code == 0 and fake.last("POST").body == {"jobs": [{"name": "w"}]}


def test_jobs_import_names_the_bad_job_by_its_place_in_the_file(fake: FakeApi, cli) -> None:  # type: ignore[no-untyped-def]
    def second_batch_fails(seen: Seen) -> tuple[int, dict]:  # type: ignore[type-arg]
        if seen.body["jobs"][0]["name"] == "j0":
            return _created(seen)
        return 422, error(
            "invalid", "minute field '61': 61 is out of range 0-59", "jobs[1].schedule"
        )

    fake.on_call("POST", "/jobs/bulk", second_batch_fails)
    jobs = [{"name": f"j{i}"} for i in range(4)]
    out = cli("jobs", "import", "-", "--batch", "2", input=json.dumps(jobs))
    assert out.code == 2
    assert one_error_line(out.stderr) == (
        "error: jobs[3].schedule: minute field '61': 61 is out of range 0-59"
        " (jobs[0] to jobs[1] were created, in batches of 2)"
    )
    fake.on(
        "POST",
        "/jobs/bulk",
        error("conflict", "app 'a' already has a job named 'x'", "jobs[0].name"),
        409,
    )
    taken = cli("jobs", "import", "-", input=json.dumps(jobs))
    assert taken.code == 2
    assert (
        one_error_line(taken.stderr) == "error: jobs[0].name: app 'a' already has a job named 'x'"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{nope", "error: stdin: not valid JSON"),
        ('{"name": "x"}', "error: -: expected a JSON array of jobs"),
        ("[]", "error: -: no jobs in it"),
        ("5", "error: -: expected a JSON array of jobs"),
    ],
)
def test_jobs_import_of_a_bad_file_is_one_line_and_exit_2(cli, text: str, message: str) -> None:  # type: ignore[no-untyped-def]
    out = cli("jobs", "import", "-", input=text)
    assert out.code == 2
    assert one_error_line(out.stderr).startswith(message)
    missing = cli("jobs", "import", "/nonexistent/jobs.json")
    assert missing.code == 2
    assert one_error_line(missing.stderr).startswith("error: cannot read /nonexistent/jobs.json")


# -- errors ----------------------------------------------------------------------------------


def test_unauthorized_is_exit_2_with_a_hint(fake: FakeApi, cli) -> None:  # type: ignore[no-untyped-def]
    fake.on("GET", "/jobs", error("unauthorized", "a valid token is required"), 401)
    out = cli("jobs", "list", NIGHTSHIFT_TOKEN="")
    assert out.code == 2
    assert one_error_line(out.stderr) == "error: unauthorized: set --token or NIGHTSHIFT_TOKEN"
    assert "authorization" not in fake.last().headers


def test_not_found_names_the_thing_and_exits_1(fake: FakeApi, cli) -> None:  # type: ignore[no-untyped-def]
    fake.on("GET", "/jobs/42", error("not_found", "job 42 not found"), 404)
    out = cli("jobs", "show", "42")
    assert out.code == 1 and one_error_line(out.stderr) == "error: job 42 not found"
    out = cli("runs", "show", "99")
    assert out.code == 1 and one_error_line(out.stderr) == "error: run 99 not found"


def test_validation_errors_show_field_and_message(fake: FakeApi, cli) -> None:  # type: ignore[no-untyped-def]
    fake.on("POST", "/jobs", error("invalid", "an http job needs a url", "config.url"), 422)
    out = cli("jobs", "create", "--name", "x", "--kind", "http")
    assert out.code == 2
    assert one_error_line(out.stderr) == "error: config.url: an http job needs a url"


def test_server_errors_exit_1(fake: FakeApi, cli) -> None:  # type: ignore[no-untyped-def]
    fake.on("GET", "/runs", error("internal", "internal error"), 500)
    out = cli("runs", "list")
    assert out.code == 1 and one_error_line(out.stderr).startswith(
        "error: the service answered 500"
    )


def test_connection_refused_is_exit_1(cli) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nobody listens there
    url = f"http://127.0.0.1:{port}"
    out = cli("jobs", "list", NIGHTSHIFT_URL=url)
    assert out.code == 1
    assert one_error_line(out.stderr) == f"error: cannot reach {url} (is `nightshift up` running?)"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("jobs", "create", "--config", "{nope"), "error: --config: not valid JSON"),
        (("jobs", "create", "--config", "[1]"), "error: --config: must be a JSON object"),
        (("jobs", "run", "3", "--param", "novalue"), "error: --param: expected key=value"),
        (("jobs", "create", "--file", "/nonexistent.json"), "error: --file: cannot read"),
        (("jobs", "preview"), "error: give a schedule expression or --job ID"),
        (("jobs", "list", "--url", "ftp://x"), "error: --url: 'ftp://x' is not an http"),
        (("schedule", "preview", "61 * * * *"), "error: schedule: minute field '61'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(cli, args: tuple[str, ...], message: str) -> None:  # type: ignore[no-untyped-def]
    out = cli(*args)
    assert out.code == 2
    assert one_error_line(out.stderr).startswith(message)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, ""),
        (0.35, "350 ms"),
        (1.23, "1.2 s"),
        (42, "42 s"),
        (90, "1.5 min"),
        (180, "3 min"),
        (1800, "30 min"),
        (5400, "1.5 h"),
        (3 * 86_400, "3.0 d"),
    ],
)
def test_human_durations(seconds: float | None, text: str) -> None:
    assert human_duration(seconds) == text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["jobs", "show", "abc"], "error: Invalid value for 'job_id'"),
        (["up", "--bogus"], "error: No such option: --bogus"),
        (["runs", "logs"], "error: Missing argument 'run_id'."),
    ],
)
def test_usage_errors_of_the_real_command_are_one_line(args: list[str], message: str) -> None:
    done = subprocess.run([NIGHTSHIFT, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert one_error_line(done.stderr).startswith(message)


def test_the_real_command_asks_the_api(fake: FakeApi) -> None:
    """The installed command in a process of its own, as users run it, not the in-process
    runner: what it sets up before the CLI (__main__.py) leaves its HTTP client whole."""
    fake.on("GET", "/runs", {"items": [RUN], "next_cursor": None})
    env = {**os.environ, "NIGHTSHIFT_URL": fake.url, "NIGHTSHIFT_TOKEN": "s3cret"}
    done = subprocess.run(
        [NIGHTSHIFT, "runs", "list", "--status", "running"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "COLUMNS": "250"},
    )
    assert done.returncode == 0, done.stderr
    assert "type1" in done.stdout and "running" in done.stdout
    assert fake.last().query == {"status": "running"}


@pytest.mark.parametrize("command", [[NIGHTSHIFT], [sys.executable, "-m", "nightshift"]])
def test_no_arguments_prints_the_help(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr == ""
    for group in ("up", "schedule", "jobs", "runs", "apps", "tokens"):
        assert group in done.stdout


def test_a_worker_command_given_bad_input_leaves_no_process_behind() -> None:
    """`worker` starts the worker's fork server before the CLI reads its options: an option
    found wrong is still one line and exit 2, and the server exits with the command."""
    proc = subprocess.Popen(
        [NIGHTSHIFT, "worker", "--bogus"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a process group of its own, which the server is in too
    )
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2 and stdout == ""
    assert one_error_line(stderr).startswith("error: No such option: --bogus")
    deadline = time.monotonic() + 10
    while True:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break  # nothing is left of the group
        assert time.monotonic() < deadline, "a process of the command outlived it"
        time.sleep(0.05)
