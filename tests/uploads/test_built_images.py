"""Images made by the real image builder, uploaded to each emulator and read back.

The other upload tests send artifacts made from a fixture disk (conftest.py). These send the artifacts that
`devserver image build` makes for each cloud target from the driver-only spec: ``cloud_artifact`` from
tests/support/image_builds.py, shared with tests/images/test_build_e2e.py and built once per session. That needs
root, and takes minutes per target when the tests/images run has not already built them in the same session (the
provisioned tree is cached between sessions under ``$DEVSERVER_TEST_CACHE``).

Each upload is read back from the emulator and must hash to the manifest's sha256 of the file that was sent: the
EBS snapshot's blocks and the page blob's non-cleared ranges are written at their offsets into a sparse file of the
disk's size (what a machine booting the image reads), the GCS object and the Glance image are streamed (Glance also
verifies its own sha512 of the data, in the uploader). A second upload of the same artifact registers nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import openstack
from azure.storage.blob import BlobServiceClient
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from devserver.clouds.aws import BLOCK
from devserver.clouds.common import HASH_KEY, publish
from devserver.clouds.openstack import HASH_PROPERTY
from devserver.images.artifact import Manifest, load_manifest
from devtools import emulators
from devtools.fixture_disk import MIB
from tests.uploads.cloud_fixtures import (
    PROJECT,
    ComputeFixture,
    RecordingArmTransport,
    azure_uploader,
)
from tests.uploads.conftest import CLOUD, run_upload_cli

BuiltArtifact = Callable[[str], dict[str, Any]]


def _built(cloud_artifact: BuiltArtifact, target: str) -> tuple[Path, Manifest]:
    folder = Path(cloud_artifact(target)["folder"])
    manifest = load_manifest(folder)
    assert manifest.target == target
    return folder, manifest


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


class _HashingWriter:
    """A write-only file object that hashes what is written to it (for a download too big to hold in memory)."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return len(data)


def test_gce_built_image_uploads_and_reads_back(
    cloud_artifact: BuiltArtifact, bucket: str, compute: ComputeFixture
) -> None:
    folder, manifest = _built(cloud_artifact, "gce")
    args = [str(folder), "--target", "gce", "--project", PROJECT, "--bucket", bucket, "--compute-endpoint", compute.url]
    code, doc, stderr = run_upload_cli(*args)
    assert code == 0, (doc, stderr)
    assert doc["status"] == "registered"
    name = f"devserver/{manifest.name}.tar.gz"
    assert doc["location"] == f"gs://{bucket}/{name}"
    assert doc["bytes_sent"] == manifest.primary.file_size
    sink = _HashingWriter()
    client = storage.Client(project=PROJECT, credentials=AnonymousCredentials())
    client.bucket(bucket).blob(name).download_to_file(sink)
    assert sink.size == manifest.primary.file_size
    assert sink.digest.hexdigest() == manifest.primary.sha256
    image = compute.inserts[-1]
    assert image.name == manifest.name
    assert image.labels[HASH_KEY] == manifest.inputs_hash[:63]

    inserts = len(compute.inserts)
    code, again, _ = run_upload_cli(*args)
    assert code == 0
    assert again["status"] == "already-registered"
    assert again["image"] == doc["image"]
    assert len(compute.inserts) == inserts


def test_azure_built_image_uploads_and_reads_back(
    cloud_artifact: BuiltArtifact, azurite: emulators.Emulator, container: str, tmp_path: Path
) -> None:
    folder, manifest = _built(cloud_artifact, "azure")
    vhd = manifest.primary
    assert vhd.path == "disk.vhd"
    transport = RecordingArmTransport()
    result = publish(azure_uploader(azurite, container, transport), folder)
    assert result.status == "registered"
    assert result.bytes_sent <= 1.05 * vhd.allocated
    assert result.location.endswith(f"/{container}/{manifest.name}.vhd")

    client = BlobServiceClient.from_connection_string(emulators.azurite_connection_string(azurite))
    blob = client.get_blob_client(container, f"{manifest.name}.vhd")
    assert blob.get_blob_properties().size == vhd.file_size
    copy = tmp_path / "blob.vhd"
    with copy.open("wb") as f:
        f.truncate(vhd.file_size)
        for page_range in blob.list_page_ranges():  # ItemPaged[PageRange]: follows the continuation markers
            if page_range.cleared:
                continue
            start, end = page_range.start, page_range.end  # inclusive
            assert start is not None, page_range
            assert end is not None, page_range
            f.seek(start)
            blob.download_blob(offset=start, length=end + 1 - start).readinto(f)
    assert copy.stat().st_size == vhd.file_size
    assert _sha256_of(copy) == vhd.sha256

    again = publish(azure_uploader(azurite, container, transport), folder)
    assert again.status == "already-registered"
    assert again.image == result.image
    assert len(transport.puts()) == 1


