"""doctor, status's probe and the verify checks (nvidia-smi, a CUDA program built with the installed nvcc, a GPU
in a container) on this machine's GPU. Marked `gpu` and skipped without one (conftest.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from devserver.hoststate.diff import drift
from devserver.hoststate.expected import Expected
from devserver.hoststate.observed import parse, status_facts
from devserver.hoststate.probe import run_local

pytestmark = pytest.mark.gpu

# gpu_verify's own program: the tier and the role check the same thing (the bundle keeps that path)
VADD = Path(__file__).resolve().parents[2] / "roles" / "gpu_verify" / "files" / "vadd.cu"
# where NVIDIA's tools are when not on PATH (the probe looks there too)
TOOL_PATH = os.environ.get("PATH", "/usr/bin:/bin") + ":/usr/local/nvidia/bin:/usr/local/cuda/bin"


def _tool(name: str) -> str | None:
    return shutil.which(name, path=TOOL_PATH)


def _save(results: Path, name: str, content: str) -> None:
    (results / name).write_text(content)


def test_doctor_here(results: Path) -> None:
    """`devserver doctor --json` on this machine: a GPU, a driver bound, no error finding."""
    result = subprocess.run(
        [sys.executable, "-m", "devserver", "doctor", "--json"], capture_output=True, text=True, check=False
    )
    _save(results, "doctor.json", result.stdout)
    _save(results, "doctor.stderr", result.stderr)
    assert "Traceback" not in result.stderr
    (host,) = json.loads(result.stdout)["hosts"]
    errors = [f for f in host["findings"] if f["severity"] == "error"]
    assert errors == [], errors
    assert result.returncode == (0 if host["healthy"] else 1)


def test_status_probe_here(results: Path) -> None:
    """The status probe run locally: the loaded driver, every GPU, and no driver drift against what it loaded."""
    raw = run_local()
    _save(results, "probe.json", json.dumps(raw, indent=2))
    have = parse(raw)
    facts = status_facts(have)
    _save(results, "status_facts.json", json.dumps(facts, indent=2))
    assert have.module is not None, "no NVIDIA module loaded"
    assert have.smi is not None
    assert have.smi.error is None
    assert len(have.smi.gpus) == len(have.gpus_on_bus) > 0
    assert have.smi.driver_version == have.module.version
    assert facts["driver_source"] in ("packages", "loaded, not from packages")
    # the driver as loaded is what a spec of its branch and flavour expects: no drift from where it came from
    want = Expected(
        os=f"{have.os_id}-{have.os_version}",
        driver_branch=int(have.module.version.split(".")[0]),
        driver_flavour=have.module.flavour,
        module_every_kernel=True,
        nouveau_off=True,
        persistenced=False,
        fabric_manager=False,
        cuda=None,
        container_toolkit=None,
        docker=False,
        containerd=False,
        default_runtime_nvidia=False,
        data_mount=None,
        docker_data_root=None,
        hold_driver=True,
        hold_toolkit=False,
    )
    driver_drift = [d for d in drift(want, have) if d.item.startswith(("nvidia driver", "nouveau"))]
    assert driver_drift == []


def test_verify_nvidia_smi(results: Path) -> None:
    smi = _tool("nvidia-smi")
    assert smi is not None, "nvidia-smi not found (PATH, /usr/local/nvidia/bin)"
    result = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=60, check=False)
    _save(results, "nvidia-smi-L.txt", result.stdout + result.stderr)
    assert result.returncode == 0
    assert result.stdout.startswith("GPU 0:")


def test_verify_cuda_program(results: Path, tmp_path: Path) -> None:
    """A vector add built with the installed nvcc and run on GPU 0."""
    nvcc = _tool("nvcc")
    if nvcc is None:
        pytest.skip("no nvcc (no CUDA toolkit installed)")
    binary = tmp_path / "vadd"
    build = subprocess.run(
        [nvcc, "-o", str(binary), str(VADD)], capture_output=True, text=True, timeout=300, check=False
    )
    _save(results, "nvcc.txt", build.stdout + build.stderr)
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(binary)], capture_output=True, text=True, timeout=120, check=False)
    _save(results, "vadd.txt", run.stdout + run.stderr)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.startswith("PASS ")


@pytest.mark.parametrize("engine", ["docker", "containerd"])
def test_verify_gpu_in_container(engine: str, results: Path) -> None:
    """The doctor's container check through each engine that is installed here."""
    if _tool("docker" if engine == "docker" else "ctr") is None:
        pytest.skip(f"no {engine} on this machine")
    image = os.environ.get("DEVSERVER_GPU_IMAGE", "nvcr.io/nvidia/cuda:13.0.0-base-ubuntu24.04")
    from devserver.hoststate.probe import script_args

    raw = run_local(script_args(image, [engine]))
    checks = {c.engine: c for c in parse(raw).container_checks}
    _save(results, f"container-{engine}.json", json.dumps(raw["container_checks"], indent=2))
    assert engine in checks
    assert checks[engine].ok, checks[engine].output
