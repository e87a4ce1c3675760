"""AWS uploads against a real moto server: EBS direct API snapshot + register_image, and S3 multipart."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
from botocore.stub import Stubber

from devserver.clouds.aws import BLOCK, AwsUploader, import_snapshot, wait_import
from devserver.clouds.common import HASH_KEY, CloudError, ProgressEvent, publish
from devserver.images.artifact import load_manifest
from devtools.fixture_disk import data_blocks
from tests.uploads.conftest import ArtifactFactory, run_upload_cli

pytestmark = pytest.mark.usefixtures("aws_env")


class Interrupted(Exception):
    """Raised by a progress callback to kill an upload halfway."""


def assert_snapshot_holds(snapshot_id: str, raw: Path) -> None:
    """Read the snapshot back through the EBS direct API: exactly the fixture's data blocks, byte-identical.

    Every other block of the fixture disk is a hole or explicit zeros, which an EBS snapshot reads as zeros.
    """
    ebs = boto3.client("ebs")
    blocks = ebs.list_snapshot_blocks(SnapshotId=snapshot_id)["Blocks"]
    assert {b["BlockIndex"] for b in blocks} == data_blocks(BLOCK)
    with raw.open("rb") as f:
        for block in blocks:
            data = ebs.get_snapshot_block(
                SnapshotId=snapshot_id, BlockIndex=block["BlockIndex"], BlockToken=block["BlockToken"]
            )["BlockData"].read()
            f.seek(block["BlockIndex"] * BLOCK)
            assert data == f.read(BLOCK).ljust(BLOCK, b"\0"), f"block {block['BlockIndex']} differs"


def _ami(inputs_hash: str) -> list[dict[str, object]]:
    return boto3.client("ec2").describe_images(
        Owners=["self"], Filters=[{"Name": f"tag:{HASH_KEY}", "Values": [inputs_hash]}]
    )["Images"]


def test_ebs_upload_registers_ami_with_only_data_blocks(make_artifact: ArtifactFactory) -> None:
    folder = make_artifact("aws")
    manifest = load_manifest(folder)
    code, doc, stderr = run_upload_cli(str(folder), "--target", "aws")
    assert code == 0, (doc, stderr)
    assert doc["status"] == "registered"
    disk = manifest.primary
    assert doc["bytes_sent"] <= 1.05 * disk.allocated
    assert doc["bytes_sent"] < disk.virtual_size / 20
    (ami,) = _ami(manifest.inputs_hash)
    assert ami["ImageId"] == doc["image"]["id"]
    assert ami["Name"] == manifest.name
    assert {t["Key"]: t["Value"] for t in ami["Tags"]}["devserver-family"] == "ml-dev"
    snapshot = str(doc["location"])
    assert boto3.client("ec2").describe_snapshots(SnapshotIds=[snapshot])["Snapshots"][0]["State"] == "completed"
    assert_snapshot_holds(snapshot, folder / disk.path)


def test_second_upload_registers_nothing(make_artifact: ArtifactFactory) -> None:
    folder = make_artifact("aws", firmware=("bios",))
    first = run_upload_cli(str(folder), "--target", "aws")
    second = run_upload_cli(str(folder), "--target", "aws")
    assert first[0] == second[0] == 0
    assert second[1]["status"] == "already-registered"
    assert second[1]["bytes_sent"] == 0
    assert second[1]["image"] == first[1]["image"]
    assert len(_ami(load_manifest(folder).inputs_hash)) == 1


def test_interrupted_upload_resumes_with_fewer_bytes(make_artifact: ArtifactFactory) -> None:
    folder = make_artifact("aws")
    uploader = AwsUploader(region="eu-west-1")

    def kill_halfway(event: ProgressEvent) -> None:
        if event.sent >= event.total // 2 and event.sent > 0:
            raise Interrupted

    with pytest.raises(Interrupted):
        publish(uploader, folder, kill_halfway)
    state = json.loads((folder / ".upload-state" / "aws.json").read_text())
    events: list[ProgressEvent] = []
    result = publish(AwsUploader(region="eu-west-1"), folder, events.append)
    assert result.resumed
    assert result.location == state["snapshot_id"]
    assert 0 < result.bytes_sent <= events[0].total
    disk = load_manifest(folder).primary
    assert result.bytes_sent < disk.allocated * 0.6
    assert_snapshot_holds(result.location, folder / disk.path)
    assert not (folder / ".upload-state" / "aws.json").exists()


def test_s3_method_multipart_resumes_and_a_failed_import_leaves_nothing(make_artifact: ArtifactFactory) -> None:
    folder = make_artifact("aws")
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="images", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    part = 5 * 1024 * 1024
    vmdk_size = (folder / "disk.vmdk").stat().st_size
    assert vmdk_size > 3 * part

    def kill_after_two_parts(event: ProgressEvent) -> None:
        if event.sent >= 2 * part:
            raise Interrupted

    with pytest.raises(Interrupted):
        publish(
            AwsUploader(region="eu-west-1", method="s3", bucket="images", part_size=part), folder, kill_after_two_parts
        )
    events: list[ProgressEvent] = []
    # moto does not implement VM Import: the registration fails and the staged object must be removed.
    with pytest.raises(CloudError, match=r"registration failed: .*removed what this run created: s3://images/"):
        publish(AwsUploader(region="eu-west-1", method="s3", bucket="images", part_size=part), folder, events.append)
    assert events[0].total == vmdk_size - 2 * part
    assert events[-1].sent == vmdk_size - 2 * part
    assert s3.list_objects_v2(Bucket="images").get("KeyCount", 0) == 0


def test_s3_method_missing_bucket_is_a_clear_cloud_error(make_artifact: ArtifactFactory) -> None:
    folder = make_artifact("aws")
    code, doc, _ = run_upload_cli(str(folder), "--target", "aws", "--method", "s3", "--bucket", "no-such-bucket")
    assert code == 1
    assert "no-such-bucket" in str(doc["error"])
    assert "fix: create the bucket" in str(doc["error"])


def test_register_image_request_is_valid_for_the_ec2_model(make_artifact: ArtifactFactory) -> None:
    """moto stores only an AMI's name: the rest of the request is checked against botocore's EC2 model."""
    from devserver.clouds.common import Uploaded, open_artifact

    artifact = open_artifact(make_artifact("aws", firmware=("bios",)), "aws")
    manifest = artifact.manifest
    uploader = AwsUploader(region="eu-west-1")
    ec2 = boto3.client("ec2", region_name="eu-west-1")
    uploader._clients["ec2"] = ec2
    tags = [
        {"Key": "Name", "Value": manifest.name},
        {"Key": HASH_KEY, "Value": manifest.inputs_hash},
        {"Key": "devserver-family", "Value": "ml-dev"},
    ]
    with Stubber(ec2) as stub:
        stub.add_response("describe_snapshots", {"Snapshots": [{"SnapshotId": "snap-1", "State": "completed"}]})
        stub.add_response(
            "register_image",
            {"ImageId": "ami-0123456789abcdef0"},
            {
                "Name": manifest.name,
                "Description": f"devserver ml-dev (debian-12, inputs {manifest.inputs_hash[:12]})",
                "Architecture": "x86_64",
                "VirtualizationType": "hvm",
                "RootDeviceName": "/dev/xvda",
                "BlockDeviceMappings": [
                    {
                        "DeviceName": "/dev/xvda",
                        "Ebs": {"SnapshotId": "snap-1", "VolumeType": "gp3", "DeleteOnTermination": True},
                    }
                ],
                "EnaSupport": True,
                "BootMode": "legacy-bios",
                "TagSpecifications": [{"ResourceType": "image", "Tags": tags}],
            },
        )
        stub.add_response("describe_images", {"Images": [{"ImageId": "ami-0123456789abcdef0", "Tags": tags}]})
        image = uploader.register(artifact, Uploaded("snap-1", False, extra=(("snapshot", "snap-1"),)))
        stub.assert_no_pending_responses()
    assert image.id == "ami-0123456789abcdef0"


def test_import_snapshot_request_is_valid_for_the_ec2_model() -> None:
    ec2 = boto3.client("ec2", region_name="eu-west-1")
    tags = [{"Key": HASH_KEY, "Value": "0" * 64}]
    with Stubber(ec2) as stub:
        stub.add_response(
            "import_snapshot",
            {"ImportTaskId": "import-snap-1234567890abcdef0"},
            {
                "Description": "devserver/x/disk.vmdk",
                "DiskContainer": {"Format": "vmdk", "UserBucket": {"S3Bucket": "b", "S3Key": "devserver/x/disk.vmdk"}},
                "TagSpecifications": [{"ResourceType": "import-snapshot-task", "Tags": tags}],
            },
        )
        stub.add_response(
            "describe_import_snapshot_tasks",
            {"ImportSnapshotTasks": [{"SnapshotTaskDetail": {"Status": "active", "Progress": "40"}}]},
            {"ImportTaskIds": ["import-snap-1234567890abcdef0"]},
        )
        stub.add_response(
            "describe_import_snapshot_tasks",
            {"ImportSnapshotTasks": [{"SnapshotTaskDetail": {"Status": "completed", "SnapshotId": "snap-0abc"}}]},
            {"ImportTaskIds": ["import-snap-1234567890abcdef0"]},
        )
        task = import_snapshot(ec2, "b", "devserver/x/disk.vmdk", "vmdk", tags)
        sleeps: list[float] = []
        assert wait_import(ec2, task, sleeps.append) == "snap-0abc"
        assert sleeps == [15]
        stub.assert_no_pending_responses()


def test_failed_import_task_is_a_cloud_error() -> None:
    ec2 = boto3.client("ec2", region_name="eu-west-1")
    with Stubber(ec2) as stub:
        stub.add_response(
            "describe_import_snapshot_tasks",
            {
                "ImportSnapshotTasks": [
                    {"SnapshotTaskDetail": {"Status": "deleted", "StatusMessage": "ClientError: bad disk"}}
                ]
            },
            {"ImportTaskIds": ["import-snap-1"]},
        )
        with pytest.raises(CloudError, match="bad disk"):
            wait_import(ec2, "import-snap-1", lambda _: None)


def test_refused_credentials_are_a_clear_cloud_error(make_artifact: ArtifactFactory) -> None:
    """moto takes any key; EC2 itself answers AuthFailure (HTTP 401), stubbed here on the uploader's first call."""
    folder = make_artifact("aws")
    uploader = AwsUploader(region="eu-west-1")
    ec2 = uploader._client("ec2")
    with Stubber(ec2) as stub:
        stub.add_client_error(
            "describe_images",
            service_error_code="AuthFailure",
            service_message="AWS was not able to validate the provided access credentials",
            http_status_code=401,
        )
        with pytest.raises(CloudError) as caught:
            publish(uploader, folder)
    assert "AuthFailure" in str(caught.value)
    assert "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY" in caught.value.fix
    assert _ami(load_manifest(folder).inputs_hash) == []


def test_missing_region_is_a_usage_error(make_artifact: ArtifactFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    code, doc, _ = run_upload_cli(str(make_artifact("aws")), "--target", "aws")
    assert code == 2
    assert str(doc["error"]).startswith("--region: is required with --target aws")
