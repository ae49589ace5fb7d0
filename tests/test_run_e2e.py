"""`ciwatch run` end to end: real git repositories, real sh, real SQLite, a real process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from gitutil import commit, git, make_repo

ROOT = Path(__file__).resolve().parent.parent


def ciwatch(
    cwd: Path, *args: str, env: dict | None = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    full_env.pop("CIWATCH_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "ciwatch", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def runs(cwd: Path) -> list[dict]:
    out = ciwatch(cwd, "runs", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["runs"]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return tmp_path / "app"


def test_passing_pipeline_runs_steps_in_order_and_is_recorded(tmp_path, repo):
    make_repo(
        repo,
        {
            ".ciwatch.yml": "steps:\n  - name: one\n    run: echo first > $HOME/../order; echo hello-from-one\n"
            '  - name: two\n    run: echo "sha=$CIWATCH_SHA"\n'
        },
    )
    sha = git(repo, "rev-parse", "HEAD")
    out = ciwatch(tmp_path, "run", str(repo))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "hello-from-one" in out.stdout
    assert out.stdout.index("── one") < out.stdout.index("── two")
    assert f"sha={sha}" in out.stdout
    [r] = runs(tmp_path)
    assert (r["state"], r["sha"], r["ref"], r["number"]) == ("success", sha, "refs/heads/main", 1)
    logs = ciwatch(tmp_path, "logs", str(r["id"]), "--step", "one")
    assert "hello-from-one" in logs.stdout
    # a second run of the same commit is a new run, numbered 2
    assert ciwatch(tmp_path, "run", str(repo)).returncode == 0
    assert [x["number"] for x in runs(tmp_path)] == [2, 1]


def test_failure_exit_1_skips_later_steps_and_runs_failure_steps(tmp_path, repo):
    make_repo(
        repo,
        {
            ".ciwatch.yml": """
steps:
  - name: build
    run: echo building; exit 7
  - name: test
    run: echo SHOULD-NOT-RUN
  - name: on-failure
    when: {status: [failure]}
    run: echo cleanup-ran
"""
        },
    )
    out = ciwatch(tmp_path, "run", str(repo))
    assert out.returncode == 1, out.stdout + out.stderr
    assert "SHOULD-NOT-RUN" not in out.stdout
    assert "cleanup-ran" in out.stdout
    assert "exit code 7" in out.stdout
    [r] = runs(tmp_path)
    assert r["state"] == "failure" and "build" in r["reason"]


def test_invalid_pipeline_exit_3_with_every_problem_positioned(tmp_path, repo):
    make_repo(
        repo,
        {
            ".ciwatch.yml": "steps:\n  - name: a\n    run: true\n    timout: 5m\n  - name: a\n    run: 5\n"
        },
    )
    out = ciwatch(tmp_path, "run", str(repo))
    assert out.returncode == 3, out.stdout + out.stderr
    assert ".ciwatch.yml:4:5: steps[0]" in out.stdout
    assert "did you mean 'timeout'" in out.stdout
    [r] = runs(tmp_path)
    assert r["state"] == "error" and "invalid pipeline" in r["reason"]
    lint = ciwatch(repo, "lint")
    assert lint.returncode == 1 and ".ciwatch.yml:4:5" in lint.stdout


def test_lint_with_the_config_warns_of_asks_over_the_operators_maxima(tmp_path):
    pipe = tmp_path / ".ciwatch.yml"
    pipe.write_text("steps:\n  - run: make\n    resources: {memory: 8G}\n    timeout: 9h\n")
    cfg = tmp_path / "ciwatch.yaml"
    cfg.write_text("limits:\n  max_timeout: 1h\n  step: {memory: 2G}\n")
    plain = ciwatch(tmp_path, "lint", str(pipe))
    assert plain.returncode == 0 and "memory" not in plain.stdout, plain.stdout
    out = ciwatch(tmp_path, "lint", str(pipe), "-c", str(cfg))
    assert out.returncode == 0, out.stdout + out.stderr  # warnings, not errors
    lines = out.stdout.splitlines()
    assert any(".ciwatch.yml:3:" in ln and "warning" in ln and "2 GiB" in ln for ln in lines), lines
    assert any(".ciwatch.yml:4:" in ln and "warning" in ln for ln in lines), lines
    bad = tmp_path / "bad.yaml"
    bad.write_text("limits: {step: {memory: lots}}\n")
    refused = ciwatch(tmp_path, "lint", str(pipe), "-c", str(bad))
    assert refused.returncode == 2 and "bad.yaml" in refused.stderr, refused.stderr


def test_missing_pipeline_file_is_an_error_not_a_crash(tmp_path, repo):
    make_repo(repo, {"README": "no pipeline here\n"})
    out = ciwatch(tmp_path, "run", str(repo))
    assert out.returncode == 3
    assert ".ciwatch.yml" in out.stdout + out.stderr


def test_pipeline_symlink_in_the_commit_is_refused(tmp_path, repo):
    make_repo(repo, {"real.yml": "steps: [{run: 'true'}]\n"})
    (repo / ".ciwatch.yml").symlink_to("/etc/passwd")
    commit(repo, {}, "link")
    out = ciwatch(tmp_path, "run", str(repo))
    assert out.returncode == 3
    assert "symlink" in (out.stdout + out.stderr).lower()


def test_allow_failure_retry_and_timeout(tmp_path, repo):
    make_repo(
        repo,
        {
            ".ciwatch.yml": """
