"""Workspace strategies: `fresh` (a new clone per attempt, ciwatch.checkouts) and
`cached` (here: a checkout kept per repository and slot, brought to the run's
commit in place; its .git comes from ciwatch.gittemplate).

Layout of the cache under the state root::

    cache/<repo_id>/<slot>.lock     flock: one attempt uses a slot at a time
    cache/<repo_id>/<slot>.index    the index as saved right after verification
    cache/<repo_id>/<slot>.git/     template .git: a `clone --shared --no-checkout`
    cache/<repo_id>/<slot>.refs     digest of the mirror refs the template holds
    cache/<repo_id>/<slot>/src/     the cached checkout (the step's cwd)
    cache/<repo_id>/<slot>/new/     scratch: the next template is cloned here

Before each use the slot's .git is made an exact copy of the template (so no
config, hooks, refs, objects or info files of a previous run survive; the
template is re-cloned when the mirror's refs moved) holding our saved copy of
the index (a step may have forged the one in .git; ctime it cannot forge, so
changed files are seen). Then `checkout --force --detach <sha>` rewrites what a
step changed, HEAD must be sha, and what is untracked or ignored (`ls-files
--others`) is removed (remove_tree, then `clean -ffdx` if that is not enough). Anything
odd throws the slot away and makes a fresh checkout. HOME and TMPDIR stay per
attempt. A step's leftover processes must be dead before release().
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from ciwatch.attemptdir import Workspace, no_space
from ciwatch.checkouts import Checkouts, FreshCheckout, FreshCheckouts
from ciwatch.errors import GitError, WorkspaceError
from ciwatch.fstree import remove_tree
from ciwatch.git import check_sha
from ciwatch.gittemplate import install_git_dir, is_real_dir
from ciwatch.workspace import Mirror

__all__ = ["CachedCheckout", "CachedCheckouts", "checkout_strategy"]

STRATEGIES = ("fresh", "cached")
_MIRROR_NAME = re.compile(r"([0-9]+)\.git")


class _SlotLock:
    """An exclusive flock on one slot, held until close() (idempotent)."""

    def __init__(self, fd: int, slot: int) -> None:
        self.fd: int | None = fd
        self.slot = slot

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)  # closing drops the flock

    @property
    def held(self) -> bool:
        return self.fd is not None


@dataclass(frozen=True)
class CachedCheckout:
    """A cached checkout lent to one attempt. `root` is the attempt's own
    directory (home/ and tmp/, always new); `path` is the slot's work tree."""

    root: Path
    path: Path
    slot: int
    lock: _SlotLock

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    def release(self) -> None:
        """Hand the slot back; its tree is cleaned by the next acquire."""
        self.lock.close()

    def remove(self) -> None:
        """Delete the attempt's home/tmp and hand the slot back."""
        try:
            Workspace(self.root).remove()
        finally:
            self.release()

    def keep(self) -> Path:
        """Take the tree out of the cache into the attempt dir (root/src) for
        inspection; the slot is rebuilt fresh next time. Returns where it is."""
        if not self.lock.held:
            raise WorkspaceError("cached checkout already released")
        kept = self.root / "src"
        try:
            _index_copy(self.path.parent).unlink(missing_ok=True)
            os.rename(self.path, kept)
        finally:
            self.release()
        return kept


def _index_copy(slot_dir: Path) -> Path:
    return slot_dir.with_name(f"{slot_dir.name}.index")


def _state(mirror: Mirror, src: Path) -> tuple[str, list[str] | None]:
    """(HEAD sha or "", the paths neither tracked nor ours; None if unreadable).

    Tracked files are not compared here: `checkout --force` against our saved
    index has just rewritten every file whose stat data changed (ctime a step
    cannot forge), which is what `git status` would check again. Listing what
    is untracked (ignored included: no exclude rules are given) needs only the
    directories read, not every file stat'ed."""
    try:
        head = (src / ".git" / "HEAD").read_text().strip()
    except OSError:
        return "", None
    res = mirror.git.call(
        ["ls-files", "--others", "--directory", "-z"],
        git_dir=src / ".git",
        work_tree=src,
        cwd=src,
    )
    if res.returncode != 0:
        return head, None
    return head, [os.fsdecode(p) for p in res.stdout.split(b"\0") if p]


