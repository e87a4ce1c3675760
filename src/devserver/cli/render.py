"""Rendering for the spec commands: Rich tables for people, JSON for scripts. No logic beyond presentation."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from rich.table import Table

from devserver import catalog as catalog_module
from devserver.cli.output import fail, out, warning, write_json
from devserver.errors import InputError, SpecError
from devserver.loader import BUILTIN_LOCAL, load_builtin_local, load_spec
from devserver.plan import Resolved, planned_resources, resolve, software_summary


def resolve_or_exit(path: Path | None, json_out: bool) -> Resolved:
    """Load and resolve the spec at `path` (the built-in local one when None); on problems render them, exit 2."""
    source = BUILTIN_LOCAL if path is None else str(path)
    try:
        spec = load_builtin_local() if path is None else load_spec(path)
        return resolve(spec, source)
    except SpecError as exc:
        fail(exc, json_out)


def _source(resolved: Resolved) -> dict[str, object]:
    machine = resolved.machine
    return {
        "name": resolved.spec.name,
        "cloud": resolved.spec.cloud.provider,
        "region": resolved.region,
        "machine": asdict(machine) if machine else None,
        "gpu": resolved.gpu_summary,
        "image": resolved.image,
        "driver": {
            "branch": resolved.driver_branch,
            "flavour": resolved.driver_flavour,
            "source": resolved.spec.software.driver.source,
        },
        "cuda": resolved.cuda,
        "fabric_manager": resolved.fabric_manager,
        "container_runtime": resolved.spec.software.container_runtime,
        "container_toolkit": resolved.spec.software.container_toolkit,
        "node_pools": [asdict(pool) for pool in resolved.node_pools],
    }


def validated(resolved: Resolved, json_out: bool) -> None:
    if json_out:
        payload = {"ok": True, "resolved": _source(resolved), "warnings": [w.as_dict() for w in resolved.warnings]}
        write_json(payload)
        return
    for problem in resolved.warnings:
        warning(problem)
    machine = resolved.machine.type if resolved.machine else "local qemu VM"
    out().print(
        f"[green]✓[/] {resolved.spec.name}: valid — {resolved.spec.cloud.provider} {resolved.region}, "
        f"{machine}, {resolved.gpu_summary}, driver {resolved.driver_branch} ({resolved.driver_flavour}), "
        f"CUDA {resolved.cuda or 'none'}"
    )


def plan(resolved: Resolved, json_out: bool) -> None:
    resources = planned_resources(resolved)
    software = software_summary(resolved)
    if json_out:
        payload = {
            "ok": True,
            "resolved": _source(resolved),
            "resources": [asdict(r) for r in resources],
            "software": software,
            "warnings": [w.as_dict() for w in resolved.warnings],
        }
        write_json(payload)
        return
    spec = resolved.spec
    out().print(f"[bold]{spec.name}[/] on [bold]{spec.cloud.provider}[/] ({resolved.region})")
    table = Table(title="Would create", title_justify="left", show_lines=False)
    table.add_column("resource", style="cyan", no_wrap=True)
    table.add_column("name", no_wrap=True)
    table.add_column("details")
    for resource in resources:
        table.add_row(resource.kind, resource.name, "\n".join(f"{k}: {v}" for k, v in resource.details.items()))
    out().print(table)
    soft = Table(title="Would install", title_justify="left")
    soft.add_column("component", style="cyan")
    soft.add_column("resolved")
    for key, value in software.items():
        soft.add_row(key, value)
    out().print(soft)
    for problem in resolved.warnings:
        warning(problem)


def catalog(cloud: str | None, json_out: bool) -> None:
    data = catalog_module.load()
    clouds = [cloud] if cloud else list(data.clouds)
    unknown = [c for c in clouds if c not in data.clouds]
    if unknown:
        fail(
            InputError(f"--cloud {unknown[0]!r}", "is not in the catalog", f"use one of {', '.join(data.clouds)}"),
            json_out,
        )
    rows = []
    for name in clouds:
        entry = data.clouds[name]
        for machine, facts in entry.machines.items():
            rows.append(
                {
                    "cloud": name,
                    "machine_type": machine,
                    "gpu": facts.gpu,
                    "count": facts.count,
                    "nvswitch": facts.nvswitch,
                    "grid": facts.grid,
                }
            )
        for gpu, attachable in entry.attachable.items():
            counts = "/".join(map(str, attachable.max_vcpus))
            rows.append(
                {
                    "cloud": name,
                    "machine_type": f"n1-* + {attachable.accelerator}",
                    "gpu": gpu,
                    "count": counts,
                    "nvswitch": False,
                    "grid": False,
                }
            )
    if json_out:
        write_json(rows)
        return
    table = Table(title="GPU machine types", title_justify="left")
    for column in ("cloud", "machine type", "gpu", "count", "architecture", "min driver", "notes"):
        table.add_column(column)
    for row in rows:
        gpu_facts = data.gpus[str(row["gpu"])]
        notes = ", ".join(n for n, on in (("NVSwitch", row["nvswitch"]), ("GRID only", row["grid"])) if on)
        table.add_row(
            str(row["cloud"]),
            str(row["machine_type"]),
            gpu_facts.name,
            str(row["count"]),
            gpu_facts.architecture,
            str(gpu_facts.min_branch),
            notes,
        )
    out().print(table)
