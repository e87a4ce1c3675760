"""Resolve a spec against the GPU catalog: fill in what was left out, and find every impossible combination.

:func:`resolve` is the compatibility check that runs before anything is created — by `devserver validate/plan`, by
the Pulumi stacks and by the image builders — so they all accept and reject exactly the same specs, with the same
messages. It is pure: no network, no cloud SDK.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Literal

from devserver import catalog as catalog_module
from devserver import registry, versions
from devserver.catalog import Catalog, MachineType, version_tuple
from devserver.errors import Problem, SpecError
from devserver.registry.resources import PlannedResource
from devserver.spec import DevserverSpec, GpuRequest

Flavour = Literal["open", "proprietary"]


@dataclass(frozen=True)
class MachineChoice:
    """A machine type with the GPUs it carries, as resolved from the catalog."""

    type: str
    gpu: str | None = None
    gpu_count: int = 0
    accelerator: str | None = None  # GCE: the accelerator type attached to an N1 machine
    nvswitch: bool = False
    hyperv_generation: int | None = None  # Azure only


@dataclass(frozen=True)
class NodePoolPlan:
    name: str
    machine: MachineChoice
    node_count: int
    taints: tuple[str, ...]


@dataclass(frozen=True)
class Resolved:
    """The spec with every default filled in from the catalog. Only built when there are no error problems."""

    spec: DevserverSpec
    region: str
    machine: MachineChoice | None
    image: str
    driver_branch: int
    driver_flavour: Flavour
    cuda: str | None
    fabric_manager: bool
    node_pools: tuple[NodePoolPlan, ...]
    warnings: tuple[Problem, ...]

    @property
    def gpu_summary(self) -> str:
        """'2x NVIDIA L4' or 'none'."""
        if self.machine is None or self.machine.gpu is None:
            return "none"
        name = catalog_module.load().gpus[self.machine.gpu].name
        return f"{self.machine.gpu_count}x {name}"


def resolve(spec: DevserverSpec, source: str = "<spec>") -> Resolved:
    """Resolve `spec` or raise :class:`SpecError` listing every problem found (not just the first)."""
    checker = _Checker(spec, catalog_module.load())
    resolved = checker.run()
    errors = [p for p in checker.problems if p.severity == "error"]
    if errors or resolved is None:
        raise SpecError(source, errors)
    return resolved


class _Checker:
    def __init__(self, spec: DevserverSpec, catalog: Catalog) -> None:
        self.spec = spec
        self.catalog = catalog
        self.problems: list[Problem] = []

    def error(self, path: str, message: str, fix: str = "", value: object = None) -> None:
        self.problems.append(Problem(path, message, fix, None if value is None else str(value)))

    def warn(self, path: str, message: str, fix: str = "") -> None:
        self.problems.append(Problem(path, message, fix, severity="warning"))

    def run(self) -> Resolved | None:
        spec = self.spec
        cloud = registry.get(spec.cloud.provider)
        region = self._region()
        machine: MachineChoice | None = None
        if cloud.offers("gpus"):
            machine = self._machine("machine", spec.machine.gpu, spec.machine.type)
            if spec.machine.spot and not cloud.offers("spot"):
                self.error("machine.spot", f"{cloud.title} has no spot capacity", "remove machine.spot")
        image = self._image()
        branch = self._branch(machine)
        flavour = self._flavour(machine, branch)
        cuda = self._cuda(branch)
        pools = self._node_pools()
        if machine is not None and cloud.offers("hyperv_generations"):
            machine = self._hyperv_generation(machine)
        if any(p.severity == "error" for p in self.problems):
            return None
        return Resolved(
            spec=spec,
            region=region,
            machine=machine,
            image=image,
            driver_branch=branch,
            driver_flavour=flavour,
            cuda=cuda,
            fabric_manager=bool(machine and machine.nvswitch),
            node_pools=tuple(pools),
            warnings=tuple(p for p in self.problems if p.severity == "warning"),
        )

    def _region(self) -> str:
        cloud = self.spec.cloud
        entry = registry.get(cloud.provider)
        region = cloud.region
        if not entry.in_catalog:
            return region
        regions = self.catalog.clouds[cloud.provider].regions
        path = entry.region_field
        if region not in regions:
            close = difflib.get_close_matches(region, regions, n=3)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            self.error(
                path,
                f"is not a {cloud.provider} region with GPUs in the catalog",
                f"{hint}known: {', '.join(regions)}",
                region,
            )
        return region

    def _image(self) -> str:
        spec = self.spec
        if spec.image is not None:
            return spec.image.name
        provider = spec.cloud.provider
        if not registry.get(provider).in_catalog:
            return f"devserver {provider} image ({spec.os}), built by `devserver image build --target {provider}`"
        return self.catalog.clouds[provider].images[spec.os]

    def _machine(self, path: str, request: GpuRequest | None, machine_type: str | None) -> MachineChoice | None:
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
        if count not in attachable.max_vcpus:
            self.error(
                f"{path}.gpu.count",
                f"{gpu_key} attaches in counts of {', '.join(map(str, attachable.max_vcpus))}",
                "pick one of those",
                count,
            )
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

    def _derive_machine(self, path: str, gpu_key: str, count: int) -> MachineChoice | None:
        provider = self.spec.cloud.provider
        cloud = self.catalog.clouds[provider]
        attachable = cloud.attachable.get(gpu_key)
        if attachable is not None:
            if count not in attachable.max_vcpus:
                self.error(
                    f"{path}.gpu.count",
                    f"{gpu_key} attaches in counts of {', '.join(map(str, attachable.max_vcpus))}",
                    "pick one of those",
                    count,
                )
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

    def _hyperv_generation(self, machine: MachineChoice) -> MachineChoice:
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

    def _node_pools(self) -> list[NodePoolPlan]:
        if self.spec.kubernetes is None:
            return []
        pools = []
        for index, pool in enumerate(self.spec.kubernetes.node_pools):
            choice = self._machine(f"kubernetes.node_pools[{index}]", pool.gpu, pool.machine_type)
            if choice is not None:
                taints = tuple(f"{t.key}={t.value}:{t.effect}" for t in pool.taints)
                pools.append(NodePoolPlan(pool.name, choice, pool.node_count, taints))
        return pools

    def _gpu_arch(self, machine: MachineChoice | None) -> tuple[str | None, str | None]:
        if machine is None or machine.gpu is None:
            return None, None
        return machine.gpu, self.catalog.gpus[machine.gpu].architecture

    def _branch(self, machine: MachineChoice | None) -> int:
        driver = self.spec.software.driver
        os_facts = self.catalog.os[self.spec.os]
        if driver.branch is None:
            branch = (
                max(os_facts.distro_driver_branches) if driver.source == "distro" else versions.CUDA_REPO_DRIVER_BRANCH
            )
        else:
            branch = driver.branch
        if branch not in self.catalog.driver_branches:
            self.error(
                "software.driver.branch",
                "is not a driver branch in the catalog",
                f"use one of {', '.join(map(str, self.catalog.driver_branches))}",
                branch,
            )
            return branch
        if driver.source == "distro" and branch not in os_facts.distro_driver_branches:
            shipped = ", ".join(map(str, os_facts.distro_driver_branches))
            self.error(
                "software.driver.branch",
                f"is not in {self.spec.os}'s archive, which ships {shipped}",
                f"set branch to one of {shipped}, or software.driver.source: cuda-repo",
                branch,
            )
        gpu_key, _ = self._gpu_arch(machine)
        if gpu_key is not None:
            gpu = self.catalog.gpus[gpu_key]
            if branch < gpu.min_branch:
                self.error(
                    "software.driver.branch",
                    f"is older than the first branch supporting {gpu.name} ({gpu.min_branch})",
                    f"set branch to {gpu.min_branch} or newer",
                    branch,
                )
            if gpu.max_branch is not None and branch > gpu.max_branch:
                self.error(
                    "software.driver.branch",
                    f"no longer supports {gpu.name} (last: {gpu.max_branch})",
                    f"set branch to {gpu.max_branch} or older",
                    branch,
                )
        return branch

    def _flavour(self, machine: MachineChoice | None, branch: int) -> Flavour:
        driver = self.spec.software.driver
        os_facts = self.catalog.os[self.spec.os]
        gpu_key, arch_name = self._gpu_arch(machine)
        arch = self.catalog.architectures[arch_name] if arch_name else None
        open_possible = branch >= self.catalog.open_module_min_branch and (
            driver.source == "cuda-repo" or os_facts.distro_open_modules
        )
        if driver.flavour == "auto":
            if arch is not None and not arch.proprietary:
                flavour: Flavour = "open"
            elif arch is not None and not arch.open:
                flavour = "proprietary"
            else:  # both work (or no GPU): NVIDIA recommends open from Turing on, where the source offers it
                flavour = "open" if open_possible else "proprietary"
        else:
            flavour = driver.flavour
        path = "software.driver.flavour"
        gpu_name = self.catalog.gpus[gpu_key].name if gpu_key else ""
        if flavour == "open":
            if arch is not None and not arch.open:
                self.error(
                    path,
                    f"{gpu_name} ({arch_name}) only runs the proprietary kernel modules",
                    "set flavour: proprietary (or auto)",
                    driver.flavour,
                )
            elif branch < self.catalog.open_module_min_branch:
                self.error(
                    path,
                    f"open kernel modules need branch {self.catalog.open_module_min_branch} or newer",
                    "raise software.driver.branch",
                    driver.flavour,
                )
            elif driver.source == "distro" and not os_facts.distro_open_modules:
                self.error(
                    path,
                    f"{self.spec.os}'s archive has no open kernel modules for branch {branch}",
                    "set software.driver.source: cuda-repo, or flavour: proprietary",
                    driver.flavour,
                )
        elif arch is not None and not arch.proprietary:
            self.error(
                path,
                f"{gpu_name} ({arch_name}) requires the open kernel modules",
                "set flavour: open (or auto)",
                driver.flavour,
            )
        return flavour

    def _cuda(self, branch: int) -> str | None:
        cuda = self.spec.software.cuda
        if not cuda.install:
            return None
        os_facts = self.catalog.os[self.spec.os]
        source = self.spec.software.driver.source
        newest = self.catalog.max_cuda(branch)
        if newest is None:
            return None  # the branch itself was reported
        if cuda.version == "auto":
            return os_facts.distro_cuda if source == "distro" else newest
        known = set(self.catalog.driver_branches.values()) | {facts.distro_cuda for facts in self.catalog.os.values()}
        path = "software.cuda.version"
        if cuda.version not in known:
            self.error(
                path,
                "is not a CUDA release in the catalog",
                f"use one of {', '.join(sorted(known, key=version_tuple))}",
                cuda.version,
            )
        elif version_tuple(cuda.version) > version_tuple(newest):
            needed = self.catalog.min_branch_for_cuda(cuda.version)
            self.error(
                path,
                f"needs driver branch {needed} or newer; branch {branch} runs CUDA up to {newest}",
                f"set software.driver.branch: {needed}, or cuda.version: {newest}",
                cuda.version,
            )
        elif source == "distro" and cuda.version != os_facts.distro_cuda:
            self.error(
                path,
                f"{self.spec.os}'s archive ships CUDA {os_facts.distro_cuda}",
                f"set cuda.version: {os_facts.distro_cuda} (or auto), or driver.source: cuda-repo",
                cuda.version,
            )
        return cuda.version


def planned_resources(resolved: Resolved) -> list[PlannedResource]:
    """What `pulumi up` (or the local image build) would create for this spec, for people to review: the cloud
    entry's resource list, whose names the stack registers (:func:`devserver.registry.planned`)."""
    return list(registry.planned(resolved).resources)


def software_summary(resolved: Resolved) -> dict[str, str]:
    """The software the roles will install, as resolved (what `devserver status` later checks against)."""
    software = resolved.spec.software
    return {
        "os": resolved.spec.os,
        "driver": f"{resolved.driver_branch} ({resolved.driver_flavour} modules, from {software.driver.source})",
        "cuda": resolved.cuda or "not installed",
        "container runtime": software.container_runtime,
        "container toolkit": software.container_toolkit,
        "fabric manager": "yes" if resolved.fabric_manager else "no",
        "apt proxy": resolved.spec.repositories.apt_proxy or "none",
    }
