"""Entry point of the `devserver` command.

Start-up is kept cheap: this module imports only Typer and the cloud registry (plain data); the spec model, the
catalog and every cloud SDK are imported inside the command that needs them (`devserver --help` must not pay for
them).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from devserver import registry

app = typer.Typer(
    name="devserver",
    help="GPU devservers on GCE, Azure, AWS and OpenStack from one spec (devserver.yaml).",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

SpecFile = Annotated[Path, typer.Argument(help="The spec, e.g. examples/gce.yaml.", show_default=False)]
OptionalSpecFile = Annotated[
    Path | None, typer.Argument(help="The spec; the built-in local default when omitted.", show_default=False)
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]


@app.command()
def validate(spec: SpecFile, json_out: JsonFlag = False) -> None:
    """Check a spec against the schema and the GPU catalog.

    Offline: no cloud SDK, no network. Exit code 2 on any problem, each naming the field and the fix.
    """
    from devserver.cli import render

    resolved = render.resolve_or_exit(spec, json_out)
    render.validated(resolved, json_out)


@app.command()
def plan(spec: OptionalSpecFile = None, json_out: JsonFlag = False) -> None:
    """Show what a spec would create and install.

    Machine type, GPU, image, disks, firewall rules, node pools and software versions, resolved from the
    catalog; every compatibility problem is reported before anything is created.
    """
    from devserver.cli import render

    resolved = render.resolve_or_exit(spec, json_out)
    render.plan(resolved, json_out)


@app.command()
def schema() -> None:
    """Print the spec's JSON Schema.

    Point your editor's YAML plugin at it for completion and inline checks.
    """
    import json

    from devserver.spec import DevserverSpec

    sys.stdout.write(json.dumps(DevserverSpec.model_json_schema(), indent=2) + "\n")


@app.command()
def catalog(
    cloud: Annotated[
        str | None,
        typer.Option(
            help=f"Only this cloud: {registry.spoken(registry.with_capability('gpus'), 'or')}.", show_default=False
        ),
    ] = None,
    gpu: Annotated[
        str | None,
        typer.Option("--gpu", metavar="MODEL", help="Only this GPU model, e.g. h200 or l40s.", show_default=False),
    ] = None,
    json_out: JsonFlag = False,
) -> None:
    """List the GPU machine types of each cloud.

    With NVSwitch, GRID, spot-only and arm64 notes, and each GPU's architecture, driver branches and kernel
    module flavours.
    """
    from devserver.cli import render

    render.catalog(cloud, gpu, json_out)


HostArgument = Annotated[
    str,
    typer.Argument(metavar="HOST", help="user@host[:port], an inventory file or a stack folder.", show_default=False),
]
SpecOption = Annotated[
    Path | None,
    typer.Option(
        "--spec", help="The spec (default: ./devserver.yaml, else the built-in local one).", show_default=False
    ),
]
KeyOption = Annotated[Path | None, typer.Option("--key", help="SSH private key file.", show_default=False)]
KnownHostsOption = Annotated[
    Path | None,
    typer.Option("--known-hosts", help="known_hosts file (default: ~/.ssh/known_hosts).", show_default=False),
]


def _known_hosts(path: Path | None) -> Path:
    return path if path is not None else Path.home() / ".ssh" / "known_hosts"


@app.command()
def update(
    host: HostArgument,
    spec: SpecOption = None,
    check: Annotated[bool, typer.Option("--check", help="Report what would change; change nothing.")] = False,
    diff: Annotated[bool, typer.Option("--diff", help="Show file differences.")] = False,
    only: Annotated[
        list[str] | None,
        typer.Option("--only", help="Only ROLE, or ROLE:install / ROLE:configure (repeatable).", show_default=False),
    ] = None,
    key: KeyOption = None,
    data_device: Annotated[
        str | None,
        typer.Option(
            "--data-device",
            help="Block device of the data volume, e.g. /dev/sdb (default: the data_device a stack folder exports).",
        ),
    ] = None,
    known_hosts: KnownHostsOption = None,
    no_mitogen: Annotated[
        bool,
        typer.Option(
            "--no-mitogen",
            help="Run the tasks over Ansible's own SSH connection instead of Mitogen's (about 1.5x slower; for a "
            "host where Mitogen misbehaves).",
        ),
    ] = False,
    converge: Annotated[
        bool,
        typer.Option(
            "--converge", help="Run the playbook even on hosts whose converge stamp and state say they are up to date."
        ),
    ] = False,
    json_out: JsonFlag = False,
) -> None:
    """Bring live hosts to the spec by running the devserver playbook.

    Checks every host first (SSH, passwordless sudo, OS); a host whose last full converge was of these inputs and
    left it as it is now, with no drift from the spec, is up to date and skipped (--converge runs it anyway). The
    others run the roles in parallel with progress. Reports changed tasks, failures and hosts that need a reboot.
    Exit 1 if anything failed.
    """
    from devserver.cli import hosts

    hosts.run_update(
        host,
        spec,
        check=check,
        diff=diff,
        only=only or [],
        key=key,
        data_device=data_device,
        known_hosts=_known_hosts(known_hosts),
        mitogen=not no_mitogen,
        converge=converge,
        json_out=json_out,
    )


@app.command()
def status(
    host: HostArgument,
    spec: SpecOption = None,
    key: KeyOption = None,
    known_hosts: KnownHostsOption = None,
    json_out: JsonFlag = False,
) -> None:
    """Show a host's GPU stack against the spec.

    OS, kernel, driver, DKMS, CUDA, container toolkit and runtimes, GPUs seen, and every drift from the spec
    (exit 1 when there is drift).
    """
    from devserver.cli import hosts

    hosts.run_status(host, spec, key, _known_hosts(known_hosts), json_out)


@app.command()
def ssh(
    host: HostArgument, spec: SpecOption = None, key: KeyOption = None, known_hosts: KnownHostsOption = None
) -> None:
    """Open a shell on a host."""
    from devserver.cli import hosts

    hosts.run_shell(host, [], key, _known_hosts(known_hosts), spec)


@app.command("exec")
def exec_(
    host: HostArgument,
    command: Annotated[list[str], typer.Argument(help="The command to run.", show_default=False)],
    spec: SpecOption = None,
    key: KeyOption = None,
    known_hosts: KnownHostsOption = None,
) -> None:
    """Run a command on every host HOST names; exits with the highest exit code."""
    from devserver.cli import hosts

    hosts.run_shell(host, command, key, _known_hosts(known_hosts), spec)


# `devserver image …` and `devserver doctor` (their modules import only Typer at start-up, like this one)
from devserver.cli.doctor import doctor  # noqa: E402
from devserver.cli.image import image_app  # noqa: E402

app.add_typer(image_app, name="image")
app.command()(doctor)


def run() -> None:
    """Console-script entry point (also `python -m devserver`, which is named devserver too, so that shell
    completion answers to the same `_DEVSERVER_COMPLETE` either way)."""
    app(prog_name="devserver")


if __name__ == "__main__":
    run()
