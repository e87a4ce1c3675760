"""The host commands (update, status, ssh, exec): argument handling and rendering around devserver.update."""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from devserver.cli.output import ExitCode, Steps, fail, out, write_json
from devserver.cli.render import resolve_or_exit
from devserver.errors import InputError, Problem, SpecError
from devserver.hosts import Host, parse_hosts
from devserver.hoststate.observed import status_facts
from devserver.plan import Resolved
from devserver.remote import RemoteError
from devserver.runner import RunSummary, TaskEvent
from devserver.update import Drift, HostsError


def default_spec(spec: Path | None) -> Path | None:
    """--spec, else ./devserver.yaml when present, else None (the built-in local spec)."""
    if spec is not None:
        return spec
    local = Path("devserver.yaml")
    return local if local.is_file() else None


def hosts_or_exit(host_arg: str, resolved: Resolved, key: Path | None, json_out: bool) -> list[Host]:
    if key is not None and not key.is_file():
        fail(SpecError("--key", [Problem("--key", "is not a file", "pass your private key file", str(key))]), json_out)
    try:
        return parse_hosts(host_arg, default_user=resolved.spec.ssh.admin_user, key_file=key)
    except SpecError as exc:
        fail(exc, json_out)


def run_update(
    host_arg: str,
    spec: Path | None,
    *,
    check: bool,
    diff: bool,
    only: list[str],
    key: Path | None,
    data_device: str | None,
    known_hosts: Path | None,
    mitogen: bool,
    converge: bool,
    json_out: bool,
) -> None:
    from devserver import update as update_module

    resolved = resolve_or_exit(default_spec(spec), json_out)
    hosts = hosts_or_exit(host_arg, resolved, key, json_out)
    mode = " (check mode: nothing will change)" if check else ""
    if not json_out:
        out().print(f"[bold]devserver update[/] {resolved.spec.name} → {', '.join(h.name for h in hosts)}{mode}")
    steps = None if json_out else Steps("preflight: SSH, sudo, OS")

    def progress(event: TaskEvent | str) -> None:
        if steps is None:
            return
        if isinstance(event, str):
            steps.step(f"[cyan]{escape(event)}[/]")
        elif event.status == "changed":
            out().print(f"  [yellow]changed[/] {escape(event.host)}  {escape(event.task)}")
        elif event.status in ("failed", "unreachable"):
            out().print(
                f"  [red]{event.status}[/] {escape(event.host)}  {escape(event.task)}: {escape(event.message[:400])}"
            )

    try:
        with steps if steps is not None else contextlib.nullcontext():
            summary = update_module.update(
                hosts,
                resolved,
                check=check,
                diff=diff,
                only=only,
                data_device=data_device,
                known_hosts=known_hosts,
                mitogen=mitogen,
                converge=converge,
                on_event=progress,
            )
    except (SpecError, HostsError) as exc:
        fail(exc, json_out)
    render_summary(summary, check, json_out)
    if not summary.ok:
        raise typer.Exit(ExitCode.FAILED)


def render_summary(summary: RunSummary, check: bool, json_out: bool) -> None:
    reboot = sorted(h for h, s in summary.hosts.items() if s.reboot_required)
    if json_out:
        payload = {
            "ok": summary.ok,
            "check": check,
            "rc": summary.rc,
            "hosts": {h: asdict(s) for h, s in summary.hosts.items()},
            "changed_tasks": [asdict(t) for t in summary.changed_tasks],
            "failures": [asdict(t) for t in summary.failures],
            "reboot_required": reboot,
            "up_to_date": sorted(h for h, s in summary.hosts.items() if s.up_to_date),
        }
        write_json(payload)
        return
    table = Table(title="Summary" + (" (check mode)" if check else ""), title_justify="left")
    for column in ("host", "ok", "changed", "failed", "unreachable", "skipped", "reboot", "gpu check"):
        table.add_column(column)
    for host, stats in sorted(summary.hosts.items()):
        table.add_row(
            host,
            str(stats.ok),
            str(stats.changed),
            str(stats.failed),
            str(stats.unreachable),
            str(stats.skipped),
            "required" if stats.reboot_required else "no",
            "up to date: not run" if stats.up_to_date else stats.gpu_check or "not run",
        )
    out().print(table)
    current = sorted(h for h, s in summary.hosts.items() if s.up_to_date)
    if current:
        out().print(
            f"[green]up to date[/] {', '.join(current)}: converged with these inputs and unchanged since, no drift "
            "(--converge runs the playbook anyway)"
        )
    if reboot:
        out().print(
            f"[yellow]reboot required[/] on {', '.join(reboot)} to load the new driver "
            "(set software.reboot: true to let devserver reboot)"
        )
    if summary.ok:
        verb = "would change" if check else "changed"
        out().print(f"[green]✓[/] done: {summary.changed} task(s) {verb}")
    else:
        out().print(f"[red]✗[/] failed: {len(summary.failures)} task(s) failed or hosts unreachable")


def run_status(host_arg: str, spec: Path | None, key: Path | None, known_hosts: Path | None, json_out: bool) -> None:
    from devserver import update as update_module

    resolved = resolve_or_exit(default_spec(spec), json_out)
    hosts = hosts_or_exit(host_arg, resolved, key, json_out)
    report = []
    problems = []
    for host in hosts:
        try:
            observed, drift = update_module.status(host, resolved, known_hosts)
        except RemoteError as exc:
            problems.append(Problem(host.name, exc.message, exc.fix))
            continue
        report.append((host, status_facts(observed), drift))
    if problems:
        fail(HostsError(problems), json_out)
    if json_out:
        payload = [
            {"host": h.name, "facts": f, "drift": [asdict(d) for d in d_], "in_sync": not d_} for h, f, d_ in report
        ]
        write_json(payload)
    else:
        for host, facts, drift in report:
            _render_status(host, facts, drift)
    if any(d for _, _, d in report):
        raise typer.Exit(ExitCode.FAILED)


def _render_status(host: Host, facts: dict[str, object], drift: list[Drift]) -> None:
    table = Table(title=f"{host.name}", title_justify="left", show_header=False)
    table.add_column("item", style="cyan")
    table.add_column("value")
    for key, value in facts.items():
        table.add_row(key, json.dumps(value) if isinstance(value, (dict, list)) else str(value))
    out().print(table)
    if drift:
        for item in drift:
            out().print(f"  [red]drift[/] {item.item}: want {item.want}, have {item.have}")
    else:
        out().print("  [green]✓[/] in sync with the spec")


def run_shell(host_arg: str, command: list[str], key: Path | None, known_hosts: Path | None, spec: Path | None) -> None:
    from devserver.remote import connect, run_command

    resolved = resolve_or_exit(default_spec(spec), False)
    hosts = hosts_or_exit(host_arg, resolved, key, False)
    if len(hosts) != 1 and not command:
        fail(InputError("", "HOST names several hosts", "name one host for an interactive shell"))
    try:
        if not command:
            with connect(hosts[0], known_hosts=known_hosts) as connection:
                connection.shell()
            return
        codes = [run_command(host, " ".join(command), known_hosts=known_hosts) for host in hosts]
    except RemoteError as exc:
        fail(HostsError([Problem(exc.host.name, exc.message, exc.fix)]))
    raise typer.Exit(max(codes))
