"""Entry point of the `devserver` command.

Start-up is kept cheap: this module imports only Typer; the spec model, the catalog and every cloud SDK are
imported inside the command that needs them (`devserver --help` must not pay for them).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="devserver",
    help="GPU devservers on GCE, Azure, AWS and OpenStack from one spec (devserver.yaml).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

SpecFile = Annotated[Path, typer.Argument(help="The spec, e.g. examples/gce.yaml.", show_default=False)]
OptionalSpecFile = Annotated[
    Path | None, typer.Argument(help="The spec; the built-in local default when omitted.", show_default=False)
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]

EXIT_SPEC = 2


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
        str | None, typer.Option(help="Only this cloud: gce, azure, aws or openstack.", show_default=False)
    ] = None,
    json_out: JsonFlag = False,
) -> None:
    """List the GPU machine types of each cloud.

    With each GPU's architecture, minimum driver branch, NVSwitch and GRID notes.
    """
    from devserver.cli import render

    render.catalog(cloud, json_out)


def run() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    run()
