"""Resolve a spec against the GPU catalog: fill in what was left out, and find every impossible combination.

:func:`resolve` is the compatibility check that runs before anything is created — by `devserver validate/plan`, by
the Pulumi stacks and by the image builders — so they all accept and reject exactly the same specs, with the same
messages. It is pure: no network, no cloud SDK. The machine is found by :mod:`devserver.machines`; what differs
between clouds (capabilities, region field, catalog section) comes from :mod:`devserver.registry`.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Literal

from devserver import catalog as catalog_module
from devserver import kubernetes as kubernetes_module
from devserver import registry, versions
from devserver.catalog import Catalog, version_tuple
from devserver.errors import Problem, SpecError
from devserver.machines import MachineChoice as MachineChoice
from devserver.machines import MachineFinder
from devserver.registry.resources import PlannedResource
from devserver.spec import DevserverSpec

Flavour = Literal["open", "proprietary"]


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
    kubernetes: kubernetes_module.KubernetesPlan | None = None

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
        self.machines = MachineFinder(spec, catalog, self.error)

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
            machine = self.machines.find("machine", spec.machine.gpu, spec.machine.type)
            if spec.machine.spot and not cloud.offers("spot"):
                self.error("machine.spot", f"{cloud.title} has no spot capacity", "remove machine.spot")
        image = self._image()
        branch = self._branch(machine)
        flavour = self._flavour(machine, branch)
        cuda = self._cuda(branch)
        pools = self._node_pools()
        self._cluster_endpoint(cloud, pools)
        gpus = [pool.machine.gpu_count for pool in pools] if pools else [machine.gpu_count if machine else 0]
        k8s = kubernetes_module.resolve(spec, gpus, self.error, self.warn)
        if machine is not None and cloud.offers("hyperv_generations"):
            machine = self.machines.with_hyperv_generation(machine)
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
            kubernetes=k8s,
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

    def _node_pools(self) -> list[NodePoolPlan]:
        if self.spec.kubernetes is None:
            return []
        pools = []
        for index, pool in enumerate(self.spec.kubernetes.node_pools):
            choice = self.machines.find(f"kubernetes.node_pools[{index}]", pool.gpu, pool.machine_type)
            if choice is not None:
                taints = tuple(f"{t.key}={t.value}:{t.effect}" for t in pool.taints)
                pools.append(NodePoolPlan(pool.name, choice, pool.node_count, taints))
        return pools

    def _cluster_endpoint(self, cloud: registry.Cloud, pools: list[NodePoolPlan]) -> None:
        """A managed cluster's API endpoint admits ``ssh.allowed_cidrs``: refuse a spec none of whose networks the
        cloud's endpoint ACL can hold (the endpoint would be open to the internet, or reachable by no one)."""
        endpoint = cloud.cluster_endpoint
        cidrs = self.spec.ssh.allowed_cidrs
        if not pools or not cidrs:
            return
        if endpoint is None:
            self.error(
                "kubernetes.node_pools",
                f"devserver does not know how to restrict {cloud.title}'s cluster API endpoint",
                "remove kubernetes.node_pools",
            )
        elif not endpoint.admitted(cidrs):
            only = endpoint.families_text
            self.error(
                "ssh.allowed_cidrs",
                f"has no {only} network, and the {endpoint.service} API endpoint's {endpoint.acl} take {only} only: "
                "the cluster API would be open to the internet or reachable by no one",
                f"add the {only} network you run kubectl from, e.g. 203.0.113.4/32",
                ", ".join(cidrs),
            )

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
    entry's resource list, whose names the stack registers (:func:`devserver.registry.planned`), then what the
    Kubernetes roles install (:func:`devserver.kubernetes.planned_resources`)."""
    return list(registry.planned(resolved).resources) + kubernetes_module.planned_resources(resolved)


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
