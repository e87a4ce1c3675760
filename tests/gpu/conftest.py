"""The GPU tier (`pytest -m gpu`): doctor, status and the verify checks against the machine running the tests.

Every test here is marked `gpu` (pytestmark) and skipped with "no NVIDIA GPU" on a machine without one on its PCI
bus. Each writes what it saw under $DEVSERVER_GPU_RESULTS (default: the test's tmp folder): the GPU bundle
(scripts/gpu_bundle) brings those files back from a GPU machine.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def nvidia_gpu_on_bus() -> bool:
    """An NVIDIA display controller (vendor 0x10de, class 0x03xxxx) in sysfs."""
    for device in Path("/sys/bus/pci/devices").glob("*"):
        try:
            vendor = (device / "vendor").read_text().strip()
            klass = (device / "class").read_text().strip()
        except OSError:
            continue
        if vendor == "0x10de" and klass.startswith("0x03"):
            return True
    return False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    skip = pytest.mark.skip(reason="no NVIDIA GPU")
    has_gpu = nvidia_gpu_on_bus()
    for item in items:
        if not has_gpu and Path(item.path).is_relative_to(here):
            item.add_marker(skip)


@pytest.fixture
def results(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    """Where a test writes what it saw: $DEVSERVER_GPU_RESULTS/<test name>/."""
    root = Path(os.environ.get("DEVSERVER_GPU_RESULTS", tmp_path))
    folder = root / request.node.name
    folder.mkdir(parents=True, exist_ok=True)
    return folder
