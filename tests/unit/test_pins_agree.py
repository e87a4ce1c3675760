"""Every pinned fact kept in more than one place agrees with its one source.

The sources: ``src/devserver/versions.py`` (versions, repositories, key fingerprints, mirrors) and the ``os:`` section
of ``src/devserver/data/catalog.yaml`` (what each OS archive ships). The copies that must exist: the roles' defaults
(a role runs without devserver, so its defaults stand alone; ``meta/argument_specs.yml`` equals them, checked in
tests/roles/test_role_static.py), the default columns of the roles' READMEs, the roles' per-distribution facts
(``vars/<family>.yml``), the Packer variables' defaults (what ``packer validate`` and a person running Packer by
hand get) and the facts the docs state in prose. Each test names the copy that differs and the source it must follow.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from devserver import ansible_vars, catalog, loader, plan, versions
from devserver.images import packer

REPO = Path(__file__).resolve().parents[2]
ROLES_DIR = REPO / "roles"
EXAMPLES = REPO / "examples"

# Role variables whose default is not the built-in spec's value, and why.
_NOT_FROM_THE_SPEC = {
    # the spec's admin joins the docker group; the role alone knows no admin
    "container_runtime_docker_users",
    # run alone, gpu_verify cannot know that cuda_toolkit installed nvcc: it skips the CUDA program unless told
    "gpu_verify_nvcc",
}


def _defaults() -> dict[str, Any]:
    """Every role's defaults/main.yml, merged (role variables are prefixed with their role: no clashes)."""
    merged: dict[str, Any] = {}
    for path in sorted(ROLES_DIR.glob("*/defaults/main.yml")):
        merged.update(yaml.safe_load(path.read_text()) or {})
    return merged


def _builtin() -> plan.Resolved:
    return plan.resolve(loader.load_builtin_local())


def test_role_defaults_are_the_builtin_specs_variables() -> None:
    """A role run with its defaults installs what the built-in local spec (Debian 12, the archive's driver and CUDA,
    the pinned toolkit from the default repositories) installs: each default equals the variable ansible_vars gives
    that spec, whose values come from versions.py and the catalog."""
    resolved = _builtin()
    variables = {**ansible_vars.role_vars(resolved), **ansible_vars.image_role_vars(resolved, "local")}
    defaults = _defaults()
    assert set(variables) >= _NOT_FROM_THE_SPEC, "a listed exception is no longer a spec-decided variable"
    differing = {
        name: (defaults[name], value)
        for name, value in variables.items()
        if name in defaults and name not in _NOT_FROM_THE_SPEC and defaults[name] != value
    }
    assert differing == {}, f"role defaults (default, spec's value) that differ from the built-in spec: {differing}"


@pytest.mark.parametrize(
    ("variable", "pin"),
    [
        ("container_runtime_toolkit_version", versions.CONTAINER_TOOLKIT),
        ("image_validate_container_toolkit_version", versions.CONTAINER_TOOLKIT),
        ("container_runtime_toolkit_repo_url", versions.CONTAINER_TOOLKIT_REPO),
        ("container_runtime_toolkit_key_url", versions.CONTAINER_TOOLKIT_KEY_URL),
        ("container_runtime_toolkit_key_fingerprint", versions.CONTAINER_TOOLKIT_KEY_FINGERPRINT),
        ("nvidia_driver_cuda_repo_url", versions.CUDA_REPO),
        ("nvidia_driver_cuda_repo_key_fingerprint", versions.CUDA_REPO_KEY_FINGERPRINT),
        ("devserver_base_debian_mirror", versions.DEBIAN_MIRROR),
        ("devserver_base_debian_security_mirror", versions.DEBIAN_SECURITY_MIRROR),
        ("devserver_base_ubuntu_mirror", versions.UBUNTU_MIRROR),
        ("devserver_base_ubuntu_security_mirror", versions.UBUNTU_SECURITY_MIRROR),
    ],
)
def test_role_default_equals_its_pin(variable: str, pin: str) -> None:
    assert _defaults()[variable] == pin, f"{variable}: the role default differs from versions.py ({pin})"


