"""Run states to commit statuses: the reporting sweep against a real store,
delivered through the outbox to a scripted forge client, on a fake clock."""

from __future__ import annotations

import logging

import pytest
from test_outbox import DOWN, OK, FakeClock, MaxRandom, OStore, ScriptedClient

from ciwatch.forges.types import StatusState
from ciwatch.model import Event, EventKind, RunState, StepResult, StepState
from ciwatch.outbox import Outbox
from ciwatch.reporting import RepoForge, Reporter, duration_text, plain

CONTEXT = "ciwatch/.ciwatch.yml"
URL = "https://ci.example.org"
SHA_A, SHA_B = "a" * 40, "b" * 40


class World:
    """A store with two repositories (one with a forge), a reporter and an outbox."""

    def __init__(self, tmp_path, clock: FakeClock, client: ScriptedClient) -> None:
        self.tmp_path, self.clock, self.client = tmp_path, clock, client
        self.open()
        self.store.ensure_repo("app", "/srv/git/app.git")
        self.store.ensure_repo("quiet", "/srv/git/quiet.git")

    def open(self) -> None:
        self.store = OStore.open(self.tmp_path / "ciwatch.db", clock=self.clock)
        forges = {"app": RepoForge("home", "team/app", "ciwatch", ".ciwatch.yml")}
        self.reporter = Reporter(self.store, forges, URL + "/", self.clock)
        self.outbox = Outbox(
            self.store,
            {"home": self.client},
            horizons={"home": 3600.0},
            clock=self.clock,
            rng=MaxRandom(),
            before_pass=self.reporter.sweep,
        )

    def reopen(self) -> None:
        """A restart: everything in memory is gone."""
        self.store.close()
        self.open()

    def submit(self, sha: str = SHA_A, ref: str = "refs/heads/main", repo: str = "app", **kw):
        run, _ = self.store.submit(Event(repo, kw.pop("kind", EventKind.PUSH), ref, sha, **kw))
        return run

    def start(self, run_id: int):
        return self.store.start_attempt(run_id, "w1", 600)

    def step(self, run_id, attempt, cell, idx, name, state, **result):
        step_id = self.store.start_step(run_id, attempt, cell, idx, name, "")
        self.store.finish_step(step_id, StepResult(state, **result))

    def tick(self, seconds: float = 1.0) -> None:
        self.outbox.deliver_once()
        self.clock.advance(seconds)

    def posted(self, context: str = CONTEXT, sha: str | None = None):
        return [
            (u.state, u.description)
            for _, u in self.client.calls
            if u.context == context and (sha is None or u.sha == sha)
        ]


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def world(tmp_path, clock):
    w = World(tmp_path, clock, ScriptedClient(clock))
    yield w
    w.store.close()


def test_a_run_lifecycle_gives_pending_running_and_success(world):
    run = world.submit()
    world.tick()
    attempt = world.start(run.id)
    world.tick()
    world.clock.advance(61)
    assert world.store.finish_run(run.id, RunState.SUCCESS, attempt_id=attempt.id)
    world.tick()
    world.tick()  # nothing changed: nothing more is posted

    assert world.posted() == [
        (StatusState.PENDING, "queued"),
        (StatusState.RUNNING, "running"),
        (StatusState.SUCCESS, "passed in 1m02s"),
    ]
    update = world.client.calls[-1][1]
    assert update.sha == SHA_A and update.forge_repo == "team/app" and update.forge == "home"
    assert update.target_url == f"{URL}/runs/{run.id}" and update.run_id == run.id
    assert dict(update.extra) == {"ref": "main"}  # GitLab attaches the status to the branch


def test_queued_with_a_wait_reason_and_a_second_attempt(world):
    run = world.submit()
    world.store.set_wait_reason(run.id, "waiting for app#1 (group app/main)")
    world.tick()
    first = world.start(run.id)
    world.tick()
    world.clock.advance(700)  # the worker is lost, the run goes back to the queue
    world.store.requeue(run.id, "worker lost", attempt_id=first.id)
    world.start(run.id)
    world.tick()
    assert world.posted() == [
        (StatusState.PENDING, "queued: waiting for app#1 (group app/main)"),
        (StatusState.RUNNING, "running"),
        (StatusState.RUNNING, "running (attempt 2)"),
    ]