@dataclass(frozen=True)
class CachedCheckouts:
    """The `cached` strategy: checkouts kept under `root`/cache/<repo_id>/<slot>.
    A busy slot is skipped, not waited for; with all `max_slots` busy the
    attempt gets a plain fresh checkout."""

    root: Path
    max_slots: int = 16

    def _base(self, mirror: Mirror) -> Path:
        # The mirror's file name is built from the repo id (Mirrors.mirror).
        m = _MIRROR_NAME.fullmatch(mirror.path.name)
        if not m:
            raise WorkspaceError(f"cannot tell the repository id of mirror {mirror.path}")
        return Path(os.path.abspath(self.root)) / "cache" / m.group(1)

    def _lock_free_slot(self, base: Path) -> _SlotLock | None:
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        for slot in range(self.max_slots):
            fd = os.open(base / f"{slot}.lock", flags, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            except BaseException:
                os.close(fd)
                raise
            return _SlotLock(fd, slot)
        return None

    def acquire(self, mirror: Mirror, sha: str, dest: Path) -> CachedCheckout | FreshCheckout:
        sha = check_sha(sha)
        try:
            return self._acquire(mirror, sha, dest)
        except OSError as exc:  # the cache's own files (a full disk, most likely)
            detail = f"cached checkout into {dest}: {exc.strerror or exc}"
            raise WorkspaceError(no_space(self._base(mirror), detail) or detail) from None

    def _acquire(self, mirror: Mirror, sha: str, dest: Path) -> CachedCheckout | FreshCheckout:
        lock = self._lock_free_slot(self._base(mirror))
        if lock is None:
            return FreshCheckout(mirror.checkout(sha, dest))
        attempt = Workspace(Path(os.path.abspath(dest)))
        try:
            attempt.create()
            slot_dir = self._base(mirror) / str(lock.slot)
            if not self._refresh(mirror, sha, slot_dir):
                self._fresh(mirror, sha, slot_dir)
        except BaseException:
            lock.close()
            try:
                attempt.remove()
            except WorkspaceError:
                pass  # the first failure is the one worth reporting
            raise
        return CachedCheckout(attempt.root, slot_dir / "src", lock.slot, lock)

    def _refresh(self, mirror: Mirror, sha: str, slot_dir: Path) -> bool:
        """Bring the slot's tree to `sha` in place; False if it cannot be trusted."""
        src, saved = slot_dir / "src", _index_copy(slot_dir)
        if not (is_real_dir(src) and is_real_dir(src / ".git") and saved.is_file()):
            return False
        try:
            install_git_dir(mirror, slot_dir, src / ".git")
            shutil.copyfile(saved, src / ".git" / "index")
        except (GitError, WorkspaceError, OSError):
            return False
        wt = {"git_dir": src / ".git", "work_tree": src, "cwd": src}
        res = mirror.git.call(["checkout", "--quiet", "--detach", "--force", sha], **wt)
        if res.returncode != 0:
            return False
        if not self._verify(mirror, sha, src):
            return False
        return self._save_index(src, saved)

    def _verify(self, mirror: Mirror, sha: str, src: Path) -> bool:
        """HEAD is `sha`, tracked files match it, and what is neither tracked
        nor ours (build output, nested repos, chmod 000 dirs) is removed: by
        remove_tree (links unlinked, never followed), then `clean -ffdx`."""
        head, loose = _state(mirror, src)
        if head != sha or loose is None:
            return False
        problems: list[str] = []
        for rel in loose:
            parts = rel.rstrip("/").split("/")
            if rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
                return False
            problems += remove_tree(src.joinpath(*parts))
        if problems:
            wt = {"git_dir": src / ".git", "work_tree": src, "cwd": src}
            mirror.git.call(["clean", "-ffdxq"], **wt)
            head, loose = _state(mirror, src)
            return head == sha and loose == []
        return True

    def _save_index(self, src: Path, saved: Path) -> bool:
        try:
            shutil.copyfile(src / ".git" / "index", saved)
        except OSError:
            return False
        return True

    def _fresh(self, mirror: Mirror, sha: str, slot_dir: Path) -> None:
        """Throw the slot away and clone it anew."""
        saved = _index_copy(slot_dir)
        saved.unlink(missing_ok=True)
        problems = remove_tree(slot_dir)
        if problems:
            raise WorkspaceError(f"could not clear cached checkout {slot_dir}: {problems[0]}")
        ws = mirror.checkout(sha, slot_dir)
        for d in (ws.home, ws.tmp):
            os.rmdir(d)  # the slot needs only src/; home and tmp are per attempt
        if not self._verify(mirror, sha, ws.path):
            remove_tree(slot_dir)
            raise WorkspaceError(f"fresh checkout of {sha} in {slot_dir} does not match it")
        if not self._save_index(ws.path, saved):
            raise WorkspaceError(f"could not save the index of {slot_dir}")


def checkout_strategy(name: str, state_dir: Path) -> Checkouts:
    """The strategy named by `workspace.strategy` in the config."""
    if name == "fresh":
        return FreshCheckouts()
    if name == "cached":
        return CachedCheckouts(Path(state_dir))
    raise WorkspaceError(f"unknown workspace strategy {name!r} (known: {', '.join(STRATEGIES)})")
