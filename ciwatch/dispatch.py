"""Runs go to worker processes started ahead of need, on this box.

A push should not wait for an interpreter to start and import ciwatch, so
`spares` workers are kept idle, blocked reading their standard input. A
dispatch writes the run id to one (a ready one first, the one used last
first); the worker claims the run in the store, executes it, answers
`done RUN STATUS` on its standard output and waits for the next run. A worker
holds one run at a time. It retires by itself (`bye REASON`: after so many
runs, idle too long, grown too big), and is retired by the pool when the
configuration changed (a reload) or when more workers are idle than `spares`
for `linger` seconds (after a burst); retiring closes its input, on which it
exits. A replacement spare is started at once. Workers run in their own
session: a signal to the daemon's process group (a stop, a Ctrl-C) does not
reach the builds.
"""

from __future__ import annotations

import io
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


class _Worker:
    """One worker process as the pool sees it (guarded by the pool's lock)."""

    __slots__ = ("proc", "generation", "run_id", "ready", "leaving", "idle_since")

    def __init__(self, proc: subprocess.Popen, generation: int, now: float) -> None:
        self.proc = proc
        self.generation = generation
        self.run_id: int | None = None
        self.ready = False  # said `ready`: fully loaded, blocked on its input
        self.leaving = False  # said `bye`, or its input was closed
        self.idle_since = now