steps:
  - name: flaky
    run: |
      if [ ! -e tried ]; then touch tried; echo first-try-fails; exit 1; fi
      echo second-try-passes
    retry: {max: 2, on: [failure]}
  - name: optional
    run: exit 4
    allow_failure: true
  - name: slow
    run: sleep 30
    timeout: 1s
    allow_failure: true
"""
        },
    )
    out = ciwatch(tmp_path, "run", str(repo))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "first-try-fails" in out.stdout and "second-try-passes" in out.stdout
    assert "timed out" in out.stdout
    # one run, and the flaky step needed two tries
    assert "flaky" in out.stdout and "2" in [
        ln.split()[-1] for ln in out.stdout.splitlines() if ln.startswith("flaky ")
    ]


def test_environment_is_clean_and_explicit(tmp_path, repo):
    make_repo(repo, {".ciwatch.yml": "env: {FROM_FILE: yes-file}\nsteps:\n  - run: env | sort\n"})
    out = ciwatch(tmp_path, "run", str(repo), env={"LEAKY_DAEMON_VAR": "leaked"})
    assert out.returncode == 0, out.stderr
    assert "LEAKY_DAEMON_VAR" not in out.stdout
    assert "FROM_FILE=yes-file" in out.stdout
    assert "CI=true" in out.stdout and "CIWATCH_BRANCH=main" in out.stdout
    assert "CIWATCH_EVENT=push" in out.stdout and "CIWATCH_RUN_NUMBER=1" in out.stdout


def test_depends_on_runs_independent_steps_in_parallel(tmp_path, repo):
    # b and c both depend only on a; each waits for the other's marker: they
    # can only both pass if they run at the same time.
    make_repo(
        repo,
        {
            ".ciwatch.yml": """
steps:
  - name: a
    run: "true"
  - name: b
    depends_on: [a]
    run: touch b.here; for i in $(seq 50); do [ -e c.here ] && exit 0; sleep 0.1; done; exit 1
  - name: c
    depends_on: [a]
    run: touch c.here; for i in $(seq 50); do [ -e b.here ] && exit 0; sleep 0.1; done; exit 1