def test_the_cuda_repo_key_file_is_the_pinned_one() -> None:
    """The role derives the key URL from the repository (vars/main.yml) and documents it; both name versions.py's
    key file, the one the spec's description names too."""
    role = ROLES_DIR / "nvidia_driver"
    derived = yaml.safe_load((role / "vars/main.yml").read_text())["nvidia_driver_cuda_repo_key_url_effective"]
    files = set(re.findall(r"/([0-9a-f]+\.pub)", derived + (role / "defaults/main.yml").read_text()))
    assert files == {versions.CUDA_REPO_KEY_FILE}


def _readme_defaults(readme: Path) -> dict[str, str]:
    """The README's variable table: name → the default column, where it is one literal in backticks."""
    found: dict[str, str] = {}
    for line in readme.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not re.fullmatch(r"`[a-z0-9_]+`", cells[0]):
            continue
        literal = re.fullmatch(r"`([^`…]*)`", cells[1])
        if literal:
            found[cells[0].strip("`")] = literal[1]
    return found


@pytest.mark.parametrize("role", sorted(p.name for p in ROLES_DIR.iterdir() if (p / "defaults/main.yml").exists()))
def test_readme_defaults_equal_the_role_defaults(role: str) -> None:
    """Each default a role's README quotes as a literal is the default (abbreviated ones, `C95B…6ECB0`, are not
    compared)."""
    defaults = yaml.safe_load((ROLES_DIR / role / "defaults/main.yml").read_text())
    quoted = _readme_defaults(ROLES_DIR / role / "README.md")
    assert set(quoted) & set(defaults), f"{role}/README.md quotes no default: its table is not where it was"
    for name, text in quoted.items():
        if name in defaults:
            assert yaml.safe_load(text) == defaults[name], f"{role}/README.md: {name} is `{text}`"


@pytest.mark.parametrize("os_name", sorted(catalog.load().os))
def test_the_role_knows_what_the_catalog_says_the_archive_ships(os_name: str) -> None:
    """nvidia_driver's vars/<family>.yml (the role's preflight refuses what the archive lacks) and the catalog's os
    entry (what `devserver plan` allows) name the same driver branches and module flavours."""
    facts = catalog.load().os[os_name]
    role = yaml.safe_load((ROLES_DIR / "nvidia_driver" / "vars" / f"{facts.family}.yml").read_text())
    assert tuple(role["nvidia_driver_distro_branches"]) == facts.distro_driver_branches
    flavours = {"open", "proprietary"} if facts.distro_open_modules else {"proprietary"}
    assert set(role["nvidia_driver_distro_flavours"]) == flavours


def _packer_defaults() -> dict[str, object]:
    """Each variable's default in images/packer/variables.pkr.hcl (every one is a one-line JSON-compatible value)."""
    text = (REPO / "images/packer/variables.pkr.hcl").read_text()
    found: dict[str, object] = {}
    for name, body in re.findall(r'^variable "(\w+)" \{\n(.*?)^\}', text, flags=re.M | re.S):
        default = re.search(r"^  default\s*=\s*(.+)$", body, flags=re.M)
        assert default is not None, f"variable {name} has no default"
        found[name] = json.loads(default[1].split(" #")[0])
    return found


# What a Debian 12 build starts from on each cloud (the stock image) and logs in as.
_STOCK = {
    "gce": ("googlecompute", ("gce_source_image_family", "gce_source_image_project", "build_user")),
    "azure": ("azure-arm", ("azure_image_publisher", "azure_image_offer", "azure_image_sku", "build_user")),
    "aws": ("amazon-ebs", ("aws_source_ami_name", "aws_source_ami_owner", "aws_root_device")),
    "openstack": ("openstack", ("openstack_source_image",)),
}


