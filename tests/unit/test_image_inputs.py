"""The image inputs hash: what changes it (a role, a variable, the target) and what does not (nothing else)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from devserver.images import build
from devserver.loader import load_builtin_local
from devserver.plan import Resolved, resolve
from devserver.runner import ansible_root


@pytest.fixture
def resolved() -> Resolved:
    return resolve(load_builtin_local())


@pytest.fixture
def ansible_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the playbooks and roles that the hash reads instead of the real ones."""
    root = ansible_root()
    copy = tmp_path / "ansible"
    copy.mkdir()
    for part in ("ansible.cfg", "playbooks", "roles", "plugins"):
        source = root / part
        if source.is_dir():
            shutil.copytree(source, copy / part)
        elif source.is_file():
            shutil.copy2(source, copy / part)
    monkeypatch.setattr(build, "ansible_root", lambda: copy)
    return copy


def test_the_hash_is_stable(resolved: Resolved, ansible_copy: Path) -> None:
    assert build.inputs_hash(resolved, "local", "chroot") == build.inputs_hash(resolved, "local", "chroot")


def test_changing_a_role_changes_the_hash(resolved: Resolved, ansible_copy: Path) -> None:
    before = build.inputs_hash(resolved, "local", "chroot")
    provision_before = build.provision_key(resolved)
    tasks = ansible_copy / "roles" / "nvidia_driver" / "tasks" / "main.yml"
    tasks.write_text(tasks.read_text() + "\n# a change\n")
    assert build.inputs_hash(resolved, "local", "chroot") != before
    assert build.provision_key(resolved) != provision_before


def test_a_spec_variable_the_roles_read_changes_the_hash(resolved: Resolved, ansible_copy: Path) -> None:
    spec = resolved.spec
    other = resolve(spec.model_copy(update={"ssh": spec.ssh.model_copy(update={"admin_user": "someone"})}))
    assert build.inputs_hash(other, "local", "chroot") != build.inputs_hash(resolved, "local", "chroot")


def test_the_target_changes_the_artifact_but_not_the_provisioned_tree(resolved: Resolved, ansible_copy: Path) -> None:
    hashes = {target: build.inputs_hash(resolved, target, "chroot") for target in ("local", "gce", "azure", "aws")}
    assert len(set(hashes.values())) == len(hashes)
    # One provisioned tree serves every target of the spec.
    assert len({build.provision_key(resolved) for _ in hashes}) == 1
