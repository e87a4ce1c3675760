"""The provider → component registry, its lazy imports, and the small shared helpers the components rely on."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from devserver.infra import PROVIDERS, MissingExtraError, component_for
from devserver.infra.common import Taint, cidrs_by_family, cloud_init, labels, rule_description
from devserver.loader import load_spec
from tests.stacks.harness import EXAMPLES, REPO


def test_importing_the_registry_and_the_cli_loads_no_pulumi() -> None:
    """`devserver --help` and `devserver validate` must never pay for Pulumi or a cloud SDK."""
    probe = (
        "import sys, devserver.infra, devserver.cli.main;"
        "from devserver.cli.main import app;"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0].startswith('pulumi'));"
        "print(','.join(loaded))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, check=True)
    assert result.stdout.strip() == ""


def test_registry_maps_every_cloud_to_its_component() -> None:
    assert PROVIDERS == ("gce", "azure", "aws", "openstack")
    names = {provider: component_for(provider).__name__ for provider in PROVIDERS}
    assert names == {
        "gce": "GceDevserver",
        "azure": "AzureDevserver",
        "aws": "AwsDevserver",
        "openstack": "OpenStackDevserver",
    }


def test_local_has_no_stack() -> None:
    with pytest.raises(KeyError, match="no Pulumi stack for provider 'local'"):
        component_for("local")


def test_a_missing_provider_sdk_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "devserver.infra.openstack", raising=False)
    monkeypatch.setitem(sys.modules, "pulumi_openstack", None)  # what an uninstalled package looks like to import
    with pytest.raises(MissingExtraError, match=r"pip install 'devserver\[openstack\]'"):
        component_for("openstack")


def test_cloud_init_creates_the_admin_with_keys_and_passwordless_sudo() -> None:
    spec = load_spec(EXAMPLES / "gce.yaml")
    text = cloud_init(spec)
    assert text.startswith("#cloud-config\n")
    document = yaml.safe_load(text)
    assert document["users"] == [
        {
            "name": "devserver",
            "gecos": "devserver admin (ml-dev-gce)",
            "shell": "/bin/bash",
            "sudo": "ALL=(ALL) NOPASSWD:ALL",
            "lock_passwd": True,
            "ssh_authorized_keys": spec.ssh.public_keys,
        }
    ]
    assert document["ssh_pwauth"] is False


def test_labels_carry_the_name_and_only_a_real_world_consent() -> None:
    spec = load_spec(EXAMPLES / "gce.yaml")
    assert labels(spec) == {"team": "ml-platform", "devserver": "ml-dev-gce"}
    hijack = spec.model_copy(update={"labels": {"devserver": "other"}})
    assert labels(hijack)["devserver"] == "ml-dev-gce"
    forged = spec.model_copy(update={"labels": {"devserver-allow-world": "true"}})
    assert labels(forged) == {"devserver": "ml-dev-gce"}
    world = spec.model_copy(update={"ssh": spec.ssh.model_copy(update={"allow_world": True})})
    assert labels(world)["devserver-allow-world"] == "true"
    assert rule_description(world, "SSH").endswith("[devserver-allow-world=true]")
    assert "allow-world" not in rule_description(spec, "SSH")


def test_cidrs_are_split_by_family_in_order() -> None:
    assert cidrs_by_family(["203.0.113.0/24", "2001:db8::/48", "198.51.100.7/32"]) == {
        4: ["203.0.113.0/24", "198.51.100.7/32"],
        6: ["2001:db8::/48"],
    }


@pytest.mark.parametrize(
    ("text", "upper"),
    [
        ("nvidia.com/gpu=present:NoSchedule", "NO_SCHEDULE"),
        ("team=:PreferNoSchedule", "PREFER_NO_SCHEDULE"),
        ("a.b/c=d:NoExecute", "NO_EXECUTE"),
    ],
)
def test_taints_round_trip(text: str, upper: str) -> None:
    taint = Taint.parse(text)
    assert str(taint) == text
    assert taint.upper_effect == upper
