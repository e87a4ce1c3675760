"""Packer builders (devserver.images.packer) with Debian's packer 1.6.6, the one scripts/bootstrap installs.

* Every template passes ``packer validate -syntax-only`` with the variables rendered from each example spec; the
  qemu template passes the full ``packer validate``, and its variable validation blocks reject bad values.
* render_vars gives each cloud the values its example spec decides (machine type, zone/region, source image,
  GPU attachment, gen2, spot, build user...).
* A real qemu build of the base disk under TCG, with a REDUCED playbook run (see the test's docstring), whose output
  boots and answers SSH with the admin key the playbook baked in, without the build user.
* SIGINT during a build: Packer stops its qemu, and neither processes nor work files are left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml

from devserver.images import packer, packer_process, qemu
from devserver.images.packer import PackerError
from devserver.loader import load_spec, load_spec_bytes
from devserver.plan import Resolved, resolve

if TYPE_CHECKING:
    from conftest import BaseDisk


REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
CLOUD_EXAMPLES = [("gce", "googlecompute"), ("azure", "azure-arm"), ("aws", "amazon-ebs"), ("openstack", "openstack")]

# The reduced run of the real build: devserver_base without its developer packages (the admin account, its key,
# sshd hardening, apt sources, the time daemon), then image.yml's generalize and validate steps. Not run: the
# developer packages (~7 min under TCG here), the driver, CUDA and container roles, cloud_guest. image_validate is
# told to expect what this reduced run installs: no driver, no CUDA, no container engines.
REDUCED_RUN = [
    "--tags",
    "devserver_base,image_generalize,image_validate",
    "--extra-vars",
    json.dumps(
        {
            "devserver_base_dev_packages": [],
            "image_validate_driver_branch": 0,
            "image_validate_cuda_version": "",
            "image_validate_container_toolkit_version": "",
            "image_validate_docker": False,
            "image_validate_containerd": False,
        }
    ),
]


def _resolved(example: str) -> Resolved:
    return resolve(load_spec(EXAMPLES / f"{example}.yaml"))


def _rendered(example: str, source: packer.Source, tmp_path: Path) -> dict[str, object]:
    resolved = _resolved(example)
    build = packer.prepare(resolved, source, tmp_path / "inputs")
    base = tmp_path / "base.qcow2"
    base.touch()
    return packer.render_vars(
        resolved,
        source,
        image_name=f"{resolved.spec.name}-0123456789ab",
        base_disk=base if source == "qemu" else None,
        out_dir=tmp_path / "out",
        build=build,
    )


def test_debian_packer_is_the_one_installed() -> None:
    version = packer.packer_version()
    assert (1, 6, 0) <= version < (1, 7, 0), f"these tests run Debian's packer 1.6.6, found {version}"


def test_missing_packer_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(PackerError) as err:
        packer.packer_version(str(tmp_path / "no-packer"))
    assert err.value.message == "is not installed"
    assert "apt-get install packer" in err.value.fix


@pytest.mark.parametrize(("example", "source"), [("local", "qemu"), *CLOUD_EXAMPLES])
def test_templates_pass_syntax_validation(example: str, source: packer.Source, tmp_path: Path) -> None:
    packer.validate(source, _rendered(example, source, tmp_path), syntax_only=True)


def test_qemu_template_passes_full_validation(tmp_path: Path) -> None:
    packer.validate("qemu", _rendered("local", "qemu", tmp_path), syntax_only=False)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("image_name", "Not_An_Image", "image_name value must be lowercase"),
        ("qemu_accel", "hvf", "qemu_accel value must be kvm or tcg"),
        ("build_user", "root", "build_user value must be a lowercase user name other than root"),
        ("disk_size_gb", 2.5, "disk_size_gb value must be a whole number"),
    ],
)
def test_variable_validation_blocks_reject_bad_values(name: str, value: object, message: str, tmp_path: Path) -> None:
    variables = {**_rendered("local", "qemu", tmp_path), name: value}
    with pytest.raises(PackerError) as err:
        packer.validate("qemu", variables, syntax_only=False)
    assert message in err.value.message


def test_a_variable_the_templates_do_not_declare_is_refused(tmp_path: Path) -> None:
    variables = {**_rendered("local", "qemu", tmp_path), "imgae_name": "typo"}
    with pytest.raises(PackerError) as err:
        packer.validate("qemu", variables, syntax_only=True)
    assert "imgae_name not declared" in err.value.message


def test_cloud_builds_ask_for_a_current_packer(tmp_path: Path) -> None:
    """boot_mode, imds_support and the gallery arguments exist only in the current plugins (Packer >= 1.7)."""
    with pytest.raises(PackerError) as err:
        packer.build("amazon-ebs", _rendered("aws", "amazon-ebs", tmp_path), workdir=tmp_path)
    assert "needs Packer >= 1.7.0" in err.value.message


def test_gce_vars_come_from_the_spec(tmp_path: Path) -> None:
    got = _rendered("gce", "googlecompute", tmp_path)
    assert got["gce_project"] == "my-ml-project"
    assert got["gce_zone"] == "europe-west4-a"
    # the T4 is attached to the N1 machine the catalog derives
    assert got["gce_machine_type"] == "n1-standard-8"
    assert got["gce_accelerator_type"] == (
        "projects/my-ml-project/zones/europe-west4-a/acceleratorTypes/nvidia-tesla-t4"
    )
    assert got["gce_accelerator_count"] == 1
    assert (got["gce_source_image_project"], got["gce_source_image_family"]) == ("ubuntu-os-cloud", "ubuntu-2204-lts")
    assert got["image_family"] == "ml-dev-gce"
    assert got["disk_size_gb"] == 100
    assert got["labels"] == {"team": "ml-platform", "devserver": "ml-dev-gce"}
    assert got["build_user"] == "packer"


def test_azure_vars_come_from_the_spec(tmp_path: Path) -> None:
    got = _rendered("azure", "azure-arm", tmp_path)
    assert got["azure_vm_size"] == "Standard_NC24ads_A100_v4"
    assert got["azure_location"] == "westeurope"
    assert got["azure_resource_group"] == "ml-devservers"
    assert got["azure_subscription_id"] == "00000000-0000-0000-0000-000000000000"
    # the A100 v4 sizes are gen2 only: a gen2 source image, and a V2 image
    assert got["azure_hyperv_generation"] == "V2"
    assert (got["azure_image_publisher"], got["azure_image_offer"], got["azure_image_sku"]) == (
        "Canonical",
        "ubuntu-24_04-lts",
        "server",
    )


def test_aws_vars_come_from_the_spec(tmp_path: Path) -> None:
    got = _rendered("aws", "amazon-ebs", tmp_path)
    assert got["aws_region"] == "us-east-1"
    assert got["aws_instance_type"] == "g6.2xlarge"
    assert got["aws_spot"] is True
    assert got["aws_source_ami_name"] == "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-*"
    assert got["aws_source_ami_owner"] == "099720109477"
    # Ubuntu AMIs log in as ubuntu and boot from /dev/sda1
    assert (got["build_user"], got["aws_root_device"]) == ("ubuntu", "/dev/sda1")
    assert got["disk_size_gb"] == 150


def test_openstack_vars_come_from_the_spec(tmp_path: Path) -> None:
    got = _rendered("openstack", "openstack", tmp_path)
    assert got["openstack_cloud"] == "pouta"
    assert got["openstack_flavor"] == "gpu.1.1gpu"
    assert got["openstack_source_image"] == "Ubuntu-22.04"
    assert got["openstack_floating_ip_network"] == "public"
    assert got["build_user"] == "ubuntu"


def test_a_spec_for_another_cloud_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PackerError) as err:
        _rendered("gce", "amazon-ebs", tmp_path)
    assert err.value.where == "cloud.provider"
    assert "googlecompute" in err.value.fix


def test_an_admin_user_named_like_the_build_user_is_refused(tmp_path: Path) -> None:
    spec = yaml.safe_load((EXAMPLES / "local.yaml").read_text())
    spec["ssh"]["admin_user"] = packer.BUILD_USER
    resolved = resolve(load_spec_bytes(yaml.safe_dump(spec).encode()))
    build = packer.prepare(resolved, "qemu", tmp_path / "inputs")
    with pytest.raises(PackerError) as err:
        packer.render_vars(
            resolved, "qemu", image_name="x", base_disk=tmp_path / "b", out_dir=tmp_path / "o", build=build
        )
    assert err.value.where == "ssh.admin_user"


def test_prepare_writes_the_seed_and_both_playbooks(tmp_path: Path) -> None:
    build = packer.prepare(_resolved("local"), "qemu", tmp_path / "inputs")
    user_data = yaml.safe_load(build.seed_files[0].read_text())
    assert build.seed_files[0].read_text().startswith("#cloud-config\n")
    assert user_data["users"][0]["name"] == packer.BUILD_USER
    assert user_data["users"][0]["ssh_authorized_keys"] == [build.public_key]
    assert "instance-id" in yaml.safe_load(build.seed_files[1].read_text())
    imports = [Path(p["import_playbook"]).name for p in yaml.safe_load(build.playbook_file.read_text())]
    assert imports == ["devserver.yml", "image.yml"]
    extravars = json.loads(build.extravars_file.read_text())
    assert extravars["devserver_base_image_mode"] is True
    assert extravars["cloud_guest_target"] == "local"
    # the logged-in build user cannot be deleted mid-play (its sudo would stop working): the templates remove it
    assert extravars["image_generalize_build_users"] == []
    assert (build.private_key.stat().st_mode & 0o077) == 0


@pytest.fixture(scope="module")
def base_qcow2(base_disk: BaseDisk, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's base disk as the qcow2 the qemu builder boots (Packer copies it; this file is not changed)."""
    out = tmp_path_factory.mktemp("packer-base") / "base.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(base_disk.path), str(out)], check=True)
    return out


