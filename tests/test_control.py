"""The control socket (real AF_UNIX sockets in tmp) and the commands that use it."""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import threading
import time

import pytest
from click.testing import CliRunner

import ciwatch.cli  # first: it registers the command modules
from ciwatch.commands import control as control_cmds
from ciwatch.control import (
    MAX_LINE,
    ControlError,
    ControlServer,
    DaemonNotRunning,
    DaemonRefused,
)
from ciwatch.controlclient import ControlClient
from ciwatch.errors import NotFoundError

LOG = logging.getLogger("test.control")


class Recorder:
    """Handlers that remember every request they got."""

    def __init__(self) -> None:
        self.requests: list[dict] = []

    def handler(self, answer):
        def handle(request: dict) -> dict:
            self.requests.append(request)
            return answer(request) if callable(answer) else dict(answer)

        return handle


@pytest.fixture
def sock_path(tmp_path):
    return tmp_path / "control.sock"


@pytest.fixture
def serve(sock_path):
    servers: list[ControlServer] = []

    def start(handlers, path=None) -> ControlServer:
        server = ControlServer(path or sock_path, handlers, LOG)
        server.start()
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.stop()


def raw_exchange(path, *lines: bytes, timeout: float = 5) -> list[dict]:
    """Send raw lines on one connection and read one answer per line."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        reader = s.makefile("rb")
        answers = []
        for line in lines:
            s.sendall(line)
            answers.append(json.loads(reader.readline()))
        return answers


# -- the server ---------------------------------------------------------------


def test_a_request_reaches_its_handler_and_the_answer_comes_back(serve, sock_path):
    rec = Recorder()
    serve({"trigger": rec.handler({"run": 18, "label": "app#4"})})
    answer = ControlClient(sock_path).call("trigger", repo="app", ref="main")
    assert answer == {"ok": True, "run": 18, "label": "app#4"}
    assert rec.requests == [{"cmd": "trigger", "repo": "app", "ref": "main"}]


def test_the_socket_is_only_for_the_daemons_user(serve, sock_path):
    serve({})
    st = os.lstat(sock_path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert [p.name for p in sock_path.parent.iterdir()] == ["control.sock"]  # no temp left


def test_bad_input_gets_an_error_answer_and_the_connection_goes_on(serve, sock_path):
    serve({"status": lambda req: {"running": []}})
    answers = raw_exchange(
        sock_path,
        b"this is not json\n",
        b"[1, 2]\n",
        b'{"no": "cmd"}\n',
        b'{"cmd": 7}\n',
        b'{"cmd": "rm -rf /"}\n',
        b"\xff\xfe\n",
        b'{"cmd": "status"}\n',
    )
    assert [a["ok"] for a in answers] == [False] * 6 + [True]
    assert "not JSON" in answers[0]["error"]
    assert "unknown command 'rm -rf /'" in answers[4]["error"] and "status" in answers[4]["error"]
    assert answers[6] == {"ok": True, "running": []}


def test_a_line_over_one_megabyte_is_refused_then_the_next_request_is_served(serve, sock_path):
    serve({"status": lambda req: {}})
    huge = b'{"cmd": "status", "pad": "' + b"x" * MAX_LINE + b'"}\n'
    answers = raw_exchange(sock_path, huge, b'{"cmd": "status"}\n')
    assert answers[0]["ok"] is False and "over" in answers[0]["error"]
    assert answers[1] == {"ok": True}


def test_a_handler_that_raises_becomes_an_error_answer_and_the_server_lives(
    serve, sock_path, caplog
):
    def broken(req):
        raise KeyError("scheduler")

    def missing(req):
        raise NotFoundError("no run app#99")

    serve({"status": broken, "cancel": missing, "pause": lambda req: {}})
    client = ControlClient(sock_path)
    with caplog.at_level(logging.ERROR, logger="test.control"):
        with pytest.raises(DaemonRefused, match="internal error in status: KeyError"):
            client.call("status")
    assert "Traceback" in caplog.text  # the daemon's log keeps the whole story
    with pytest.raises(DaemonRefused, match="^no run app#99$") as info:
        client.call("cancel", run="app#99")
    assert info.value.answer == {"ok": False, "error": "no run app#99"}
    assert client.call("pause") == {"ok": True}


def test_answers_that_are_not_json_objects_become_errors(serve, sock_path):
    serve({"a": lambda req: ["not", "a", "dict"], "b": lambda req: {"when": object()}})
    client = ControlClient(sock_path)
    with pytest.raises(DaemonRefused, match="no answer"):
        client.call("a")
    with pytest.raises(DaemonRefused, match="not JSON"):
        client.call("b")


def test_an_idle_client_does_not_block_others(serve, sock_path):
    serve({"status": lambda req: {"n": 1}})
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as idle:
        idle.connect(str(sock_path))
        idle.sendall(b'{"cmd": "sta')  # half a request, then nothing
        start = time.monotonic()
        assert ControlClient(sock_path, timeout=2).call("status") == {"ok": True, "n": 1}
        assert time.monotonic() - start < 1


def test_concurrent_clients_all_get_their_own_answer(serve, sock_path):
    serve({"echo": lambda req: {"n": req["n"]}})
    got: dict[int, int] = {}

    def ask(i: int) -> None:
        got[i] = ControlClient(sock_path).call("echo", n=i)["n"]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert got == {i: i for i in range(30)}


def test_a_stale_socket_from_a_dead_daemon_is_replaced(serve, sock_path):
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(sock_path))
    dead.close()  # the file stays, nobody listens: what a killed daemon leaves
    with pytest.raises(DaemonNotRunning, match="left from one that stopped"):
        ControlClient(sock_path).call("status")
    serve({"status": lambda req: {}})
    assert ControlClient(sock_path).call("status") == {"ok": True}


def test_a_live_daemons_socket_is_not_taken_over(serve, sock_path):
    serve({"status": lambda req: {"who": "first"}})
    second = ControlServer(sock_path, {"status": lambda req: {"who": "second"}}, LOG)
    with pytest.raises(ControlError, match="another daemon is listening"):
        second.start()
    assert ControlClient(sock_path).call("status")["who"] == "first"


def test_a_regular_file_in_the_way_is_left_alone(serve, sock_path):
    sock_path.write_text("precious")
    with pytest.raises(ControlError, match="not a socket"):
        serve({})
    assert sock_path.read_text() == "precious"


def test_stop_removes_the_socket_and_clients_are_told_the_daemon_is_not_running(serve, sock_path):
    server = serve({"status": lambda req: {}})
    server.stop()
    assert not sock_path.exists()
    with pytest.raises(DaemonNotRunning, match=r"the daemon is not running \(no .*control.sock\)"):
        ControlClient(sock_path).call("status")


def test_stop_leaves_a_successors_socket_in_place(serve, sock_path, tmp_path):
    old = serve({"status": lambda req: {"who": "old"}})
    serve({"status": lambda req: {"who": "new"}}, path=tmp_path / "new.sock")
    os.replace(tmp_path / "new.sock", sock_path)  # a new daemon took the name over
    old.stop()
    assert ControlClient(sock_path).call("status")["who"] == "new"


def test_a_daemon_that_never_answers_times_out_quickly(tmp_path):
    path = tmp_path / "mute.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as mute:
        mute.bind(str(path))
        mute.listen(1)
        start = time.monotonic()
        with pytest.raises(ControlError, match=r"did not answer 'status' within 0.5s"):
            ControlClient(path, timeout=0.5).call("status")
        assert time.monotonic() - start < 2


def test_a_too_long_socket_path_is_a_clear_error(tmp_path):
    path = tmp_path / ("d" * 120) / "control.sock"
    with pytest.raises(ControlError, match="longer than 107 bytes"):
        ControlClient(path).call("status")


# -- the commands ---------------------------------------------------------------


@pytest.fixture
def cli(tmp_path, monkeypatch):
    """Runs `ciwatch ARGS -c CONFIG` against the socket in the config's state dir."""
    state = tmp_path / "state"
    state.mkdir()
    config = tmp_path / "config.yaml"
    config.write_text("state_dir: state\n")
    monkeypatch.delenv("CIWATCH_CONFIG", raising=False)

    def run(*args: str):
        return CliRunner().invoke(ciwatch.cli.main, [*args, "-c", str(config)])

    run.sock = state / "control.sock"
    return run


