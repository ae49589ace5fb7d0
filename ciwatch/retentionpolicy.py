"""What retention keeps (`RetentionPolicy`, from the config's `retention`) and
what one pass removed (`RetentionReport`); the pass itself is ciwatch.retention."""

from __future__ import annotations

from dataclasses import dataclass

from ciwatch.diskspace import human_size

__all__ = ["RetentionPolicy", "RetentionReport"]


@dataclass(frozen=True)
class RetentionPolicy:
    runs: int = 1000  # finished runs kept per repository
    log_days: int = 30
    workspace_days: int = 3
    rejected_days: int = 14
    # Names of the configured repositories; None: not known, and cached
    # checkouts are then kept for every repository the store knows.
    repos: frozenset[str] | None = None

    @property
    def log_note(self) -> str:
        return f"log removed by retention (older than {self.log_days} days)"


@dataclass(frozen=True)
class RetentionReport:
    runs: int = 0  # run records deleted, with their files
    logs: int = 0  # runs whose logs and artifacts were removed
    workspaces: int = 0
    orphans: int = 0
    caches: int = 0
    mirrors: int = 0
    rejected: int = 0
    freed: int = 0  # bytes
    problems: tuple[str, ...] = ()
    dry_run: bool = False
    skipped: str = ""  # why the pass did not run (another one was running)

    @property
    def removed(self) -> bool:
        return any(
            (
                self.runs,
                self.logs,
                self.workspaces,
                self.orphans,
                self.caches,
                self.mirrors,
                self.rejected,
            )
        )

    def summary(self) -> str:
        """ "120 runs, 3 workspaces, 1.2 GiB freed" (what there was of each)."""
        parts = [
            (self.runs, "run", "runs"),
            (self.logs, "run's logs", "runs' logs"),
            (self.workspaces, "workspace", "workspaces"),
            (self.orphans, "orphaned directory", "orphaned directories"),
            (self.caches, "cached checkout", "cached checkouts"),
            (self.mirrors, "mirror", "mirrors"),
            (self.rejected, "rejected spool file", "rejected spool files"),
        ]
        said = [f"{n} {one if n == 1 else many}" for n, one, many in parts if n]
        verb = "to free" if self.dry_run else "freed"
        if not said:
            return "nothing to remove"
        return ", ".join(said) + f", {human_size(self.freed)} {verb}"
