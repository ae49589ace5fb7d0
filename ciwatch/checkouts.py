"""The checkout strategy interface (Lease, Checkouts) and the `fresh` strategy:
a new clone of the mirror for every attempt."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ciwatch.attemptdir import Workspace
from ciwatch.workspace import Mirror

__all__ = ["Checkouts", "FreshCheckout", "FreshCheckouts", "Lease"]


class Lease(Protocol):
    """What a strategy hands the runner: steps run in `path` with HOME=`home`,
    TMPDIR=`tmp`. Exactly one of remove() or keep() ends it."""

    @property
    def path(self) -> Path: ...
    @property
    def home(self) -> Path: ...
    @property
    def tmp(self) -> Path: ...
    def remove(self) -> None: ...
    def keep(self) -> Path: ...


class Checkouts(Protocol):
    def acquire(self, mirror: Mirror, sha: str, dest: Path) -> Lease: ...


@dataclass(frozen=True)
class FreshCheckout:
    """A per-attempt clone (Mirror.checkout) seen through the Lease interface."""

    workspace: Workspace

    @property
    def root(self) -> Path:
        return self.workspace.root

    @property
    def path(self) -> Path:
        return self.workspace.path

    @property
    def home(self) -> Path:
        return self.workspace.home

    @property
    def tmp(self) -> Path:
        return self.workspace.tmp

    def release(self) -> None:
        """Nothing is shared, so nothing to hand back."""

    def remove(self) -> None:
        self.workspace.remove()

    def keep(self) -> Path:
        return self.workspace.path


@dataclass(frozen=True)
class FreshCheckouts:
    def acquire(self, mirror: Mirror, sha: str, dest: Path) -> FreshCheckout:
        return FreshCheckout(mirror.checkout(sha, dest))
