"""Which machine type carries the GPUs a spec asks for, on one cloud: the one the spec names, checked against the
catalog, or the smallest the catalog offers with those GPUs.

:class:`MachineFinder` is the machine half of :func:`devserver.plan.resolve`: it reports every problem it finds
through the resolver's `error` (the same located, fixable problems) and returns None where no machine fits.
Pure: no network, no cloud SDK.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Protocol

from devserver import registry
from devserver.catalog import Attachable, Catalog, MachineType
from devserver.spec import DevserverSpec, GpuRequest


@dataclass(frozen=True)
class MachineChoice:
    """A machine type with the GPUs it carries, as resolved from the catalog."""

    type: str
    gpu: str | None = None
    gpu_count: int = 0
    accelerator: str | None = None  # GCE: the accelerator type attached to an N1 machine
    nvswitch: bool = False
    hyperv_generation: int | None = None  # Azure only


class Report(Protocol):
    def __call__(self, path: str, message: str, fix: str = "", value: object = None) -> None: ...


class MachineFinder:
    """Finds and checks machines for `spec`'s cloud in `catalog`, reporting problems to `error`."""

    def __init__(self, spec: DevserverSpec, catalog: Catalog, error: Report) -> None:
        self.spec = spec
        self.catalog = catalog
        self.error = error

    def find(self, path: str, request: GpuRequest | None, machine_type: str | None) -> MachineChoice | None:
        """The machine for the spec's `machine` (or a node pool's, `path` saying which): the one named by
        `machine_type`, checked against `request`, or the smallest that carries the requested GPUs. None, with the
        problems reported, when there is no such machine."""
        provider = self.spec.cloud.provider
        cloud = self.catalog.clouds[provider]
        gpu_key: str | None = None
        if request is not None:
            gpu_key = self.catalog.gpu_key(request.model)
            offered = sorted({m.gpu for m in cloud.machines.values()} | set(cloud.attachable))
            if gpu_key is None:
                close = difflib.get_close_matches(request.model, list(self.catalog.gpus), n=1)
                hint = f"did you mean {close[0]}? " if close else ""
                self.error(
                    f"{path}.gpu.model",
                    "is not a GPU in the catalog",
                    f"{hint}{provider} offers: {', '.join(offered)}",
                    request.model,
                )
                return None
            if gpu_key not in offered:
                self.error(
                    f"{path}.gpu.model",
                    f"is not offered on {provider}",
                    f"{provider} offers: {', '.join(offered)}",
                    request.model,
                )
                return None
        if machine_type is not None:
            return self._check_machine(path, machine_type, gpu_key, request)
        assert request is not None
        assert gpu_key is not None
        return self._derive_machine(path, gpu_key, request.count)

    def _check_machine(
        self, path: str, machine_type: str, gpu_key: str | None, request: GpuRequest | None
    ) -> MachineChoice | None:
        provider = self.spec.cloud.provider
        cloud = self.catalog.clouds[provider]
        type_path = f"{path}.type" if path == "machine" else f"{path}.machine_type"
        known = cloud.machines.get(machine_type)
        if known is not None:
            if gpu_key is not None and known.gpu != gpu_key:
                self.error(
                    type_path,
                    f"carries {known.count}x {known.gpu}, not {gpu_key}",
                    f"drop {path}.type to derive it, or pick a {gpu_key} machine: "
                    f"{', '.join(self._machines_with(gpu_key))}",
                    machine_type,
                )
                return None
            if request is not None and request.count != known.count:
                self.error(
                    f"{path}.gpu.count",
                    f"{machine_type} carries {known.count} GPU(s)",
                    f"set count: {known.count}, or drop {path}.type to derive it",
                    request.count,
                )
                return None
            if known.grid:
                self.error(
                    type_path,
                    "is a GRID (vGPU) size: it needs Microsoft's GRID driver, which devserver does not install",
                    "pick an NC or ND size",
                    machine_type,
                )
                return None
            if not self._runnable(path, type_path, machine_type, known):
                return None
            return MachineChoice(machine_type, known.gpu, known.count, nvswitch=known.nvswitch)
        vcpus = self.catalog.attachable_vcpus(provider, machine_type) if cloud.attachable_machine_sizes else None
        if vcpus is None:
            candidates = list(cloud.machines) + [
                f"{family}-{size}" for family, sizes in cloud.attachable_machine_sizes.items() for size in sizes
            ]
            close = difflib.get_close_matches(machine_type, candidates, n=3)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            self.error(
                type_path,
                f"is not a {provider} GPU machine type in the catalog",
                f"{hint}or drop it and give {path}.gpu to derive one",
                machine_type,
            )
            return None
        if gpu_key is None or request is None:
            self.error(f"{path}.gpu", f"{machine_type} has no GPU of its own", "add gpu: {model: t4, count: 1}")
            return None
        return self._attach(path, machine_type, vcpus, gpu_key, request.count)

    def _attach(self, path: str, machine_type: str, vcpus: int, gpu_key: str, count: int) -> MachineChoice | None:
        attachable = self.catalog.clouds[self.spec.cloud.provider].attachable.get(gpu_key)
        if attachable is None:
            self.error(
                f"{path}.gpu.model",
                f"cannot be attached to {machine_type}",
                f"use a machine type that carries it: {', '.join(self._machines_with(gpu_key))}",
                gpu_key,
            )
            return None
        if not self._attachable_count(path, gpu_key, attachable, count):
            return None
        if vcpus > attachable.max_vcpus[count]:
            self.error(
                f"{path}.type" if path == "machine" else f"{path}.machine_type",
                f"has {vcpus} vCPUs; {count}x {gpu_key} allows at most {attachable.max_vcpus[count]}",
                "pick a smaller machine type or more GPUs",
                machine_type,
            )
            return None
        return MachineChoice(machine_type, gpu_key, count, accelerator=attachable.accelerator)

    def _attachable_count(self, path: str, gpu_key: str, attachable: Attachable, count: int) -> bool:
        """Whether `count` GPUs of `gpu_key` can be attached at all; reports the problem when not."""
        if count in attachable.max_vcpus:
            return True
        self.error(
            f"{path}.gpu.count",
            f"{gpu_key} attaches in counts of {', '.join(map(str, attachable.max_vcpus))}",
            "pick one of those",
            count,
        )
        return False

    def _derive_machine(self, path: str, gpu_key: str, count: int) -> MachineChoice | None:
        provider = self.spec.cloud.provider
        cloud = self.catalog.clouds[provider]
        attachable = cloud.attachable.get(gpu_key)
        if attachable is not None:
            if not self._attachable_count(path, gpu_key, attachable, count):
                return None
            # 8 vCPUs per GPU is a sensible devserver; capped by what the GPU count allows.
            sizes = cloud.attachable_machine_sizes["n1-standard"]
            fitting = [s for s in sizes if s <= min(8 * count, attachable.max_vcpus[count])]
            return self._attach(path, f"n1-standard-{max(fitting)}", max(fitting), gpu_key, count)
        spot = self.spec.machine.spot and path == "machine"
        matches = sorted(
            ((name, m) for name, m in cloud.machines.items() if m.gpu == gpu_key and m.count == count and not m.grid),
            key=lambda item: (item[1].arch != "x86_64", item[1].spot_only and not spot, item[1].vcpus),
        )
        if not matches:
            counts = sorted({m.count for m in cloud.machines.values() if m.gpu == gpu_key and not m.grid})
            if not counts:
                self.error(
                    f"{path}.gpu.model",
                    f"is only offered on {provider} as GRID (vGPU) sizes, which devserver does not support",
                    "pick another GPU",
                    gpu_key,
                )
            else:
                self.error(
                    f"{path}.gpu.count",
                    f"{gpu_key} comes in counts of {', '.join(map(str, counts))} on {provider}",
                    "pick one of those",
                    count,
                )
            return None
        name, known = matches[0]
        type_path = f"{path}.type" if path == "machine" else f"{path}.machine_type"
        if not self._runnable(path, type_path, name, known):
            return None
        return MachineChoice(name, known.gpu, known.count, nvswitch=known.nvswitch)

    def _runnable(self, path: str, type_path: str, machine_type: str, known: MachineType) -> bool:
        """Whether devserver can run `machine_type` as the spec asks; reports why not. Grace (arm64) machines are
        refused: the roles and images are x86_64 only. Spot-only machines need a spot VM."""
        if known.arch != "x86_64":
            arch = self.catalog.gpus[known.gpu].architecture
            cloud = self.catalog.clouds[self.spec.cloud.provider]
            x86 = [
                name
                for name, m in cloud.machines.items()
                if m.arch == "x86_64" and not m.grid and self.catalog.gpus[m.gpu].architecture == arch
            ]
            self.error(
                type_path,
                f"is an {known.arch} machine (NVIDIA Grace CPUs); devserver's roles and images support x86_64 only",
                f"pick an x86_64 {arch} machine: {', '.join(x86[:6]) or 'none on this cloud'}",
                machine_type,
            )
            return False
        if known.spot_only and not (path == "machine" and self.spec.machine.spot):
            fix = "set machine.spot: true" if path == "machine" else "pick a machine type sold on demand"
            self.error(type_path, "is sold only as a spot (or flex-start) VM", fix, machine_type)
            return False
        return True

    def _machines_with(self, gpu_key: str) -> list[str]:
        cloud = self.catalog.clouds[self.spec.cloud.provider]
        names = [name for name, m in cloud.machines.items() if m.gpu == gpu_key]
        if gpu_key in cloud.attachable:
            names.append("n1-standard-*")
        return names[:6]

    def with_hyperv_generation(self, machine: MachineChoice) -> MachineChoice:
        """`machine` with the newest Hyper-V generation its size runs (reported: Trusted Launch on a gen1 size)."""
        known = self.catalog.clouds[self.spec.cloud.provider].machines[machine.type]
        generation = max(known.generations)
        trusted = registry.get(self.spec.cloud.provider).offers("trusted_launch")
        if trusted and getattr(self.spec.cloud, "trusted_launch", False) and 2 not in known.generations:
            self.error(
                "cloud.trusted_launch",
                f"needs a gen2 size; {machine.type} is gen1 only",
                "pick a gen2 size or turn trusted_launch off",
            )
        return MachineChoice(
            machine.type, machine.gpu, machine.gpu_count, nvswitch=machine.nvswitch, hyperv_generation=generation
        )
