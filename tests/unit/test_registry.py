"""The cloud registry is the one list of clouds: its entries agree with the spec, the catalog and the Packer
templates; no other product module spells the clouds out; a new entry reaches every consumer; modules stay small."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import typing
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from pydantic import TypeAdapter, ValidationError

from devserver import catalog, registry
from devserver.errors import SpecError
from devserver.images import artifact, packer
from devserver.loader import load_spec, load_spec_bytes
from devserver.plan import Resolved, resolve
from devserver.spec import Cloud, GceCloud, OsName

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src" / "devserver"
EXAMPLES = REPO / "examples"
CLOUD_WORD = re.compile(r"(?<![A-Za-z0-9])(gce|azure|aws|openstack)(?![A-Za-z0-9])")
# A Pulumi type token or its package prefix ("aws:ec2/instance:Instance", f"azure-native:{kind}"): the provider
# package's schema, which the policy pack matches resources by, not a list of devserver's clouds.
PULUMI_TOKEN = re.compile(r"^[a-z][a-z0-9-]*:")
# The registry's own list, and the spec's discriminated union of the clouds' models (a pydantic union must name its
# members).
ALLOWED = {SRC / "registry" / "__init__.py", SRC / "spec.py"}
MAX_LINES = 500
_CLOUD_UNION = typing.get_args(Cloud)[0]


def _docstrings(tree: ast.Module) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _cloud_names(path: Path) -> set[str]:
    """The cloud names `path` spells in string literals and identifiers (names, attributes, imports, parameters,
    definitions). Comments and docstrings are prose, not dispatch: they are not counted, nor are Pulumi type tokens."""
    tree = ast.parse(path.read_text())
    docstrings = _docstrings(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        texts: list[str] = []
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            if not PULUMI_TOKEN.match(node.value):
                texts.append(node.value)
        elif isinstance(node, ast.Name):
            texts.append(node.id)
        elif isinstance(node, ast.Attribute):
            texts.append(node.attr)
        elif isinstance(node, ast.alias):
            texts += [node.name, node.asname or ""]
        elif isinstance(node, ast.ImportFrom):
            texts.append(node.module or "")
        elif isinstance(node, ast.arg):
            texts.append(node.arg)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            texts.append(node.name)
        for text in texts:
            found.update(CLOUD_WORD.findall(text))
    return found


def test_the_scanner_sees_names_in_code_and_not_in_prose(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        '"""gce, azure, aws and openstack in a docstring."""\n'
        "# gce azure aws openstack in a comment\n"
        "from devserver.clouds import gce\n"
        'KINDS = {"azure-arm": 1, "aws:ec2/instance:Instance": 2}\n'
        "def openstack_user(): ...\n"
    )
    assert _cloud_names(probe) == {"gce", "azure", "openstack"}


def test_only_the_registry_and_the_spec_union_spell_out_the_clouds() -> None:
    offenders = {
        str(path.relative_to(SRC)): sorted(names)
        for path in sorted(SRC.rglob("*.py"))
        if path not in ALLOWED and len(names := _cloud_names(path)) >= 3
    }
    assert offenders == {}, "ask devserver.registry instead of listing clouds"


def test_no_product_module_is_over_500_lines() -> None:
    long = {
        str(path.relative_to(SRC)): lines
        for path in sorted(SRC.rglob("*.py"))
        if (lines := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}, f"split these along a real seam (at most {MAX_LINES} lines)"


def test_every_spec_cloud_model_has_an_entry_and_its_region_field() -> None:
    models = {typing.get_args(m.model_fields["provider"].annotation)[0]: m for m in typing.get_args(_CLOUD_UNION)}
    assert tuple(models) == registry.names()
    for name, model in models.items():
        field = registry.get(name).region_field
        if registry.get(name).in_catalog:
            assert field.startswith("cloud.")
            assert field.removeprefix("cloud.") in model.model_fields


def test_catalog_clouds_are_the_entries_that_say_so() -> None:
    in_catalog = {cloud.name for cloud in registry.CLOUDS if cloud.in_catalog}
    assert set(catalog.load().clouds) == in_catalog


def test_packer_sources_are_the_templates_sources() -> None:
    text = (REPO / "images" / "packer" / "sources.pkr.hcl").read_text()
    declared = re.findall(r'^source "([^"]+)" "devserver"', text, flags=re.MULTILINE)
    assert sorted(declared) == sorted(packer.sources())


def test_stock_images_with_fixed_users_cover_every_os() -> None:
    every_os = set(OsName.__args__)  # type: ignore[attr-defined]
    for cloud in registry.CLOUDS:
        if cloud.packer is not None and cloud.packer.login_users:
            assert set(cloud.packer.login_users) == every_os, cloud.name


def test_unknown_cloud_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="no cloud named 'nimbus'; known: gce, azure, aws, openstack, local"):
        registry.get("nimbus")


def test_capabilities_drive_the_spec_and_plan_messages() -> None:
    assert registry.spoken(registry.with_capability("node_pools")) == "gce, azure and aws"
    assert "openstack" not in registry.with_capability("spot")
    assert registry.with_capability("trusted_launch") == ("azure",)


# A sixth cloud, "nimbus", as its own registry entry would describe it; it reuses GCE's spec model, as the spec's
# union (the one other place a cloud is named) has no model of its own for it.
def _nimbus_resources(resolved: Resolved) -> tuple[registry.PlannedResource, ...]:
    name = resolved.spec.name
    return (registry.PlannedResource("GPU VM", f"{name}-vm", {}, "vm", "nimbus:compute:Vm"),)


NIMBUS = registry.Cloud(
    name="nimbus",
    title="Nimbus",
    image_formats=(("qcow2", "disk.qcow2"),),
    region_field="cloud.zone",
    capabilities=registry.Capabilities(node_pools=True),
    resources=_nimbus_resources,
    in_catalog=False,
    packer=registry.PackerFacts("nimbus-builder", lambda resolved: {"nimbus_zone": "z1"}, {"debian-12": "nim"}),
    component=registry.Lazy("pulumi_nimbus", "NimbusDevserver", extra="nimbus"),
    uploader=registry.Lazy("nimbus_sdk.upload", "from_options", extra="nimbus"),
    upload_sdk=("nimbus_sdk",),
)


@pytest.fixture
def nimbus(monkeypatch: pytest.MonkeyPatch) -> registry.Cloud:
    monkeypatch.setattr(registry, "CLOUDS", (*registry.CLOUDS, NIMBUS))
    return NIMBUS


def _nimbus_resolved() -> Resolved:
    """A resolved GCE example whose cloud says it is nimbus (the spec model has no nimbus member to validate)."""
    resolved = resolve(load_spec(EXAMPLES / "gce.yaml"))
    cloud = resolved.spec.cloud
    assert isinstance(cloud, GceCloud)
    fake_cloud = cloud.model_construct(**{**dict(cloud), "provider": "nimbus"})
    return replace(resolved, spec=resolved.spec.model_copy(update={"cloud": fake_cloud}))


def test_a_sixth_cloud_reaches_the_image_upload_infra_and_plan_consumers(nimbus: registry.Cloud) -> None:
    """Only its own entry (and the component and uploader it names) are needed, beside a spec model."""
    from devserver import clouds, infra, plan

    assert artifact.TARGET_FORMATS["nimbus"] == (("qcow2", "disk.qcow2"),)
    assert TypeAdapter(artifact.Target).validate_python("nimbus") == "nimbus"
    with pytest.raises(ValidationError, match="is not an image target"):
        TypeAdapter(artifact.Target).validate_python("cumulus")
    assert packer.source_for("nimbus", "cloud") == "nimbus-builder"
    assert "nimbus-builder" in packer.sources()
    assert clouds.SDK_MODULES["nimbus"] == ("nimbus_sdk",)
    assert "nimbus" in clouds.UPLOADERS
    assert "nimbus" in registry.with_capability("node_pools")
    assert "nimbus" in registry.with_stacks()
    # The component it names is imported, and its missing provider SDK gets the entry's install hint.
    with pytest.raises(
        infra.MissingExtraError, match=r"the nimbus stack needs pulumi_nimbus: pip install 'devserver\[nimbus\]'"
    ):
        infra.component_for("nimbus")
    resources = plan.planned_resources(_nimbus_resolved())
    assert [(r.kind, r.name) for r in resources] == [("GPU VM", "ml-dev-gce-vm")]
    # The spec's cross-checks read the capabilities: nimbus now offers node pools, OpenStack still does not.
    document = yaml.safe_load((EXAMPLES / "openstack.yaml").read_text())
    document["kubernetes"] = {"node_pools": [{"gpu": {"model": "t4"}}]}
    with pytest.raises(SpecError) as info:
        load_spec_bytes(yaml.safe_dump(document).encode())
    assert info.value.problems[0].message == "node pools are offered on gce, azure, aws and nimbus, not openstack"


def test_a_sixth_cloud_reaches_the_cli_choices_and_the_loader() -> None:
    """The CLI's choices are fixed when its modules are imported: register nimbus first, in a fresh interpreter."""
    probe = f"""
import sys
sys.path.insert(0, {str(REPO)!r})
from devserver import registry
from tests.unit.test_registry import NIMBUS
registry.CLOUDS = (*registry.CLOUDS, NIMBUS)
import typing
import typer.main
from devserver.cli.main import app
from devserver.loader import load_spec_bytes
from devserver.errors import SpecError
command = typer.main.get_command(app)
image = command.commands["image"]
def choices(sub):
    option = next(p for p in image.commands[sub].params if p.name == "target")
    return list(typing.get_args(option.type_descriptor.annotation))
print(choices("build"))
print(choices("upload"))
for document in (b"name: x\\ncloud: {{}}\\n", b"name: x\\ncloud: {{provider: nimbus}}\\n"):
    try:
        load_spec_bytes(document)
    except SpecError as exc:
        print(exc.problems[0].message + ": " + exc.problems[0].fix)
"""
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, check=True)
    build, upload, missing, unknown = result.stdout.splitlines()
    assert build == str([*registry.names(), "nimbus"])
    assert upload == str([*registry.upload_targets(), "nimbus"])
    # The loader lists the registry's providers; the spec itself needs a model for the new cloud in its union (the
    # one other module a cloud is named in), without which a nimbus spec is refused.
    assert missing == f"needs a provider: set provider: to one of {', '.join(registry.names())}, nimbus"
    assert unknown.startswith("names an unknown provider: ")
