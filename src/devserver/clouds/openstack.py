"""OpenStack / cPouta: a Glance image from disk.qcow2, its checksum verified by Glance's own hash.

The image record is created first (``disk_format=qcow2``, ``hw_firmware_type``, ``os_distro``, ``os_version``,
``hw_disk_bus`` and the inputs hash as properties), then the data is PUT in one stream and the image's
``os_hash_value`` (sha512, computed by Glance as it stored the bytes) is compared with the local file's.

Glance has no ranged uploads: an interrupted run leaves a ``queued`` record, which the next run reuses (found by the
inputs hash) and uploads the data into again. Auth comes from clouds.yaml / ``OS_*`` through openstacksdk
(``--cloud NAME``).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import IO, Any, ClassVar

from devserver.clouds.common import Artifact, CloudError, Image, Meter, Uploaded, UploadOptions
from devserver.images.artifact import Manifest

HASH_PROPERTY = "devserver_inputs_hash"  # Glance property keys: the other clouds' key with underscores
READ = 4 * 1024 * 1024


def image_properties(manifest: Manifest) -> dict[str, str]:
    """Glance properties: firmware (UEFI when the disk supports it), distro and version, disk bus, inputs hash."""
    distro, _, version = manifest.distro.partition("-")
    return {
        "hw_firmware_type": "uefi" if "uefi" in manifest.firmware else "bios",
        "hw_machine_type": "q35" if "uefi" in manifest.firmware else "pc",
        "os_distro": distro,
        "os_version": version,
        "hw_disk_bus": "virtio",
        "hw_scsi_model": "virtio-scsi",
        "devserver_family": manifest.family,
        HASH_PROPERTY: manifest.inputs_hash,
    }


class _CountingReader:
    """A file object that reports every read to the meter (requests streams the body through it)."""

    def __init__(self, f: IO[bytes], meter: Meter, size: int) -> None:
        self._f = f
        self._meter = meter
        self._size = size

    def __len__(self) -> int:
        return self._size

    def read(self, amount: int = -1) -> bytes:
        data = self._f.read(READ if amount is None or amount < 0 else amount)
        self._meter.add(len(data))
        return data


def _fail(exc: Exception, doing: str, cloud: str | None) -> CloudError:
    from keystoneauth1 import exceptions as kexc
    from openstack import exceptions as oexc

    where = f" (cloud {cloud!r})" if cloud else ""
    if isinstance(exc, oexc.ConfigException):
        return CloudError(f"{doing}: {exc}", "name a cloud from clouds.yaml with --cloud, or set OS_* variables")
    if isinstance(exc, kexc.Unauthorized | oexc.HttpException) and getattr(exc, "status_code", None) == 401:
        return CloudError(f"{doing}{where}: authentication failed", "check the credentials in clouds.yaml / OS_*")
    if isinstance(exc, oexc.ForbiddenException):
        return CloudError(f"{doing}{where}: forbidden ({_plain(exc.details)})", "check the project's role")
    if isinstance(exc, oexc.HttpException) and exc.status_code == 413:
        return CloudError(f"{doing}{where}: image quota exceeded", "delete unused images or ask for more quota")
    if isinstance(exc, oexc.SDKException | kexc.ClientException):
        return CloudError(f"{doing}{where}: {_plain(exc)}", "check clouds.yaml / OS_* and the image service endpoint")
    raise exc


def _plain(text: object) -> str:
    """An error body on one line: Glance's messages carry HTML line breaks."""
    return " ".join(re.sub(r"<[^>]+>", " ", str(text)).split())


