"""remove_tree against real hostile trees: links out of the tree, loops, locked
directories, immutable and busy files, mounts, very deep and very wide trees.
Whatever the tree holds, nothing outside it changes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from ciwatch.fstree import remove_tree

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def fast_dir(tmp_path: Path):
    """A scratch dir on tmpfs when there is one: creating many files on a disk
    costs ~0.3 ms each, which would make the test about the disk."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        d = shm / f"ciwatch-fstree-{uuid.uuid4().hex}"
        d.mkdir()
        yield d
        subprocess.run(["rm", "-rf", "--one-file-system", str(d)], check=False)
    else:
        yield tmp_path


def _outside(base: Path) -> Path:
    out = base / "outside"
    (out / "sub").mkdir(parents=True)
    (out / "secret.txt").write_text("keep me")
    (out / "sub" / "f").write_text("keep me too")
    return out


def _assert_outside_intact(out: Path) -> None:
    assert (out / "secret.txt").read_text() == "keep me"
    assert (out / "sub" / "f").read_text() == "keep me too"


def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    assert done.returncode == 0, (
        f"`mount {' '.join(args)}` failed ({done.stderr.strip()}): these tests need root "
        "(or CAP_SYS_ADMIN) to make mounts inside a tree"
    )


def _umount(point: Path) -> None:
    subprocess.run(["umount", str(point)], check=True)


def _remove_without_dac_override(root: Path) -> list[str]:
    """remove_tree in a process that cannot ignore file modes: as root, the
    capabilities that bypass them are dropped, so mode 000 really stands in the way."""
    code = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(ROOT)!r})
        from pathlib import Path
        from ciwatch.fstree import remove_tree
        print(json.dumps(remove_tree(Path({str(root)!r}))))
    """)
    argv = [sys.executable, "-c", code]
    if os.geteuid() == 0:
        assert shutil.which("setpriv"), "setpriv (util-linux) is needed to drop CAP_DAC_OVERRIDE"
        argv = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", *argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_links_to_files_and_dirs_outside_are_removed_and_their_targets_kept(tmp_path):
    out = _outside(tmp_path)
    root = tmp_path / "ws"
    (root / "src" / "deeper").mkdir(parents=True)
    os.symlink(out / "secret.txt", root / "src" / "out-file")
    os.symlink(out, root / "src" / "out-dir")
    os.symlink(out / "sub", root / "src" / "deeper" / "out-sub")
    os.symlink("../../../outside", root / "src" / "deeper" / "relative")
    os.link(out / "secret.txt", root / "src" / "hard-link")  # same inode: unlinking is safe
    assert remove_tree(root) == []
    assert not os.path.lexists(root)
    _assert_outside_intact(out)
    assert (out / "secret.txt").stat().st_nlink == 1


def test_symlink_loops_and_dangling_links_are_removed(tmp_path):
    root = tmp_path / "ws"
    root.mkdir()
    os.symlink("self", root / "self")
    os.symlink("b", root / "a")
    os.symlink("a", root / "b")
    os.symlink(".", root / "dot")
    os.symlink("..", root / "up")
    os.symlink("/nonexistent/nowhere", root / "dangling")
    assert remove_tree(root) == []
    assert not os.path.lexists(root)
    assert tmp_path.is_dir()


def test_a_root_that_is_a_link_removes_only_the_link(tmp_path):
    out = _outside(tmp_path)
    os.symlink(out, tmp_path / "ws")
    assert remove_tree(tmp_path / "ws") == []
    assert not os.path.lexists(tmp_path / "ws")
    _assert_outside_intact(out)
    assert remove_tree(tmp_path / "ws") == []  # gone already: nothing to do


def test_special_files_and_odd_names_are_removed(tmp_path):
    root = tmp_path / "ws"
    root.mkdir()
    os.mkfifo(root / "fifo")
    names = [b"-rf", b"new\nline", b"\xff\xfe not utf-8", b"sp ace", b"--", b"*"]
    for name in names:
        with open(os.fsencode(root) + b"/" + name, "wb") as fh:
            fh.write(b"x")
    os.mkdir(os.fsencode(root) + b"/dir \xff")
    assert remove_tree(root) == []
    assert not os.path.lexists(root)


def test_locked_dirs_are_opened_up_and_removed_without_root_privileges(tmp_path):
    out = _outside(tmp_path)
    root = tmp_path / "ws"
    nested = root / "a" / "b" / "c"
    nested.mkdir(parents=True)
    (nested / "f").write_text("x")
    (root / "ro").mkdir()
    (root / "ro" / "f").write_text("x")
    (root / "file000").write_text("x")
    os.symlink(out / "sub", root / "a" / "to-sub")
    (root / "file000").chmod(0o000)
    for d in (nested, nested.parent, nested.parent.parent):  # innermost first
        d.chmod(0o000)
    (root / "ro").chmod(0o500)
    (out / "sub").chmod(0o000)  # locked outside: must stay locked, and intact
    try:
        assert _remove_without_dac_override(root) == []
        assert not os.path.lexists(root)
        assert (out / "sub").stat().st_mode & 0o777 == 0
    finally:
        (out / "sub").chmod(0o755)
    _assert_outside_intact(out)


def test_what_cannot_be_removed_is_reported_and_the_rest_goes(tmp_path):
    root = tmp_path / "ws"
    (root / "keep").mkdir(parents=True)
    for i in range(60):
        (root / "keep" / f"f{i}").write_text("x")
    (root / "other").mkdir()
    (root / "other" / "g").write_text("x")
    immutable = [root / "keep" / f"f{i}" for i in range(60)]
    for f in immutable:
        done = subprocess.run(["chattr", "+i", str(f)], capture_output=True, text=True)
        assert done.returncode == 0, f"chattr +i failed: {done.stderr} (e2fsprogs, root needed)"
    try:
        problems = remove_tree(root)
        # One line per file, at most 50 listed; the dirs holding them are not blamed.
        assert len(problems) == 51, problems
        assert problems[0].startswith(f"{root}/keep/f") and "Operation not permitted" in problems[0]
        assert problems[-1] == "(and 10 more problems)"
        assert not (root / "other").exists()
        assert sorted(os.listdir(root)) == ["keep"]
    finally:
        subprocess.run(["chattr", "-i", *map(str, immutable)], check=True)
    assert remove_tree(root) == []  # a second try once they are mutable again
    assert not root.exists()


def test_busy_files_and_dirs_are_removed(tmp_path, marker):
    """Open files, a running program and a process's cwd do not stop removal."""
    root = tmp_path / "ws"
    (root / "cwd").mkdir(parents=True)
    prog = root / "sleeper"
    shutil.copy("/bin/sleep", prog)
    held = open(root / "open.txt", "w")  # noqa: SIM115 (held open across the removal)
    proc = subprocess.Popen([str(prog), marker], cwd=root / "cwd")
    try:
        assert remove_tree(root) == []
        assert not os.path.lexists(root)
        assert proc.poll() is None  # the process goes on; its files are just unlinked
    finally:
        held.close()
        proc.kill()
        proc.wait()


