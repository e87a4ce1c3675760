"""GCE uploads: the resumable upload against a real gcp-storage-emulator; images.* against a validating server.

No emulator implements compute. The compute fixture server (tests/uploads/cloud_fixtures.py) decodes every request
with google-cloud-compute's own message types (``Image.from_json`` rejects unknown fields), records it, and answers
like the API: an insert creates the image, so a second upload finds it by its label.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from devserver.clouds.common import HASH_KEY, ProgressEvent, publish
from devserver.clouds.gce import GceUploader
from devserver.images.artifact import load_manifest
from tests.uploads.cloud_fixtures import PROJECT, ComputeFixture
from tests.uploads.conftest import ArtifactFactory, run_upload_cli


def _object_sha256(bucket: str, name: str) -> str:
    client = storage.Client(project=PROJECT, credentials=AnonymousCredentials())
    return hashlib.sha256(client.bucket(bucket).blob(name).download_as_bytes()).hexdigest()


def _cli(folder: Path, bucket: str, compute: ComputeFixture, project: str = PROJECT) -> tuple[int, dict[str, Any], str]:
    args = [str(folder), "--target", "gce", "--project", project, "--bucket", bucket, "--compute-endpoint", compute.url]
    return run_upload_cli(*args)


def test_upload_registers_an_image_in_the_family_with_features_and_labels(
    bucket: str, compute: ComputeFixture, make_artifact: ArtifactFactory
) -> None:
    folder = make_artifact("gce")
    manifest = load_manifest(folder)
    code, doc, stderr = _cli(folder, bucket, compute)
    assert code == 0, (doc, stderr)
    assert doc["status"] == "registered"
    assert doc["location"] == f"gs://{bucket}/devserver/{manifest.name}.tar.gz"
    assert doc["bytes_sent"] == manifest.primary.file_size
    assert _object_sha256(bucket, f"devserver/{manifest.name}.tar.gz") == manifest.primary.sha256
    image = compute.inserts[-1]
    assert image.name == manifest.name
    assert image.family == "ml-dev"
    assert [f.type_ for f in image.guest_os_features] == ["UEFI_COMPATIBLE", "GVNIC", "VIRTIO_SCSI_MULTIQUEUE"]
    assert image.labels[HASH_KEY] == manifest.inputs_hash[:63]
    assert image.raw_disk.source == f"https://storage.googleapis.com/{bucket}/devserver/{manifest.name}.tar.gz"

    inserts = len(compute.inserts)
    code, again, _ = _cli(folder, bucket, compute)
    assert code == 0
    assert again["status"] == "already-registered"
    assert again["image"] == doc["image"]
    assert len(compute.inserts) == inserts


def test_interrupted_upload_resumes_from_the_session_offset(
    bucket: str, compute: ComputeFixture, make_artifact: ArtifactFactory
) -> None:
    folder = make_artifact("gce", firmware=("bios",))
    manifest = load_manifest(folder)
    chunk = 4 * 1024 * 1024
    size = manifest.primary.file_size
    assert size > 3 * chunk

    class Interrupted(Exception):
        pass

    def kill_after_two_chunks(event: ProgressEvent) -> None:
        if event.sent >= 2 * chunk:
            raise Interrupted

    with pytest.raises(Interrupted):
        publish(GceUploader(PROJECT, bucket, compute.url, chunk_size=chunk), folder, kill_after_two_chunks)
    assert json.loads((folder / ".upload-state" / "gce.json").read_text())["session_url"].startswith("http")
    events: list[ProgressEvent] = []
    result = publish(GceUploader(PROJECT, bucket, compute.url, chunk_size=chunk), folder, events.append)
    assert result.resumed
    assert events[0].total == result.bytes_sent == size - 2 * chunk
    assert _object_sha256(bucket, f"devserver/{manifest.name}.tar.gz") == manifest.primary.sha256
    assert [f.type_ for f in compute.inserts[-1].guest_os_features] == ["GVNIC", "VIRTIO_SCSI_MULTIQUEUE"]


def test_failed_insert_deletes_the_uploaded_object(
    bucket: str, compute: ComputeFixture, make_artifact: ArtifactFactory
) -> None:
    folder = make_artifact("gce")
    compute.fail_insert = "Required 'compute.images.create' permission for 'projects/devserver-test'"
    try:
        code, doc, _ = _cli(folder, bucket, compute)
    finally:
        compute.fail_insert = None
    assert code == 1
    assert "registration failed" in doc["error"]
    assert "permission denied" in doc["error"]
    assert "removed what this run created: gs://" in doc["error"]
    client = storage.Client(project=PROJECT, credentials=AnonymousCredentials())
    assert list(client.list_blobs(bucket)) == []


def test_missing_bucket_and_missing_project_are_clear_cloud_errors(
    bucket: str, compute: ComputeFixture, make_artifact: ArtifactFactory
) -> None:
    folder = make_artifact("gce")
    code, doc, _ = _cli(folder, "no-such-bucket", compute)
    assert code == 1
    assert "bucket 'no-such-bucket' not found" in doc["error"]
    code, doc, _ = _cli(folder, bucket, compute, project="no-such-project")
    assert code == 1
    assert "project 'no-such-project' not found" in doc["error"]


def test_refused_credentials_are_a_clear_cloud_error(
    bucket: str, compute: ComputeFixture, make_artifact: ArtifactFactory
) -> None:
    """The emulators take any credentials; the compute fixture answers 401 as Google does for a revoked token. The
    SDK then tries to refresh the credentials (anonymous ones here cannot be), which is the error the user sees."""
    inserts = len(compute.inserts)
    compute.fail_all = (401, "Request had invalid authentication credentials.")
    try:
        code, doc, _ = _cli(make_artifact("gce"), bucket, compute)
    finally:
        compute.fail_all = None
    assert code == 1
    assert "credentials" in doc["error"]
    assert "fix: run `gcloud auth application-default login`" in doc["error"]
    assert len(compute.inserts) == inserts  # refused before anything was registered


def test_human_output_reports_the_registered_image(
    bucket: str, compute: ComputeFixture, make_artifact: ArtifactFactory
) -> None:
    from typer.testing import CliRunner

    from tests.uploads.conftest import upload_app

    folder = make_artifact("gce")
    args = ["upload", str(folder), "--target", "gce", "--project", PROJECT, "--bucket", bucket]
    result = CliRunner().invoke(upload_app(), [*args, "--compute-endpoint", compute.url])
    assert result.exit_code == 0, result.stderr
    name = load_manifest(folder).name
    assert result.stdout.startswith(f"✓ gce: registered {name} (")
    again = CliRunner().invoke(upload_app(), [*args, "--compute-endpoint", compute.url])
    assert again.stdout.startswith(f"✓ gce: {name} already registered")
