"""devserver.images.chroot on a real Debian 12 base tree (devserver.images.base, cached): what `prepared` mounts and
undoes — also after an exception, and after SIGINT in the middle of a playbook run by a separate build process.

Needs root (mount, chroot, overlayfs). The base tarball is built on first use (~1 min) and cached
(``$DEVSERVER_CACHE``), with an extracted copy beside it that each test's tree overlays.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from devserver import loader
from devserver.images import base, chroot

REPO = Path(__file__).resolve().parents[2]
MOUNT_POINTS = ("proc", "sys", "dev", "dev/pts", "dev/shm", "run", "etc/resolv.conf")


@pytest.fixture(scope="session")
def base_tarball() -> Path:
    """The cached Debian 12 base tree of the built-in local spec (built now if missing)."""
    if os.geteuid() != 0:
        pytest.fail("chroot tests need root (mount, chroot)")
    return base.build_base(base.BaseSpec.from_spec(loader.load_builtin_local()), base.default_cache_dir())


@pytest.fixture(scope="session")
def base_tree(base_tarball: Path) -> Path:
    """The base tarball extracted once, beside it in the cache (keyed by its name, so by its inputs): the read-only
    lower layer of every test's tree. Never written to by a test."""
    tree = base_tarball.with_name(base_tarball.name.removesuffix(".tar.zst") + ".test-tree")
    done = tree.with_name(tree.name + ".done")
    if not done.exists():
        partial = tree.with_name(f"{tree.name}.partial-{os.getpid()}")
        shutil.rmtree(tree, ignore_errors=True)
        base.extract(base_tarball, partial)
        partial.rename(tree)
        done.touch()
    return tree


@pytest.fixture
def rootfs(base_tree: Path, tmp_path: Path) -> Iterator[Path]:
    """A fresh writable copy of the base tree in a second: an overlay (the cached tree below, this test's upper
    layer above), unmounted and removed afterwards, also when the test fails."""
    root, upper, work = tmp_path / "rootfs", tmp_path / "upper", tmp_path / "work"
    for folder in (root, upper, work):
        folder.mkdir()
    options = f"lowerdir={base_tree},upperdir={upper},workdir={work}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(root)], check=True)
    try:
        yield root.resolve()
        assert not mounts_under(root), "a test left mounts behind"
    finally:
        for point in reversed(mounts_under(root)):
            subprocess.run(["umount", "--lazy", point], check=False)
        subprocess.run(["umount", str(root)], check=True)
        shutil.rmtree(upper)
        shutil.rmtree(work)


def mounts_under(root: Path) -> list[str]:
    """Mount points below `root` in this mount namespace, read from /proc/self/mountinfo."""
    prefix = str(root.resolve()) + "/"
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return [line.split()[4] for line in lines if line.split()[4].startswith(prefix)]


def in_chroot(root: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["chroot", str(root), *argv], capture_output=True, text=True, check=False, timeout=60)


def test_prepared_mounts_forbids_services_and_undoes_everything(rootfs: Path) -> None:
    resolv_before = (rootfs / "etc/resolv.conf").read_bytes()
    with chroot.prepared(rootfs) as root:
        assert root == rootfs
        points = {p.removeprefix(str(root) + "/") for p in mounts_under(root)}
        assert set(MOUNT_POINTS) <= points, points
        assert in_chroot(root, "/usr/sbin/policy-rc.d", "ssh", "start").returncode == 101
        # dpkg reads every file of dpkg.cfg.d: the build's unpacks skip the fsync per file
        assert "force-unsafe-io" in in_chroot(root, "sh", "-c", "cat /etc/dpkg/dpkg.cfg.d/*").stdout
        assert in_chroot(root, "cat", "/etc/resolv.conf").stdout == Path("/etc/resolv.conf").read_text()
        assert in_chroot(root, "cat", "/proc/1/comm").returncode == 0
        assert in_chroot(root, "sh", "-c", "echo x > /run/marker && test -c /dev/null").returncode == 0
        # A daemon-like process in its own session: outside any process group the build controls.
        sleeper = subprocess.Popen(["chroot", str(root), "sleep", "600"], start_new_session=True)
        deadline = time.monotonic() + 10
        while sleeper.pid not in chroot.processes_in(root) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sleeper.pid in chroot.processes_in(root)
        # Entering again for the same root (run_playbook inside a caller's prepared) changes nothing.
        with chroot.prepared(root):
            assert len(mounts_under(root)) == len(points)
    assert sleeper.wait(timeout=10) == -signal.SIGTERM
    assert mounts_under(rootfs) == []
    assert chroot.processes_in(rootfs) == []
    assert not (rootfs / chroot.POLICY_RC_D).exists()
    assert not (rootfs / chroot.DPKG_UNSAFE_IO).exists()  # the image keeps dpkg's safe default
    assert (rootfs / "etc/resolv.conf").read_bytes() == resolv_before
    assert not (rootfs / "run/marker").exists()  # it was on the tmpfs


