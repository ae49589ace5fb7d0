"""Runs whose worker was lost: queued again (bounded), or ended `error`.

A worker renews its attempt's lease while it lives; a lease that ran out means
the worker (or the whole box) died. Called by the daemon at start, before
anything is dispatched, and every few seconds after: no run stays `running`.
"""

from __future__ import annotations

import logging

from ciwatch.model import RunState


def recover(store, *, max_attempts: int, log: logging.Logger | None = None) -> list[str]:
    """Requeue or end every run whose current attempt's lease expired; returns
    one line per run acted on, for the daemon's log."""
    log = log or logging.getLogger("ciwatch.recovery")
    done: list[str] = []
    for attempt in store.expired_attempts():
        run = store.get_run(attempt.run_id)
        n = attempt.number
        if n < max_attempts:
            reason = f"worker lost (attempt {n}): lease expired"
            # Fenced on the attempt: a worker that renewed meanwhile keeps its run.
            if store.requeue(run.id, reason, attempt_id=attempt.id):
                done.append(
                    f"{run.label}: worker {attempt.worker} lost during attempt {n}; "
                    f"queued again (attempt {n + 1} of at most {max_attempts})"
                )
        else:
            reason = f"worker lost after {n} attempts"
            if store.end_lost_run(run.id, attempt.id, reason):
                done.append(f"{run.label}: {RunState.ERROR.value}: {reason}")
    for line in done:
        log.debug("recovery: %s", line)
    return done
