"""The daemon's HTTP API fuzzed against its own OpenAPI description: a real
`ciwatch serve` with real runs, every operation it lists called with
generated parameters and bodies (and with the token, so the actions run
too). No answer may be a 5xx, and every answer must match the description."""

from __future__ import annotations

import zlib

import pytest
import schemathesis
from daemonutil import DaemonProc
from gitutil import commit, git, make_repo
from hypothesis import HealthCheck, settings

TOKEN = "fuzz-token"
PIPE = "steps:\n  - name: build\n    run: printf 'line\\n\\033[31mred\\033[0m\\n'\n"


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    bare, work = tmp / "app.git", tmp / "app-work"
    git(tmp, "init", "-q", "--bare", "-b", "main", str(bare))
    make_repo(work, {".ciwatch.yml": PIPE})
    (tmp / "token").write_text(TOKEN)
    d = DaemonProc(
        tmp,
        {"repos": [{"name": "app", "path": str(bare)}], "web": {"token_file": str(tmp / "token")}},
    )
    d.start()
    try:
        for i in range(2):
            commit(work, {"n": str(i)}, f"change {i}")
            git(work, "push", "-q", str(bare), f"HEAD:refs/heads/{'main' if i else 'dev'}")
            d.wait_runs_finished(i + 1)
        d.url = (d.state / "daemon.url").read_text().split()[1]
        yield d
    finally:
        assert d.stop() == 0, d.log.read_text()[-3000:]


@pytest.fixture(scope="module")
def api_schema(live):
    return schemathesis.openapi.from_url(live.url + "/api/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_no_5xx_and_answers_match_the_schema(case, live):
    # The operator's token on half of the cases: both the refusals and the
    # actions themselves are exercised.
    signed = zlib.crc32(repr((case.path_parameters, case.query, case.body)).encode()) % 2
    headers = {"Authorization": f"Bearer {TOKEN}"} if signed else {}
    case.call_and_validate(headers=headers, timeout=30)


def test_the_description_lists_the_api(api_schema):
    paths = set(api_schema.raw_schema["paths"])
    assert {"/api/runs", "/api/runs/{run_id}", "/api/repos", "/api/trigger", "/metrics"} <= paths