@dataclass
class OpenStackUploader:
    """Glance image in the cloud `cloud` of clouds.yaml (None: OS_* environment variables)."""

    cloud: str | None = None
    target: ClassVar[str] = "openstack"
    _conn: Any = field(default=None, init=False, repr=False)

    def _image(self) -> Any:
        if self._conn is None:
            import openstack

            try:
                self._conn = openstack.connect(cloud=self.cloud) if self.cloud else openstack.connect()
            except Exception as exc:
                raise _fail(exc, "connecting", self.cloud) from None
        return self._conn.image

    def _by_hash(self, manifest: Manifest) -> list[Any]:
        """Images carrying the inputs hash. Glance filters on any property; openstacksdk's images() drops
        unknown filters, so the query goes out as is and the property is checked again on what comes back."""
        image_service = self._image()
        try:
            response = image_service.get(f"images?{HASH_PROPERTY}={manifest.inputs_hash}")
            response.raise_for_status()
            found = [r for r in response.json()["images"] if r.get(HASH_PROPERTY) == manifest.inputs_hash]
            return [image_service.get_image(r["id"]) for r in found]
        except Exception as exc:
            raise _fail(exc, "listing images", self.cloud) from None

    def check(self) -> None:
        self._image()

    def find(self, manifest: Manifest) -> Image | None:
        active = [i for i in self._by_hash(manifest) if i.status == "active"]
        return Image(active[0].id, active[0].name) if active else None

    def upload(self, artifact: Artifact, meter: Meter) -> Uploaded:
        manifest = artifact.manifest
        image_service = self._image()
        queued = [i for i in self._by_hash(manifest) if i.status in ("queued", "saving")]
        try:
            if queued:
                image = self._reusable(queued[0])
            else:
                image = image_service.create_image(
                    name=manifest.name,
                    disk_format="qcow2",
                    container_format="bare",
                    visibility="private",
                    allow_duplicates=True,
                    **image_properties(manifest),
                )
            size = artifact.disk.file_size
            meter.start(size)
            with artifact.disk_path.open("rb") as f:
                try:
                    image.upload(image_service, data=_CountingReader(f, meter, size), size=size).raise_for_status()
                except BaseException:
                    # Close the connection so Glance sees the upload end and returns the record to `queued`.
                    self._conn.close()
                    self._conn = None
                    raise
            stored = image_service.get_image(image.id)
        except Exception as exc:
            raise _fail(exc, f"uploading {manifest.name}", self.cloud) from None
        local = _sha512(artifact)
        if stored.hash_algo != "sha512" or stored.hash_value != local:
            raise CloudError(
                f"Glance image {image.id} holds {stored.hash_algo}:{str(stored.hash_value)[:16]}…, "
                f"the local file is sha512:{local[:16]}…",
                "run the upload again (the image record is reused)",
            )
        return Uploaded(
            f"glance:{image.id}",
            resumed=bool(queued),
            created=(f"Glance image {image.id}",),
            extra=(("image", image.id),),
        )

    def _reusable(self, image: Any) -> Any:
        """An image record an interrupted run left: once Glance has put it back to ``queued`` (it was ``saving``)."""
        if image.status == "saving":
            try:
                return self._image().wait_for_status(image, status="queued", failures=["killed", "active"], wait=60)
            except Exception:
                raise CloudError(
                    f"Glance image {image.id} is still receiving data from another upload",
                    f"wait for it to finish, or delete it (openstack image delete {image.id}) and run again",
                ) from None
        return image

    def register(self, artifact: Artifact, uploaded: Uploaded) -> Image:
        """Glance registers as it stores: wait for the image to be ``active``."""
        try:
            image = self._image().wait_for_status(
                self._image().get_image(uploaded.get("image")), status="active", failures=["killed"], wait=300
            )
        except Exception as exc:
            raise _fail(exc, f"activating image {artifact.manifest.name}", self.cloud) from None
        return Image(image.id, image.name)

    def discard(self, uploaded: Uploaded) -> tuple[str, ...]:
        try:
            self._image().delete_image(uploaded.get("image"), ignore_missing=True)
        except Exception:
            return uploaded.created
        return ()


def _sha512(artifact: Artifact) -> str:
    digest = hashlib.sha512()
    with artifact.disk_path.open("rb") as f:
        while block := f.read(READ):
            digest.update(block)
    return digest.hexdigest()


def from_options(options: UploadOptions) -> OpenStackUploader:
    return OpenStackUploader(cloud=options.cloud)
