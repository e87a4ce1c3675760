"""Azure: the fixed VHD as a page blob, sending only its non-zero pages, then a managed image.

The blob is created at the VHD's full size (a page blob reads as zeros wherever nothing was written), and only the
4 KiB-aligned runs that hold data are written with ``upload_page`` (≤ 4 MiB each, Azure's limit). The blob carries
the disk's sha256 in its metadata; a re-run that finds the blob with the same sha256 reads its page ranges and sends
only the runs not yet there. The managed image gets ``hyper_v_generation`` from the manifest and tags with the
inputs hash; a failed image creation deletes the blob.

Credentials: the storage account by connection string (``AZURE_STORAGE_CONNECTION_STRING``) or by account URL with
DefaultAzureCredential; azure-mgmt-compute with DefaultAzureCredential (or the `credential` given).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

from devserver.clouds.common import (
    HASH_KEY,
    Artifact,
    CloudError,
    Image,
    Meter,
    OptionError,
    Uploaded,
    UploadOptions,
    data_runs,
)
from devserver.images.artifact import Manifest

PAGE_RUN = 4 * 1024 * 1024  # the most one Put Page may write
GRANULE = 4096  # zero detection granularity: a multiple of the 512-byte page, the size filesystems allocate in


def hyperv_generation(manifest: Manifest) -> str:
    """The manifest's generation; without one, V2 for UEFI-only disks and V1 for disks that boot with BIOS."""
    if manifest.hyperv_generation is not None:
        return manifest.hyperv_generation
    return "V2" if "bios" not in manifest.firmware else "V1"


def image_model(manifest: Manifest, location: str, blob_url: str) -> Any:
    """The azure-mgmt-compute Image for `manifest` whose OS disk is the page blob at `blob_url`."""
    from azure.mgmt.compute import models

    return models.Image(
        location=location,
        properties=models.ImageProperties(
            hyper_v_generation=hyperv_generation(manifest),
            storage_profile=models.ImageStorageProfile(
                os_disk=models.ImageOSDisk(
                    os_type="Linux", os_state="Generalized", blob_uri=blob_url, caching="ReadWrite"
                ),
            ),
        ),
        tags={HASH_KEY: manifest.inputs_hash, "devserver-family": manifest.family},
    )


def create_image(compute: Any, resource_group: str, name: str, image: Any) -> str:
    """Create (or update) managed image `name` and wait for the long-running operation; return its resource id.

    The one Azure call no emulator implements: tested through azure-core's transport seam with a transport that
    records the request and checks it against azure-mgmt-compute's own model deserializer (tests/uploads).
    """
    created = compute.images.begin_create_or_update(resource_group, name, image).result()
    return str(created.id)


def _fail(exc: Exception, doing: str) -> CloudError:
    from azure.core import exceptions as aexc

    if isinstance(exc, aexc.ClientAuthenticationError):
        return CloudError(f"{doing}: authentication failed ({_first_line(exc)})", "check the account key / az login")
    if isinstance(exc, aexc.ResourceNotFoundError):
        return CloudError(f"{doing}: not found ({_first_line(exc)})", "create it, or pass an existing one")
    if isinstance(exc, aexc.HttpResponseError):
        code = getattr(exc, "error_code", None) or exc.status_code
        if str(code).split(".")[-1].upper() in (
            "AUTHENTICATIONFAILED",
            "AUTHORIZATION_FAILURE",
            "AUTHORIZATIONFAILURE",
        ):
            return CloudError(
                f"{doing}: authentication failed ({_first_line(exc)})",
                "check the account key / connection string, or the role (Storage Blob Data Contributor)",
            )
        if "Quota" in str(code):
            fix = "ask for a higher quota or delete unused images"
        elif exc.status_code == 403:
            fix = "check the role assignment (Contributor on the resource group, Storage Blob Data Contributor)"
        else:
            fix = "see the Azure error above"
        return CloudError(f"{doing}: {code}: {_first_line(exc)}", fix)
    if isinstance(exc, aexc.AzureError):
        return CloudError(f"{doing}: {_first_line(exc)}", "check the account URL and network access to Azure")
    raise exc


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


