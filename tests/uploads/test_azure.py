"""Azure uploads: the page blob against a real Azurite; the managed image through azure-core's transport seam.

Azurite implements the blob service only. The management call (images create/list) goes through a transport
fixture (tests/uploads/cloud_fixtures.py) that records each request, checks its body with azure-mgmt-compute's own
model deserializer and answers like ARM (the image then exists, so a second upload finds it).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient

from devserver.clouds.azure import GRANULE
from devserver.clouds.common import HASH_KEY, CloudError, ProgressEvent, publish
from devserver.images.artifact import load_manifest
from devtools import emulators
from devtools.fixture_disk import GIB, data_blocks
from tests.uploads.cloud_fixtures import SUBSCRIPTION, RecordingArmTransport, azure_uploader
from tests.uploads.conftest import ArtifactFactory, run_upload_cli


def assert_blob_holds(azurite: emulators.Emulator, container: str, blob: str, vhd: Path) -> None:
    """The page blob: the VHD's size, page ranges exactly over its data and footer, each byte-identical."""
    client = BlobServiceClient.from_connection_string(emulators.azurite_connection_string(azurite))
    blob_client = client.get_blob_client(container, blob)
    assert blob_client.get_blob_properties().size == vhd.stat().st_size
    ranges = [r for r in blob_client.list_page_ranges() if not r.cleared]
    covered = {i for r in ranges for i in range(r.start // GRANULE, r.end // GRANULE + 1)}
    assert covered == data_blocks(GRANULE) | {GIB // GRANULE}
    with vhd.open("rb") as f:
        for r in ranges:
            length = r.end + 1 - r.start
            f.seek(r.start)
            assert blob_client.download_blob(offset=r.start, length=length).readall() == f.read(length)


def test_page_blob_sends_only_data_and_registers_a_gen2_image(
    azurite: emulators.Emulator, container: str, make_artifact: ArtifactFactory
) -> None:
    folder = make_artifact("azure")
    manifest = load_manifest(folder)
    transport = RecordingArmTransport()
    result = publish(azure_uploader(azurite, container, transport), folder)
    assert result.status == "registered"
    assert result.bytes_sent <= 1.05 * manifest.primary.allocated
    assert_blob_holds(azurite, container, f"{manifest.name}.vhd", folder / "disk.vhd")
    (put,) = transport.puts()
    assert put["location"] == "westeurope"
    assert put["tags"][HASH_KEY] == manifest.inputs_hash
    assert put["properties"]["hyperVGeneration"] == "V2"
    os_disk = put["properties"]["storageProfile"]["osDisk"]
    assert os_disk == {
        "osType": "Linux",
        "osState": "Generalized",
        "blobUri": result.location,
        "caching": "ReadWrite",
    }
    assert result.location.endswith(f"/{container}/{manifest.name}.vhd")

    again = publish(azure_uploader(azurite, container, transport), folder)
    assert again.status == "already-registered"
    assert again.image == result.image
    assert len(transport.puts()) == 1


def test_interrupted_page_upload_resumes_from_the_blobs_page_ranges(
    azurite: emulators.Emulator, container: str, make_artifact: ArtifactFactory
) -> None:
    folder = make_artifact("azure")
    manifest = load_manifest(folder)

    class Interrupted(Exception):
        pass

    def kill_halfway(event: ProgressEvent) -> None:
        if event.sent > event.total // 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        publish(azure_uploader(azurite, container, RecordingArmTransport()), folder, kill_halfway)
    events: list[ProgressEvent] = []
    result = publish(azure_uploader(azurite, container, RecordingArmTransport()), folder, events.append)
    assert result.resumed
    assert 0 < result.bytes_sent < 0.6 * manifest.primary.allocated
    assert events[0].total == result.bytes_sent
    assert_blob_holds(azurite, container, f"{manifest.name}.vhd", folder / "disk.vhd")


def test_failed_image_creation_deletes_the_blob(
    azurite: emulators.Emulator, container: str, make_artifact: ArtifactFactory
) -> None:
    folder = make_artifact("azure")
    transport = RecordingArmTransport(fail_put=(409, "OperationNotAllowed"))
    with pytest.raises(CloudError, match=r"registration failed: .*OperationNotAllowed.*removed what this run created"):
        publish(azure_uploader(azurite, container, transport), folder)
    client = BlobServiceClient.from_connection_string(emulators.azurite_connection_string(azurite))
    assert list(client.get_container_client(container).list_blobs()) == []


def _cli_env(azurite: emulators.Emulator, key: str = emulators.AZURITE_KEY) -> dict[str, str]:
    return {"AZURE_STORAGE_CONNECTION_STRING": emulators.azurite_connection_string(azurite, key)}


def _cli_args(folder: Path, container: str) -> list[str]:
    return [
        str(folder),
        "--target",
        "azure",
        "--container",
        container,
        "--resource-group",
        "rg",
        "--location",
        "westeurope",
        "--subscription",
        SUBSCRIPTION,
    ]


def test_wrong_account_key_is_a_clear_cloud_error(
    azurite: emulators.Emulator, container: str, make_artifact: ArtifactFactory
) -> None:
    wrong = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5LXdyb25nLWtleQ=="
    code, doc, _ = run_upload_cli(*_cli_args(make_artifact("azure"), container), env=_cli_env(azurite, wrong))
    assert code == 1
    assert "authentication failed" in str(doc["error"])
    assert "fix: check the account key" in str(doc["error"])


def test_missing_container_is_a_clear_cloud_error(azurite: emulators.Emulator, make_artifact: ArtifactFactory) -> None:
    code, doc, _ = run_upload_cli(*_cli_args(make_artifact("azure"), "no-such-container"), env=_cli_env(azurite))
    assert code == 1
    assert "no-such-container" in str(doc["error"])
    assert "not found" in str(doc["error"])