def _local_spec_with_key(public_key: str) -> Resolved:
    spec = yaml.safe_load((EXAMPLES / "local.yaml").read_text())
    spec["ssh"]["public_keys"] = [public_key]
    return resolve(load_spec_bytes(yaml.safe_dump(spec).encode()))


def _qemu_processes_using(path: Path) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and b"qemu-system" in argv[0] and any(str(path).encode() in arg for arg in argv):
            found.append(proc.name)
    return found


def test_qemu_build_boots_with_the_admin_key_and_without_the_build_user(base_qcow2: Path, tmp_path: Path) -> None:
    """A real Packer qemu build, REDUCED (REDUCED_RUN above): devserver_base without its developer packages, then
    image.yml's generalize + validate; the full playbook (driver built by DKMS...) under TCG takes far too long.

    The output disk then boots (devserver.images.qemu.boot, its own seed user) and the admin account answers SSH
    with the key the playbook put in the image; the build user is gone."""
    admin_key = tmp_path / "admin_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(admin_key)], check=True)
    resolved = _local_spec_with_key(admin_key.with_suffix(".pub").read_text().strip())
    out = tmp_path / "image"
    lines: list[str] = []
    result = packer.build_image(
        resolved,
        "qemu",
        image_name="local-dev-0123456789ab",
        out_dir=out,
        base_disk=base_qcow2,
        accel=qemu.detect_accel(),
        ansible_args=REDUCED_RUN,
        on_line=lines.append,
    )
    assert result.builder_type == "qemu"
    assert result.files == (out / "disk.qcow2",)
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(out / "disk.qcow2")],
                                     capture_output=True, text=True, check=True).stdout)  # fmt: skip
    assert info["format"] == "qcow2"
    assert info["virtual-size"] == 20 * 1024**3  # the spec's disks.boot_gb
    assert "backing-filename" not in info  # self-contained: Packer copied the base
    assert any("PLAY [Finish a devserver image for its cloud]" in line for line in lines)
    # the work folder (key, seed, templates, Packer's temporary ISO) is gone; the log stays beside the output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["admin_key", "admin_key.pub", "image", "image.packer.log"]

    with qemu.boot(out / "disk.qcow2", firmware="bios", workdir=tmp_path / "boot", user="probe") as vm:
        admin = [
            "ssh", "-i", str(admin_key), "-p", str(vm.port), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={tmp_path / 'known_hosts'}",
            f"{resolved.spec.ssh.admin_user}@{vm.host}",
        ]  # fmt: skip
        whoami = subprocess.run([*admin, "id -un"], capture_output=True, text=True, timeout=120, check=True)
        assert whoami.stdout.strip() == resolved.spec.ssh.admin_user
        probe = subprocess.run(
            [*admin, f"getent passwd {packer.BUILD_USER}; test -e /home/{packer.BUILD_USER} && echo home-left; "
             f"sudo -n grep -rl {packer.BUILD_USER} /etc/sudoers.d /etc/group || true"],
            capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
        assert probe.stdout.strip() == "", f"build user left in the image: {probe.stdout}"


_INTERRUPTED_BUILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from devserver.images import packer
    from devserver.loader import load_spec
    from devserver.plan import resolve

    def show(line):
        print(line, flush=True)

    packer.build_image(
        resolve(load_spec(sys.argv[1])), "qemu", image_name="local-dev-0123456789ab", out_dir=Path(sys.argv[2]),
        base_disk=Path(sys.argv[3]), on_line=show,
    )
    """
)


def test_sigint_stops_packer_and_its_qemu_and_leaves_no_files(base_qcow2: Path, tmp_path: Path) -> None:
    """Ctrl-C while the build VM boots: Packer gets SIGINT, its qemu is gone, the work folder is removed."""
    out = tmp_path / "image"
    child = subprocess.Popen(
        [sys.executable, "-c", _INTERRUPTED_BUILD, str(EXAMPLES / "local.yaml"), str(out), str(base_qcow2)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert child.stdout is not None
        for line in child.stdout:
            if "Waiting for SSH" in line:
                break
        else:
            pytest.fail(f"the build never reached its VM's boot (exit {child.wait()})")
        assert _qemu_processes_using(tmp_path), "Packer's qemu should be running by now"
        os.kill(child.pid, signal.SIGINT)
        rest = child.communicate(timeout=packer_process.INTERRUPT_GRACE_S + 60)[0]
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode != 0
    assert "KeyboardInterrupt" in rest
    assert _qemu_processes_using(tmp_path) == []
    # Packer stopped on the signal, or its group was killed after the grace: either way its qemu is gone (above),
    # its output folder, our work folder and Packer's TMPDIR went too; only the log is left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.packer.log"]
    assert list(Path(tempfile.gettempdir()).glob("devserver-packer-*")) == []