def test_mounts_inside_are_left_alone_and_their_files_kept(tmp_path):
    out = _outside(tmp_path)
    root = tmp_path / "ws"
    bind = root / "src" / "deep" / "bind point"  # a space: mountinfo escapes it
    tmpfs = root / "src" / "tmpfs"
    bind.mkdir(parents=True)
    tmpfs.mkdir()
    (root / "src" / "deep" / "f").write_text("x")
    _mount("--bind", str(out), str(bind))
    try:
        _mount("-t", "tmpfs", "-o", "size=1M", "tmpfs", str(tmpfs))
        try:
            (tmpfs / "on-tmpfs").write_text("mounted")
            problems = remove_tree(root)
            assert sorted(problems) == sorted(
                [
                    f"{bind}: a filesystem is mounted here; left alone",
                    f"{tmpfs}: a filesystem is mounted here; left alone",
                ]
            )
            _assert_outside_intact(out)
            assert (tmpfs / "on-tmpfs").read_text() == "mounted"
            assert not (root / "src" / "deep" / "f").exists()  # the rest went
        finally:
            _umount(tmpfs)
    finally:
        _umount(bind)
    assert remove_tree(root) == []
    assert not root.exists()
    _assert_outside_intact(out)


def _deep_tree(root: Path, depth: int) -> None:
    """`depth` nested dirs, each with a file, made through descriptors (a path
    this long cannot be named in one system call)."""
    root.mkdir()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(depth):
            os.close(os.open(f"f{i}", os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=fd))
            os.mkdir("d", dir_fd=fd)
            nfd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        os.symlink("/", "to-root", dir_fd=fd)
    finally:
        os.close(fd)


def test_a_5000_level_tree_is_removed_with_few_descriptors(fast_dir):
    """Deeper than PATH_MAX allows to name, with 200 descriptors allowed: no
    recursion limit, no descriptor per level."""
    root = fast_dir / "deep"
    _deep_tree(root, 5000)
    code = textwrap.dedent(f"""
        import json, resource, sys
        sys.path.insert(0, {str(ROOT)!r})
        resource.setrlimit(resource.RLIMIT_NOFILE, (200, 200))
        from pathlib import Path
        from ciwatch.fstree import remove_tree
        print(json.dumps(remove_tree(Path({str(root)!r}))))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
    assert not os.path.lexists(root)
    assert os.path.isdir("/bin")


def test_50k_files_in_wide_and_nested_dirs_go_quickly(fast_dir):
    """More entries in one directory than one read takes, dirs mixed among
    files, and tens of thousands of files overall."""
    root = fast_dir / "wide"
    root.mkdir()
    made = 0
    big = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(20000):  # one wide directory, with a subdir every 1000 files
            os.close(os.open(f"f{i}", os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=big))
            made += 1
            if i % 1000 == 0:
                os.mkdir(f"sub{i}", dir_fd=big)
                os.close(os.open(f"sub{i}/g", os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=big))
                made += 1
    finally:
        os.close(big)
    for d in range(30):
        sub = root / "n" / f"d{d}" / "x"
        sub.mkdir(parents=True)
        fd = os.open(sub, os.O_RDONLY | os.O_DIRECTORY)
        for i in range(1000):
            os.close(os.open(f"f{i}", os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=fd))
        os.close(fd)
        made += 1000
    assert made >= 50000
    started = time.monotonic()
    assert remove_tree(root) == []
    took = time.monotonic() - started
    assert not os.path.lexists(root)
    # About 0.2 s here; 10x slack for a loaded CI box, still far from a stall.
    assert took < 5, f"{made} files took {took:.1f}s"
