"""Rendering for the spec commands: Rich tables for people, JSON for scripts. No logic beyond presentation."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console
from rich.table import Table

from devserver import catalog as catalog_module
from devserver.errors import Problem, SpecError
from devserver.loader import BUILTIN_LOCAL, load_builtin_local, load_spec
from devserver.plan import Resolved, planned_resources, resolve, software_summary

EXIT_SPEC = 2

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def resolve_or_exit(path: Path | None, json_out: bool) -> Resolved:
    """Load and resolve the spec at `path` (the built-in local one when None); on problems render them, exit 2."""
    source = BUILTIN_LOCAL if path is None else str(path)
    try:
        spec = load_builtin_local() if path is None else load_spec(path)
        return resolve(spec, source)
    except SpecError as exc:
        spec_error(exc, json_out)


def spec_error(exc: SpecError, json_out: bool) -> NoReturn:
    if json_out:
        payload = {"source": exc.source, "ok": False, "problems": [p.as_dict() for p in exc.problems]}
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
    else:
        count = len(exc.problems)
        err.print(f"[bold red]error[/]: {exc.source}: {count} problem{'s' if count != 1 else ''}")
        for problem in exc.problems:
            _problem_line(problem)
    raise typer.Exit(EXIT_SPEC)


def _problem_line(problem: Problem) -> None:
    colour = "red" if problem.severity == "error" else "yellow"
    err.print(f"  [{colour}]✗[/] ", end="")
    err.out(problem.render(), highlight=False)


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
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
        return
    for warning in resolved.warnings:
        _problem_line(warning)
    machine = resolved.machine.type if resolved.machine else "local qemu VM"
    out.print(
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
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
        return
    spec = resolved.spec
    out.print(f"[bold]{spec.name}[/] on [bold]{spec.cloud.provider}[/] ({resolved.region})")
    table = Table(title="Would create", title_justify="left", show_lines=False)
    table.add_column("resource", style="cyan", no_wrap=True)
    table.add_column("name", no_wrap=True)
    table.add_column("details")
    for resource in resources:
        table.add_row(resource.kind, resource.name, "\n".join(f"{k}: {v}" for k, v in resource.details.items()))
    out.print(table)
    soft = Table(title="Would install", title_justify="left")
    soft.add_column("component", style="cyan")
    soft.add_column("resolved")
    for key, value in software.items():
        soft.add_row(key, value)
    out.print(soft)
    for warning in resolved.warnings:
        _problem_line(warning)


def catalog(cloud: str | None, json_out: bool) -> None:
    data = catalog_module.load()
    clouds = [cloud] if cloud else list(data.clouds)
    unknown = [c for c in clouds if c not in data.clouds]
    if unknown:
        err.print(
            f"[bold red]error[/]: --cloud {unknown[0]!r} is not in the catalog — fix: use one of "
            f"{', '.join(data.clouds)}"
        )
        raise typer.Exit(EXIT_SPEC)
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
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
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
    out.print(table)
