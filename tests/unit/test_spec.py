"""The spec model on its own: defaults, and the rules that need no catalog."""

from __future__ import annotations

import base64
import struct

import pytest
import yaml
from pydantic import ValidationError

from devserver import versions
from devserver.errors import SpecError
from devserver.loader import load_spec_bytes
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


def _spec(provider: str, **sections: object) -> dict[str, object]:
    clouds: dict[str, dict[str, object]] = {
        "gce": {"provider": "gce", "project": "my-ml-project", "zone": "europe-west4-a"},
        "azure": {
            "provider": "azure",
            "subscription_id": "00000000-0000-0000-0000-000000000000",
            "resource_group": "ml-rg",
            "location": "westeurope",
        },
        "aws": {"provider": "aws", "region": "us-east-1"},
        "openstack": {"provider": "openstack", "cloud": "pouta", "network": "project-net"},
    }
    base: dict[str, object] = {
        "name": "x",
        "cloud": clouds[provider],
        "machine": {"gpu": {"model": "t4"}},
        "ssh": {"public_keys": [KEY], "allowed_cidrs": ["203.0.113.0/24"]},
    }
    return {**base, **sections}


def _problem(document: dict[str, object]) -> tuple[str, str]:
    """(path, message) of the one problem the loader reports for `document`."""
    with pytest.raises(SpecError) as caught:
        load_spec_bytes(yaml.safe_dump(document).encode(), "test")
    (problem,) = caught.value.problems
    return problem.path, problem.message


def _rsa_key(bits: int) -> str:
    """An ssh-rsa public key line whose modulus has `bits` bits (RFC 4253 6.6 wire format; not a usable key)."""

    def field(data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + data

    modulus = (1 << (bits - 1)) | 1
    blob = field(b"ssh-rsa") + field(b"\x01\x00\x01") + field(b"\x00" + modulus.to_bytes(bits // 8, "big"))
    return f"ssh-rsa {base64.b64encode(blob).decode()} a@b"


@pytest.mark.parametrize("key", ["devserver", "devserver-allow-world"])
def test_labels_devserver_sets_are_refused(key: str) -> None:
    assert _problem(_spec("gce", labels={key: "true"})) == (f"labels.{key}", "is a label devserver sets itself")


def test_image_project_only_where_the_cloud_reads_it() -> None:
    image = {"name": "devserver-debian-12", "project": "my-images"}
    assert DevserverSpec.model_validate(_spec("gce", image=image)).image is not None
    for provider in ("aws", "azure", "openstack"):
        path, message = _problem(_spec(provider, image=image))
        assert path == "image.project"
        assert message.startswith("is read only on gce")


def test_availability_zone_must_be_in_region() -> None:
    cloud = {"provider": "aws", "region": "us-east-1", "availability_zone": "us-east-1b"}
    assert DevserverSpec.model_validate(_spec("aws", cloud=cloud))
    cloud["availability_zone"] = "us-west-2b"
    assert _problem(_spec("aws", cloud=cloud)) == ("cloud.availability_zone", "is not in region us-east-1")


def test_container_toolkit_set_explicitly_needs_a_runtime() -> None:
    # The default toolkit version with no runtime is fine: nothing was asked for that would be ignored.
    assert DevserverSpec.model_validate(_spec("gce", software={"container_runtime": "none"}))
    software = {"container_runtime": "none", "container_toolkit": versions.CONTAINER_TOOLKIT}
    path, message = _problem(_spec("gce", software=software))
    assert (path, message) == ("software.container_toolkit", "is never installed: container_runtime is none")


@pytest.mark.parametrize(
    ("sections", "path"),
    [
        ({"machine": {"gpu": {"model": "t4", "count": True}}}, "machine.gpu.count"),
        ({"machine": {"gpu": {"model": "t4", "count": 1.0}}}, "machine.gpu.count"),
        ({"machine": {"gpu": {"model": "t4", "count": "1"}}}, "machine.gpu.count"),
        ({"machine": {"gpu": {"model": "t4"}, "spot": "yes"}}, "machine.spot"),
        ({"machine": {"gpu": {"model": "t4"}, "spot": 1}}, "machine.spot"),
        ({"disks": {"boot_gb": "100"}}, "disks.boot_gb"),
        ({"software": {"driver": {"branch": 570.0}}}, "software.driver.branch"),
        ({"software": {"cuda": {"install": "false"}}}, "software.cuda.install"),
    ],
)
def test_no_loose_coercion(sections: dict[str, object], path: str) -> None:
    assert _problem(_spec("aws", **sections))[0] == path


def test_yaml_booleans_stay_booleans() -> None:
    # YAML 1.1 (PyYAML) reads an unquoted yes as true: a boolean the user wrote, not a coercion; "yes" is a string.
    text = yaml.safe_dump(_spec("aws", machine={"gpu": {"model": "t4"}, "spot": "SPOT"}))
    assert load_spec_bytes(text.replace("SPOT", "yes").encode(), "test").machine.spot is True
    assert _problem(yaml.safe_load(text.replace("SPOT", "'yes'")))[0] == "machine.spot"


@pytest.mark.parametrize(
    ("provider", "key", "message"),
    [
        ("azure", "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTY= a@b", "Azure does not accept"),
        ("azure", "sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29t a@b", "Azure does not accept"),
        ("aws", "ecdsa-sha2-nistp521 AAAAE2VjZHNhLXNoYTItbmlzdHA1MjE= a@b", "AWS does not accept"),
        ("openstack", "sk-ecdsa-sha2-nistp256@openssh.com AAAAInNrLWVjZHNh a@b", "OpenStack does not accept"),
        ("azure", _rsa_key(1024), "is a 1024-bit RSA key; Azure needs at least 2048"),
        ("azure", "ssh-rsa AAAAB3NzaC1yc2E= a@b", "is not a readable ssh-rsa key"),
    ],
)
def test_key_types_each_cloud_refuses(provider: str, key: str, message: str) -> None:
    path, got = _problem(_spec(provider, ssh={"public_keys": [KEY, key], "allowed_cidrs": ["203.0.113.0/24"]}))
    assert path == "ssh.public_keys[1]"
    assert got.startswith(message)


@pytest.mark.parametrize(
    ("provider", "key"),
    [
        ("azure", _rsa_key(2048)),
        ("azure", _rsa_key(3072)),
        ("azure", KEY),
        ("aws", _rsa_key(1024)),
        ("gce", "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTY= a@b"),
        ("gce", "sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29t a@b"),
        ("openstack", "ecdsa-sha2-nistp384 AAAAE2VjZHNhLXNoYTItbmlzdHAzODQ= a@b"),
    ],
)
def test_key_types_each_cloud_accepts(provider: str, key: str) -> None:
    spec = DevserverSpec.model_validate(_spec(provider, ssh={"public_keys": [key], "allowed_cidrs": ["10.0.0.0/8"]}))
    assert spec.ssh.public_keys == [key]


def test_admin_users_a_cloud_reserves() -> None:
    ssh = {"public_keys": [KEY], "allowed_cidrs": ["203.0.113.0/24"], "admin_user": "support"}
    assert _problem(_spec("azure", ssh=ssh)) == ("ssh.admin_user", "is reserved on Azure")
    for provider in ("gce", "aws", "openstack"):
        assert DevserverSpec.model_validate(_spec(provider, ssh=ssh)).ssh.admin_user == "support"