"""
        },
    )
    out = ciwatch(tmp_path, "run", str(repo))
    assert out.returncode == 0, out.stdout + out.stderr


def test_matrix_cells_each_run_with_their_values(tmp_path, repo):
    make_repo(
        repo,
        {
            ".ciwatch.yml": "matrix: {PY: ['3.11', '3.12']}\nsteps:\n  - name: t\n    run: echo cell-$PY\n"
        },
    )
    out = ciwatch(tmp_path, "run", str(repo))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "cell-3.11" in out.stdout and "cell-3.12" in out.stdout


def test_step_selection_and_unknown_step(tmp_path, repo):
    make_repo(
        repo,
        {
            ".ciwatch.yml": "steps:\n  - {name: a, run: echo ran-a}\n  - {name: b, run: echo ran-b}\n"
        },
    )
    out = ciwatch(tmp_path, "run", str(repo), "--step", "b")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ran-b" in out.stdout and "ran-a" not in out.stdout
    bad = ciwatch(tmp_path, "run", str(repo), "--step", "nope")
    assert bad.returncode == 3 and "no step named 'nope'" in bad.stdout


def test_secrets_are_masked_and_only_given_when_asked(tmp_path, repo):
    secret = "s3cr3t-Value-123"
    (tmp_path / "token").write_text(secret + "\n")
    (tmp_path / "ciwatch.yaml").write_text(
        f"secrets:\n  DEPLOY_TOKEN: {{file: {tmp_path / 'token'}}}\n"
    )
    make_repo(
        repo,
        {
            ".ciwatch.yml": """
steps:
  - name: uses
    secrets: [DEPLOY_TOKEN]
    run: echo "token=$DEPLOY_TOKEN"; printf %s "$DEPLOY_TOKEN" | base64
  - name: without
    run: echo "absent=${DEPLOY_TOKEN:-none}"
"""
        },
    )
    out = ciwatch(tmp_path, "run", str(repo), "-c", str(tmp_path / "ciwatch.yaml"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert secret not in out.stdout
    assert "token=[MASKED]" in out.stdout and "absent=none" in out.stdout
    logs = ciwatch(tmp_path, "logs", "1", "-c", str(tmp_path / "ciwatch.yaml"))
    assert secret not in logs.stdout and "[MASKED]" in logs.stdout
    stored = b"".join(p.read_bytes() for p in (tmp_path / ".ciwatch").rglob("*.log"))
    assert secret.encode() not in stored
    import base64

    assert base64.b64encode(secret.encode()) not in stored


def test_hostile_branch_names_are_data(tmp_path, repo):
    make_repo(
        repo, {".ciwatch.yml": "steps:\n  - run: printf '%s\\n' \"branch=$CIWATCH_BRANCH\"\n"}
    )
    for name in [
        "$(touch${IFS}pwned-a)",
        "--upload-pack=touch${IFS}pwned-b;x",
        'zzz";touch${IFS}pwned-c;#',
    ]:
        git(repo, "update-ref", f"refs/heads/{name}", "HEAD")
        out = ciwatch(tmp_path, "run", str(repo), "--ref", f"refs/heads/{name}")
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"branch={name}" in out.stdout
    assert not list(tmp_path.rglob("pwned*"))


def test_artifacts_are_collected_without_following_symlinks(tmp_path, repo):
    make_repo(
        repo,
        {
            ".ciwatch.yml": """
