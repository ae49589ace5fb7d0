"""SQLite storage: the only place in ciwatch that speaks SQL.

The `runs` table is both the queue and the history; see DESIGN.md §1.
"""

from ciwatch.store.rows import Artifact, Sighting
from ciwatch.store.schema import MIGRATIONS, Migration
from ciwatch.store.store import Store

__all__ = ["MIGRATIONS", "Artifact", "Migration", "Sighting", "Store"]
