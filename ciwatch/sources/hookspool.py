"""The hook spool: its file format, writing one push into it, and the daemon
side that turns spool files into events.

A push is one file in the spool directory:

    ciwatch-spool 1 repo=<name>\n
    <old> <new> <ref>\n   (post-receive's stdin, byte for byte)

written under a temporary name starting with '.', then renamed to a name ending
in ``.push``, so a reader never sees half a file. Names are unique, not
ordered: ``<pid>-<n>.push`` from the sh hook (ciwatch.hookinstall), which
cannot read a clock without starting `date`, and ``<unix-ns>-<pid>-<random>.push``
from `spool_push`; the daemon takes them oldest first by mtime.

Each file's events are handed to the intake, and only then is the file deleted:
a daemon that dies in between sees the file again and the store deduplicates.
A file that cannot be understood goes to ``spool/rejected/`` with a ``.reason``
beside it, never lost. The directory is watched (ciwatch.sources.dirwatch), and
rescanned every few seconds for anything a watch missed and for files the store
could not take (locked, disk full).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ciwatch.errors import CiwatchError, StoreError
from ciwatch.sources import refdiff
from ciwatch.sources.dirwatch import DirWatch, watch_dir

SPOOL_MAGIC = b"ciwatch-spool 1 repo="
SPOOL_SUFFIX = ".push"
REJECTED = "rejected"
_MAX_FAULTS = 3  # unexpected failures on one file before it is set aside


class SpoolError(CiwatchError):
    """A spool file is not one ciwatch wrote, or a push cannot be written as one."""


def spool_header(repo: str) -> bytes:
    if not repo or any(c in repo for c in "\n\r\0"):
        raise SpoolError(f"a repository name must be one non-empty line: {repo!r}")
    return SPOOL_MAGIC + repo.encode("utf-8", "surrogateescape") + b"\n"


def parse_spool(data: bytes) -> tuple[str, bytes]:
    """(repo name, the hook lines) of a spool file's content."""
    head, sep, body = data.partition(b"\n")
    if not sep or not head.startswith(SPOOL_MAGIC):
        raise SpoolError("no 'ciwatch-spool 1 repo=NAME' header line")
    try:
        repo = head[len(SPOOL_MAGIC) :].rstrip(b"\r").decode("utf-8")
    except UnicodeDecodeError:
        raise SpoolError("the repository name in the header is not UTF-8") from None
    if not repo:
        raise SpoolError("the header names no repository")
    return repo, body


def spool_push(
    spool_dir: Path,
    repo: str,
    lines: bytes,
    *,
    now_ns: Callable[[], int],
    token: Callable[[], str],
) -> Path:
    """Write one push into the spool atomically: temp file, fsync, rename, fsync
    of the directory. Raises OSError or SpoolError."""
    data = spool_header(repo) + lines
    if lines and not lines.endswith(b"\n"):
        data += b"\n"
    final = spool_dir / f"{now_ns()}-{os.getpid()}-{token()}{SPOOL_SUFFIX}"
    tmp = spool_dir / f".{final.name}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(spool_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the rename stands
    finally:
        os.close(dir_fd)
    return final


def is_spool_name(name: str) -> bool:
    return name.endswith(SPOOL_SUFFIX) and not name.startswith(".")


