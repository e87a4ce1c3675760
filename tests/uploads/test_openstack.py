"""OpenStack uploads against a real Glance (sqlite + file store, no keystone) through openstacksdk and clouds.yaml."""

from __future__ import annotations

import hashlib
from pathlib import Path

import openstack
import pytest

from devserver.clouds.common import ProgressEvent, publish
from devserver.clouds.openstack import HASH_PROPERTY, OpenStackUploader
from devserver.images.artifact import load_manifest
from tests.uploads.conftest import CLOUD, ArtifactFactory, run_upload_cli


def _images(inputs_hash: str) -> list[openstack.image.v2.image.Image]:
    images = openstack.connect(cloud=CLOUD).image.images()
    return [i for i in images if i.properties.get(HASH_PROPERTY) == inputs_hash]


def test_upload_creates_an_active_image_with_properties_and_verified_checksum(
    clouds_yaml: Path, make_artifact: ArtifactFactory
) -> None:
    folder = make_artifact("openstack", firmware=("uefi",))
    manifest = load_manifest(folder)
    code, doc, stderr = run_upload_cli(str(folder), "--target", "openstack", "--cloud", CLOUD)
    assert code == 0, (doc, stderr)
    assert doc["status"] == "registered"
    (image,) = _images(manifest.inputs_hash)
    assert image.id == doc["image"]["id"]
    conn = openstack.connect(cloud=CLOUD)
    stored = conn.image.get(f"images/{image.id}").json()  # Glance's own record, every property flat
    assert stored["status"] == "active"
    assert stored["disk_format"] == "qcow2"
    assert stored["hw_firmware_type"] == "uefi"
    assert stored["hw_machine_type"] == "q35"
    assert stored["os_distro"] == "debian"
    assert stored["os_version"] == "12"
    assert stored["hw_disk_bus"] == "virtio"
    assert stored["os_hash_algo"] == "sha512"
    downloaded = hashlib.sha256()
    for piece in conn.image.download_image(image, stream=True).iter_content(1 << 20):
        downloaded.update(piece)
    assert downloaded.hexdigest() == manifest.primary.sha256

    code, again, _ = run_upload_cli(str(folder), "--target", "openstack", "--cloud", CLOUD)
    assert code == 0
    assert again["status"] == "already-registered"
    assert len(_images(manifest.inputs_hash)) == 1


def test_interrupted_upload_reuses_the_queued_image(clouds_yaml: Path, make_artifact: ArtifactFactory) -> None:
    folder = make_artifact("openstack")
    manifest = load_manifest(folder)

    class Interrupted(Exception):
        pass

    def kill_halfway(event: ProgressEvent) -> None:
        if event.sent > event.total // 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        publish(OpenStackUploader(CLOUD), folder, kill_halfway)
    (queued,) = _images(manifest.inputs_hash)
    assert queued.status in ("queued", "saving")
    result = publish(OpenStackUploader(CLOUD), folder)
    assert result.resumed
    assert result.image.id == queued.id
    (image,) = _images(manifest.inputs_hash)
    stored = openstack.connect(cloud=CLOUD).image.get(f"images/{image.id}").json()
    assert stored["status"] == "active"
    assert stored["hw_firmware_type"] == "uefi"
    assert stored[HASH_PROPERTY] == manifest.inputs_hash


def test_unknown_cloud_is_a_clear_error(clouds_yaml: Path, make_artifact: ArtifactFactory) -> None:
    code, doc, _ = run_upload_cli(str(make_artifact("openstack")), "--target", "openstack", "--cloud", "no-such-cloud")
    assert code == 1
    assert "no-such-cloud" in doc["error"]
    assert "fix: name a cloud from clouds.yaml" in doc["error"]
