"""Bytes sent by the sparse-aware Azure and AWS uploads, beside the naive full-size upload.

Builds the tests' sparse fixture disk (1 GiB virtual, data in scattered extents, explicit zeros, holes), writes the
Azure and AWS artifacts with write_formats, uploads each to its emulator (Azurite; moto's EBS direct API) and prints
bytes sent, allocated bytes, the ratio, the naive full-size upload and the wall time. Run from the checkout:

    .venv/bin/python bench/upload_bytes.py
"""

from __future__ import annotations

import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from azure.storage.blob import BlobServiceClient

from devserver.clouds.aws import AwsUploader
from devserver.clouds.azure import AzureUploader
from devserver.clouds.common import Artifact, Meter, open_artifact
from devserver.images.artifact import Manifest, write_manifest
from devserver.images.formats import write_formats
from devtools import emulators
from devtools.fixture_disk import write_fixture_disk


def artifact(disk: Path, target: str, folder: Path) -> Artifact:
    files = write_formats(disk, target, folder)
    inputs_hash = secrets.token_hex(32)
    write_manifest(
        folder,
        Manifest(
            name=f"bench-{inputs_hash[:12]}",
            family="bench",
            target=target,  # type: ignore[arg-type]
            distro="debian-12",
            builder="chroot",
            inputs_hash=inputs_hash,
            firmware=("bios", "uefi"),
            hyperv_generation="V2" if target == "azure" else None,
            disks=tuple(files),
            created="2026-12-01T00:00:00Z",
        ),
    )
    return open_artifact(folder, target)


def measure(name: str, uploader: AzureUploader | AwsUploader, art: Artifact) -> None:
    meter = Meter()
    started = time.monotonic()
    uploader.upload(art, meter)
    seconds = time.monotonic() - started
    disk = art.disk
    print(
        f"{name:<6} sent {meter.sent / 2**20:8.2f} MiB  allocated {disk.allocated / 2**20:8.2f} MiB  "
        f"ratio {meter.sent / disk.allocated:5.3f}  naive {disk.file_size / 2**20:8.1f} MiB  "
        f"({disk.file_size / meter.sent:5.1f}x less)  {seconds:5.1f} s"
    )


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="devserver-bench-") as tmp:
        root = Path(tmp)
        disk = root / "disk.raw"
        write_fixture_disk(disk)
        azure_art = artifact(disk, "azure", root / "azure")
        aws_art = artifact(disk, "aws", root / "aws")
        azurite = emulators.start_azurite()
        moto = emulators.start_moto()
        try:
            conn = emulators.azurite_connection_string(azurite)
            BlobServiceClient.from_connection_string(conn).create_container("bench")
            azure = AzureUploader("bench", "rg", "westeurope", "sub", connection_string=conn)
            os.environ.update(AWS_ENDPOINT_URL=moto.url, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench")
            print(f"fixture disk: {disk.stat().st_size / 2**30:.0f} GiB virtual")
            measure("azure", azure, azure_art)
            measure("aws", AwsUploader(region="eu-west-1"), aws_art)
        finally:
            azurite.stop()
            moto.stop()


if __name__ == "__main__":
    main()
