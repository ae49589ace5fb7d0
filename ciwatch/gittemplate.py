"""A cached slot's .git, rebuilt before each use as an exact copy of a
template (`clone --shared --no-checkout` of the mirror), so no config, hooks,
refs, objects or info files of a previous run survive. The template is cloned
again when the mirror's refs moved."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path

from ciwatch.errors import WorkspaceError
from ciwatch.fstree import remove_tree
from ciwatch.git import redact
from ciwatch.workspace import Mirror

__all__ = ["install_git_dir", "is_real_dir"]


def _refs_key(mirror: Mirror) -> str:
    """A digest of the mirror's refs and HEAD (and the origin URL): what a
    clone of it would carry. Read in-process; much cheaper than a git call."""
    h = hashlib.sha256(redact(mirror.url).encode() + b"\0")
    for name in ("HEAD", "packed-refs"):
        try:
            h.update(name.encode() + b"\0" + (mirror.path / name).read_bytes() + b"\0")
        except FileNotFoundError:
            pass
    for dirpath, dirnames, filenames in os.walk(mirror.path / "refs"):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath, name)
            try:
                h.update(os.fsencode(p.relative_to(mirror.path)) + b"\0" + p.read_bytes())
            except OSError:
                h.update(b"?")  # mid-update: the key differs, so a clone is made
    return h.hexdigest()


def sync_tree(template: Path, dest: Path) -> None:
    """Make `dest` an exact copy of `template`: what the template lacks is
    removed, every file is unlinked and written anew (so never through a link
    or a hard link), and directories already there are kept (creating and
    removing them is what costs on a journaled disk)."""
    stack = [(template, dest)]
    while stack:
        src_dir, dst_dir = stack.pop()
        wanted = {e.name: e for e in os.scandir(src_dir)}
        for name in os.listdir(dst_dir):
            target = dst_dir / name
            entry = wanted.get(name)
            keep_dir = entry is not None and entry.is_dir(follow_symlinks=False)
            if keep_dir and is_real_dir(target):
                continue
            if entry is not None and not keep_dir and _same_file(entry, target):
                del wanted[name]  # already an exact, unshared copy
                continue
            if is_real_dir(target):
                if remove_tree(target):
                    raise WorkspaceError(f"cannot remove {target}")
            else:
                target.unlink()
        for name, entry in wanted.items():
            target = dst_dir / name
            if entry.is_dir(follow_symlinks=False):
                if not is_real_dir(target):
                    target.mkdir(mode=0o700)
                stack.append((Path(entry.path), target))
            else:
                shutil.copyfile(entry.path, target, follow_symlinks=False)


def _same_file(entry: os.DirEntry, target: Path) -> bool:
    """`target` is a plain file of its own (no other link to it) with the
    template file's bytes, mode and owner: rewriting it would change nothing."""
    try:
        src, dst = entry.stat(follow_symlinks=False), os.lstat(target)
        if not (stat.S_ISREG(src.st_mode) and stat.S_ISREG(dst.st_mode)) or dst.st_nlink != 1:
            return False
        if (src.st_size, src.st_mode, src.st_uid, src.st_gid) != (
            dst.st_size,
            dst.st_mode,
            dst.st_uid,
            dst.st_gid,
        ):
            return False
        if src.st_size > 1 << 16:
            return False  # packs and the like: a copy costs no more than the comparison
        with open(entry.path, "rb") as a, open(target, "rb", opener=_nofollow) as b:
            return a.read() == b.read()
    except OSError:
        return False


def _nofollow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW)


def is_real_dir(p: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(p).st_mode)
    except OSError:
        return False


def install_git_dir(mirror: Mirror, slot_dir: Path, dest: Path) -> None:
    """A .git as `clone --shared --no-checkout` makes it, copied from a
    template kept outside the tree; cloned again when the mirror's refs moved."""
    template = slot_dir.with_name(f"{slot_dir.name}.git")
    stamp = slot_dir.with_name(f"{slot_dir.name}.refs")
    key = _refs_key(mirror)  # read before cloning: a later change only re-clones
    try:
        current = stamp.read_text() == key and is_real_dir(template)
    except FileNotFoundError:
        current = False
    if not current:
        stamp.unlink(missing_ok=True)
        scratch = slot_dir / "new"
        for old in (template, scratch):
            if remove_tree(old):
                raise WorkspaceError(f"cannot clear {old}")
        git = mirror.git
        clone = ["clone", "--quiet", "--shared", "--no-checkout", "--template="]
        git.run(
            [
                *clone,
                "--no-recurse-submodules",
                "--config",
                "core.hooksPath=/dev/null",
                "--end-of-options",
                mirror.path,
                scratch,
            ],
            cwd=slot_dir,
        )
        # Origin names the real repository (credentials dropped), not our mirror.
        git.run(
            ["config", "--end-of-options", "remote.origin.url", redact(mirror.url)],
            git_dir=scratch / ".git",
        )
        remove_tree(scratch / ".git" / "logs")  # reflogs: dirs to sync, no use here
        os.rename(scratch / ".git", template)
        os.rmdir(scratch)
        stamp.write_text(key)
    sync_tree(template, dest)
