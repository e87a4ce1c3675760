"""playbooks/image.yml — cloud_guest, image_generalize, image_validate — on a real Debian 12 base tree through the
devserver_chroot connection, plus the roles' static interface and image_role_vars().

Cheap on purpose: no NVIDIA stack is installed here (image_validate is told to expect none, except in the tests
that show its driver and engine checks failing). The full devserver.yml + image.yml build with the real driver is
the image build's end-to-end test; docs/image-roles.md records a run by hand.
"""

from __future__ import annotations

import importlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from devserver import loader, plan, versions
from devserver.ansible_vars import image_role_vars
from devserver.images import chroot
from devserver.images.artifact import TARGET_FORMATS
from tests.images.test_chroot import base_tarball, base_tree, rootfs  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[2]
ROLES_DIR = REPO / "roles"
PLAYBOOK = REPO / "playbooks" / "image.yml"
IMAGE_ROLES = ("cloud_guest", "image_generalize", "image_validate")
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
# The role-anatomy checks every role must pass (tests/roles/test_role_static.py), applied to the image roles.
static = importlib.import_module("tests.roles.test_role_static")

# image_validate's expectations for a tree without the NVIDIA stack or container engines.
NOTHING_INSTALLED: dict[str, object] = {
    "image_validate_driver_branch": 0,
    "image_validate_cuda_version": "",
    "image_validate_container_toolkit_version": "",
    "image_validate_docker": False,
    "image_validate_containerd": False,
}


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def in_chroot(root: Path, command: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["chroot", str(root), "sh", "-c", command], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{command}: {proc.stderr}"
    return proc


def failed_task(summary: chroot.RunSummary) -> str:
    assert not summary.ok, "the run should have failed"
    assert summary.failures, summary.status
    return summary.failures[0].task


# Static.


@pytest.mark.parametrize("role", IMAGE_ROLES)
def test_image_role_has_the_fixed_anatomy_and_interface(role: str) -> None:
    static.test_role_has_the_fixed_anatomy(role)
    static.test_argument_specs_equal_defaults(role)
    static.test_every_variable_is_prefixed_with_its_role(role)


def test_image_playbook_applies_the_three_roles_in_order_with_their_tags() -> None:
    (play,) = _load(PLAYBOOK)
    assert [entry["role"] for entry in play["roles"]] == list(IMAGE_ROLES)
    assert all(entry["tags"] == [entry["role"]] for entry in play["roles"])
    assert play["become"] is True  # Packer's SSH user needs it; the chroot inventory turns it off
    proc = static._run([static._tool("ansible-playbook"), "--syntax-check", "-i", "localhost,", str(PLAYBOOK)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("role", IMAGE_ROLES)
def test_every_image_role_tag_selects_only_that_role(role: str) -> None:
    for tag in (role, f"{role}_install", f"{role}_configure"):
        argv = [static._tool("ansible-playbook"), "--list-tasks", "--tags", tag, "-i", "localhost,", str(PLAYBOOK)]
        listed = static._run(argv)
        assert listed.returncode == 0, listed.stdout + listed.stderr
        lines = [line for line in listed.stdout.splitlines() if "Validating arguments against arg spec" not in line]
        roles = {line.split(" : ")[0].strip() for line in lines if " : " in line and line.startswith("      ")}
        assert roles == {role}, f"--tags {tag} selects tasks of {sorted(roles)}"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
@pytest.mark.parametrize("target", sorted(TARGET_FORMATS))
def test_image_role_vars_are_declared_by_the_image_roles(example: Path, target: str) -> None:
    """Every variable image_role_vars() returns is an option of one image role, of the declared type and among its
    choices; what image_validate expects follows the spec."""
    resolved = plan.resolve(loader.load_spec(example))
    values = image_role_vars(resolved, target, build_users=["packer"])  # type: ignore[arg-type]
    options: dict[str, Any] = {}
    for role in IMAGE_ROLES:
        options |= _load(ROLES_DIR / role / "meta/argument_specs.yml")["argument_specs"]["main"]["options"]
    for name, value in values.items():
        assert name in options, f"{name} is not declared by an image role"
        assert isinstance(value, static._TYPES[options[name]["type"]]), f"{name}={value!r}"
        if "choices" in options[name]:
            assert value in options[name]["choices"]
    software = resolved.spec.software
    assert values["cloud_guest_target"] == target
    assert values["image_validate_driver_branch"] == resolved.driver_branch
    assert values["image_validate_cuda_version"] == (resolved.cuda or "")
    assert values["image_validate_docker"] == (software.container_runtime in ("docker", "both"))
    assert values["image_generalize_build_users"] == values["image_validate_build_users"] == ["packer"]


# On a real tree.


def seed_leftovers(root: Path) -> None:
    """What a used build machine leaves behind: identity, instance state, a build user, caches, histories, logs."""
    in_chroot(root, "ssh-keygen -A >/dev/null && useradd --create-home packer")
    (root / "home/packer/.ssh").mkdir(mode=0o700)
    (root / "home/packer/.ssh/authorized_keys").write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFixture packer\n")
    (root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    instance = root / "var/lib/cloud/instances/i-0fixture"
    instance.mkdir(parents=True)
    (instance / "obj.pkl").write_bytes(b"fixture")
    (root / "var/lib/cloud/instance").symlink_to("/var/lib/cloud/instances/i-0fixture")
    (root / "var/lib/cloud/data").mkdir()
    (root / "var/lib/cloud/data/instance-id").write_text("i-0fixture\n")
    (root / "var/log/cloud-init.log").write_text("fixture log\n")
    (root / "root/.bash_history").write_text("sudo cat /etc/shadow\n")
    (root / "home/packer/.bash_history").write_text("ls\n")
    lists = root / "var/lib/apt/lists"
    (lists / "deb.debian.org_debian_dists_bookworm_InRelease").write_text("fixture index\n")
    (root / "var/cache/apt/pkgcache.bin").write_bytes(b"fixture")
    (root / "var/cache/apt/archives/fixture_1.0_all.deb").write_bytes(b"fixture")
    (root / "tmp/build-leftover").write_text("x")
    (root / "var/tmp/build-dir").mkdir()
    (root / "var/lib/systemd").mkdir(parents=True, exist_ok=True)
    (root / "var/lib/systemd/random-seed").write_bytes(b"\x01" * 512)
    (root / "var/log/syslog").write_text("fixture syslog\n")
    (root / "var/log/syslog.1.gz").write_bytes(b"fixture")
    (root / "var/log/journal/0123456789abcdef0123456789abcdef").mkdir(parents=True)
    (root / "var/log/journal/0123456789abcdef0123456789abcdef/system.journal").write_bytes(b"fixture")


def test_image_playbook_generalizes_a_used_tree_then_changes_nothing(rootfs: Path) -> None:  # noqa: F811
    root = rootfs
    seed_leftovers(root)
    syslog_mode = (root / "var/log/syslog").stat().st_mode
    variables = {
        "cloud_guest_target": "local",
        "image_generalize_build_users": ["packer"],
        "image_validate_build_users": ["packer"],
        **NOTHING_INSTALLED,
    }
    first = chroot.run_playbook(root, "image.yml", variables)
    assert first.ok, [(f.task, f.message) for f in first.failures]

    assert list((root / "etc/ssh").glob("ssh_host_*")) == []
    assert (root / "etc/machine-id").read_bytes() == b""
    assert not (root / "var/lib/dbus/machine-id").exists()
    assert not (root / "var/lib/cloud/instance").is_symlink()
    assert not (root / "var/lib/cloud/instances/i-0fixture").exists()
    assert not (root / "var/lib/cloud/data/instance-id").exists()
    assert not (root / "home/packer").exists()
    assert "packer:" not in (root / "etc/passwd").read_text()
    assert not (root / "root/.bash_history").exists()
    assert sorted(p.name for p in (root / "var/lib/apt/lists").rglob("*") if p.is_file()) == ["lock"]
    assert not (root / "var/cache/apt/pkgcache.bin").exists()
    assert not (root / "var/cache/apt/archives/fixture_1.0_all.deb").exists()
    assert list((root / "tmp").iterdir()) == []
    assert list((root / "var/tmp").iterdir()) == []
    assert not (root / "var/lib/systemd/random-seed").exists()
    assert (root / "var/log/syslog").stat().st_size == 0
    assert (root / "var/log/syslog").stat().st_mode == syslog_mode  # truncated, not replaced
    assert not (root / "var/log/syslog.1.gz").exists()
    assert list((root / "var/log/journal").rglob("*.journal")) == []
    assert not (root / "var/log/cloud-init.log").exists()
    assert not (root / "root/.ansible").exists()

    # cloud_guest for the local target: NoCloud, no extra kernel words, virtio drivers in the initramfs
    datasource = _load(root / "etc/cloud/cloud.cfg.d/90_devserver_datasource.cfg")
    assert datasource == {"datasource_list": ["NoCloud", "None"]}
    assert not (root / "etc/kernel/cmdline").exists()
    assert_modules_in_initramfs(root, ["virtio_blk", "virtio_scsi", "virtio_net", "virtio_pci"])

    kernels = sorted(p.name.removeprefix("vmlinuz-") for p in (root / "boot").glob("vmlinuz-*"))
    components = json.loads((root / "var/lib/devserver/image-components.json").read_text())
    assert components == {"kernels": " ".join(kernels)}

    again = chroot.run_playbook(root, "image.yml", variables)
    assert again.ok, [(f.task, f.message) for f in again.failures]
    assert again.changed == 0, [t.task for t in again.changed_tasks]


def assert_modules_in_initramfs(root: Path, modules: list[str]) -> None:
    """Each module is in every kernel's initramfs, or built into that kernel (modules.builtin)."""
    for vmlinuz in sorted((root / "boot").glob("vmlinuz-*")):
        kernel = vmlinuz.name.removeprefix("vmlinuz-")
        listing = in_chroot(root, f"lsinitramfs /boot/initrd.img-{kernel}").stdout
        packed = {Path(line).name.split(".ko")[0] for line in listing.splitlines() if ".ko" in line}
        builtin_file = (root / "lib/modules" / kernel / "modules.builtin").read_text().splitlines()
        builtin = {Path(line).name.split(".ko")[0] for line in builtin_file}
        missing = [m for m in modules if m.replace("_", "-") not in {n.replace("_", "-") for n in packed | builtin}]
        assert not missing, f"{kernel}: {missing} neither in the initramfs nor built in"


def test_cloud_guest_for_aws_sets_datasource_console_time_and_nitro_drivers(rootfs: Path) -> None:  # noqa: F811
    root = rootfs
    summary = chroot.run_playbook(root, "image.yml", {"cloud_guest_target": "aws"}, tags=["cloud_guest"])
    assert summary.ok, [(f.task, f.message) for f in summary.failures]
    assert _load(root / "etc/cloud/cloud.cfg.d/90_devserver_datasource.cfg") == {"datasource_list": ["Ec2", "None"]}
    assert (root / "etc/kernel/cmdline").read_text().split() == [
        "console=ttyS0,115200n8",
        "nvme_core.io_timeout=4294967295",
    ]
    grub = (root / "etc/default/grub.d/90-devserver-cloud-guest.cfg").read_text()
    assert 'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX console=ttyS0,115200n8 nvme_core.io_timeout=4294967295"' in grub
    # the base has no chrony: the Amazon Time Sync Service goes to systemd-timesyncd
    timesyncd = (root / "etc/systemd/timesyncd.conf.d/90-devserver-cloud-guest.conf").read_text()
    assert "NTP=169.254.169.123" in timesyncd.splitlines()
    assert (root / "etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service").is_symlink()
    assert_modules_in_initramfs(root, ["nvme", "ena"])


def test_validate_fails_each_kind_of_leftover_and_missing_component(rootfs: Path) -> None:  # noqa: F811
    """The acceptance item: each kind of identity leftover fails the build at its own check (a leftover host key,
    a non-empty machine-id, ...), and so does a tree lacking the driver, CUDA, toolkit or engine the spec asks for;
    the components file (what the manifest is made from) is not written for a failed image."""
    root = rootfs
    generalized = chroot.run_playbook(root, "image.yml", {}, tags=["image_generalize"])
    assert generalized.ok, [(f.task, f.message) for f in generalized.failures]
    components = root / "var/lib/devserver/image-components.json"

    def validate(**expect: object) -> chroot.RunSummary:
        components.unlink(missing_ok=True)
        summary = chroot.run_playbook(root, "image.yml", {**NOTHING_INSTALLED, **expect}, tags=["image_validate"])
        if not summary.ok:
            assert not components.exists()
        return summary

    in_chroot(root, "ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key")
    assert failed_task(validate()) == "image_validate : Assert no SSH host key is left"
    in_chroot(root, "rm /etc/ssh/ssh_host_ed25519_key /etc/ssh/ssh_host_ed25519_key.pub")

    (root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    assert failed_task(validate()) == "image_validate : Assert the machine-id is empty"
    (root / "etc/machine-id").write_text("")

    (root / "var/lib/cloud/instances/i-0fixture").mkdir(parents=True)
    assert failed_task(validate()) == "image_validate : Assert cloud-init has no instance state"
    (root / "var/lib/cloud/instances/i-0fixture").rmdir()

    in_chroot(root, "useradd packer")
    users = validate(image_validate_build_users=["packer"])
    assert failed_task(users) == "image_validate : Assert the build users are gone"
    in_chroot(root, "userdel packer")

    (root / "var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease").write_text("fixture\n")
    assert failed_task(validate()) == "image_validate : Assert the package index is empty"
    (root / "var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease").unlink()

    assert validate().ok  # all leftovers gone again: the same checks pass
    assert components.exists()

    cases = {
        "image_validate : Assert DKMS built the NVIDIA module for every kernel": {"image_validate_driver_branch": 535},
        "image_validate : Assert nvcc is the spec's CUDA": {"image_validate_cuda_version": "11.8"},
        "image_validate : Assert the container toolkit is the spec's version": {
            "image_validate_container_toolkit_version": versions.CONTAINER_TOOLKIT
        },
        "image_validate : Assert Docker and containerd are there as the spec says": {"image_validate_docker": True},
    }
    for task, expect in cases.items():
        assert failed_task(validate(**expect)) == task, expect