@pytest.mark.parametrize("cloud", sorted(_STOCK))
def test_packer_defaults_start_from_the_debian_12_stock_image(cloud: str, tmp_path: Path) -> None:
    """The templates' defaults build Debian 12 (the built-in spec's OS): each stock-image default is what
    render_vars derives from the catalog for a Debian 12 spec on that cloud."""
    source, names = _STOCK[cloud]
    data = yaml.safe_load((EXAMPLES / f"{cloud}.yaml").read_text())
    data["os"] = loader.load_builtin_local().os
    data["software"] = {"driver": {"source": "cuda-repo"}}  # the example's archive branch is its own OS's
    resolved = plan.resolve(loader.load_spec_bytes(yaml.safe_dump(data).encode()))
    build = packer.PackerBuild(source, tmp_path, tmp_path / "x.json", tmp_path / "b.yml", tmp_path / "k", "", ())
    rendered = packer.render_vars(resolved, source, image_name="x", base_disk=None, out_dir=tmp_path, build=build)
    defaults = _packer_defaults()
    assert {name: defaults[name] for name in names} == {name: rendered[name] for name in names}


def test_the_qemu_build_user_default_is_the_seeds_user() -> None:
    assert _packer_defaults()["build_user"] == packer.BUILD_USER


def _os(name: str) -> catalog.OsFacts:
    return catalog.load().os[name]


# Facts the docs quote in prose: (file, pattern whose groups quote them, the source's values).
_QUOTED = [
    (
        "README.md",
        r"for `source: distro` \(Debian 12: (\d+)\)",
        lambda: (str(max(_os("debian-12").distro_driver_branches)),),
    ),
    ("README.md", r"\(Debian 12: \d+\) and (\d+) for\s+`cuda-repo`", lambda: (str(versions.CUDA_REPO_DRIVER_BRANCH),)),
    ("README.md", r"the archive's CUDA \(Debian 12: ([\d.]+)\)", lambda: (_os("debian-12").distro_cuda,)),
    (
        "examples/local.yaml",
        r"non-free nvidia-driver \((\d+)\)",
        lambda: (str(_os("debian-12").distro_driver_branches[0]),),
    ),
    ("examples/local.yaml", r"nvidia-cuda-toolkit \(([\d.]+)\)", lambda: (_os("debian-12").distro_cuda,)),
    (
        "roles/cuda_toolkit/README.md",
        r"\(Debian 12: ([\d.]+), Ubuntu 22.04: ([\d.]+), Ubuntu 24.04: ([\d.]+)\)",
        lambda: tuple(_os(name).distro_cuda for name in ("debian-12", "ubuntu-22.04", "ubuntu-24.04")),
    ),
    (
        "roles/nvidia_driver/README.md",
        r"\(branch (\d+), proprietary only\)",
        lambda: tuple(map(str, _os("debian-12").distro_driver_branches)),
    ),
    (
        "roles/nvidia_driver/README.md",
        r"Ubuntu 22.04 / 24.04 \|.*\(branches ([\d, ]+)\)",
        lambda: (", ".join(map(str, _os("ubuntu-22.04").distro_driver_branches)),),
    ),
]


@pytest.mark.parametrize(("path", "pattern", "facts"), _QUOTED, ids=[f"{p}:{i}" for i, (p, _, _) in enumerate(_QUOTED)])
def test_docs_quote_the_sources(path: str, pattern: str, facts: Callable[[], tuple[str, ...]]) -> None:
    """Where the docs state a pinned fact in prose, it is the source's (each quote is found exactly once)."""
    quotes = re.findall(pattern, (REPO / path).read_text())
    assert len(quotes) == 1, f"{path}: {pattern!r} found {len(quotes)} times; update this test with the text"
    quoted = quotes[0] if isinstance(quotes[0], tuple) else (quotes[0],)
    assert quoted == facts(), f"{path} quotes {quoted}, the source says {facts()}"
