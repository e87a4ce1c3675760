"""The GPUs as NVML sees them: `nvidia-smi -q -x` parsed into :class:`Smi` (part of
:class:`~devserver.hoststate.observed.Observed`). Pure, like every parser of the host state."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Gpu:
    """One GPU as NVML reports it (`nvidia-smi -q -x`)."""

    name: str
    uuid: str
    pci_bus_id: str
    pci_device_id: str  # "0x2335" (NVML's "233510DE" is device id then vendor id)
    persistence: bool
    mig: str  # "Enabled", "Disabled", "N/A"
    compute_capability: str | None  # "9.0" where nvidia-smi reports it (not in every version's XML)
    ecc_uncorrectable: int  # volatile uncorrectable ECC errors since the driver loaded (0 when not reported)
    remapped_rows_pending: bool
    remapped_rows_failure: bool


@dataclass(frozen=True)
class Smi:
    """`nvidia-smi -q -x`: the driver's userspace view. `error` is NVML's message when it could not start."""

    driver_version: str | None
    cuda_version: str | None
    gpus: tuple[Gpu, ...]
    error: str | None


def parse_smi(result: dict[str, Any]) -> Smi:
    """`nvidia-smi -q -x` → the driver's version, CUDA's, and every GPU; or NVML's error when it fails (e.g.
    "Failed to initialize NVML: Driver/library version mismatch", printed on stdout with a non-zero exit)."""
    out = str(result.get("out", ""))
    if result.get("rc") != 0 or "<nvidia_smi_log>" not in out:
        message = (out.strip() or str(result.get("err", "")).strip() or f"exit {result.get('rc')}").splitlines()
        return Smi(driver_version=None, cuda_version=None, gpus=(), error=message[0] if message else "no output")
    # Parsed from the root element on: the DOCTYPE (a DTD nvidia-smi does not ship) is cut off, and with it any
    # entity declaration a hostile host could use to blow up the parse.
    root = ET.fromstring(out[out.index("<nvidia_smi_log>") :])  # noqa: S314
    return Smi(
        driver_version=_text(root, "driver_version"),
        cuda_version=_text(root, "cuda_version"),
        gpus=tuple(_gpu(gpu) for gpu in root.findall("gpu")),
        error=None,
    )


def _text(node: ET.Element, path: str) -> str | None:
    found = node.find(path)
    if found is None or found.text is None:
        return None
    value = found.text.strip()
    return None if value in ("", "N/A") else value


def _count(node: ET.Element, path: str) -> int:
    value = _text(node, path)
    return int(value) if value is not None and value.isdigit() else 0


def _gpu(node: ET.Element) -> Gpu:
    volatile = node.find("ecc_errors/volatile")
    uncorrectable = 0
    if volatile is not None:
        # Hopper reports sram_uncorrectable_parity/_secded and dram_uncorrectable; older GPUs a total
        uncorrectable = sum(_count(volatile, child.tag) for child in volatile if "uncorrectable" in child.tag)
        if volatile.find("total") is not None and uncorrectable == 0:
            uncorrectable = _count(volatile, "total")
    device_id = (_text(node, "pci/pci_device_id") or "").lower()
    return Gpu(
        name=_text(node, "product_name") or "?",
        uuid=_text(node, "uuid") or "?",
        pci_bus_id=_text(node, "pci/pci_bus_id") or node.get("id") or "?",
        pci_device_id="0x" + device_id[:4] if len(device_id) == 8 else device_id,
        persistence=_text(node, "persistence_mode") == "Enabled",
        mig=_text(node, "mig_mode/current_mig") or "N/A",
        compute_capability=_text(node, "compute_cap"),
        ecc_uncorrectable=uncorrectable,
        remapped_rows_pending=_text(node, "remapped_rows/remapped_row_pending") == "Yes",
        remapped_rows_failure=_text(node, "remapped_rows/remapped_row_failure") == "Yes",
    )