def status_answer(now: float) -> dict:
    return {
        "pid": 4242,
        "version": "0.1.0",
        "started_at": now - 3700,
        "state_dir": "/var/lib/ciwatch",
        "scheduler": {
            "running": 1,
            "queued": 1,
            "max_running": 2,
            "paused": True,
            "draining": False,
        },
        "running": [
            {
                "id": 17,
                "label": "app#3",
                "ref": "refs/heads/main",
                "sha": "a" * 40,
                "attempt": 2,
                "started_at": now - 80,
            }
        ],
        "queued": [
            {
                "id": 18,
                "label": "app#4",
                "ref": "refs/heads/\x1b[2Jevil",
                "sha": "b" * 40,
                "waiting": "waiting for app#3 in group app/main",
            }
        ],
        "sources": [
            {
                "kind": "poll",
                "repo": "lib",
                "last_ok": now - 600,
                "last_error": "connection refused",
                "failures": 3,
            },
            {"kind": "hook", "repo": None, "last_ok": now - 5},
        ],
        "errors": [
            {"at": now - 30, "where": "poll lib", "message": "git ls-remote failed\nfatal: x"}
        ],
    }


def test_status_prints_runs_sources_and_errors_readably(cli, serve):
    serve({"status": lambda req: status_answer(time.time())}, path=cli.sock)
    result = cli("status")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "pid 4242" in out and "up 1h01m" in out
    assert "scheduler: paused; 1 of 2 running, 1 queued" in out
    assert "app#3" in out and "for 1m20s (attempt 2)" in out and "aaaaaaaaaa" in out
    assert "waiting for app#3 in group app/main" in out
    assert "poll lib" in out and "failing (3x): connection refused" in out
    assert "git ls-remote failed\\nfatal: x" in out  # one line per error
    assert "\x1b" not in out  # a ref cannot drive the terminal


