"""GET /metrics: a real scrape of a real daemon after real runs, and the
incremental histograms on a real store (each run counted once, however the
scrapes and the commits interleave)."""

from __future__ import annotations

import bisect
import time

import pytest
import requests
from daemonutil import DaemonProc, wait_for
from fakeforge import FakeForge, replies
from gitutil import commit, git, make_repo
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from webapiutil import add_run, open_store

from ciwatch.model import RunState
from ciwatch.web.metrics import DURATION_BUCKETS, LATE_WINDOW, Collector

PASS = "steps:\n  - name: build\n    run: echo ok\n"
FAIL = "steps:\n  - name: build\n    run: exit 1\n"


def scrape(url: str) -> dict[tuple, float]:
    r = requests.get(url + "/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return parse(r.text)


def parse(text: str) -> dict[tuple, float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, *sorted(s.labels.items()))] = s.value
    return out


def test_a_scrape_after_real_runs(tmp_path):
    bare, work = tmp_path / "app.git", tmp_path / "app-work"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    make_repo(work, {".ciwatch.yml": PASS})
    with FakeForge("gitea") as forge:
        forge.script(*[replies.server_error() for _ in range(1000)])  # the forge is down
        (tmp_path / "token").write_text(forge.token)
        d = DaemonProc(
            tmp_path,
            {
                "forges": {
                    "home": {
                        "kind": "gitea",
                        "url": forge.url,
                        "api_url": forge.url,
                        "token_file": str(tmp_path / "token"),
                    }
                },
                "repos": [
                    {"name": "app", "path": str(bare), "forge": "home", "forge_repo": "t/app"},
                    {"name": "gone", "url": str(tmp_path / "missing.git"), "poll_interval": 1},
                ],
            },
        )
        d.start()
        try:
            url = (d.state / "daemon.url").read_text().split()[1]
            for i in range(2):
                commit(work, {"n": str(i)}, f"change {i}")
                git(work, "push", "-q", str(bare), "HEAD:refs/heads/main")
                d.wait_runs_finished(i + 1, repo="app")
            git(work, "checkout", "-q", "-b", "broken")
            commit(work, {".ciwatch.yml": FAIL}, "break")
            git(work, "push", "-q", str(bare), "HEAD:refs/heads/broken")
            runs = d.wait_runs_finished(3, repo="app")
            m = wait_for(
                lambda: (
                    (m := scrape(url))[("ciwatch_poll_failures", ("repo", "gone"))] >= 1
                    and m.get(("ciwatch_outbox_failing", ("forge", "home")), 0) >= 1
                    and m
                ),
                30,
                what="a failed poll and a failed status delivery",
            )
        finally:
            assert d.stop() == 0, d.log.read_text()[-3000:]

    dur = "ciwatch_run_duration_seconds"
    assert m[(f"{dur}_count", ("repo", "app"), ("state", "success"))] == 2
    assert m[(f"{dur}_count", ("repo", "app"), ("state", "failure"))] == 1
    took = sum(r.finished_at - r.started_at for r in runs if r.state is RunState.SUCCESS)
    assert m[(f"{dur}_sum", ("repo", "app"), ("state", "success"))] == pytest.approx(took)
    inf = m[(f"{dur}_bucket", ("le", "+Inf"), ("repo", "app"), ("state", "success"))]
    assert (
        inf == 2 and m[(f"{dur}_bucket", ("le", "60"), ("repo", "app"), ("state", "success"))] == 2
    )
    lat = "ciwatch_trigger_to_start_seconds"
    assert m[(f"{lat}_count", ("source", "watch"))] == 3
    waits = sum(r.started_at - r.created_at for r in runs)
    assert m[(f"{lat}_sum", ("source", "watch"))] == pytest.approx(waits)
    assert m[("ciwatch_queue_depth",)] == 0 and m[("ciwatch_runs_running",)] == 0
    assert m[("ciwatch_outbox_backlog", ("forge", "home"))] >= 1
    assert m[("ciwatch_outbox_forge_failing", ("forge", "home"))] == 1
    assert ("ciwatch_poll_last_success_timestamp_seconds", ("repo", "gone")) not in m


def test_each_run_is_counted_once_across_scrapes(tmp_path):
    store = open_store(tmp_path)
    try:
        collector = Collector(store)

        def counts() -> dict[tuple, float]:
            return scrape_of(collector)

        key = ("ciwatch_run_duration_seconds_count", ("repo", "app"), ("state", "success"))
        for _ in range(3):
            add_run(store, "app")
        add_run(store, "app", state=RunState.RUNNING)
        add_run(store, "lib", state=RunState.QUEUED)
        m = counts()
        assert m[key] == 3 and m[("ciwatch_runs_running",)] == 1
        assert m[("ciwatch_queue_depth",)] == 1
        assert counts()[key] == 3  # a second scrape adds nothing
        add_run(store, "app")
        assert counts()[key] == 4
        # A run whose row was committed late, with an end before the newest
        # one already counted (but within the window), is counted; once.
        late = add_run(store, "app", state=RunState.RUNNING)
        with store._db.write() as c:
            c.execute(
                "UPDATE runs SET state = 'success', finished_at = ? WHERE id = ?",
                (time.time() - LATE_WINDOW / 2, late.id),
            )
        assert counts()[key] == 5 and counts()[key] == 5
        starts = ("ciwatch_trigger_to_start_seconds_count", ("source", "hook"))
        assert counts()[starts] == 6
    finally:
        store.close()


def test_a_scrape_reads_only_what_changed(tmp_path):
    store = open_store(tmp_path)
    try:
        runs = [add_run(store, "app") for _ in range(50)]
        with store._db.write() as c:  # ended a minute and a half apart, over 75 minutes
            for i, run in enumerate(runs):
                c.execute(
                    "UPDATE runs SET finished_at = started_at + ? WHERE id = ?", (i * 90, run.id)
                )
        collector = Collector(store)
        read = []
        real = store.finished_since
        store.finished_since = lambda after: read.append(rows := real(after)) or rows
        key = ("ciwatch_run_duration_seconds_count", ("repo", "app"), ("state", "success"))
        assert scrape_of(collector)[key] == 50
        assert scrape_of(collector)[key] == 50
        # The history is counted in SQL; rows are read only within the late window.
        assert [len(rows) for rows in read] == [2, 2]
    finally:
        store.close()


def test_the_history_and_the_new_runs_fall_in_the_same_buckets(tmp_path):
    store = open_store(tmp_path)
    try:
        took = [0.0, 0.5, 1.0, 1.5, 60.0, 60.01, 21600.0, 30000.0]
        runs = [add_run(store, "app") for _ in took]
        with store._db.write() as c:
            for run, t in zip(runs, took, strict=True):
                c.execute("UPDATE runs SET finished_at = started_at + ? WHERE id = ?", (t, run.id))
        from_sql = store.duration_buckets(float("inf"), DURATION_BUCKETS)
        one_by_one = {}
        for t in took:
            b = bisect.bisect_left(DURATION_BUCKETS, t)
            one_by_one[b] = one_by_one.get(b, 0) + 1
        assert {b: n for _r, _s, b, n, _t in from_sql} == one_by_one
        assert sum(total for *_x, total in from_sql) == pytest.approx(sum(took))
    finally:
        store.close()


def scrape_of(collector) -> dict[tuple, float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return parse(generate_latest(registry).decode())