class HookSpool:
    def __init__(
        self,
        spool_dir: Path,
        intake,
        known_repo: Callable[[str], bool],
        *,
        log: logging.Logger | None = None,
        rescan_interval: float = 2.0,
        stale_after: float = 3600.0,
        clock: Callable[[], float] = time.time,
        watcher: str = "auto",  # auto | inotify | watchdog | none (rescans only)
    ) -> None:
        self.spool_dir = Path(spool_dir)
        self.rejected_dir = self.spool_dir / REJECTED
        self.intake = intake
        self.known_repo = known_repo
        self.log = log or logging.getLogger("ciwatch.hookspool")
        self.rescan_interval = rescan_interval
        self.stale_after = stale_after  # a dot-temp file older than this was abandoned
        self.clock = clock
        self.watcher = watcher
        self._drain_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._watch: DirWatch | None = None
        self._failures: dict[str, int] = {}  # spool file name -> failed attempts in a row

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Watch first, then process every file already there (pushes made while
        the daemon was down), so nothing slips between the two."""
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self.rejected_dir.mkdir(exist_ok=True)
        self._stopping.clear()
        self._watch = self._start_watch()
        self.drain_once()
        self._thread = threading.Thread(target=self._loop, name="ciwatch-hookspool", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._watch is not None:
            self._watch.stop()
            self._watch = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def notify(self) -> None:
        """Something arrived: process the spool now."""
        self._wake.set()

    def _start_watch(self) -> DirWatch | None:
        if self.watcher == "none":
            return None
        watch = watch_dir(self.spool_dir, self.notify, is_spool_name, self.log, self.watcher)
        if watch is None:
            self.log.warning(
                "spool %s: not watched; pushes are picked up by rescans every %.0f s",
                self.spool_dir,
                self.rescan_interval,
            )
        return watch

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.rescan_interval)
            self._wake.clear()
            if self._stopping.is_set():
                break
            try:
                self.drain_once()
            except Exception:  # the loop boundary: log, keep watching
                self.log.exception("spool %s: rescan failed", self.spool_dir)

    # -- processing --------------------------------------------------------

    def drain_once(self) -> int:
        """Process every complete spool file now, oldest first. Returns how many
        were consumed or rejected; files kept for a retry are not counted."""
        with self._drain_lock:
            try:
                pushes, temps = self._listing()
            except OSError as exc:
                self.log.warning("spool %s: cannot list: %s", self.spool_dir, exc.strerror)
                return 0
            for name in temps:
                self._reject_if_stale(name)
            done = 0
            for name in pushes:
                if self._stopping.is_set():
                    break
                outcome = self._process(self.spool_dir / name)
                if outcome == "store-down":
                    break  # the rest would fail the same way: wait for a rescan
                done += outcome in ("done", "rejected")
            return done

    def _listing(self) -> tuple[list[str], list[str]]:
        """(spool files oldest first, dot-temp files). Oldest by mtime: the sh
        hook's names carry no time (it would cost a `date` per push)."""
        pushes, temps = [], []
        with os.scandir(self.spool_dir) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    temps.append(entry.name)
                elif is_spool_name(entry.name):
                    try:
                        pushes.append((entry.stat(follow_symlinks=False).st_mtime_ns, entry.name))
                    except FileNotFoundError:
                        continue
        return [name for _, name in sorted(pushes)], temps

    def _process(self, path: Path) -> str:
        """'done', 'rejected', 'kept' (for a retry), 'store-down' or 'gone'."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return "gone"
        except OSError as exc:
            return self._reject(path, f"cannot read: {exc.strerror}")
        try:
            repo, body = parse_spool(data)
        except SpoolError as exc:
            return self._reject(path, str(exc))
        if not self.known_repo(repo):
            return self._reject(path, f"unknown repository {repo!r} (not in the configuration)")
        changes, problems = refdiff.parse_hook_lines(body)
        events = refdiff.events_for(repo, changes, source="hook")
        try:
            for event in events:
                self.intake.submit(event)
        except CiwatchError as exc:
            # Kept for the next rescan; the events already stored dedupe then.
            self._note_failure(path, repo, exc)
            return "store-down" if isinstance(exc, StoreError) else "kept"
        except Exception as exc:  # a fault of ours must not wedge the spool
            if self._note_failure(path, repo, exc) < _MAX_FAULTS:
                return "kept"
            return self._reject(path, f"{repo}: failed {_MAX_FAULTS} times: {exc!r}")
        self._failures.pop(path.name, None)
        if problems:
            shown = "; ".join(problems[:3]) + (" …" if len(problems) > 3 else "")
            return self._reject(path, f"{repo}: {len(problems)} line(s) not understood: {shown}")
        path.unlink(missing_ok=True)
        self.log.debug("%s: spool file %s: %d event(s)", repo, path.name, len(events))
        return "done"

    def _note_failure(self, path: Path, repo: str, exc: Exception) -> int:
        """Count a failed attempt; log the first of a streak (rescans retry often)."""
        n = self._failures.get(path.name, 0) + 1
        self._failures[path.name] = n
        if n == 1:
            self.log.warning(
                "%s: spool file %s kept for a retry: %s",
                repo,
                path.name,
                exc,
                exc_info=not isinstance(exc, CiwatchError),
            )
        return n

    def _reject(self, path: Path, why: str) -> str:
        target = self._free_name(self.rejected_dir / path.name)
        try:
            self.rejected_dir.mkdir(exist_ok=True)
            os.rename(path, target)
            target.with_name(target.name + ".reason").write_text(why + "\n", encoding="utf-8")
        except FileNotFoundError:
            return "gone"
        except OSError as exc:
            self.log.error("spool file %s: cannot move to %s: %s", path, target, exc.strerror)
            return "kept"
        self.log.warning("spool file %s rejected (kept in %s): %s", path.name, target, why)
        return "rejected"

    def _reject_if_stale(self, name: str) -> None:
        path = self.spool_dir / name
        try:
            age = self.clock() - path.stat().st_mtime
        except OSError:
            return
        if path.is_file() and age > self.stale_after:
            self._reject(path, f"an unfinished spool write abandoned {age:.0f} s ago")

    @staticmethod
    def _free_name(path: Path) -> Path:
        n, candidate = 1, path
        while candidate.exists():
            n += 1
            candidate = path.with_name(f"{path.name}.{n}")
        return candidate
