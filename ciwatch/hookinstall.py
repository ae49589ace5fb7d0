"""The post-receive hook script and installing it; the daemon's URL file.

The installed hook is POSIX sh and starts no Python: a Python start costs more
than the whole push (DESIGN §10). It writes the push into the spool in the
format of ciwatch.sources.hookspool, running only shell builtins besides one
`mv` and, where coreutils can fsync a single file, one `sync` (about 5 ms in
all on a push: bench/hook_overhead.py).

``STATE/daemon.url`` (written by the daemon with `write_daemon_url`) holds one
line ``<pid> <url>``; the hook prints the URL when that pid is alive.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ciwatch.errors import CiwatchError

SPOOL_DIRNAME = "spool"
URL_FILENAME = "daemon.url"
HOOK_NAME = "post-receive"
CHAINED_NAME = "post-receive.chained"
_MARKER = b"# ciwatch post-receive hook"
_UNSAFE = re.compile(r"[\n\r\0]")


class HookError(CiwatchError):
    """The hook cannot be installed or removed."""


def default_spool(state_dir: Path) -> Path:
    return state_dir / SPOOL_DIRNAME


def default_url_file(state_dir: Path) -> Path:
    return state_dir / URL_FILENAME


# -- the daemon's URL file -------------------------------------------------


def write_daemon_url(path: Path, pid: int, url: str) -> None:
    """Atomically record the running daemon's pid and URL for the hook to print."""
    if not url or any(c.isspace() for c in url):
        raise HookError(f"daemon URL must be one word: {url!r}")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{pid} {url}\n", encoding="utf-8")
    tmp.chmod(0o644)  # the hook runs as the git server's user
    os.replace(tmp, path)


def read_daemon_url(path: Path) -> str | None:
    """The daemon's URL if the file names a live process, else None."""
    try:
        pid_text, _, url = path.read_text(encoding="utf-8", errors="replace").partition(" ")
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    if pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except PermissionError:
        pass  # alive, run by another user (the daemon's own)
    except OSError:
        return None
    return url.strip() or None


# -- the hook script -------------------------------------------------------


def sh_quote(text: str) -> str:
    """`text` as one single-quoted sh word."""
    return "'" + text.replace("'", "'\\''") + "'"


def check_text(what: str, text: str) -> None:
    if not text:
        raise HookError(f"the {what} is empty")
    if _UNSAFE.search(text):
        raise HookError(f"the {what} contains a newline or NUL byte: {text!r}")


def coreutils_sync_file() -> bool:
    """Whether `sync FILE` fsyncs just that file (GNU coreutils 8.24 and later);
    an old `sync` ignores its arguments and flushes every filesystem."""
    try:
        out = subprocess.run(
            ["sync", "--version"], capture_output=True, timeout=5, check=False
        ).stdout.decode("utf-8", "replace")
    except (OSError, subprocess.SubprocessError):
        return False
    m = re.search(r"GNU coreutils\)? (\d+)\.(\d+)", out)
    return bool(m) and (int(m.group(1)), int(m.group(2))) >= (8, 24)


_SCRIPT = r"""#!/bin/sh
# ciwatch post-receive hook: written by `ciwatch install-hook`, which rewrites it on
# reinstall and removes it with --uninstall. It queues this push for the ciwatch daemon
# as one file in the spool directory. It never fails or holds up the push: a problem is
# one line on stderr and exit status 0. Ref names are data: only ever printf '%s' args.
# Only builtins run on the way, besides `mv` and `sync`: each program started costs
# the push a millisecond or more.
repo=@REPO@
spool=@SPOOL@
url_file=@URL_FILE@
fsync=@FSYNC@
# The daemon may run as another user than git: spool files must be readable by it.
umask 022
nl='
'
case $0 in */*) chained=${0%/*}/post-receive.chained ;; *) chained=./post-receive.chained ;; esac

input= said=
while IFS= read -r line || [ -n "$line" ]; do
	input=$input$line$nl
	old=${line%% *} rest=${line#* }
	new=${rest%% *} ref=${rest#* }
	case $old$new in '' | *[!0-9a-f]*) continue ;; esac
	case $new in *[!0]*) ;; *) continue ;; esac # a deletion: nothing to build
	case $ref in
	refs/heads/?* | refs/tags/?*) ;;
	refs/pull/*/head | refs/merge-requests/*/head)
		num=${ref#refs/*/} num=${num%/head}
		case $num in '' | *[!0-9]*) continue ;; esac
		;;
	*) continue ;;
	esac
	short=${new%"${new#???????}"}
	said="${said}ciwatch: queued $ref $short$nl"
done

queue() {
	tmp=$spool/.$$.tmp
	{ printf 'ciwatch-spool 1 repo=%s\n' "$repo" && printf '%s' "$input"; } \
		2>/dev/null >"$tmp" || return 1
	if [ "$fsync" = 1 ]; then sync -- "$tmp" 2>/dev/null; fi
	# The pid is unique among running hooks; n skips files a reused pid left behind.
	n=0
	while [ -e "$spool/$$-$n.push" ]; do n=$((n + 1)); done
	mv -f -- "$tmp" "$spool/$$-$n.push" 2>/dev/null && return 0
	rm -f -- "$tmp" 2>/dev/null
	return 1
}

if [ -n "$input" ]; then
	if queue || { mkdir -p -- "$spool" 2>/dev/null && queue; }; then
		if [ -n "$said" ]; then
			pid= url=
			{ read -r pid url; } 2>/dev/null <"$url_file"
			case $pid in '' | *[!0-9]*) pid= ;; esac
			if [ -n "$pid" ] && { kill -0 "$pid" 2>/dev/null || [ -d "/proc/$pid" ]; }; then
				said="${said}ciwatch: $url$nl"
			else
				said="${said}ciwatch: the daemon is not running;"
				said="$said it builds this push when it starts$nl"
			fi
			printf '%s' "$said"
		fi
	else
		printf 'ciwatch: warning: could not queue this push in %s (not writable?)\n' "$spool" >&2
	fi
fi

status=0
if [ -x "$chained" ]; then
	# The hook this one replaced gets the same lines, and the pusher its exit status.
	printf '%s' "$input" | "$chained"
	status=$?
fi
exit "$status"
"""


