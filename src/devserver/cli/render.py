"""Rendering for the spec commands: Rich tables for people, JSON for scripts. No logic beyond presentation."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

from rich import box
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
    # Two columns so the details get the width, with the resource's name under its kind: the resource column is as
    # wide as its longest line, but at most a third of the terminal (kinds wrap, a longer name folds), and the
    # details take every column left (Rich measures the table's borders and padding itself). A value wider than
    # that folds onto the next lines whole, never cut.
    third = out().width // 3
    words = min(third, _widest(word for r in resources for word in f"{r.kind} {r.name}".split()))
    names = max(words, min(third, _widest(line for r in resources for line in (r.kind, r.name))))
    table = Table(title="Would create", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, expand=True)
    table.add_column("resource", style="cyan", overflow="fold", min_width=words, max_width=names)
    table.add_column("details", overflow="fold", ratio=1)
    for resource in resources:
        details = "\n".join(f"{k}: {v}" for k, v in resource.details.items())
        table.add_row(f"{resource.kind}\n[default]{resource.name}[/]", details)
    out().print(table)
    soft = Table(title="Would install", title_justify="left")
    soft.add_column("component", style="cyan")
    soft.add_column("resolved")
    for key, value in software.items():
        soft.add_row(key, value)
    out().print(soft)
    for problem in resolved.warnings:
        warning(problem)


def _widest(texts: Iterable[str]) -> int:
    return max((len(text) for text in texts), default=0)


def catalog(cloud: str | None, gpu: str | None, json_out: bool) -> None:
    """The GPU machine types of every cloud (or `cloud`), of every GPU (or `gpu`, a model name or alias): a table
    per cloud plus one of the GPU models shown, or the rows as JSON."""
    data = catalog_module.load()
    clouds = [cloud] if cloud else list(data.clouds)
    unknown = [c for c in clouds if c not in data.clouds]
    if unknown:
        fail(
            InputError(f"--cloud {unknown[0]!r}", "is not in the catalog", f"use one of {', '.join(data.clouds)}"),
            json_out,
        )
    gpu_key = data.gpu_key(gpu) if gpu is not None else None
    if gpu is not None and gpu_key is None:
        close = difflib.get_close_matches(gpu.lower(), list(data.gpus), n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        fail(
            InputError(f"--gpu {gpu!r}", "is not a GPU in the catalog", f"{hint}use one of {', '.join(data.gpus)}"),
            json_out,
        )
    rows = [row for name in clouds for row in _catalog_rows(data, name) if gpu_key in (None, row["gpu"])]
    if json_out:
        write_json(rows)
        return
    for name in clouds:
        _machine_table(data, name, [row for row in rows if row["cloud"] == name])
    _gpu_table(data, sorted({str(row["gpu"]) for row in rows}, key=list(data.gpus).index))


def _catalog_rows(data: catalog_module.Catalog, cloud: str) -> list[dict[str, object]]:
    """The JSON rows for one cloud: each machine type, then each GPU attachable to N1."""
    entry = data.clouds[cloud]
    rows: list[dict[str, object]] = [
        {
            "cloud": cloud,
            "machine_type": machine,
            "gpu": facts.gpu,
            "count": facts.count,
            "nvswitch": facts.nvswitch,
            "grid": facts.grid,
        }
        for machine, facts in entry.machines.items()
    ]
    for gpu, attachable in entry.attachable.items():
        rows.append(
            {
                "cloud": cloud,
                "machine_type": f"n1-* + {attachable.accelerator}",
                "gpu": gpu,
                "count": "/".join(map(str, attachable.max_vcpus)),
                "nvswitch": False,
                "grid": False,
            }
        )
    return rows


def _machine_table(data: catalog_module.Catalog, cloud: str, rows: list[dict[str, object]]) -> None:
    """One cloud's machine types. The machine type column is never narrowed (it is what people come to copy);
    the notes wrap."""
    if not rows:
        return
    machines = data.clouds[cloud].machines
    table = Table(title=f"{cloud}: GPU machine types", title_justify="left")
    table.add_column("machine type", no_wrap=True, min_width=_widest(str(row["machine_type"]) for row in rows))
    table.add_column("GPUs", overflow="fold")
    table.add_column("vCPUs", justify="right", overflow="fold")
    table.add_column("notes", overflow="fold")
    for row in rows:
        facts = machines.get(str(row["machine_type"]))
        notes = []
        if facts is not None:
            if facts.fraction:
                notes.append(f"{facts.fraction} GPU")
            notes += [
                text
                for text, on in (
                    ("NVSwitch", facts.nvswitch),
                    ("GRID only", facts.grid),
                    ("spot only", facts.spot_only),
                    (f"{facts.arch}: refused", facts.arch != "x86_64"),
                )
                if on
            ]
        else:
            notes.append("attached to N1")
        vcpus = str(facts.vcpus) if facts is not None else "-"
        table.add_row(str(row["machine_type"]), f"{row['count']}x {row['gpu']}", vcpus, ", ".join(notes))
    out().print(table)


def _gpu_table(data: catalog_module.Catalog, keys: list[str]) -> None:
    """The GPU models the machine tables name: what each is, its driver branches and kernel module flavours."""
    if not keys:
        return
    table = Table(title="GPU models", title_justify="left")
    table.add_column("gpu", no_wrap=True, min_width=_widest(keys))
    table.add_column("model", overflow="fold")
    table.add_column("arch", overflow="fold")
    table.add_column("GB", justify="right", overflow="fold")
    table.add_column("driver", overflow="fold")
    table.add_column("modules", overflow="fold")
    for key in keys:
        facts = data.gpus[key]
        arch = data.architectures[facts.architecture]
        branches = f"{facts.min_branch}-{facts.max_branch}" if facts.max_branch else f"{facts.min_branch}+"
        modules = "open" if not arch.proprietary else "proprietary" if not arch.open else "open, proprietary"
        table.add_row(key, facts.name, facts.architecture, str(facts.memory_gb), branches, modules)
    out().print(table)
