"""ciwatch's own failures, under one root class.

This is a leaf module: it imports nothing of ours. A failing *step* is not an
error (it is a StepResult value); these are for when ciwatch itself cannot do
what it was asked.
"""

from __future__ import annotations


class CiwatchError(Exception):
    """Root of every error ciwatch raises on purpose."""


class ConfigError(CiwatchError):
    """The daemon configuration is invalid. `problems` lists every one."""

    def __init__(self, problems: list[str] | tuple[str, ...], source: str = "") -> None:
        self.problems = tuple(problems)
        self.source = source
        head = f"invalid configuration {source}".rstrip()
        super().__init__(head + ":\n" + "\n".join(f"  {p}" for p in self.problems))


class DocumentError(CiwatchError):
    """A YAML document (pipeline or config) cannot be used. `diagnostics` holds
    every problem found; each renders as ``file:line:col: field.path: message``.
    """

    def __init__(self, diagnostics) -> None:
        self.diagnostics = tuple(diagnostics)
        super().__init__("\n".join(str(d) for d in self.diagnostics) or "invalid pipeline")

    def short(self, limit: int = 120) -> str:
        """One line for a commit status description."""
        n = len(self.diagnostics)
        first = str(self.diagnostics[0]) if n else "invalid pipeline"
        text = first if n <= 1 else f"{first} (+{n - 1} more)"
        return text if len(text) <= limit else text[: limit - 1] + "…"


class PipelineError(DocumentError):
    """The pipeline file (`.ciwatch.yml`) cannot be used."""


class GitError(CiwatchError):
    """A git operation failed (clone, fetch, resolve, read)."""


class WorkspaceError(CiwatchError):
    """A workspace could not be prepared or cleaned."""


class ExecutorError(CiwatchError):
    """A step could not be started (the executor's side, not the step's)."""


class StoreError(CiwatchError):
    """The database cannot be opened, migrated or written."""


class CorruptStoreError(StoreError):
    """The database failed its integrity check; it is never silently recreated."""


class NotFoundError(CiwatchError):
    """A run, repo or step named by the user does not exist."""
