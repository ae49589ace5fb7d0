"""Container test helpers: a busybox image built locally (no registry needed),
and finding or planting labelled containers.

The image is a root filesystem holding the host's static busybox and one
symlink per applet, imported with `podman import`. Its tag is derived from the
busybox binary, so it is built once per machine and reused by later sessions;
a lock file keeps parallel test processes from building it twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import struct
import subprocess
import tarfile
import tempfile
from pathlib import Path

from ciwatch.executors.engine import OWNER_LABEL, SCOPE_LABEL, owner_of, scope_of

# On the CI machines podman's default runtime (crun) fails on cgroups in hybrid
# mode, and the ulimits it would copy from the host are refused: runc, and
# explicit values.
ENGINE_ARGS = ("--runtime", "runc", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
HINT = "install podman, runc and busybox-static (apt-get install podman runc busybox-static)"


def podman() -> str:
    found = shutil.which("podman")
    assert found, f"podman not found: {HINT}"
    return found


def busybox() -> Path:
    """A statically linked busybox: the image has no libraries for it."""
    for path in BUSYBOX_CANDIDATES:
        if os.path.isfile(path) and _static(Path(path)):
            return Path(path)
    raise AssertionError(f"no statically linked busybox in {BUSYBOX_CANDIDATES}: {HINT}")


def _static(path: Path) -> bool:
    """True for an ELF64 executable without a program interpreter (PT_INTERP)."""
    data = path.read_bytes()
    if data[:5] != b"\x7fELF\x02":
        return False
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    types = [struct.unpack_from("<I", data, phoff + i * phentsize)[0] for i in range(phnum)]
    return 3 not in types


def busybox_image() -> str:
    """The tag of the test image, building and importing it if needed."""
    engine = podman()
    binary = busybox()
    digest = hashlib.sha256(binary.read_bytes()).hexdigest()[:12]
    tag = f"localhost/ciwatch-test-busybox:{digest}"
    lock_path = Path(tempfile.gettempdir()) / "ciwatch-test-busybox.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if subprocess.run([engine, "image", "exists", tag], check=False).returncode == 0:
            return tag
        with tempfile.TemporaryDirectory() as tmp:
            tar = Path(tmp) / "rootfs.tar"
            _rootfs_tar(binary, tar)
            done = subprocess.run(
                [engine, "import", "--quiet", str(tar), tag], capture_output=True, check=False
            )
            assert done.returncode == 0, f"podman import failed: {done.stderr.decode()}"
    return tag


def _rootfs_tar(binary: Path, tar_path: Path) -> None:
    listed = subprocess.run([str(binary), "--list"], capture_output=True, check=True)
    applets = [a for a in listed.stdout.decode().split() if a and a != "busybox"]
    with tarfile.open(tar_path, "w") as tar:
        for folder in ("bin", "tmp", "etc", "proc", "sys", "dev"):
            info = tarfile.TarInfo(folder)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if folder == "tmp" else 0o755
            tar.addfile(info)
        tar.add(binary, "bin/busybox")
        for applet in applets:
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type = tarfile.SYMTYPE
            info.linkname = "busybox"
            tar.addfile(info)


def containers(scope_dir: Path) -> list[str]:
    """Every container (running or not) of the executor scope of state dir `scope_dir`."""
    scope = scope_of(scope_dir)
    out = subprocess.run(
        [podman(), "ps", "-a", "-q", "--filter", f"label={SCOPE_LABEL}={scope}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.split()


def start_leftover(image: str, name: str, scope: str, owner: str) -> None:
    """A running container labelled as ciwatch's, of `scope` and `owner`."""
    subprocess.run(
        [podman(), "run", "-d", "--name", name, *ENGINE_ARGS, "--init",
         "--label", f"{SCOPE_LABEL}={scope}", "--label", f"{OWNER_LABEL}={owner}",
         image, "sleep", "300"],
        check=True, capture_output=True,
    )  # fmt: skip


def dead_owner() -> str:
    """An owner label of this machine and boot whose process does not exist."""
    host, boot, _ = owner_of(os.getpid()).split("/")
    return f"{host}/{boot}/999999999.1"


def remove_containers(*names: str) -> None:
    """Remove containers by name, one at a time (podman 4.3 removes none of a list
    holding a name that does not exist)."""
    for name in names:
        subprocess.run([podman(), "rm", "-f", "-t", "0", "--", name], capture_output=True)
