"""Status delivery: the outbox's rows go to the forges, with retries.

Everything that must survive a restart is in the store (the rows, their tries
and next_at); what is kept here per forge is only how long to hold it back
(a rate limit, a refused token, a forge that is down) and what to show in
`ciwatch status`. One thread delivers, so the newest-only rule of the store is
enough to keep statuses for one (sha, context) in order. A forge that is down
never touches a run: runs only ever write the store.

Per row: DELIVERED/APPLIED end it. RETRY (5xx, timeout, rate limit) tries
again after max(retry-after, full-jitter backoff) until the forge's horizon
has passed, then gives up. AUTH holds the whole forge for AUTH_WAIT and logs
once. DROP (unknown sha or repository) ends it after DROP_TRIES tries.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from ciwatch.forges.types import Delivery, StatusUpdate, Verdict
from ciwatch.store.outbox import DueStatus, Outcome

BACKOFF_BASE = 2.0
BACKOFF_CAP = 600.0
BACKOFF_FLOOR = 1.0  # full jitter may draw ~0: never retry in a hot loop
AUTH_WAIT = 600.0
DROP_TRIES = 3
DEFAULT_HORIZON = 24 * 3600.0
KEEP_DONE = 7 * 24 * 3600.0  # ended rows are kept this long for `ciwatch status`
PRUNE_EVERY = 3600.0
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")


class StatusClient(Protocol):
    def post_status(self, update: StatusUpdate) -> Delivery:
        """Post one status; HTTP trouble is a verdict, never an exception."""


@dataclass
class _ForgeState:
    """In memory only: lost on restart, when rows simply wait for their next_at."""

    hold_until: float = float("-inf")  # no request to the forge before this
    streak: int = 0  # RETRY answers in a row, across rows: the forge is down
    failing: str = ""  # "" | "retry" | "auth"
    since: float | None = None
    last_error: str = ""
    http_status: int | None = None


def _clean(text: str, limit: int = 200) -> str:
    """A forge's message as one short log-safe line."""
    text = " ".join(_CONTROL.sub(" ", text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Outbox:
    def __init__(
        self,
        store,
        clients: Mapping[str, StatusClient],
        *,
        horizons: Mapping[str, float] | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        log: logging.Logger | None = None,
        before_pass: Callable[[], object] | None = None,
        tick: float = 1.0,
        batch: int = 50,
    ) -> None:
        self.store = store
        self.clock = clock
        self.rng = rng or random.Random()
        self.log = log or logging.getLogger("ciwatch.outbox")
        # Run at the start of each pass, e.g. the reporting sweep, so statuses
        # are queued and sent from this one thread.
        self.before_pass = before_pass
        self.tick = tick
        self.batch = batch
        self._clients = dict(clients)
        self._horizons = dict(horizons or {})
        self._forges: dict[str, _ForgeState] = {}
        self._pass_lock = threading.Lock()
        self._cond = threading.Condition()
        self._wanted = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._last_prune = float("-inf")

    # -- control -------------------------------------------------------------------

    def set_clients(
        self, clients: Mapping[str, StatusClient], horizons: Mapping[str, float] | None = None
    ) -> None:
        """New forges after a config reload; queued rows stay queued."""
        with self._pass_lock:
            self._clients = dict(clients)
            self._horizons = dict(horizons or {})
        self.wake()

    def wake(self) -> None:
        with self._cond:
            self._wanted = True
            self._cond.notify_all()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="outbox", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def status(self) -> dict:
        """Per forge: the store's backlog figures plus whether it is failing now."""
        stats = self.store.outbox_stats()
        now = self.clock()
        forges = {}
        for name in sorted(set(stats) | set(self._clients) | set(self._forges)):
            st = self._forges.get(name, _ForgeState())
            forges[name] = {
                **stats.get(name, {"backlog": 0, "failing": 0, "oldest": None, "next_at": None}),
                "configured": name in self._clients,
                "state": st.failing or "ok",
                "since": st.since,
                "held_until": st.hold_until if st.hold_until > now else None,
                "error": st.last_error,
                "http_status": st.http_status,
            }
        return {
            "backlog": sum(f["backlog"] for f in forges.values()),
            "failing": sorted(n for n, f in forges.items() if f["state"] != "ok"),
            "forges": forges,
        }

    # -- one pass --------------------------------------------------------------------

    def deliver_once(self) -> int:
        """Send every status that is due (one pass); returns how many were
        delivered (or found already applied)."""
        with self._pass_lock:
            if self.before_pass is not None:
                try:
                    self.before_pass()
                except Exception:  # the sweep failing must not stop delivery
                    self.log.exception("reporting sweep failed")
            delivered = 0
            while not self._stopping:
                now = self.clock()
                held = {n for n, st in self._forges.items() if st.hold_until > now}
                rows = self.store.due_statuses(now, self.batch, skip_forges=held)
                for row in rows:
                    delivered += self._deliver(row)
                if len(rows) < self.batch:
                    break
            return delivered

    def _deliver(self, row: DueStatus) -> int:
        update = row.update
        client = self._clients.get(update.forge)
        if client is None:
            self.store.mark_status(
                row.id, Outcome.DROPPED, error=f"no forge named {update.forge!r} is configured"
            )
            self.log.warning(
                "dropped status %r for %s@%s: forge %r is not configured",
                update.context,
                update.forge_repo,
                update.sha[:12],
                update.forge,
            )
            return 0
        st = self._forges.setdefault(update.forge, _ForgeState())
        if st.hold_until > self.clock():
            return 0  # held by an answer earlier in this pass
        try:
            answer = client.post_status(update)
        except Exception as exc:  # a client bug must not kill the delivery thread
            answer = Delivery(Verdict.RETRY, message=f"client error: {type(exc).__name__}")
        now = self.clock()
        error = _clean(answer.message or f"HTTP {answer.http_status}")
        verdict = answer.verdict
        if verdict in (Verdict.DELIVERED, Verdict.APPLIED):
            self.store.mark_status(row.id, Outcome(verdict.value))
            self._recovered(update.forge, st)
            return 1
        if verdict is Verdict.DROP:
            self._recovered(update.forge, st)  # it answered: it is up, the token works
            if row.tries + 1 >= DROP_TRIES:
                self.store.mark_status(row.id, Outcome.DROPPED, error=error)
                self.log.warning(
                    "dropped status %r for %s %s@%s after %d tries: %s",
                    update.context,
                    update.forge,
                    update.forge_repo,
                    update.sha,
                    row.tries + 1,
                    error,
                )
            else:
                self._retry(row, now, self._backoff(row.tries, None), error)
            return 0
        st.last_error, st.http_status = error, answer.http_status
        if verdict is Verdict.AUTH:
            st.hold_until = max(st.hold_until, now + AUTH_WAIT)
            if st.failing != "auth":
                st.failing, st.since = "auth", now
                self.log.error(
                    "forge %r refused the token (%s); its statuses wait %ds between tries",
                    update.forge,
                    error,
                    AUTH_WAIT,
                )
            self._retry(row, now, AUTH_WAIT, error)
            return 0
        # RETRY: the forge is down or limiting; hold all its rows, not just this one.
        st.streak += 1
        st.hold_until = max(st.hold_until, now + self._backoff(st.streak - 1, answer.retry_after))
        if not st.failing:
            st.failing, st.since = "retry", now
            self.log.warning(
                "forge %r is not taking statuses (%s); retrying with backoff", update.forge, error
            )
        self._retry(row, now, self._backoff(row.tries, answer.retry_after), error)
        return 0

    def _retry(self, row: DueStatus, now: float, delay: float, error: str) -> None:
        update = row.update
        horizon = self._horizons.get(update.forge, DEFAULT_HORIZON)
        if now >= row.created_at + horizon:
            self.store.mark_status(row.id, Outcome.GAVE_UP, error=error)
            self.log.error(
                "gave up on status %r for %s %s@%s after %d tries over %ds: %s",
                update.context,
                update.forge,
                update.forge_repo,
                update.sha,
                row.tries + 1,
                now - row.created_at,
                error,
            )
            return
        self.store.mark_status(row.id, Outcome.RETRY, next_at=now + delay, error=error)

    def _backoff(self, tries: int, retry_after: float | None) -> float:
        """Full jitter over BACKOFF_BASE * 2**tries (capped), never below the
        forge's own retry-after."""
        ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** min(tries, 32))
        return max(retry_after or 0.0, BACKOFF_FLOOR, self.rng.random() * ceiling)

    def _recovered(self, forge: str, st: _ForgeState) -> None:
        if st.failing:
            self.log.info("forge %r takes statuses again", forge)
        st.failing, st.since, st.streak, st.last_error, st.http_status = "", None, 0, "", None

    # -- the thread ------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
                self._wanted = False
            try:
                self.deliver_once()
                self._prune()
                wait = self._next_wait()
            except Exception:  # the loop boundary: log, keep delivering
                self.log.exception("status delivery pass failed; retrying in %gs", self.tick)
                wait = self.tick
            with self._cond:
                if not (self._wanted or self._stopping):
                    self._cond.wait(wait)

    def _next_wait(self) -> float:
        now = self.clock()
        wait = self.tick if self.before_pass is not None else 60.0
        for forge, next_at in self.store.outbox_next_at().items():
            st = self._forges.get(forge)
            due = max(next_at, st.hold_until) if st else next_at
            wait = min(wait, due - now)
        return max(wait, 0.01)

    def _prune(self) -> None:
        now = self.clock()
        if now - self._last_prune >= PRUNE_EVERY:
            self._last_prune = now
            self.store.prune_outbox(now - KEEP_DONE)
