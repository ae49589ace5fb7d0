"""Runs go to worker processes started ahead of need, on this box.

A push should not wait for an interpreter to start and import ciwatch, so
`spares` workers are kept idle, blocked reading their standard input. A
dispatch writes the run id to one and closes the pipe; the worker claims the
run in the store, executes it and exits, and another spare is started.
Workers run in their own session: a signal to the daemon's process group (a
stop, a Ctrl-C) does not reach the builds.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from ciwatch.errors import CiwatchError
from ciwatch.model import CancelMode

STOP_REASON = "the daemon is stopping"  # the run ends queued, "interrupted: <this>"


class DispatchError(CiwatchError):
    """No worker process could be started or given the run."""


class LocalDispatcher:
    def __init__(
        self,
        worker_argv: Sequence[str],
        *,
        spares: int = 1,
        env: Mapping[str, str] | None = None,
        on_done: Callable[[int, int], None] = lambda run_id, rc: None,
        log: logging.Logger | None = None,
    ) -> None:
        self.worker_argv = list(worker_argv)
        self.spares = max(0, spares)
        self.env = dict(os.environ if env is None else env)
        self.on_done = on_done  # (run id, exit status) once its worker has exited
        self.log = log or logging.getLogger("ciwatch.dispatch")
        self._cond = threading.Condition()
        self._idle: list[subprocess.Popen] = []
        self._busy: dict[int, tuple[subprocess.Popen, int]] = {}  # pid -> (worker, run id)
        self._closing = False
        with self._cond:
            self._top_up()

    def dispatch(self, run_id: int) -> None:
        """Give the run to an idle worker (starting one if none is idle)."""
        line = f"{int(run_id)}\n".encode()
        with self._cond:
            if self._closing:
                raise DispatchError("the daemon is stopping")
            for _ in range(3):
                proc = self._idle.pop(0) if self._idle else self._spawn()
                if proc.poll() is not None:
                    continue  # died idle; its waiter logs it
                try:
                    proc.stdin.write(line)
                    proc.stdin.close()
                except OSError:
                    continue  # exited under us (a broken pipe): try another
                self._busy[proc.pid] = (proc, run_id)
                break
            else:
                raise DispatchError(f"no worker process would take run {run_id}")
            try:
                self._top_up()
            except DispatchError as exc:
                self.log.error("cannot start a spare worker: %s", exc)

    def in_flight(self) -> set[int]:
        """Run ids whose worker has not exited yet."""
        with self._cond:
            return {run_id for _, run_id in self._busy.values()}

    def idle_count(self) -> int:
        with self._cond:
            return sum(1 for p in self._idle if p.poll() is None)

    def update_env(self, values: Mapping[str, str]) -> None:
        """Change the workers' environment (a config reload) and replace the idle
        ones, which were started with the old one."""
        with self._cond:
            self.env.update(values)
        self.refresh_spares()

    def refresh_spares(self) -> None:
        """Replace idle workers with new ones."""
        with self._cond:
            old, self._idle = self._idle, []
            for proc in old:
                _close(proc)
            self._top_up()

    def shutdown(self, grace: float, store, *, interrupt_wait: float = 15.0) -> list[int]:
        """Stop: idle workers exit; busy ones get `grace` seconds to finish, then
        their runs are interrupted (queued again, to run at the next start) and
        get `interrupt_wait` more seconds. Returns the runs still going."""
        with self._cond:
            self._closing = True
            idle, self._idle = self._idle, []
        for proc in idle:
            _close(proc)  # EOF: an idle worker exits 0
        self._wait_busy(grace)
        left = sorted(self.in_flight())
        for run_id in left:
            try:
                store.request_cancel(run_id, STOP_REASON, CancelMode.INTERRUPT)
                self.log.info("run %d: interrupted (the daemon is stopping)", run_id)
            except CiwatchError as exc:
                self.log.error("run %d: could not be interrupted: %s", run_id, exc)
        if left:
            self._wait_busy(interrupt_wait)
        for proc in idle:
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                proc.kill()  # an idle worker holds no run: nothing is lost
        return sorted(self.in_flight())

    # -- inside -----------------------------------------------------------------

    def _top_up(self) -> None:
        self._idle = [p for p in self._idle if p.poll() is None]
        while not self._closing and len(self._idle) < self.spares:
            self._idle.append(self._spawn())

    def _spawn(self) -> subprocess.Popen:
        try:
            proc = subprocess.Popen(
                self.worker_argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                env=self.env,
                bufsize=0,
                close_fds=True,
                start_new_session=True,
            )
        except OSError as exc:
            raise DispatchError(f"cannot start a worker ({self.worker_argv[0]}): {exc}") from exc
        threading.Thread(
            target=self._reap, args=(proc,), name=f"worker-{proc.pid}", daemon=True
        ).start()
        return proc

    def _reap(self, proc: subprocess.Popen) -> None:
        rc = proc.wait()
        with self._cond:
            entry = self._busy.pop(proc.pid, None)
            was_idle = proc in self._idle
            if was_idle:
                self._idle.remove(proc)
            closing = self._closing
            self._cond.notify_all()
        if entry is None:
            if was_idle and not closing:
                self.log.warning("an idle worker (pid %d) exited with status %d", proc.pid, rc)
            return
        run_id = entry[1]
        if rc != 0:
            self.log.warning("run %d: worker (pid %d) exited with status %d", run_id, proc.pid, rc)
        try:
            self.on_done(run_id, rc)
        except Exception:  # the reaper thread's boundary
            self.log.exception("run %d: on_done failed", run_id)

    def _wait_busy(self, seconds: float) -> None:
        deadline = time.monotonic() + max(0.0, seconds)
        with self._cond:
            while self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(left)


def _close(proc: subprocess.Popen) -> None:
    try:
        proc.stdin.close()
    except OSError:
        pass  # already gone
