"""The GPU catalog: which machines carry which GPUs on each cloud, and what each GPU needs from the driver.

The facts live in ``data/catalog.yaml``, each entry naming one of the file's ``sources`` (where the fact was read
and when); this module gives them types and answers the questions the planner asks. The file is parsed and
validated once per process.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

import yaml

Flavour = Literal["open", "proprietary"]
Arch = Literal["x86_64", "arm64"]


@dataclass(frozen=True)
class Source:
    """Where facts were read: a page (``url``) or, for archives and APIs, the command that lists them (``how``),
    and when (``checked``: YYYY-MM-DD, or YYYY-MM where only the month was recorded)."""

    checked: str
    url: str | None = None
    how: str | None = None
    says: str = ""


@dataclass(frozen=True)
class Architecture:
    order: int
    open: bool
    proprietary: bool
    source: str


@dataclass(frozen=True)
class Gpu:
    name: str
    architecture: str
    memory_gb: int
    min_branch: int
    source: str
    max_branch: int | None = None
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class MachineType:
    gpu: str
    count: int
    vcpus: int
    source: str
    fraction: str | None = None
    nvswitch: bool = False
    generations: tuple[int, ...] = ()
    grid: bool = False
    arch: Arch = "x86_64"
    spot_only: bool = False  # the cloud creates it only as a spot (or flex-start) VM


@dataclass(frozen=True)
class Attachable:
    accelerator: str
    max_vcpus: dict[int, int]
    source: str


@dataclass(frozen=True)
class CloudCatalog:
    regions: tuple[str, ...]
    images: dict[str, str]
    machines: dict[str, MachineType]
    sources: dict[str, str]  # regions / images / attachable_machine_sizes -> source key
    attachable: dict[str, Attachable] = field(default_factory=dict)
    attachable_machine_sizes: dict[str, tuple[int, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class OsFacts:
    family: Literal["debian", "ubuntu"]
    distro_driver_branches: tuple[int, ...]
    distro_open_modules: bool
    distro_cuda: str


@dataclass(frozen=True)
class Catalog:
    sources: dict[str, Source]
    architectures: dict[str, Architecture]
    open_module_min_branch: int
    open_module_min_branch_source: str
    gpus: dict[str, Gpu]
    driver_branches: dict[int, str]
    driver_branch_sources: dict[int, str]
    os: dict[str, OsFacts]
    clouds: dict[str, CloudCatalog]

    def gpu_key(self, model: str) -> str | None:
        """The catalog key for a GPU model name or alias (case-insensitive), or None if unknown."""
        wanted = model.lower()
        for key, gpu in self.gpus.items():
            if wanted == key or wanted in gpu.aliases:
                return key
        return None

    def max_cuda(self, branch: int) -> str | None:
        """The newest CUDA toolkit a driver branch runs; for a branch between listed ones, the one below it."""
        known = [b for b in self.driver_branches if b <= branch]
        return self.driver_branches[max(known)] if known else None

    def min_branch_for_cuda(self, cuda: str) -> int | None:
        """The oldest listed driver branch that runs CUDA `cuda` (None if no listed branch does)."""
        fits = [b for b, top in self.driver_branches.items() if version_tuple(top) >= version_tuple(cuda)]
        return min(fits) if fits else None

    def attachable_vcpus(self, cloud: str, machine_type: str) -> int | None:
        """vCPUs of a machine type that takes attachable GPUs (GCE N1), or None if it is not one."""
        sizes = self.clouds[cloud].attachable_machine_sizes
        match = re.fullmatch(r"(?P<family>[a-z0-9]+-[a-z]+)-(?P<vcpus>\d+)", machine_type)
        if not match or match["family"] not in sizes or int(match["vcpus"]) not in sizes[match["family"]]:
            return None
        return int(match["vcpus"])


def version_tuple(version: str) -> tuple[int, ...]:
    """'12.2' -> (12, 2), for ordering versions."""
    return tuple(int(part) for part in version.split("."))


@functools.cache
def load() -> Catalog:
    """The packaged catalog, parsed and validated (cached for the process)."""
    text = resources.files("devserver").joinpath("data/catalog.yaml").read_text(encoding="utf-8")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return _build(yaml.load(text, Loader=loader))  # noqa: S506 - a safe loader


def _build(raw: dict[str, Any]) -> Catalog:
    """Typed catalog from the parsed YAML; a malformed file fails here with a KeyError/TypeError (a packaging bug,
    caught by the catalog tests), never later in the planner."""
    clouds = {}
    for name, cloud in raw["clouds"].items():
        clouds[name] = CloudCatalog(
            regions=tuple(cloud["regions"]),
            images=dict(cloud["images"]),
            machines={key: _machine(value) for key, value in cloud["machines"].items()},
            sources=dict(cloud["sources"]),
            attachable={
                key: Attachable(
                    value["accelerator"], {int(c): int(v) for c, v in value["max_vcpus"].items()}, value["source"]
                )
                for key, value in cloud.get("attachable", {}).items()
            },
            attachable_machine_sizes={k: tuple(v) for k, v in cloud.get("attachable_machine_sizes", {}).items()},
        )
    branches = raw["driver_branches"]
    return Catalog(
        sources={key: Source(**{**value, "checked": str(value["checked"])}) for key, value in raw["sources"].items()},
        architectures={key: Architecture(**value) for key, value in raw["architectures"].items()},
        open_module_min_branch=int(raw["open_module_min_branch"]["branch"]),
        open_module_min_branch_source=raw["open_module_min_branch"]["source"],
        gpus={key: Gpu(**{**value, "aliases": tuple(value.get("aliases", ()))}) for key, value in raw["gpus"].items()},
        driver_branches={int(branch): str(entry["cuda"]) for branch, entry in branches.items()},
        driver_branch_sources={int(branch): entry["source"] for branch, entry in branches.items()},
        os={
            key: OsFacts(
                family=value["family"],
                distro_driver_branches=tuple(value["distro_driver_branches"]),
                distro_open_modules=bool(value["distro_open_modules"]),
                distro_cuda=str(value["distro_cuda"]),
            )
            for key, value in raw["os"].items()
        },
        clouds=clouds,
    )


def _machine(value: dict[str, Any]) -> MachineType:
    return MachineType(**{**value, "generations": tuple(value.get("generations", ()))})