def test_aws_built_image_uploads_and_reads_back(
    cloud_artifact: BuiltArtifact, aws_env: emulators.Emulator, tmp_path: Path
) -> None:
    folder, manifest = _built(cloud_artifact, "aws")
    raw = manifest.primary
    assert raw.path == "disk.raw"
    code, doc, stderr = run_upload_cli(str(folder), "--target", "aws")
    assert code == 0, (doc, stderr)
    assert doc["status"] == "registered"
    assert doc["bytes_sent"] <= 1.05 * raw.allocated

    snapshot = str(doc["location"])
    ebs = boto3.client("ebs")
    copy = tmp_path / "snapshot.raw"
    with copy.open("wb") as f:
        f.truncate(raw.virtual_size)
        page: dict[str, Any] = ebs.list_snapshot_blocks(SnapshotId=snapshot)
        while True:
            for block in page["Blocks"]:
                offset = block["BlockIndex"] * BLOCK
                assert offset < raw.virtual_size, block
                data = ebs.get_snapshot_block(
                    SnapshotId=snapshot, BlockIndex=block["BlockIndex"], BlockToken=block["BlockToken"]
                )["BlockData"].read()
                f.seek(offset)
                f.write(data[: raw.virtual_size - offset])
            if not page.get("NextToken"):
                break
            page = ebs.list_snapshot_blocks(SnapshotId=snapshot, NextToken=page["NextToken"])
    assert copy.stat().st_size == raw.virtual_size
    assert _sha256_of(copy) == raw.sha256

    code, again, _ = run_upload_cli(str(folder), "--target", "aws")
    assert code == 0
    assert again["status"] == "already-registered"
    assert again["bytes_sent"] == 0
    assert again["image"] == doc["image"]
    images = boto3.client("ec2").describe_images(
        Owners=["self"], Filters=[{"Name": f"tag:{HASH_KEY}", "Values": [manifest.inputs_hash]}]
    )["Images"]
    assert len(images) == 1


def test_openstack_built_image_uploads_and_reads_back(cloud_artifact: BuiltArtifact, clouds_yaml: Path) -> None:
    folder, manifest = _built(cloud_artifact, "openstack")
    code, doc, stderr = run_upload_cli(str(folder), "--target", "openstack", "--cloud", CLOUD)
    assert code == 0, (doc, stderr)
    assert doc["status"] == "registered"
    conn = openstack.connect(cloud=CLOUD)
    image_id = doc["image"]["id"]
    stored = conn.image.get(f"images/{image_id}").json()  # Glance's own record, every property flat
    assert stored["status"] == "active"
    assert stored[HASH_PROPERTY] == manifest.inputs_hash
    assert stored["os_hash_algo"] == "sha512"  # verified against the file by the uploader
    downloaded = hashlib.sha256()
    for piece in conn.image.download_image(conn.image.get_image(image_id), stream=True).iter_content(MIB):
        downloaded.update(piece)
    assert downloaded.hexdigest() == manifest.primary.sha256

    code, again, _ = run_upload_cli(str(folder), "--target", "openstack", "--cloud", CLOUD)
    assert code == 0
    assert again["status"] == "already-registered"
    assert again["image"] == doc["image"]
    same = [i for i in conn.image.images() if i.properties.get(HASH_PROPERTY) == manifest.inputs_hash]
    assert len(same) == 1