def test_a_matrix_run_reports_each_cell_and_the_whole(world):
    run = world.submit()
    attempt = world.start(run.id)
    world.step(run.id, attempt.number, "python=3.11", 0, "test", StepState.SUCCESS, exit_code=0)
    world.step(
        run.id,
        attempt.number,
        "python=3.12",
        0,
        "test",
        StepState.FAILURE,
        exit_code=1,
        reason="exit code 1",
    )
    world.tick()  # running, with steps in cells already
    reason = "[python=3.12] step 'test': exit code 1"
    world.store.finish_run(run.id, RunState.FAILURE, reason, attempt_id=attempt.id)
    world.tick()

    assert world.posted(f"{CONTEXT}/python=3.11") == [
        (StatusState.RUNNING, "running"),
        (StatusState.SUCCESS, "passed"),
    ]
    assert world.posted(f"{CONTEXT}/python=3.12") == [
        (StatusState.RUNNING, "running"),
        (StatusState.FAILURE, "failed: step 'test': exit code 1"),
    ]
    assert world.posted()[-1] == (StatusState.FAILURE, f"failed: {reason}")
    # The whole run's final state is the last word for the commit.
    assert world.client.calls[-1][1].context == CONTEXT


def test_allowed_failures_pass_with_a_warning(world):
    run = world.submit()
    attempt = world.start(run.id)
    world.step(run.id, attempt.number, "", 0, "build", StepState.SUCCESS, exit_code=0)
    world.step(
        run.id, attempt.number, "", 1, "lint", StepState.FAILURE, exit_code=1, allowed_failure=True
    )
    world.clock.advance(5)
    world.store.finish_run(run.id, RunState.SUCCESS, attempt_id=attempt.id)
    world.tick()
    assert world.posted()[-1] == (StatusState.WARNING, "passed with allowed failures in 5s")
    assert all("/" not in u.context[len(CONTEXT) :] for _, u in world.client.calls)


@pytest.mark.parametrize(
    ("state", "reason", "expected"),
    [
        (
            RunState.FAILURE,
            "step 'test': exit code 1",
            (StatusState.FAILURE, "failed: step 'test': exit code 1"),
        ),
        (
            RunState.ERROR,
            "invalid pipeline: .ciwatch.yml:3:5: steps[0].run: required (+2 more)",
            (
                StatusState.ERROR,
                "invalid pipeline: .ciwatch.yml:3:5: steps[0].run: required (+2 more)",
            ),
        ),
        (RunState.CANCELED, "superseded by app#20", (StatusState.CANCELED, "superseded by app#20")),
        (
            RunState.SKIPPED,
            "branch 'wip' not in when.branch",
            (StatusState.SUCCESS, "skipped: branch 'wip' not in when.branch"),
        ),
        (RunState.ERROR, "", (StatusState.ERROR, "error")),
    ],
)
def test_final_states_and_their_descriptions(world, state, reason, expected):
    run = world.submit()
    world.store.finish_run(run.id, state, reason)
    world.tick()
    assert world.posted() == [expected]  # queued was never seen: only the final state


def test_descriptions_are_plain_text(world):
    run = world.submit()
    world.store.finish_run(
        run.id, RunState.FAILURE, "step 'x\x1b[31m': exit code 1\r\nfake: line\u202e"
    )
    world.tick()
    assert world.posted() == [(StatusState.FAILURE, "failed: step 'x': exit code 1 fake: line")]


def test_a_kill_between_run_finished_and_status_posted_loses_nothing(world):
    run = world.submit()
    world.tick()
    world.store.finish_run(run.id, RunState.FAILURE, "step 'test': exit code 2")
    world.reopen()  # the daemon died right after the run finished

    assert [r.id for r in world.store.runs_to_report(["app"])] == [run.id]
    world.tick()
    assert world.posted()[-1] == (StatusState.FAILURE, "failed: step 'test': exit code 2")
    assert world.store.runs_to_report(["app"]) == []