steps:
  - run: mkdir -p out && echo report > out/report.txt && ln -s /etc/passwd out/passwd.txt
    artifacts: [out/*.txt]
"""
        },
    )
    out = ciwatch(tmp_path, "run", str(repo))
    assert out.returncode == 0, out.stdout + out.stderr
    listing = ciwatch(tmp_path, "artifacts", "1", "--json")
    items = json.loads(listing.stdout)["artifacts"]
    assert [a["path"] for a in items] == ["out/report.txt"]
    assert Path(items[0]["stored_path"]).read_text() == "report\n"
    assert "passwd.txt" in ciwatch(tmp_path, "logs", "1").stdout  # the skip is said in the log


def test_schema_is_json_schema(tmp_path):
    out = ciwatch(tmp_path, "schema")
    schema = json.loads(out.stdout)
    assert out.returncode == 0 and "steps" in schema["properties"]


def test_demo_starts_the_daemon_pushes_and_goes_green(tmp_path):
    out = ciwatch(tmp_path, "demo", "--once", timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "tests passed" in out.stdout and "app#1 success" in out.stdout
    # the second start reuses the demo repository and builds the next push as app#2
    again = ciwatch(tmp_path, "demo", "--once", timeout=180)
    assert again.returncode == 0 and "app#2 success" in again.stdout, again.stdout + again.stderr


@pytest.fixture
def outside_tmp():
    """A directory outside /tmp: the sandbox's /tmp is its own, which would hide
    anything under it whether ciwatch hid it or not."""
    d = Path(tempfile.mkdtemp(prefix="ciwatch-test-", dir="/var/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_the_sandbox_executor_hides_state_and_secrets_from_steps(tmp_path, repo, outside_tmp):
    (outside_tmp / "token").write_text("sandboxed-secret-value\n")
    (outside_tmp / "web-token").write_text("operator-web-token\n")
    (outside_tmp / "plain").write_text("not-a-secret\n")
    cfg = tmp_path / "ciwatch.yaml"
    cfg.write_text(
        "executor: {kind: sandbox, network: false}\n"
        f"secrets:\n  TOKEN: {{file: {outside_tmp / 'token'}}}\n"
        f"web: {{token_file: {outside_tmp / 'web-token'}}}\n"
    )
    make_repo(
        repo,
        {
            ".ciwatch.yml": f"""
steps:
  - name: builds
    run: echo built > out.txt && cat out.txt
  - name: snoops
    run: |
      cat {outside_tmp / "plain"}
      if cat {outside_tmp / "token"} 2>/dev/null; then echo READ-THE-TOKEN; fi
      if cat {outside_tmp / "web-token"} 2>/dev/null; then echo READ-THE-WEB-TOKEN; fi
      if ls {tmp_path / ".ciwatch"} 2>/dev/null | grep -q ciwatch.db; then echo SAW-THE-STATE; fi
      touch {tmp_path}/escaped 2>/dev/null || true
      if touch /usr/ciwatch-escaped 2>/dev/null; then echo WROTE-OUTSIDE; fi
      echo snooped
"""
        },
    )
    out = ciwatch(tmp_path, "run", str(repo), "-c", str(cfg))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "built" in out.stdout and "snooped" in out.stdout
    assert "not-a-secret" in out.stdout  # the host is visible; only secrets are hidden
    leaks = ("READ-THE-TOKEN", "READ-THE-WEB-TOKEN", "SAW-THE-STATE", "WROTE-OUTSIDE")
    for leak in (*leaks, "sandboxed-secret-value", "operator-web-token"):
        assert leak not in out.stdout
    # /tmp is the sandbox's own tmpfs: a write there never reaches the host
    assert not (tmp_path / "escaped").exists()
    assert not Path("/usr/ciwatch-escaped").exists()


def test_the_cached_workspace_strategy_gives_each_run_a_clean_tree(tmp_path, repo):
    cfg = tmp_path / "ciwatch.yaml"
    cfg.write_text("workspace: {strategy: cached}\n")
    make_repo(
        repo,
        {
            "tracked.txt": "original\n",
            ".ciwatch.yml": """
steps:
  - run: |
      cat tracked.txt
      if [ -e left-behind ]; then echo DIRTY-TREE; fi
      echo changed > tracked.txt; touch left-behind; mkdir -p locked && chmod 000 locked
      mkdir -p .git/hooks && printf '#!/bin/sh\\necho HOOK-RAN\\n' > .git/hooks/post-checkout
      chmod +x .git/hooks/post-checkout
""",
        },
    )
    first = ciwatch(tmp_path, "run", str(repo), "-c", str(cfg))
    second = ciwatch(tmp_path, "run", str(repo), "-c", str(cfg))
    for out in (first, second):
        assert out.returncode == 0, out.stdout + out.stderr
        assert "original" in out.stdout and "DIRTY-TREE" not in out.stdout
        assert "HOOK-RAN" not in out.stdout
    assert list((tmp_path / ".ciwatch" / "cache").iterdir()), "the tree was cached for reuse"