def test_prepared_undoes_everything_after_an_exception(rootfs: Path) -> None:
    (rootfs / chroot.POLICY_RC_D).write_text("#!/bin/sh\nexit 0\n")
    (rootfs / chroot.POLICY_RC_D).chmod(0o750)
    seen: list[str] = []

    def fail_mid_build() -> None:
        with chroot.prepared(rootfs):
            seen.extend(mounts_under(rootfs))
            raise RuntimeError("mid-build")

    with pytest.raises(RuntimeError, match="mid-build"):
        fail_mid_build()
    assert seen
    assert mounts_under(rootfs) == []
    # the image's own policy-rc.d is back, mode included
    assert (rootfs / chroot.POLICY_RC_D).read_text() == "#!/bin/sh\nexit 0\n"
    assert (rootfs / chroot.POLICY_RC_D).stat().st_mode & 0o777 == 0o750


def test_prepared_refuses_what_is_not_a_root_filesystem(tmp_path: Path) -> None:
    with pytest.raises(chroot.ChrootError, match="not a root filesystem"), chroot.prepared(tmp_path):
        pass
    assert mounts_under(tmp_path) == []


def test_run_playbook_refuses_another_playbook(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"devserver\.yml, image\.yml"):
        chroot.run_playbook(tmp_path, "site.yml", {})


# The build process of the SIGINT test: image.yml for the local target, printing each task as it starts.
BUILD_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from devserver.images import chroot

    def show(event):
        print(event if isinstance(event, str) else f"{event.status} {event.task}", flush=True)

    variables = {
        "cloud_guest_target": "local",
        "image_validate_driver_branch": 0,
        "image_validate_cuda_version": "",
        "image_validate_container_toolkit_version": "",
        "image_validate_docker": False,
        "image_validate_containerd": False,
    }
    chroot.run_playbook(Path(sys.argv[1]), "image.yml", variables, on_event=show)
    print("finished", flush=True)
    """
)


def test_sigint_during_the_playbook_leaves_no_mount_process_or_temp_folder(rootfs: Path, tmp_path: Path) -> None:
    """SIGINT to the build process while the initramfs is being rebuilt inside the chroot (the play's longest
    step): the process ends by SIGINT, and nothing it started or mounted is left — no mount under the tree, no
    process inside it, no ansible-playbook, no temp folder."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    script = tmp_path / "build.py"
    script.write_text(BUILD_SCRIPT)
    env = dict(os.environ, TMPDIR=str(temp), PYTHONPATH=str(REPO / "src"))
    log = (tmp_path / "build.log").open("w+")
    build = subprocess.Popen([sys.executable, str(script), str(rootfs)], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 300
        busy: list[int] = []
        while time.monotonic() < deadline and build.poll() is None:
            busy = [pid for pid in chroot.processes_in(rootfs) if _comm(pid) in ("update-initramfs", "mkinitramfs")]
            if busy:
                break
            time.sleep(0.1)
        assert busy, "the playbook never reached the initramfs rebuild:\n" + _read(log)
        assert mounts_under(rootfs), "the tree is not prepared while the playbook runs"
        playbooks = _ansible_playbooks(temp)
        assert playbooks, "no ansible-playbook process of this build was found"
        build.send_signal(signal.SIGINT)
        assert build.wait(timeout=120) == -signal.SIGINT, _read(log)
    finally:
        if build.poll() is None:
            build.kill()
            build.wait()
    assert "finished" not in _read(log)
    assert mounts_under(rootfs) == []
    assert chroot.processes_in(rootfs) == []
    assert [pid for pid in playbooks if _running(pid)] == []
    assert list(temp.iterdir()) == [], "temp folders left behind"


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie waiting for PID 1 to reap it is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _ansible_playbooks(temp: Path) -> list[int]:
    """PIDs of ansible-playbook processes whose private data folder is under `temp` (this test's build)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(b"ansible-playbook" in part for part in cmdline[:2]) and any(str(temp).encode() in p for p in cmdline):
            found.append(int(entry.name))
    return found


def _read(log: IO[str]) -> str:
    log.seek(0)
    return log.read()[-4000:]


def test_an_exception_in_the_progress_callback_stops_the_playbook(rootfs: Path, tmp_path: Path) -> None:
    """on_event runs in ansible-runner's thread: an exception there reaches the caller as itself, and the
    ansible-playbook it was reporting on does not run on unsupervised."""
    started: list[int] = []

    def broken_display(event: object) -> None:
        if isinstance(event, str) and event.endswith("Empty the machine-id"):
            started.extend(_playbooks_on(rootfs))
            raise RuntimeError("progress display broke")

    with pytest.raises(RuntimeError, match="progress display broke"):
        chroot.run_playbook(rootfs, "image.yml", {}, tags=["image_generalize"], on_event=broken_display)
    assert started, "no ansible-playbook was running when the callback failed"
    assert [pid for pid in started if _running(pid)] == []
    assert mounts_under(rootfs) == []
    assert chroot.processes_in(rootfs) == []


def _playbooks_on(root: Path) -> list[int]:
    """PIDs of ansible-playbook processes whose inventory (-i FILE) names `root`: runs on this test's tree."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = [part.decode() for part in (entry / "cmdline").read_bytes().split(b"\0")]
            playbook = entry.name.isdigit() and any("ansible-playbook" in part for part in argv[:2]) and "-i" in argv
            if playbook and str(root) in Path(argv[argv.index("-i") + 1]).read_text():
                found.append(int(entry.name))
        except (OSError, IndexError, UnicodeDecodeError):
            continue
    return found