def test_a_kill_between_queueing_and_marking_reported_posts_once(world, monkeypatch):
    run = world.submit()
    world.store.finish_run(run.id, RunState.SUCCESS)

    def killed(run_id, state, attempts=1):
        raise SystemExit("killed")

    monkeypatch.setattr(world.store, "set_reported", killed)
    with pytest.raises(SystemExit):
        world.reporter.sweep()
    world.reopen()
    world.tick()
    world.tick()
    assert world.posted() == [(StatusState.SUCCESS, "passed")]


def test_out_of_order_completion_gives_each_sha_its_own_final_state(world):
    run_a = world.submit(SHA_A)
    run_b = world.submit(SHA_B)
    att_a, att_b = world.start(run_a.id), world.start(run_b.id)
    world.tick()
    world.store.finish_run(run_b.id, RunState.SUCCESS, attempt_id=att_b.id)
    world.tick()
    world.store.finish_run(run_a.id, RunState.FAILURE, "step 't': exit code 1", attempt_id=att_a.id)
    world.tick()

    assert world.posted(sha=SHA_B)[-1][0] is StatusState.SUCCESS
    assert world.posted(sha=SHA_A)[-1][0] is StatusState.FAILURE
    for _, update in world.client.calls:
        assert update.sha == world.store.get_run(update.run_id).sha


def test_a_forge_down_meanwhile_still_gets_each_final_state(tmp_path, clock):
    client = ScriptedClient(clock, DOWN)
    world = World(tmp_path, clock, client)
    runs = [world.submit(sha) for sha in (SHA_A, SHA_B)]
    for _ in range(3):
        world.tick()
    attempts = [world.start(r.id) for r in runs]
    world.tick()
    for r, a in zip(reversed(runs), reversed(attempts), strict=True):
        world.store.finish_run(r.id, RunState.SUCCESS, attempt_id=a.id)
    world.tick()
    client.answer = OK
    for _ in range(200):
        world.tick()
    delivered = [u for _, u in client.calls[-2:]]
    assert {(u.sha, u.state) for u in delivered} == {
        (SHA_A, StatusState.SUCCESS),
        (SHA_B, StatusState.SUCCESS),
    }
    assert world.outbox.status()["backlog"] == 0
    world.store.close()


def test_only_repositories_with_a_forge_are_reported(world):
    world.submit(repo="quiet")
    world.tick()
    assert world.client.calls == []


def test_runs_that_ended_long_ago_get_no_status(world, caplog):
    run = world.submit()
    world.store.finish_run(run.id, RunState.SUCCESS)
    world.clock.advance(2 * 24 * 3600)  # e.g. a forge newly configured for an old repo
    world.tick()
    assert world.client.calls == []
    assert world.store.runs_to_report(["app"]) == []


def test_a_pull_request_run_names_its_source_branch_for_gitlab(world):
    run = world.submit(
        ref="refs/pull/7/head",
        kind=EventKind.PULL_REQUEST,
        pr_number=7,
        trusted=False,
        meta=(("base_branch", "main"), ("head_branch", "feature/x")),
    )
    world.tick()
    (update,) = [u for _, u in world.client.calls]
    assert update.sha == run.sha and dict(update.extra) == {"ref": "feature/x"}


def test_a_sweep_that_fails_for_one_run_reports_the_others(world, caplog):
    bad = world.submit(SHA_A)
    good = world.submit(SHA_B)
    real_steps = world.store.steps

    def steps(run_id, attempt=None):
        from ciwatch.errors import StoreError

        if run_id == bad.id:
            raise StoreError("disk I/O error")
        return real_steps(run_id, attempt)

    world.store.steps = steps
    with caplog.at_level(logging.WARNING, logger="ciwatch.reporting"):
        world.tick()
    assert [u.run_id for _, u in world.client.calls] == [good.id]
    assert f"app#{bad.number}" in caplog.text
    assert [r.id for r in world.store.runs_to_report(["app"])] == [bad.id]


def test_helpers():
    assert [duration_text(s) for s in (0, 59.6, 62, 3599, 3720)] == [
        "0s",
        "1m00s",
        "1m02s",
        "59m59s",
        "1h02m",
    ]
    assert plain("  a\tb\n\x1b]8;;http://x\x07c  ") == "a b c"
