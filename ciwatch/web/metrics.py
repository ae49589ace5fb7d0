"""GET /metrics in the Prometheus text format.

Gauges are read at scrape time (queue depth, running runs, the outbox, the
pollers). The histograms (run duration by repository and state, trigger-to-
start latency by source) are kept incrementally: each scrape reads only the
runs that finished or started since the previous one (an index range on
finished_at / started_at), so a scrape costs the same with 100,000 runs in
the store as with 10. The first scrape after a start reads the history once.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric

from ciwatch.model import RunState

DURATION_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 21600)
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
# A run's row may be committed a little after another that finished later:
# rows this far behind the newest one seen are read again (and deduplicated).
LATE_WINDOW = 120.0


@dataclass
class _Histogram:
    """Cumulative bucket counts and sum, per label values."""

    bounds: Sequence[float]
    series: dict[tuple[str, ...], tuple[list[int], list[float]]] = field(default_factory=dict)

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        self.add(labels, bisect.bisect_left(self.bounds, value), 1, value)

    def add(self, labels: tuple[str, ...], bucket: int, count: int, total: float) -> None:
        counts, sums = self.series.setdefault(labels, ([0] * (len(self.bounds) + 1), [0.0]))
        counts[bucket] += count
        sums[0] += total

    def family(self, name: str, doc: str, label_names: Sequence[str]) -> HistogramMetricFamily:
        fam = HistogramMetricFamily(name, doc, labels=label_names)
        for labels, (counts, total) in sorted(self.series.items()):
            cumulative, running = [], 0
            for bound, n in zip((*self.bounds, float("inf")), counts, strict=True):
                running += n
                cumulative.append(("+Inf" if bound == float("inf") else str(bound), running))
            fam.add_metric(list(labels), cumulative, total[0])
        return fam


class _Since:
    """Rows newer than a watermark, each counted once though re-read."""

    def __init__(self, mark: float) -> None:
        self.mark = mark  # the newest time seen; rows from LATE_WINDOW before it are read
        self.seen: dict[int, float] = {}

    def take(self, rows: Iterable, at: Callable[[object], float]) -> list:
        fresh = []
        for row in rows:
            if row.id not in self.seen:
                self.seen[row.id] = at(row)
                fresh.append(row)
        if self.seen:
            self.mark = max(self.mark, max(self.seen.values()))
            horizon = self.mark - LATE_WINDOW
            self.seen = {k: t for k, t in self.seen.items() if t >= horizon}
        return fresh

    @property
    def after(self) -> float:
        return self.mark - LATE_WINDOW


class RunHistograms:
    """Run durations and trigger-to-start waits, brought up to date per scrape.

    The first refresh counts the history in SQL (bucketed there), up to
    LATE_WINDOW before the newest run; from then on runs are read one by one
    from that point (each counted once)."""

    def __init__(self, store) -> None:
        self.store = store
        self.duration = _Histogram(DURATION_BUCKETS)
        self.latency = _Histogram(LATENCY_BUCKETS)
        self._finished: _Since | None = None
        self._started: _Since | None = None
        self._lock = threading.Lock()  # two scrapes at once must not count twice

    def _load_history(self) -> tuple[_Since, _Since]:
        newest_end, newest_start = self.store.newest_times()
        ends = _Since(newest_end if newest_end is not None else float("-inf"))
        starts = _Since(newest_start if newest_start is not None else float("-inf"))
        for repo, state, bucket, n, total in self.store.duration_buckets(
            ends.after, DURATION_BUCKETS
        ):
            self.duration.add((repo, state), bucket, n, total)
        for source, bucket, n, total in self.store.wait_buckets(starts.after, LATENCY_BUCKETS):
            self.latency.add((source,), bucket, n, total)
        return ends, starts

    def refresh(self) -> None:
        with self._lock:
            if self._finished is None or self._started is None:
                self._finished, self._started = self._load_history()
            done = self.store.finished_since(self._finished.after)
            for r in self._finished.take(done, lambda r: r.finished_at):
                self.duration.observe((r.repo, r.state), max(0.0, r.duration))
            started = self.store.started_since(self._started.after)
            for r in self._started.take(started, lambda r: r.started_at):
                self.latency.observe((r.source,), max(0.0, r.wait))


class Collector:
    """Everything /metrics shows, read from its collaborators at scrape time."""

    def __init__(
        self,
        store,
        *,
        sources: Callable[[], list[dict]] = list,
        outbox: Callable[[], dict] = dict,
        version: str = "",
    ) -> None:
        self.store = store
        self.sources = sources
        self.outbox = outbox
        self.version = version
        self.histograms = RunHistograms(store)

    def collect(self) -> Iterator[Metric]:
        self.histograms.refresh()
        counts = self.store.count_states()
        yield _gauge(
            "ciwatch_queue_depth", "Runs queued, waiting to start.", counts[RunState.QUEUED]
        )
        yield _gauge("ciwatch_runs_running", "Runs running now.", counts[RunState.RUNNING])
        yield self.histograms.duration.family(
            "ciwatch_run_duration_seconds",
            "How long finished runs ran (start to end), by repository and final state.",
            ["repo", "state"],
        )
        yield self.histograms.latency.family(
            "ciwatch_trigger_to_start_seconds",
            "From a run queued to its start, by the source that triggered it.",
            ["source"],
        )
        yield from self._outbox()
        yield from self._polls()
        info = GaugeMetricFamily("ciwatch_build_info", "The running version.", labels=["version"])
        info.add_metric([self.version], 1)
        yield info

    def _outbox(self) -> Iterator[Metric]:
        forges = (self.outbox() or {}).get("forges") or {}
        backlog = GaugeMetricFamily(
            "ciwatch_outbox_backlog", "Statuses waiting to reach a forge.", labels=["forge"]
        )
        failing = GaugeMetricFamily(
            "ciwatch_outbox_failing",
            "Statuses waiting that failed at least once.",
            labels=["forge"],
        )
        down = GaugeMetricFamily(
            "ciwatch_outbox_forge_failing",
            "1 while sending to the forge fails (held back, errors).",
            labels=["forge"],
        )
        for name, f in sorted(forges.items()):
            backlog.add_metric([name], f.get("backlog") or 0)
            failing.add_metric([name], f.get("failing") or 0)
            down.add_metric([name], 0 if f.get("state", "ok") == "ok" else 1)
        yield from (backlog, failing, down)

    def _polls(self) -> Iterator[Metric]:
        failures = GaugeMetricFamily(
            "ciwatch_poll_failures",
            "Consecutive failed polls of a remote (0 when its last poll worked).",
            labels=["repo"],
        )
        last_ok = GaugeMetricFamily(
            "ciwatch_poll_last_success_timestamp_seconds",
            "When a remote was last polled without error.",
            labels=["repo"],
        )
        for s in self.sources():
            if s.get("kind") != "poll":
                continue
            repo = str(s.get("repo"))
            failures.add_metric([repo], s.get("failures") or 0)
            if s.get("last_ok") is not None:
                last_ok.add_metric([repo], s["last_ok"])
        yield from (failures, last_ok)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def metrics_router(collector: Collector) -> APIRouter:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    router = APIRouter()

    @router.get("/metrics", response_class=Response, tags=["operations"])
    def metrics() -> Response:
        """Prometheus metrics (text exposition format)."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router
