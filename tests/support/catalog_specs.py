"""Specs asking for one catalog machine type, for the tests that run every catalog entry through the planner and
the stacks.

A spec is the cloud's example (examples/<cloud>.yaml: its account, placement and SSH settings) with the machine
replaced, no Kubernetes section, Ubuntu 24.04 and the driver from NVIDIA's CUDA repository at its default branch,
which every GPU in the catalog runs.
"""

from __future__ import annotations

import copy
import functools
import re
from pathlib import Path
from typing import Any

import yaml

from devserver import catalog
from devserver.catalog import MachineType

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@functools.cache
def _example(cloud: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((EXAMPLES / f"{cloud}.yaml").read_text(encoding="utf-8"))
    return data


def spec_data(cloud: str, machine: dict[str, Any]) -> dict[str, Any]:
    """The example spec of `cloud` with `machine` as its machine section (see the module docstring)."""
    data = copy.deepcopy(_example(cloud))
    data.pop("kubernetes", None)
    data.pop("image", None)
    data["machine"] = machine
    data["os"] = "ubuntu-24.04"
    data["software"] = {"driver": {"source": "cuda-repo"}}
    return data


def by_type(cloud: str, name: str, facts: MachineType) -> dict[str, Any]:
    """A spec naming machine type `name` (a spot VM where the cloud sells it only so)."""
    return spec_data(cloud, {"type": name, "spot": facts.spot_only})


def write(tmp: Path, data: dict[str, Any]) -> Path:
    path = tmp / f"{data['name']}-{re.sub(r'[^A-Za-z0-9]+', '-', str(data['machine'].get('type', 'gpu')))}.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def machines() -> list[tuple[str, str, MachineType]]:
    """(cloud, machine type, facts) for every machine type in the catalog."""
    clouds = catalog.load().clouds.items()
    return [(cloud, name, facts) for cloud, entry in clouds for name, facts in entry.machines.items()]


def family(cloud: str, name: str) -> str:
    """The machine family the stacks' per-family rules key on: GCE a3-highgpu, AWS p5e, Azure's size series."""
    if cloud == "gce":
        return name.rsplit("-", 1)[0]
    if cloud == "aws":
        return name.split(".")[0]
    if cloud == "azure":
        return re.sub(r"\d+", "", name)
    return name.rsplit(".", 1)[0]