@dataclass
class AzureUploader:
    """Page blob in `container`, managed image in `resource_group`/`location` of `subscription`.

    `connection_string` or `account_url` names the storage account. `credential` and `arm_transport` replace
    DefaultAzureCredential and azure-core's HTTP transport for the management calls (other clouds, tests).
    """

    container: str
    resource_group: str
    location: str
    subscription: str
    connection_string: str | None = None
    account_url: str | None = None
    credential: Any = None
    arm_transport: Any = None
    target: ClassVar[str] = "azure"
    _clients: dict[str, Any] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.connection_string and not self.account_url:
            raise OptionError(
                "--account-url", "no storage account given", "pass --account-url or set AZURE_STORAGE_CONNECTION_STRING"
            )

    def _credential(self) -> Any:
        if self.credential is None:
            from azure.identity import DefaultAzureCredential

            self.credential = DefaultAzureCredential()
        return self.credential

    def _blobs(self) -> Any:
        if "blob" not in self._clients:
            from azure.storage.blob import BlobServiceClient

            if self.connection_string:
                service = BlobServiceClient.from_connection_string(self.connection_string)
            else:
                service = BlobServiceClient(str(self.account_url), credential=self._credential())
            self._clients["blob"] = service
        return self._clients["blob"]

    def _compute(self) -> Any:
        if "compute" not in self._clients:
            from azure.mgmt.compute import ComputeManagementClient

            extra = {"transport": self.arm_transport} if self.arm_transport is not None else {}
            self._clients["compute"] = ComputeManagementClient(self._credential(), self.subscription, **extra)
        return self._clients["compute"]

    def check(self) -> None:
        try:
            self._blobs().get_container_client(self.container).get_container_properties()
        except Exception as exc:
            raise _fail(exc, f"opening container {self.container!r}") from None

    def find(self, manifest: Manifest) -> Image | None:
        try:
            for image in self._compute().images.list_by_resource_group(self.resource_group):
                if (image.tags or {}).get(HASH_KEY) == manifest.inputs_hash:
                    return Image(str(image.id), str(image.name))
        except Exception as exc:
            raise _fail(exc, f"listing images in resource group {self.resource_group}") from None
        return None

    def upload(self, artifact: Artifact, meter: Meter) -> Uploaded:
        from azure.core.exceptions import ResourceNotFoundError

        name = f"{artifact.manifest.name}.vhd"
        blob = self._blobs().get_blob_client(self.container, name)
        size = artifact.disk.file_size
        done: list[tuple[int, int]] = []
        try:
            try:
                props = blob.get_blob_properties()
                same = props.size == size and props.metadata.get("sha256") == artifact.disk.sha256
            except ResourceNotFoundError as exc:
                if getattr(exc, "error_code", "") == "ContainerNotFound":
                    raise
                same = False
            if same:
                done = sorted((r.start, r.end + 1) for r in blob.list_page_ranges() if not r.cleared)
            else:
                blob.create_page_blob(
                    # Blob metadata names are C# identifiers: the hash key with underscores.
                    size,
                    metadata={
                        "sha256": artifact.disk.sha256,
                        HASH_KEY.replace("-", "_"): artifact.manifest.inputs_hash,
                    },
                )
        except Exception as exc:
            raise _fail(exc, f"preparing page blob {self.container}/{name}") from None
        runs = [run for run in data_runs(artifact.disk_path, GRANULE, limit=PAGE_RUN) if not _covered(run, done)]
        meter.start(sum(length for _, length in runs))
        with artifact.disk_path.open("rb") as f:
            for offset, length in runs:
                data = os.pread(f.fileno(), length, offset)
                try:
                    blob.upload_page(data, offset=offset, length=length)
                except Exception as exc:
                    raise _fail(exc, f"writing pages at {offset} of {self.container}/{name}") from None
                meter.add(length)
        created = (f"page blob {blob.url}",) if not done else (f"page blob {blob.url} (resumed)",)
        return Uploaded(blob.url, resumed=bool(done), created=created, extra=(("blob", name),))

    def register(self, artifact: Artifact, uploaded: Uploaded) -> Image:
        name = artifact.manifest.name
        try:
            image_id = create_image(
                self._compute(),
                self.resource_group,
                name,
                image_model(artifact.manifest, self.location, uploaded.location),
            )
        except Exception as exc:
            raise _fail(exc, f"creating managed image {name}") from None
        return Image(image_id, name)

    def discard(self, uploaded: Uploaded) -> tuple[str, ...]:
        try:
            self._blobs().get_blob_client(self.container, uploaded.get("blob")).delete_blob()
        except Exception:
            return uploaded.created
        return ()


def _covered(run: tuple[int, int], ranges: list[tuple[int, int]]) -> bool:
    """Whether [offset, offset+length) lies inside one of the sorted, half-open `ranges` (merged by the service)."""
    start, end = run[0], run[0] + run[1]
    merged: list[tuple[int, int]] = []
    for lo, hi in ranges:
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return any(lo <= start and end <= hi for lo, hi in merged)


def from_options(options: UploadOptions) -> AzureUploader:
    return AzureUploader(
        container=options.need("container", "azure", "images"),
        resource_group=options.need("resource_group", "azure", "devserver-images"),
        location=options.need("location", "azure", "westeurope"),
        subscription=options.need("subscription", "azure", "00000000-0000-0000-0000-000000000000"),
        connection_string=options.connection_string,
        account_url=options.account_url,
    )