def render_hook(repo: str, spool: Path, url_file: Path, *, fsync: bool) -> str:
    """The hook script with the repository name and paths baked in, single-quoted."""
    check_text("repository name", repo)
    for what, path in (("spool directory", spool), ("URL file", url_file)):
        check_text(what, str(path))
    values = {
        "@REPO@": sh_quote(repo),
        "@SPOOL@": sh_quote(str(spool)),
        "@URL_FILE@": sh_quote(str(url_file)),
        "@FSYNC@": "1" if fsync else "0",
    }
    return re.sub("|".join(values), lambda m: values[m.group(0)], _SCRIPT)


# -- installing ------------------------------------------------------------


@dataclass(frozen=True)
class Installed:
    hook: Path
    chained: Path | None  # the hook that was there before, now run by ours
    spool: Path


def hooks_dir(repo_path: Path) -> Path:
    """The hooks directory of a bare repository or of a work tree's .git."""
    if (repo_path / "HEAD").is_file() and (repo_path / "objects").is_dir():
        return repo_path / "hooks"
    dot_git = repo_path / ".git"
    if dot_git.is_dir():
        return dot_git / "hooks"
    if dot_git.is_file():
        raise HookError(
            f"{repo_path}: .git is a file (a linked worktree or submodule); "
            "install the hook in the repository it points to"
        )
    raise HookError(f"{repo_path}: not a git repository")


def is_ours(hook: Path) -> bool:
    try:
        with open(hook, "rb") as fh:
            return _MARKER in fh.read(512)
    except OSError:
        return False


def install_hook(
    repo_path: Path, repo: str, spool: Path, url_file: Path, *, fsync: bool | None = None
) -> Installed:
    """Write the hook; a foreign post-receive hook is kept as post-receive.chained
    and run by ours. Reinstalling rewrites ours and keeps the chained one."""
    spool = Path(os.path.abspath(spool))
    url_file = Path(os.path.abspath(url_file))
    text = render_hook(
        repo, spool, url_file, fsync=coreutils_sync_file() if fsync is None else fsync
    )
    hooks = hooks_dir(repo_path)
    hook, chained = hooks / HOOK_NAME, hooks / CHAINED_NAME
    try:
        hooks.mkdir(exist_ok=True)
        spool.mkdir(parents=True, exist_ok=True)
        if hook.is_symlink() or hook.exists():
            if not is_ours(hook):
                if chained.is_symlink() or chained.exists():
                    raise HookError(
                        f"{hook} (not ciwatch's) and {chained} both exist; "
                        "merge them by hand, then install again"
                    )
                os.rename(hook, chained)
        tmp = hooks / f".{HOOK_NAME}.ciwatch.tmp"
        tmp.write_bytes(text.encode("utf-8", "surrogateescape"))
        tmp.chmod(0o755)
        os.replace(tmp, hook)
    except OSError as exc:
        raise HookError(f"cannot install the hook in {hooks}: {exc}") from exc
    has_chained = chained.is_symlink() or chained.exists()
    return Installed(hook, chained if has_chained else None, spool)


def uninstall_hook(repo_path: Path) -> Path | None:
    """Remove ciwatch's hook and put a chained hook back in its place (returned)."""
    hooks = hooks_dir(repo_path)
    hook, chained = hooks / HOOK_NAME, hooks / CHAINED_NAME
    if not (hook.is_symlink() or hook.exists()):
        raise HookError(f"{hook} does not exist: nothing to uninstall")
    if not is_ours(hook):
        raise HookError(f"{hook} is not ciwatch's hook; left as it is")
    try:
        if chained.is_symlink() or chained.exists():
            os.replace(chained, hook)
            return hook
        hook.unlink()
    except OSError as exc:
        raise HookError(f"cannot uninstall the hook in {hooks}: {exc}") from exc
    return None
