"""The one door for events: store first (deduplicated), then wake the scheduler.

Every source calls `submit`; an event is acknowledged (a spool file removed, a
webhook answered) only after this returns, so nothing is lost if the daemon
dies in between: at worst the event is seen again and deduplicated.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ciwatch.model import Event, Run, ref_display


class Intake:
    def __init__(
        self,
        store,
        wake: Callable[[], None],
        log: logging.Logger | None = None,
        fault: Callable[[str], None] = lambda point: None,
    ) -> None:
        self.store = store
        self.wake = wake
        self.log = log or logging.getLogger("ciwatch.intake")
        self.fault = fault  # crash-test hook: the composition root may make it exit

    def submit(self, event: Event, *, force_new_run: bool = False) -> tuple[Run | None, bool]:
        """Store the event. Returns (run, new): a duplicate gives the existing run
        and False, unless `force_new_run` (cron, manual) asks for a run anyway."""
        run, new = self.store.submit(event)
        self.fault("after-event-stored")
        if not new and force_new_run and run is not None:
            run, new = self.store.create_run(run.event_id), True
        if new:
            self.log.info(
                "%s: %s %s %s from %s queued",
                run.label if run else event.repo,
                event.kind.value,
                ref_display(event.ref),
                event.sha[:12],
                event.source,
            )
            self.wake()
        return run, new
