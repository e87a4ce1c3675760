"""The spec model on its own: defaults, and the rules that need no catalog."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from devserver import versions
from devserver.spec import DevserverSpec

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHd4bWFtcGxla2V5Zm9yZXhhbXBsZXNvbmx5MDAwMDAw a@b"


def test_local_defaults() -> None:
    spec = DevserverSpec.model_validate({"name": "x", "cloud": {"provider": "local"}})
    assert spec.os == "debian-12"
    assert spec.software.container_toolkit == versions.CONTAINER_TOOLKIT
    assert spec.ssh.allowed_cidrs == []  # no default ever opens SSH
    assert spec.repositories.cuda_repo_key_fingerprint == versions.CUDA_REPO_KEY_FINGERPRINT


def test_world_open_needs_explicit_flag() -> None:
    base = {
        "name": "x",
        "cloud": {"provider": "aws", "region": "us-east-1"},
        "machine": {"gpu": {"model": "t4"}},
        "ssh": {"public_keys": [KEY], "allowed_cidrs": ["::/0"]},
    }
    with pytest.raises(ValidationError):
        DevserverSpec.model_validate(base)
    base["ssh"] = {**base["ssh"], "allow_world": True}  # type: ignore[dict-item]
    assert DevserverSpec.model_validate(base).ssh.allow_world


def test_frozen() -> None:
    spec = DevserverSpec.model_validate({"name": "x", "cloud": {"provider": "local"}})
    with pytest.raises(ValidationError):
        spec.name = "y"  # type: ignore[misc]


def test_schema_forbids_extra_keys() -> None:
    schema = DevserverSpec.model_json_schema()
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) >= {"name", "cloud", "machine", "os", "disks", "ssh", "software", "kubernetes"}