class LocalDispatcher:
    def __init__(
        self,
        worker_argv: Sequence[str],
        *,
        spares: int = 1,
        env: Mapping[str, str] | None = None,
        on_done: Callable[[int, int], None] = lambda run_id, rc: None,
        log: logging.Logger | None = None,
        linger: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.worker_argv = list(worker_argv)
        self.spares = max(0, spares)
        self.env = dict(os.environ if env is None else env)
        # (run id, status) once its worker finished it (0) or exited holding it
        self.on_done = on_done
        self.log = log or logging.getLogger("ciwatch.dispatch")
        self.linger = linger  # idle workers beyond `spares` retire after this long
        self.clock = clock
        self._cond = threading.Condition()
        self._idle: list[_Worker] = []
        self._busy: dict[int, _Worker] = {}  # pid -> worker holding a run
        self._all: dict[int, _Worker] = {}  # pid -> every worker not reaped yet
        self._generation = 0
        self._trim_due = False  # a timer will retire idle workers beyond `spares`
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
                w = self._pick() or self._spawn()
                if w.proc.poll() is not None:
                    continue  # died idle; its reader logs it
                try:
                    os.write(w.proc.stdin.fileno(), line)
                except (OSError, ValueError):
                    w.leaving = True
                    continue  # exited under us (a broken pipe): try another
                w.run_id = run_id
                self._busy[w.proc.pid] = w
                break
            else:
                raise DispatchError(f"no worker process would take run {run_id}")
            try:
                self._top_up()
            except DispatchError as exc:
                self.log.error("cannot start a spare worker: %s", exc)

    def in_flight(self) -> set[int]:
        """Run ids given to a worker that has not finished them (nor exited)."""
        with self._cond:
            return {w.run_id for w in self._busy.values() if w.run_id is not None}

    def idle_count(self) -> int:
        with self._cond:
            return sum(1 for w in self._idle if w.proc.poll() is None)

    def worker_pids(self) -> set[int]:
        """Every worker process alive as far as the pool knows (idle, busy, leaving)."""
        with self._cond:
            return set(self._all)

    def update_env(self, values: Mapping[str, str]) -> None:
        """Change the workers' environment (a config reload): idle workers are
        replaced now, busy ones retire after their run."""
        with self._cond:
            self.env.update(values)
        self.refresh_spares()

    def refresh_spares(self) -> None:
        """Replace idle workers with new ones; busy ones retire after their run."""
        with self._cond:
            self._generation += 1
            old, self._idle = self._idle, []
            for w in old:
                self._retire(w)
            self._top_up()

    def shutdown(self, grace: float, store, *, interrupt_wait: float = 15.0) -> list[int]:
        """Stop: idle workers exit; busy ones get `grace` seconds to finish, then
        their runs are interrupted (queued again, to run at the next start) and
        get `interrupt_wait` more seconds. Returns the runs still going."""
        with self._cond:
            self._closing = True
            idle, self._idle = self._idle, []
            for w in idle:
                self._retire(w)  # EOF: an idle worker exits 0
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
        with self._cond:
            free = [w for w in self._all.values() if w.run_id is None]
        for w in free:
            try:
                w.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                w.proc.kill()  # it holds no run: nothing is lost
        return sorted(self.in_flight())

    # -- inside (with the lock held unless said) ---------------------------------

    def _pick(self) -> _Worker | None:
        """The idle worker to use: a ready one, the one used last first (its
        memory is warm); else the spare started first (nearest to ready)."""
        self._idle = [w for w in self._idle if w.proc.poll() is None and not w.leaving]
        ready = [w for w in self._idle if w.ready]
        if ready:
            w = max(ready, key=lambda w: w.idle_since)
        elif self._idle:
            w = self._idle[0]
        else:
            return None
        self._idle.remove(w)
        return w

    def _top_up(self) -> None:
        self._idle = [w for w in self._idle if w.proc.poll() is None and not w.leaving]
        while not self._closing and len(self._idle) < self.spares:
            self._idle.append(self._spawn())

    def _spawn(self) -> _Worker:
        try:
            proc = subprocess.Popen(
                self.worker_argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=self.env,
                bufsize=0,
                close_fds=True,
                start_new_session=True,
            )
        except OSError as exc:
            raise DispatchError(f"cannot start a worker ({self.worker_argv[0]}): {exc}") from exc
        w = _Worker(proc, self._generation, self.clock())
        self._all[proc.pid] = w
        threading.Thread(
            target=self._follow, args=(w,), name=f"worker-{proc.pid}", daemon=True
        ).start()
        return w

    def _retire(self, w: _Worker) -> None:
        w.leaving = True
        try:
            w.proc.stdin.close()
        except OSError:
            pass  # already gone

    def _trim(self) -> None:
        """Retire idle workers beyond `spares` that waited `linger` seconds."""
        with self._cond:
            self._trim_due = False
            due = self.clock() - self.linger
            for w in sorted(self._idle, key=lambda w: w.idle_since):
                if len(self._idle) <= self.spares:
                    break
                if w.idle_since > due:  # used since: look again when it may be due
                    self._trim_due = True
                    timer = threading.Timer(w.idle_since - due, self._trim)
                    timer.daemon = True
                    timer.start()
                    break
                self._idle.remove(w)
                self._retire(w)

    # -- a worker's replies (its own thread, without the lock) ---------------------

    def _follow(self, w: _Worker) -> None:
        for raw in io.BufferedReader(w.proc.stdout):
            word, _, rest = raw.decode(errors="replace").strip().partition(" ")
            if word == "ready":
                with self._cond:
                    w.ready = True
            elif word == "bye":
                self._said_bye(w, rest)
            elif word == "done":
                self._finished(w, rest)
        self._exited(w, w.proc.wait())

    def _said_bye(self, w: _Worker, reason: str) -> None:
        self.log.debug("worker %d retires: %s", w.proc.pid, reason)
        with self._cond:
            w.leaving = True
            if w in self._idle:
                self._idle.remove(w)
            if w.run_id is None:
                self._retire(w)
            self._replace()

    def _finished(self, w: _Worker, rest: str) -> None:
        run_text, _, rc_text = rest.partition(" ")
        with self._cond:
            run_id = w.run_id
            if run_id is None or run_text != str(run_id):
                self.log.warning("worker %d: unexpected reply done %s", w.proc.pid, rest)
                return
            w.run_id = None
            self._busy.pop(w.proc.pid, None)
            if w.leaving or self._closing or w.generation != self._generation:
                self._retire(w)
                self._replace()
            else:
                w.idle_since = self.clock()
                self._idle.append(w)
                if len(self._idle) > self.spares and not self._trim_due:
                    self._trim_due = True  # one timer at a time
                    timer = threading.Timer(self.linger, self._trim)
                    timer.daemon = True
                    timer.start()
            self._cond.notify_all()
        rc = int(rc_text) if rc_text.lstrip("-").isdigit() else 1
        if rc != 0:
            self.log.warning("run %d: worker (pid %d) reported status %d", run_id, w.proc.pid, rc)
        self._call_done(run_id, rc)

    def _exited(self, w: _Worker, rc: int) -> None:
        with self._cond:
            self._all.pop(w.proc.pid, None)
            held = self._busy.pop(w.proc.pid, None) is not None
            run_id = w.run_id
            was_idle = w in self._idle
            if was_idle:
                self._idle.remove(w)
            quiet = self._closing or w.leaving
            self._cond.notify_all()
        if not held or run_id is None:
            if was_idle and not quiet:
                self.log.warning("an idle worker (pid %d) exited with status %d", w.proc.pid, rc)
            return
        if rc != 0:
            self.log.warning(
                "run %d: worker (pid %d) exited with status %d", run_id, w.proc.pid, rc
            )
        self._call_done(run_id, rc)

    def _replace(self) -> None:
        try:
            self._top_up()
        except DispatchError as exc:
            self.log.error("cannot start a spare worker: %s", exc)

    def _call_done(self, run_id: int, rc: int) -> None:
        try:
            self.on_done(run_id, rc)
        except Exception:  # the reader thread's boundary
            self.log.exception("run %d: on_done failed", run_id)

    def _wait_busy(self, seconds: float) -> None:
        deadline = self.clock() + max(0.0, seconds)
        with self._cond:
            while self._busy:
                left = deadline - self.clock()
                if left <= 0:
                    return
                self._cond.wait(left)
