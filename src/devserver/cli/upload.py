"""`devserver image upload ARTIFACT --target …`: parse, call devserver.clouds.common.publish, render.

Exit codes (:class:`~devserver.cli.output.ExitCode`): 0 uploaded and registered (or already registered), 2 a user
mistake (options, a corrupt or wrong-format artifact), 1 the cloud refused or failed (credentials, permissions,
quota, a missing bucket/container/project), 130 interrupted (the same command resumes).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import asdict
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from devserver import registry

if TYPE_CHECKING:
    from devserver.clouds.common import ProgressEvent, Uploader, UploadOptions, UploadResult


# The clouds with an uploader in the registry, as the Literal typer turns into the option's choices (built when
# imported; type checkers see the str it is).
if TYPE_CHECKING:
    UploadTarget = str
else:
    UploadTarget = Literal[registry.upload_targets()]


class Method(StrEnum):
    ebs = "ebs"
    s3 = "s3"


def upload(
    artifact: Annotated[Path, typer.Argument(help="The artifact folder `devserver image build` wrote.")],
    target: Annotated[UploadTarget, typer.Option("--target", help="The cloud to upload to.", show_default=False)],
    project: Annotated[str | None, typer.Option(help="GCE: the project.", show_default=False)] = None,
    bucket: Annotated[
        str | None, typer.Option(help="GCE: the GCS bucket to stage in; AWS --method s3: the S3 bucket.")
    ] = None,
    compute_endpoint: Annotated[
        str | None, typer.Option(help="GCE: another compute API endpoint (private access).", show_default=False)
    ] = None,
    account_url: Annotated[
        str | None,
        typer.Option(
            help="Azure: the storage account's blob URL (default: AZURE_STORAGE_CONNECTION_STRING).",
            show_default=False,
        ),
    ] = None,
    container: Annotated[str | None, typer.Option(help="Azure: the blob container.", show_default=False)] = None,
    resource_group: Annotated[
        str | None, typer.Option(help="Azure: resource group of the image.", show_default=False)
    ] = None,
    location: Annotated[str | None, typer.Option(help="Azure: region of the image.", show_default=False)] = None,
    subscription: Annotated[
        str | None,
        typer.Option(help="Azure: subscription id (default: AZURE_SUBSCRIPTION_ID).", show_default=False),
    ] = None,
    region: Annotated[
        str | None, typer.Option(help="AWS: region (default: AWS_REGION / the profile's).", show_default=False)
    ] = None,
    method: Annotated[
        Method, typer.Option(help="AWS: ebs (EBS direct API) or s3 (S3 + import-snapshot).")
    ] = Method.ebs,
    cloud: Annotated[
        str | None, typer.Option(help="OpenStack: the cloud's name in clouds.yaml (default: OS_*).", show_default=False)
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")] = False,
) -> None:
    """Upload an image artifact to a cloud and register it (skipped when already registered).

    Sparse-aware (only data is sent to Azure and AWS) and resumable: an interrupted upload continues where it
    stopped when the same command runs again.
    """
    from devserver.clouds.common import UploadOptions

    options = UploadOptions(
        project=project,
        bucket=bucket,
        compute_endpoint=compute_endpoint,
        account_url=account_url,
        connection_string=os.environ.get("AZURE_STORAGE_CONNECTION_STRING") if account_url is None else None,
        container=container,
        resource_group=resource_group,
        location=location,
        subscription=subscription or os.environ.get("AZURE_SUBSCRIPTION_ID"),
        region=region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
        method=method.value,
        cloud=cloud,
    )
    result = run_upload(artifact, target, options, json_out)
    render(result, json_out)


def run_upload(artifact: Path, target: str, options: UploadOptions, json_out: bool) -> UploadResult:
    """Build the target's uploader and publish; errors become one line and the exit code."""
    from devserver.cli.output import fail, interrupted
    from devserver.clouds import SDK_MODULES, UPLOADERS
    from devserver.clouds.common import CloudError, open_artifact, publish
    from devserver.errors import DevserverError

    missing = [m for m in SDK_MODULES[target] if importlib.util.find_spec(m.split(".")[0]) is None]
    try:
        if missing:
            raise CloudError(f"--target {target} needs {', '.join(missing)}", f"pip install 'devserver[{target}]'")
        open_artifact(artifact, target)  # the artifact's own problems first: they are the same on every cloud
        uploader = UPLOADERS[target](options)
        if json_out:
            return publish(uploader, artifact)
        return _with_progress(uploader, artifact)
    except DevserverError as exc:
        fail(exc, json_out)
    except KeyboardInterrupt:
        interrupted("upload interrupted", "run the same command again to resume", json_out)


def _with_progress(uploader: Uploader, artifact: Path) -> UploadResult:
    """publish() with a Rich progress bar (bytes, rate, time left) on stderr."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    from devserver.cli.output import err
    from devserver.clouds.common import publish

    columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress("[progress.description]{task.description}", *columns, console=err(), transient=True) as bar:
        task = bar.add_task("uploading", total=None)

        def report(event: ProgressEvent) -> None:
            bar.update(task, completed=event.sent, total=event.total or None)

        return publish(uploader, artifact, report)


def render(result: UploadResult, json_out: bool) -> None:
    from devserver.cli.output import out, write_json

    if json_out:
        write_json({"ok": True, **asdict(result)})
        return
    console = out()
    if result.status == "already-registered":
        console.print(
            f"✓ {result.target}: {result.image.name} already registered ({result.image.id}); nothing uploaded"
        )
        return
    resumed = ", resumed" if result.resumed else ""
    console.print(
        f"✓ {result.target}: registered {result.image.name} ({result.image.id}) from {result.location}; "
        f"sent {result.bytes_sent / 2**20:.1f} MiB of {result.virtual_size / 2**20:.0f} MiB{resumed} "
        f"in {result.seconds:.1f} s"
    )
