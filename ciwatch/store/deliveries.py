"""Webhook deliveries already stored, so a replay is acknowledged, not queued twice."""

from __future__ import annotations

from collections.abc import Callable

from ciwatch.store.database import Database


class DeliveriesMixin:
    _db: Database
    _clock: Callable[[], float]

    def delivery_seen(self, forge: str, delivery: str) -> bool:
        with self._db.read() as c:
            row = c.execute(
                "SELECT 1 FROM webhook_deliveries WHERE forge = ? AND delivery = ?",
                (forge, delivery),
            ).fetchone()
        return row is not None

    def record_delivery(self, forge: str, delivery: str, event_id: int | None = None) -> bool:
        """False if it was recorded already (a replay)."""
        with self._db.write() as c:
            cur = c.execute(
                """INSERT OR IGNORE INTO webhook_deliveries (forge, delivery, received_at, event_id)
                   VALUES (?, ?, ?, ?)""",
                (forge, delivery, self._clock(), event_id),
            )
            return cur.rowcount == 1