def test_status_json_prints_the_daemons_answer(cli, serve):
    answer = status_answer(time.time())
    serve({"status": lambda req: answer}, path=cli.sock)
    result = cli("status", "--json")
    assert result.exit_code == 0
    assert json.loads(result.output) == {"ok": True, **answer}


def test_status_survives_a_sparse_answer(cli, serve):
    serve({"status": lambda req: {"pid": 1, "sources": {"watch": ["app"]}}}, path=cli.sock)
    result = cli("status")
    assert result.exit_code == 0, result.output
    assert "scheduler: running; 0 running, 0 queued" in result.output
    assert "watch app" in result.output


def test_status_takes_the_schedulers_running_list_as_a_count(cli, serve):
    answer = {
        "scheduler": {"running": [17, 19], "queued": 5, "draining": True},
        "running": [{"id": 17, "label": "app#3", "attempt": "?"}, {"id": 19, "label": "lib#2"}],
    }
    serve({"status": lambda req: answer}, path=cli.sock)
    result = cli("status")
    assert result.exit_code == 0, result.output
    assert "scheduler: draining; 2 running, 5 queued" in result.output
    assert "lib#2" in result.output


def test_commands_say_when_the_daemon_is_not_running(cli):
    for args in (["status"], ["pause"], ["trigger", "app"], ["cancel", "3"]):
        result = cli(*args)
        assert result.exit_code == 3
        assert "the daemon is not running" in result.output


def test_without_a_config_the_not_running_message_says_how_to_name_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CIWATCH_CONFIG", raising=False)
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    result = CliRunner().invoke(ciwatch.cli.main, ["status"])
    assert result.exit_code == 3
    assert str(tmp_path / ".ciwatch" / "control.sock") in result.output
    assert "name it with -c or CIWATCH_CONFIG" in result.output


def test_trigger_sends_repo_and_ref_and_prints_the_queued_run(cli, serve):
    rec = Recorder()
    answer = {"run": 18, "label": "app#4", "ref": "refs/heads/release/2.0", "sha": "c" * 40}
    serve({"trigger": rec.handler(answer)}, path=cli.sock)
    result = cli("trigger", "app", "release/2.0")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "queued app#4 (run 18): refs/heads/release/2.0 at cccccccccccc"
    assert cli("trigger", "app").exit_code == 0
    assert rec.requests == [
        {"cmd": "trigger", "repo": "app", "ref": "release/2.0"},
        {"cmd": "trigger", "repo": "app", "ref": None},
    ]


def test_a_refusal_is_printed_with_exit_status_3(cli, serve):
    def unknown(req):
        raise NotFoundError("no repository 'nope' in the configuration")

    serve({"trigger": unknown}, path=cli.sock)
    result = cli("trigger", "nope")
    assert result.exit_code == 3
    assert "ciwatch: no repository 'nope' in the configuration" in result.output


def test_cancel_sends_the_run_and_refuses_a_malformed_one_before_asking(cli, serve):
    rec = Recorder()
    serve({"cancel": rec.handler({"run": 17, "label": "app#3"})}, path=cli.sock)
    result = cli("cancel", "app#3")
    assert result.exit_code == 0
    assert "cancel requested for app#3 (run 17)" in result.output
    bad = cli("cancel", "app#3; rm -rf /")
    assert bad.exit_code == 2
    assert rec.requests == [{"cmd": "cancel", "run": "app#3"}]


def test_pause_resume_and_reload_reach_the_daemon(cli, serve):
    rec = Recorder()
    serve({c: rec.handler({}) for c in ("pause", "resume", "reload")}, path=cli.sock)
    assert "paused" in cli("pause").output
    assert "resumed" in cli("resume").output
    assert "reloaded" in cli("reload").output
    assert [r["cmd"] for r in rec.requests] == ["pause", "resume", "reload"]


def test_drain_wait_returns_once_nothing_runs(cli, serve, monkeypatch):
    monkeypatch.setattr(control_cmds, "DRAIN_POLL", 0.05)
    left = [["app#3", "lib#7"], ["lib#7"], ["lib#7"], []]
    rec = Recorder()
    serve(
        {
            "drain": rec.handler({}),
            "status": lambda req: {"running": [{"label": x} for x in left.pop(0)]},
        },
        path=cli.sock,
    )
    result = cli("drain", "--wait")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "draining: no new run starts; queued runs stay queued",
        "waiting for 2 running: app#3, lib#7",
        "waiting for 1 running: lib#7",
        "drained: nothing is running",
    ]
    assert [r["cmd"] for r in rec.requests] == ["drain"]


def test_drain_wait_gives_up_after_the_timeout(cli, serve, monkeypatch):
    monkeypatch.setattr(control_cmds, "DRAIN_POLL", 0.05)
    serve(
        {"drain": lambda req: {}, "status": lambda req: {"running": [{"label": "app#3"}]}},
        path=cli.sock,
    )
    start = time.monotonic()
    result = cli("drain", "--wait", "--timeout", "0.3")
    assert result.exit_code == 1
    assert "still running after 0.3s: app#3" in result.output
    assert time.monotonic() - start < 2
