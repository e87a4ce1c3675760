"""`devserver update` and `devserver status` end to end, on a booted Debian 12 test host over real SSH.

The real Debian `nvidia-driver` (DKMS build for the host's installed kernel), `nvidia-cuda-toolkit`, docker.io and
containerd come from Debian's archive through the host's apt-cacher-ng — which the spec's `repositories.apt_proxy`
points at, so this also proves the proxy setting. NVIDIA's container-toolkit and CUDA repositories are unreachable
here: the `nvidia_fixture_repo` fixture stands in for them (local apt repositories signed with keys the test
generates).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from devtools import testhost as th
from devtools.fixture_repo import FixtureRepo

REPO = Path(__file__).resolve().parents[2]
# What a user already had in /etc/docker/daemon.json before devserver: must survive the merge.
# The networking keys are also what lets dockerd start inside the nspawn test host, which has no CAP_NET_ADMIN.
EXISTING_DAEMON_JSON = {
    "log-driver": "local",
    "registry-mirrors": ["http://127.0.0.1:5000"],
    **th.DOCKERD_NETWORK_SETTINGS,
}


def write_spec(
    tmp_path: Path, host: th.TestHost, repo: FixtureRepo, file_name: str = "devserver.yaml", **software: Any
) -> Path:
    spec = yaml.safe_load((REPO / "examples" / "local.yaml").read_text())
    spec["disks"]["data"] = {"size_gb": 2, "mount_point": "/data", "docker_data_root": True}
    spec["repositories"] = {
        "apt_proxy": host.apt_proxy,
        # apt-cacher-ng refuses to pass key files through; the fixture repo is reached directly.
        "apt_proxy_bypass": [host.host_address],
        **repo.toolkit_repositories(),
    }
    spec["software"].update(software)
    path = tmp_path / file_name
    path.write_text(yaml.safe_dump(spec))
    return path


def devserver(host: th.TestHost, spec: Path, *args: str) -> tuple[int, dict[str, Any]]:
    """Run the real CLI as a user would, against the host; returns (exit code, its --json output)."""
    argv = [
        sys.executable, "-m", "devserver", "update", f"{host.user}@{host.address}", "--spec", str(spec),
        "--key", str(host.private_key), "--known-hosts", str(host.known_hosts), "--json", *args,
    ]  # fmt: skip
    argv += ["--data-device", host.data_device]
    result = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=3000, check=False)
    try:
        payload = json.loads(result.stdout)
    except ValueError:
        pytest.fail(
            f"devserver update printed no JSON (rc {result.returncode}):\n{result.stdout[-3000:]}\n"
            f"{result.stderr[-3000:]}"
        )
    return result.returncode, payload


def test_update_converges_then_is_idempotent(
    testhost: th.TestHost, nvidia_fixture_repo: FixtureRepo, tmp_path: Path
) -> None:
    host = testhost
    repo = nvidia_fixture_repo
    host.ssh(
        "sudo mkdir -p /etc/docker && echo "
        + _quote(json.dumps(EXISTING_DAEMON_JSON))
        + " | sudo tee /etc/docker/daemon.json >/dev/null"
    )
    spec = write_spec(tmp_path, host, repo)

    rc, first = devserver(host, spec)
    assert rc == 0, json.dumps(first["failures"], indent=1)[-6000:]
    assert first["hosts"][host.address]["changed"] > 0
    assert first["reboot_required"] == [host.address]  # a new driver on a running host needs a reboot
    # the test host has no GPU: gpu_verify says so, and that is not a pass
    assert first["hosts"][host.address]["gpu_check"] == "skipped: no GPU"

    # The real driver, built by DKMS for the host's installed kernel.
    kernel = host.ssh("dpkg-query -W -f='${Package}\\n' 'linux-image-[0-9]*' | sed 's/^linux-image-//'").stdout
    kernel = kernel.split()[0]
    dkms = host.ssh("sudo dkms status").stdout
    assert f"{kernel}, x86_64: installed" in dkms, dkms
    # Debian renames the module nvidia-current.ko (NVIDIA's packages: nvidia.ko)
    modules = host.ssh(f"find /lib/modules/{kernel}/updates/dkms -name 'nvidia*.ko*'").stdout.split()
    assert any(Path(m).name.split(".")[0] in ("nvidia-current", "nvidia") for m in modules), modules
    version = host.ssh("dpkg-query -W -f='${Version}' nvidia-driver").stdout
    assert version.startswith("535."), version
    assert "release 11.8" in host.ssh("nvcc --version").stdout

    # nouveau blacklisted, and the blacklist is inside the initramfs the host boots.
    initrd = host.ssh(f"sudo lsinitramfs /boot/initrd.img-{kernel}").stdout
    conf = [line for line in initrd.splitlines() if line.startswith("etc/modprobe.d/")]
    listed = host.ssh(
        "sudo sh -c 'unmkinitramfs /boot/initrd.img-" + kernel + " /tmp/ird && "
        "cat /tmp/ird/main/etc/modprobe.d/*.conf /tmp/ird/etc/modprobe.d/*.conf 2>/dev/null'",
        check=False,
    ).stdout
    assert conf, "no modprobe.d configuration in the initramfs"
    assert "blacklist nouveau" in listed

    # Docker and containerd running with the nvidia runtime registered, earlier settings kept.
    daemon = json.loads(host.ssh("sudo cat /etc/docker/daemon.json").stdout)
    for key, value in EXISTING_DAEMON_JSON.items():
        assert daemon[key] == value
    assert daemon["runtimes"]["nvidia"]["path"].endswith("nvidia-container-runtime")
    runtimes = json.loads(host.ssh("sudo docker info --format '{{json .Runtimes}}'").stdout)
    assert "nvidia" in runtimes
    assert host.ssh("systemctl is-active containerd").stdout.strip() == "active"
    assert "runtimes.nvidia" in host.ssh("sudo containerd config dump").stdout

    # The data volume: mounted by UUID from fstab, Docker's data-root on it.
    uuid = host.ssh(f"sudo blkid -s UUID -o value {host.data_device}").stdout.strip()
    assert uuid
    assert f"UUID={uuid} /data " in host.ssh("cat /etc/fstab").stdout
    assert host.ssh("findmnt -n -o SOURCE /data").stdout.strip() == host.data_device
    assert host.ssh("sudo docker info --format '{{.DockerRootDir}}'").stdout.strip() == "/data/docker"

    # Day 2: the same update again changes nothing (--converge: the playbook itself says so, not the stamp).
    rc, second = devserver(host, spec, "--converge")
    assert rc == 0, json.dumps(second["failures"], indent=1)[-6000:]
    assert second["up_to_date"] == []
    assert second["hosts"][host.address]["changed"] == 0, second["changed_tasks"]

    # Nothing changed since that converge: its stamp and the host's state say so, and no task runs.
    assert_up_to_date(host, spec)

    # Drift is repaired: the roles skip apt and the holds when their probes find everything in place, so a package
    # someone removed and holds someone lifted must still be seen and put back.
    host.ssh("sudo apt-get remove -y -q htop && sudo apt-mark unhold nvidia-driver nvidia-container-toolkit")
    rc, third = devserver(host, spec)
    assert rc == 0, json.dumps(third["failures"], indent=1)[-6000:]
    repaired = {task["task"] for task in third["changed_tasks"]}
    assert repaired == {
        "devserver_base : Install the base and developer packages",
        "nvidia_driver : Hold the driver packages",
        "container_runtime : Hold the toolkit at its version",
    }, repaired
    assert host.ssh("dpkg-query -W -f='${db:Status-Status}' htop").stdout == "installed"
    assert {"nvidia-driver", "nvidia-container-toolkit"} <= set(host.ssh("apt-mark showhold").stdout.split())
    assert third["up_to_date"] == []

    # daemon.json edited by hand (the nvidia runtime taken out; dockerd, not restarted, still has it): the stamp's
    # fingerprint of /etc no longer matches, so the playbook runs and merges the runtime back.
    host.ssh(
        "sudo python3 -c \"import json; p = '/etc/docker/daemon.json'; d = json.load(open(p)); "
        "d['runtimes'].pop('nvidia'); json.dump(d, open(p, 'w'))\""
    )
    rc, edited = devserver(host, spec)
    assert rc == 0, json.dumps(edited["failures"], indent=1)[-6000:]
    assert edited["up_to_date"] == [], edited
    assert edited["hosts"][host.address]["changed"] > 0, edited
    daemon = json.loads(host.ssh("sudo cat /etc/docker/daemon.json").stdout)
    assert daemon["runtimes"]["nvidia"]["path"].endswith("nvidia-container-runtime")

    # The data volume unmounted: the playbook runs, mounts it again and starts Docker on it.
    host.ssh("sudo systemctl stop docker.socket docker && sudo umount /data")
    rc, unmounted = devserver(host, spec)
    assert rc == 0, json.dumps(unmounted["failures"], indent=1)[-6000:]
    assert unmounted["up_to_date"] == [], unmounted
    assert host.ssh("findmnt -n -o SOURCE /data").stdout.strip() == host.data_device
    assert host.ssh("sudo docker info --format '{{.DockerRootDir}}'").stdout.strip() == "/data/docker"

    # Each of those runs stamped the host again: up to date once more.
    assert_up_to_date(host, spec)

    # Day 2, another source: driver and CUDA from the CUDA repository (here the TEST FIXTURE's, signed with a key of
    # its own that the spec pins by fingerprint; its cuda-drivers-535 depends on Debian's driver, already built, its
    # cuda-toolkit-12-2 brings a stand-in nvcc).
    cuda_spec = write_spec(
        tmp_path,
        host,
        repo,
        "cuda-repo.yaml",
        driver={"source": "cuda-repo", "branch": 535, "flavour": "proprietary"},
        cuda={"version": "12.2"},
    )
    settings = yaml.safe_load(cuda_spec.read_text())
    # the key from its default place, <cuda_repo>/debian12/x86_64/3bf863cc.pub, as at NVIDIA
    settings["repositories"] |= {"cuda_repo": repo.cuda_url, "cuda_repo_key_fingerprint": repo.cuda_fingerprint}
    cuda_spec.write_text(yaml.safe_dump(settings))
    rc, switched = devserver(host, cuda_spec)
    assert rc == 0, json.dumps(switched["failures"], indent=1)[-6000:]
    source = host.ssh("cat /etc/apt/sources.list.d/devserver-cuda.sources").stdout
    assert f"URIs: {repo.cuda_url}/debian12/x86_64/" in source, source
    keyring = next(line.split(":", 1)[1].strip() for line in source.splitlines() if line.startswith("Signed-By:"))
    listing = host.ssh(f"gpg --batch --with-colons --show-keys {keyring}").stdout
    assert f"fpr:::::::::{repo.cuda_fingerprint}:" in listing, listing
    assert host.ssh("dpkg-query -W -f='${db:Status-Status}' cuda-drivers-535").stdout == "installed"
    assert "cuda-drivers-535" in host.ssh("apt-mark showhold").stdout.split()
    # nvcc of the version asked for, first on a login shell's PATH (profile.d)
    assert host.ssh("bash -lc 'command -v nvcc'").stdout.strip() == "/usr/local/cuda-12.2/bin/nvcc"
    assert "release 12.2" in host.ssh("bash -lc 'nvcc --version'").stdout
    rc, again = devserver(host, cuda_spec, "--converge")
    assert rc == 0, json.dumps(again["failures"], indent=1)[-6000:]
    assert again["hosts"][host.address]["changed"] == 0, again["changed_tasks"]


def assert_up_to_date(host: th.TestHost, spec: Path) -> None:
    """`devserver update` finds the host up to date: the playbook does not run (no task is counted)."""
    rc, result = devserver(host, spec)
    assert rc == 0, json.dumps(result["failures"], indent=1)[-6000:]
    assert result["up_to_date"] == [host.address], result
    stats = result["hosts"][host.address]
    assert (stats["ok"], stats["changed"], stats["skipped"]) == (0, 0, 0), stats


def test_check_mode_on_fresh_host_changes_nothing(
    testhost: th.TestHost, nvidia_fixture_repo: FixtureRepo, tmp_path: Path
) -> None:
    host = testhost
    spec = write_spec(tmp_path, host, nvidia_fixture_repo)
    before = host.ssh(
        "dpkg-query -W -f='${Package}\\n' | sort | sha256sum; sudo find /etc -newer /etc/hostname "
        "-type f | sort | sha256sum"
    ).stdout
    rc, result = devserver(host, spec, "--check")
    assert rc == 0, json.dumps(result["failures"], indent=1)[-6000:]
    assert result["check"] is True
    assert result["hosts"][host.address]["changed"] > 0  # it reports what it would do
    after = host.ssh(
        "dpkg-query -W -f='${Package}\\n' | sort | sha256sum; sudo find /etc -newer /etc/hostname "
        "-type f | sort | sha256sum"
    ).stdout
    assert before == after, "check mode changed packages or files under /etc"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"
