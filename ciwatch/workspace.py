"""Per-repo mirrors and per-attempt checkouts (all git goes through ciwatch.git).

Layout under the state root (the attempt directories: ciwatch.attemptdir)::

    mirrors/<repo_id>.git           bare mirror, fetched into, never checked out
    mirrors/<repo_id>.lock          serialises fetches into one mirror
    workspaces/<repo_id>/<run>-<attempt>/src/
                                    a checkout; objects borrowed from the
                                    mirror through objects/info/alternates

No path is ever derived from a ref, a repository name or a step name.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ciwatch.attemptdir import Workspace, no_space, non_negative, workspace_dir
from ciwatch.errors import GitError, WorkspaceError
from ciwatch.git import (
    DEFAULT_PATH,
    DEFAULT_PROTOCOLS,
    Git,
    NotInCommitError,
    check_ref,
    check_sha,
    check_url,
    init_repo_with_files,
    is_zero_sha,
    local_repo_info,
    redact,
    url_protocol,
)
from ciwatch.model import ref_from_bytes

# workspace_dir and the git names are re-exported for the callers that know them from here.
__all__ = [
    "GitError",
    "Mirror",
    "Mirrors",
    "NotInCommitError",
    "init_repo_with_files",
    "local_repo_info",
    "workspace_dir",
]

ALL_REFSPECS = ("+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*")
PULL_REFSPECS = (
    "+refs/pull/*/head:refs/pull/*/head",
    "+refs/merge-requests/*/head:refs/merge-requests/*/head",
)


@dataclass(frozen=True)
class Mirror:
    """A bare mirror of one repository, fetched from `url` (never stored in its config)."""

    git: Git
    path: Path
    url: str
    lock_path: Path

    @property
    def shown_url(self) -> str:
        return redact(self.url)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.lock_path, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _git(self, args: Sequence, **kw) -> bytes:
        return self.git.run(args, git_dir=self.path, **kw)

    def _remote(self, *args: str) -> list[str]:
        # Protocol v2 over git:// stalls ~40 ms a call (DESIGN.md §10).
        return ["-c", "protocol.version=1", *args] if url_protocol(self.url) == "git" else [*args]

    def _fetch_opts(self) -> list[str]:
        return self._remote(
            "fetch", "--quiet", "--no-tags", "--no-recurse-submodules", "--no-write-fetch-head"
        )

    def fetch(self, refs: Sequence[str] | None = None, *, pull_requests: bool = False) -> None:
        """Fetch all branches and tags (pruning deleted ones), or only `refs`
        (fully qualified), into the same names in the mirror."""
        if refs is None:
            specs = list(ALL_REFSPECS) + (list(PULL_REFSPECS) if pull_requests else [])
            opts = self._fetch_opts() + ["--prune"]
        else:
            specs = [f"+{check_ref(r)}:{r}" for r in refs]
            opts = self._fetch_opts()
        if not specs:
            return
        with self._locked():
            self._git([*opts, "--end-of-options", self.url, *specs])
            if refs is None:
                self._update_head()

    def _update_head(self) -> None:
        """Point the mirror's HEAD where the remote's HEAD points (its default branch)."""
        ask = self._remote("ls-remote", "--symref")
        out = self._git([*ask, "--end-of-options", self.url, "HEAD"])
        for line in out.split(b"\n"):
            if line.startswith(b"ref: ") and line.endswith(b"\tHEAD"):
                target = ref_from_bytes(line[5:-5])
                if target.startswith("refs/heads/"):
                    check_ref(target)
                    self._git(["symbolic-ref", "HEAD", target])
                return

    def has_commit(self, sha: str) -> bool:
        sha = check_sha(sha)
        res = self.git.call(
            ["cat-file", "-e", "--end-of-options", f"{sha}^{{commit}}"], git_dir=self.path
        )
        return res.returncode == 0

    def ensure(self, sha: str, ref: str | None = None) -> None:
        """Make sure the commit is in the mirror, fetching if it is not. `ref` (the
        run's ref) is fetched first when it is outside heads and tags: a pull
        request's head lives under refs/pull/N/head of the base repository."""
        sha = check_sha(sha)
        if self.has_commit(sha):
            return
        if ref and not ref.startswith(("refs/heads/", "refs/tags/")) and ref.startswith("refs/"):
            try:
                self.fetch([ref])
            except GitError:
                pass  # gone already (a force push): the full fetch below may still find it
            if self.has_commit(sha):
                return
        self.fetch()
        if self.has_commit(sha):
            return
        # Not under any branch or tag: ask for the object itself (protocol v2
        # servers and those allowing reachable shas in wants will send it).
        with self._locked():
            self.git.call(
                [*self._fetch_opts(), "--end-of-options", self.url, sha], git_dir=self.path
            )
        if not self.has_commit(sha):
            raise GitError(f"commit {sha} not found in {self.shown_url}")

    def resolve(self, ref: str) -> str:
        """The commit sha a fully qualified ref points to (tags peeled)."""
        check_ref(ref)
        out = self._git(["rev-parse", "--verify", "--end-of-options", f"{ref}^{{commit}}"])
        return check_sha(out.decode().strip())

    def default_branch(self) -> str | None:
        """The branch the remote's HEAD names (e.g. "main"), None if it does not exist here."""
        res = self.git.call(["symbolic-ref", "--quiet", "HEAD"], git_dir=self.path)
        head = ref_from_bytes(res.stdout.rstrip(b"\n"))
        if res.returncode != 0 or not head.startswith("refs/heads/"):
            return None
        probe = self.git.call(
            ["rev-parse", "--verify", "--quiet", "--end-of-options", f"{head}^{{commit}}"],
            git_dir=self.path,
        )
        return head[len("refs/heads/") :] if probe.returncode == 0 else None

    def read_blob(self, sha: str, path: str, max_bytes: int) -> bytes:
        """A file's content from the commit object itself (no worktree, no links)."""
        sha = check_sha(sha)
        parts = path.split("/")
        if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise GitError(f"not a plain relative path: {path!r}")
        out = self._git(
            ["ls-tree", "-z", "--long", "--full-tree", "--end-of-options", sha, "--", path]
        )
        entry = next((e for e in out.split(b"\0") if e.endswith(b"\t" + os.fsencode(path))), None)
        if entry is None:
            raise NotInCommitError(f"no {path} at {sha}", sha, path)
        mode, kind, oid, size = entry.split(b"\t", 1)[0].split()
        if mode == b"120000":
            raise GitError(
                f"{path} at {sha} is a symlink; ciwatch reads the pipeline from the commit "
                "and does not follow links"
            )
        if kind == b"tree":
            raise NotInCommitError(f"no {path} at {sha} ({path} is a directory)", sha, path)
        if kind != b"blob":
            raise NotInCommitError(f"no {path} at {sha} ({path} is a submodule)", sha, path)
        if int(size) > max_bytes:
            raise GitError(f"{path} at {sha} is {int(size)} bytes; the limit is {max_bytes}")
        return self._git(["cat-file", "blob", check_sha(oid.decode())])

    def changed_paths(
        self, before: str | None, sha: str, default_branch: str
    ) -> tuple[str, ...] | None:
        """Paths changed by a push. A new ref (before None/zeros) is compared with
        its merge base with the default branch. None when it cannot be known."""
        sha = check_sha(sha)
        if before is None or is_zero_sha(before):
            base_ref = check_ref(f"refs/heads/{default_branch}")
            res = self.git.call(
                ["merge-base", "--end-of-options", sha, base_ref], git_dir=self.path
            )
            if res.returncode != 0:
                return None
            base = check_sha(res.stdout.decode().strip())
            if base == sha:
                return None  # a new ref with no commits of its own: build rather than miss
        else:
            base = check_sha(before)
            if not self.has_commit(base):
                return None
        res = self.git.call(
            [
                "diff-tree",
                "-r",
                "-z",
                "--name-only",
                "--no-renames",
                "--no-commit-id",
                "--end-of-options",
                base,
                sha,
            ],
            git_dir=self.path,
        )
        if res.returncode != 0:
            return None
        return tuple(ref_from_bytes(p) for p in res.stdout.split(b"\0") if p)

    def checkout(self, sha: str, dest: Path, *, submodules: bool = False) -> Workspace:
        """A new workspace at `dest` holding the exact commit, borrowing the
        mirror's objects (nothing copied). On failure nothing is left behind."""
        sha = check_sha(sha)
        ws = Workspace(Path(os.path.abspath(dest)))
        ws.create()
        src = ws.path
        try:
            self.git.run(
                [
                    "clone",
                    "--quiet",
                    "--shared",
                    "--no-checkout",
                    "--template=",
                    "--no-recurse-submodules",
                    "--end-of-options",
                    self.path,
                    src,
                ],
                cwd=ws.root,
            )
            wt = {"git_dir": src / ".git", "work_tree": src, "cwd": src}
            # Origin names the real repository (credentials dropped), not our mirror.
            settings = (("remote.origin.url", redact(self.url)), ("core.hooksPath", "/dev/null"))
            for key, value in settings:
                self.git.run(["config", "--end-of-options", key, value], **wt)
            self.git.run(["checkout", "--quiet", "--detach", "--force", sha], **wt)
            if submodules:
                self.git.run(["submodule", "update", "--init", "--recursive", "--quiet"], **wt)
            head = self.git.run(["rev-parse", "--verify", "HEAD"], **wt).decode().strip()
            if head != sha:
                raise GitError(f"checkout ended at {head}, not {sha}")
        except BaseException as exc:
            # Measured before the removal frees what the checkout had written.
            full = no_space(ws.root.parent, str(exc)) if isinstance(exc, GitError) else None
            try:
                ws.remove()
            except WorkspaceError:
                pass  # the git failure is the one worth reporting
            if full:
                raise WorkspaceError(full) from exc
            raise
        return ws


@dataclass(frozen=True)
class Mirrors:
    """The mirrors kept under `root`/mirrors, one per repository id."""

    root: Path
    allowed_protocols: tuple[str, ...] = DEFAULT_PROTOCOLS
    timeout: float = 600.0
    search_path: str = field(default_factory=lambda: os.environ.get("PATH") or DEFAULT_PATH)
    extra_env: tuple[tuple[str, str], ...] = ()

    @property
    def git(self) -> Git:
        home = Path(os.path.abspath(self.root)) / "git-home"
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        protocols = tuple(self.allowed_protocols)
        return Git(home, protocols, self.timeout, self.search_path, self.extra_env)

    def mirror(self, repo_id: int, url: str) -> Mirror:
        """The mirror of repo `repo_id` (created empty if new; call fetch to fill it)."""
        check_url(url, self.allowed_protocols)
        if url_protocol(url) == "file" and "://" not in url:
            url = os.path.abspath(url)
        base = Path(os.path.abspath(self.root)) / "mirrors"
        base.mkdir(parents=True, exist_ok=True)
        rid = non_negative("repo_id", repo_id)
        mirror = Mirror(self.git, base / f"{rid}.git", url, base / f"{rid}.lock")
        if not (mirror.path / "HEAD").exists():
            with mirror._locked():
                if not (mirror.path / "HEAD").exists():
                    init = ["init", "--quiet", "--bare", "--template=", mirror.path]
                    self.git.run(init, cwd=base)
        return mirror
