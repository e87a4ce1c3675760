"""devserver.sysutil: the file lock and mount helpers the image builders and devtools share."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from devserver import sysutil

# Exits 0 when it could take the lock at once, 1 when another process holds it.
TRY_LOCK = """
import fcntl, sys
with open(sys.argv[1], "a") as handle:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit(1)
"""


def other_process_can_lock(path: Path) -> bool:
    return subprocess.run([sys.executable, "-c", TRY_LOCK, str(path)], check=False).returncode == 0


def test_file_lock_excludes_other_processes_while_held(tmp_path: Path) -> None:
    lock = tmp_path / "not" / "yet" / "there.lock"
    with sysutil.file_lock(lock):
        assert lock.exists()  # made, with its folders
        assert not other_process_can_lock(lock)
    assert other_process_can_lock(lock)


def test_file_lock_is_released_when_the_block_raises(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    with pytest.raises(RuntimeError, match="inside"), sysutil.file_lock(lock):
        raise RuntimeError("inside")
    assert other_process_can_lock(lock)


def test_mounts_under_reads_mountinfo_deepest_first(tmp_path: Path) -> None:
    root = tmp_path / "my root"
    root.mkdir()
    escaped = str(root).replace(" ", "\\040")
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "\n".join(
            f"{n} 1 0:{n} / {point} rw shared:1 - tmpfs tmpfs rw"
            for n, point in enumerate(
                ["/", escaped, f"{escaped}/proc", f"{escaped}/dev", f"{escaped}/dev/pts", f"{escaped}-other"], 20
            )
        )
        + "\n"
    )
    assert sysutil.mounts_under(root, mountinfo=mountinfo) == [
        f"{root}/dev/pts",
        f"{root}/proc",
        f"{root}/dev",
        str(root),
    ]
    assert sysutil.mounts_under(root, strictly_below=True, mountinfo=mountinfo) == [
        f"{root}/dev/pts",
        f"{root}/proc",
        f"{root}/dev",
    ]
    assert sysutil.mounts_under(tmp_path / "elsewhere", mountinfo=mountinfo) == []


def test_unmount_retries_after_the_callers_step_then_reports(tmp_path: Path) -> None:
    calls = []
    with pytest.raises(sysutil.MountError, match=f"cannot unmount {tmp_path}") as info:
        sysutil.unmount(tmp_path, retries=2, before_retry=lambda: calls.append(1))  # not a mount point
    assert calls == [1, 1]
    assert info.value.where == str(tmp_path)
    assert "findmnt" in info.value.fix


def test_mount_failure_names_the_command(tmp_path: Path) -> None:
    with pytest.raises(sysutil.MountError, match=r"mount --bind /nonexistent-devserver-source .* failed: "):
        sysutil.mount(tmp_path, "--bind", "/nonexistent-devserver-source")
    assert sysutil.mounts_under(tmp_path) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")
def test_mount_private_then_unmount(tmp_path: Path) -> None:
    target = tmp_path / "run"
    target.mkdir()
    sysutil.mount(target, "-t", "tmpfs", "-o", "size=1m", "devserver-test", private=True)
    try:
        assert sysutil.mounts_under(tmp_path) == [str(target)]
        propagation = subprocess.run(
            ["findmnt", "-n", "-o", "PROPAGATION", str(target)], capture_output=True, text=True, check=True
        ).stdout.strip()
        assert propagation == "private"
    finally:
        sysutil.unmount(target)
    assert sysutil.mounts_under(tmp_path) == []
