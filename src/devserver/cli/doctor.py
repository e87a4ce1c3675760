"""`devserver doctor [HOST]`: is the GPU usable, and if not, why and what to do.

Start-up stays cheap (this module imports only Typer, like main.py); the probe, the parsers and SSH are imported
when the command runs. Exit codes (:class:`~devserver.cli.output.ExitCode`): 0 healthy, 1 findings (or a host that
could not be probed), 2 bad input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer


def doctor(
    host: Annotated[
        str | None,
        typer.Argument(
            metavar="HOST",
            help="user@host[:port], an Ansible inventory file, or a stack folder; this machine when omitted (no SSH).",
            show_default=False,
        ),
    ] = None,
    spec: Annotated[
        Path | None,
        typer.Option("--spec", help="The spec, for the SSH user (default: ./devserver.yaml, else the built-in one)."),
    ] = None,
    key: Annotated[Path | None, typer.Option("--key", help="SSH private key file.", show_default=False)] = None,
    known_hosts: Annotated[
        Path | None,
        typer.Option("--known-hosts", help="known_hosts file (default: ~/.ssh/known_hosts).", show_default=False),
    ] = None,
    container: Annotated[
        str | None,
        typer.Option(
            "--container",
            help="Also run nvidia-smi -L in a container of this image through Docker and containerd (pulls it).",
            show_default=False,
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")] = False,
) -> None:
    """Diagnose a GPU host: the GPU on the PCI bus, the driver the kernel loaded, NVML, persistence, fabric
    manager, container runtimes, ECC and Xid errors, pending reboots.

    Read-only (unless --container); one probe round trip. Each finding has an id, a severity, the evidence and the
    fix. Exit 0 when healthy, 1 with findings.
    """
    from devserver.cli.output import ExitCode, fail
    from devserver.errors import DevserverError
    from devserver.hoststate.probe import script_args

    args = script_args(container, ("docker", "containerd"))
    try:
        reports = [_local(args)] if host is None else _remote(host, spec, key, known_hosts, args, json_out)
    except DevserverError as exc:
        fail(exc, json_out)
    _render(reports, json_out)
    if not all(r["healthy"] for r in reports):
        raise typer.Exit(ExitCode.FAILED)


def _local(args: str) -> dict[str, Any]:
    import socket

    from devserver.hoststate.probe import run_local

    return _report(socket.gethostname(), run_local(args))


def _remote(
    host_arg: str, spec: Path | None, key: Path | None, known_hosts: Path | None, args: str, json_out: bool
) -> list[dict[str, Any]]:
    from devserver.cli.hosts import default_spec, hosts_or_exit
    from devserver.cli.render import resolve_or_exit
    from devserver.remote import probe

    resolved = resolve_or_exit(default_spec(spec), json_out)
    hosts = hosts_or_exit(host_arg, resolved, key, json_out)
    known = known_hosts if known_hosts is not None else Path.home() / ".ssh" / "known_hosts"
    return [_report(one.name, probe(one, known_hosts=known, args=args)) for one in hosts]


def _report(name: str, raw: dict[str, Any]) -> dict[str, Any]:
    from dataclasses import asdict

    from devserver.hoststate.findings import diagnose, summary
    from devserver.hoststate.observed import parse

    observed = parse(raw)
    diagnosis = diagnose(observed)
    return {
        "host": name,
        "healthy": diagnosis.healthy,
        "summary": summary(observed),
        "findings": [asdict(f) for f in diagnosis.findings],
        "notes": list(diagnosis.notes),
    }


def _render(reports: list[dict[str, Any]], json_out: bool) -> None:
    from rich.markup import escape

    from devserver.cli.output import out, write_json

    if json_out:
        write_json({"ok": all(r["healthy"] for r in reports), "hosts": reports})
        return
    console = out()
    for report in reports:
        console.print(f"[bold]devserver doctor[/] {report['host']}")
        for item, value in report["summary"].items():
            console.print(f"  [cyan]{item}[/]: {escape(str(value))}")
        for finding in report["findings"]:
            colour = "red" if finding["severity"] == "error" else "yellow"
            console.print(f"  [{colour}]✗ {finding['severity']}[/] {finding['id']}: {escape(finding['title'])}")
            for line in finding["evidence"]:
                console.out(f"      evidence: {line}", highlight=False)
            console.out(f"      fix: {finding['fix']}", highlight=False)
        for note in report["notes"]:
            console.out(f"  note: {note}", highlight=False)
        if report["healthy"]:
            console.print("  [green]✓[/] healthy")
        else:
            console.print(f"  [red]✗[/] {len(report['findings'])} finding(s)")
