"""AWS: a snapshot through the EBS direct API (only non-zero 512 KiB blocks), then an AMI from it.

``--method ebs`` (default): StartSnapshot, PutSnapshotBlock for every block holding data (SHA256 checksum, base64),
CompleteSnapshot with ChangedBlocksCount; an interrupted run resumes from the snapshot id in the state file and the
blocks ListSnapshotBlocks already reports. ``--method s3``: an S3 multipart upload of the disk (resumable from the
upload id in the state file and ListParts), then EC2 import-snapshot. Either way ``register_image`` makes the AMI
(ENA, boot mode from the manifest's firmware, root device, tags with the inputs hash).

boto3 is imported inside the functions (the ``aws`` extra). Endpoints come from boto3's own configuration
(``AWS_ENDPOINT_URL``/``AWS_ENDPOINT_URL_<SERVICE>``), which is how the tests point it at moto.
"""

from __future__ import annotations

import base64
import hashlib
import math
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from devserver.clouds.common import (
    HASH_KEY,
    Artifact,
    CloudError,
    Image,
    Meter,
    OptionError,
    Uploaded,
    UploadOptions,
    clear_state,
    data_runs,
    load_state,
    save_state,
)
from devserver.images.artifact import ArtifactError, Manifest

if TYPE_CHECKING:
    from collections.abc import Callable

BLOCK = 512 * 1024  # the EBS direct API's fixed block size
PART = 64 * 1024 * 1024  # S3 multipart part size (≥ 5 MiB, ≤ 10,000 parts up to 625 GiB)
ROOT_DEVICE = "/dev/xvda"
GIB = 1 << 30


class _EbsState(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    sha256: str
    snapshot_id: str


class _S3State(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    sha256: str
    bucket: str
    key: str
    upload_id: str


def boot_mode(firmware: tuple[str, ...]) -> str:
    """EC2's BootMode for the manifest's firmware list: both → uefi-preferred."""
    if "uefi" in firmware and "bios" in firmware:
        return "uefi-preferred"
    return "uefi" if "uefi" in firmware else "legacy-bios"


def _error(exc: Exception, doing: str) -> CloudError:
    """Turn a botocore error into one line naming the cause and the fix."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    if isinstance(exc, NoCredentialsError):
        return CloudError(f"{doing}: no AWS credentials found", "set AWS_PROFILE or AWS_ACCESS_KEY_ID/SECRET")
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "Unknown")
        message = exc.response.get("Error", {}).get("Message", "")
        fixes = {
            "InvalidClientTokenId": "check AWS_ACCESS_KEY_ID / the profile",
            # EC2's own name for a key it does not know or a signature that does not match
            "AuthFailure": "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the profile",
            "SignatureDoesNotMatch": "check AWS_SECRET_ACCESS_KEY / the profile",
            "AccessDenied": "grant the ebs:*Snapshot*, ec2:RegisterImage and ec2:CreateTags permissions",
            "AccessDeniedException": "grant the ebs:*Snapshot*, ec2:RegisterImage and ec2:CreateTags permissions",
            "UnauthorizedOperation": "grant the ec2:RegisterImage and ec2:CreateTags permissions",
            "NoSuchBucket": "create the bucket or pass an existing one with --bucket",
            "404": "create the bucket or pass an existing one with --bucket",
            "SnapshotLimitExceeded": "delete unused snapshots or ask for a higher quota",
            "ResourceLimitExceeded": "delete unused AMIs/snapshots or ask for a higher quota",
        }
        return CloudError(f"{doing}: {code}: {message}".rstrip(": "), fixes.get(code, "see the AWS error above"))
    if isinstance(exc, BotoCoreError) or type(exc).__module__.startswith("botocore"):
        return CloudError(f"{doing}: {str(exc).splitlines()[0]}", "check --region and network access to AWS")
    raise exc


def import_snapshot(ec2: Any, bucket: str, key: str, disk_format: str, tags: list[dict[str, str]]) -> str:
    """Start EC2 VM Import of s3://bucket/key as a snapshot; return the import task id.

    The one call for this that no emulator implements; tested with botocore's Stubber (request validated against
    the service model).
    """
    response = ec2.import_snapshot(
        Description=key,
        DiskContainer={"Format": disk_format, "UserBucket": {"S3Bucket": bucket, "S3Key": key}},
        TagSpecifications=[{"ResourceType": "import-snapshot-task", "Tags": tags}],
    )
    return str(response["ImportTaskId"])


def wait_import(ec2: Any, task_id: str, sleep: Callable[[float], None] = time.sleep) -> str:
    """Poll the import task until it completes; return the snapshot id, or raise CloudError with its message."""
    while True:
        tasks = ec2.describe_import_snapshot_tasks(ImportTaskIds=[task_id])["ImportSnapshotTasks"]
        detail = tasks[0]["SnapshotTaskDetail"]
        status = detail.get("Status", "")
        if status == "completed":
            return str(detail["SnapshotId"])
        if status in ("deleted", "deleting") or "error" in status.lower():
            raise CloudError(
                f"import-snapshot {task_id}: {detail.get('StatusMessage', status)}",
                "check the vmimport service role and the disk format",
            )
        sleep(15)


@dataclass
class AwsUploader:
    """Snapshot + AMI in `region`; with method "s3", staged through `bucket` in `part_size` parts (≥ 5 MiB)."""

    region: str
    method: Literal["ebs", "s3"] = "ebs"
    bucket: str | None = None
    part_size: int = PART
    target: ClassVar[str] = "aws"

    def __post_init__(self) -> None:
        if self.method == "s3" and not self.bucket:
            raise OptionError("--bucket", "is required with --method s3", "pass an S3 bucket in the same region")
        self._clients: dict[str, Any] = {}

    def _client(self, service: str) -> Any:
        if service not in self._clients:
            import boto3

            self._clients[service] = boto3.session.Session(region_name=self.region).client(service)
        return self._clients[service]

    def check(self) -> None:
        if self.method == "s3":
            try:
                self._client("s3").head_bucket(Bucket=self.bucket)
            except Exception as exc:
                raise _error(exc, f"opening s3://{self.bucket}") from None

    def find(self, manifest: Manifest) -> Image | None:
        try:
            images = self._client("ec2").describe_images(
                Owners=["self"], Filters=[{"Name": f"tag:{HASH_KEY}", "Values": [manifest.inputs_hash]}]
            )["Images"]
        except Exception as exc:
            raise _error(exc, "looking for an existing AMI") from None
        if not images:
            return None
        return Image(images[0]["ImageId"], images[0].get("Name", ""))

    def upload(self, artifact: Artifact, meter: Meter) -> Uploaded:
        if self.method == "s3":
            return self._upload_s3(artifact, meter)
        if artifact.disk.format != "raw":
            raise ArtifactError(str(artifact.disk_path), "is not a raw disk", "rebuild the artifact for --target aws")
        return self._upload_ebs(artifact, meter)

    def _tags(self, manifest: Manifest) -> list[dict[str, str]]:
        return [
            {"Key": "Name", "Value": manifest.name},
            {"Key": HASH_KEY, "Value": manifest.inputs_hash},
            {"Key": "devserver-family", "Value": manifest.family},
        ]

    def _upload_ebs(self, artifact: Artifact, meter: Meter) -> Uploaded:
        ebs = self._client("ebs")
        state = load_state(artifact, self.target, _EbsState)
        existing = self._existing_blocks(ebs, state.snapshot_id) if state is not None else None
        if state is None or existing is None:
            try:
                started = ebs.start_snapshot(
                    VolumeSize=max(1, math.ceil(artifact.disk.virtual_size / GIB)),
                    Tags=self._tags(artifact.manifest),
                    Description=f"devserver {artifact.manifest.name}",
                )
            except Exception as exc:
                raise _error(exc, "starting the EBS snapshot") from None
            state = _EbsState(sha256=artifact.disk.sha256, snapshot_id=started["SnapshotId"])
            save_state(artifact, self.target, state)
        done = existing or set()
        blocks = [
            offset // BLOCK
            for start, length in data_runs(artifact.disk_path, BLOCK)
            for offset in range(start, start + length, BLOCK)
        ]
        todo = [index for index in blocks if index not in done]
        meter.start(len(todo) * BLOCK)
        with artifact.disk_path.open("rb") as f:
            for index in todo:
                data = os.pread(f.fileno(), BLOCK, index * BLOCK).ljust(BLOCK, b"\0")
                checksum = base64.b64encode(hashlib.sha256(data).digest()).decode()
                try:
                    ebs.put_snapshot_block(
                        SnapshotId=state.snapshot_id,
                        BlockIndex=index,
                        BlockData=data,
                        DataLength=BLOCK,
                        Checksum=checksum,
                        ChecksumAlgorithm="SHA256",
                    )
                except Exception as exc:
                    raise _error(exc, f"writing block {index} of {state.snapshot_id}") from None
                meter.add(BLOCK)
        try:
            ebs.complete_snapshot(SnapshotId=state.snapshot_id, ChangedBlocksCount=len(blocks))
        except Exception as exc:
            raise _error(exc, f"completing {state.snapshot_id}") from None
        clear_state(artifact, self.target)
        return Uploaded(
            location=state.snapshot_id,
            resumed=bool(done),
            created=(f"snapshot {state.snapshot_id}",),
            extra=(("snapshot", state.snapshot_id),),
        )

    def _existing_blocks(self, ebs: Any, snapshot_id: str) -> set[int] | None:
        """Block indexes the snapshot already holds; None when it is gone (start a new one)."""
        from botocore.exceptions import ClientError

        indexes: set[int] = set()
        kwargs: dict[str, Any] = {"SnapshotId": snapshot_id, "MaxResults": 10000}
        try:
            while True:
                page = ebs.list_snapshot_blocks(**kwargs)
                indexes.update(block["BlockIndex"] for block in page.get("Blocks", []))
                if not page.get("NextToken"):
                    return indexes
                kwargs["NextToken"] = page["NextToken"]
        except ClientError:
            return None

    def _upload_s3(self, artifact: Artifact, meter: Meter) -> Uploaded:
        s3 = self._client("s3")
        vmdk = artifact.manifest.disk("vmdk-stream")
        disk = vmdk if vmdk is not None else artifact.disk
        path = artifact.folder / disk.path
        key = f"devserver/{artifact.manifest.name}/{disk.path}"
        assert self.bucket is not None
        state = load_state(artifact, "aws-s3", _S3State)
        parts: dict[int, str] = {}
        if state is not None and state.bucket == self.bucket:
            try:
                listed = s3.list_parts(Bucket=self.bucket, Key=state.key, UploadId=state.upload_id)
                parts = {p["PartNumber"]: p["ETag"] for p in listed.get("Parts", []) if p["Size"] > 0}
            except Exception:
                state = None
        else:
            state = None
        if state is None:
            try:
                upload_id = s3.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]
            except Exception as exc:
                raise _error(exc, f"starting the upload to s3://{self.bucket}/{key}") from None
            state = _S3State(sha256=artifact.disk.sha256, bucket=self.bucket, key=key, upload_id=upload_id)
            save_state(artifact, "aws-s3", state)
        resumed = bool(parts)
        size = path.stat().st_size
        part = self.part_size
        numbers = range(1, math.ceil(size / part) + 1)
        meter.start(sum(min(part, size - (n - 1) * part) for n in numbers if n not in parts))
        with path.open("rb") as f:
            for number in numbers:
                if number in parts:
                    continue
                data = os.pread(f.fileno(), part, (number - 1) * part)
                try:
                    etag = s3.upload_part(
                        Bucket=self.bucket,
                        Key=key,
                        UploadId=state.upload_id,
                        PartNumber=number,
                        Body=data,
                        ContentMD5=base64.b64encode(hashlib.md5(data).digest()).decode(),  # noqa: S324
                    )["ETag"]
                except Exception as exc:
                    raise _error(exc, f"uploading part {number} to s3://{self.bucket}/{key}") from None
                parts[number] = etag
                meter.add(len(data))
        try:
            s3.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=state.upload_id,
                MultipartUpload={"Parts": [{"PartNumber": n, "ETag": parts[n]} for n in numbers]},
            )
        except Exception as exc:
            raise _error(exc, f"completing s3://{self.bucket}/{key}") from None
        clear_state(artifact, "aws-s3")
        fmt = "vmdk" if vmdk is not None else "raw"
        return Uploaded(
            location=f"s3://{self.bucket}/{key}",
            resumed=resumed,
            created=(f"s3://{self.bucket}/{key}",),
            extra=(("bucket", self.bucket), ("key", key), ("format", fmt)),
        )

    def register(self, artifact: Artifact, uploaded: Uploaded) -> Image:
        ec2 = self._client("ec2")
        manifest = artifact.manifest
        try:
            if self.method == "s3":
                task = import_snapshot(
                    ec2, uploaded.get("bucket"), uploaded.get("key"), uploaded.get("format"), self._tags(manifest)
                )
                snapshot = wait_import(ec2, task)
            else:
                snapshot = uploaded.get("snapshot")
                self._wait_snapshot(ec2, snapshot)
            image_id = ec2.register_image(
                Name=manifest.name,
                Description=f"devserver {manifest.family} ({manifest.distro}, inputs {manifest.inputs_hash[:12]})",
                Architecture="x86_64",
                VirtualizationType="hvm",
                RootDeviceName=ROOT_DEVICE,
                BlockDeviceMappings=[
                    {
                        "DeviceName": ROOT_DEVICE,
                        "Ebs": {"SnapshotId": snapshot, "VolumeType": "gp3", "DeleteOnTermination": True},
                    }
                ],
                EnaSupport=True,
                BootMode=boot_mode(manifest.firmware),
                TagSpecifications=[{"ResourceType": "image", "Tags": self._tags(manifest)}],
            )["ImageId"]
            self._ensure_tags(ec2, image_id, manifest)
        except CloudError:
            raise
        except Exception as exc:
            raise _error(exc, f"registering AMI {manifest.name}") from None
        return Image(image_id, manifest.name)

    def _ensure_tags(self, ec2: Any, image_id: str, manifest: Manifest) -> None:
        """Make sure the AMI carries the inputs-hash tag that :meth:`find` relies on.

        register_image applies TagSpecifications atomically on AWS; an endpoint that ignores them (moto does)
        gets the tags through create_tags instead, so a second upload still finds the image.
        """
        images = ec2.describe_images(ImageIds=[image_id])["Images"]
        tags = {t["Key"]: t["Value"] for t in (images[0].get("Tags") or [])} if images else {}
        if tags.get(HASH_KEY) != manifest.inputs_hash:
            ec2.create_tags(Resources=[image_id], Tags=self._tags(manifest))

    def _wait_snapshot(self, ec2: Any, snapshot: str) -> None:
        """EBS direct snapshots turn `completed` asynchronously after CompleteSnapshot (within 30 minutes)."""
        deadline = time.monotonic() + 1800
        while True:
            state = ec2.describe_snapshots(SnapshotIds=[snapshot])["Snapshots"][0]["State"]
            if state == "completed":
                return
            if state == "error" or time.monotonic() > deadline:
                raise CloudError(f"snapshot {snapshot} is in state {state}", "run the upload again")
            time.sleep(2)

    def discard(self, uploaded: Uploaded) -> tuple[str, ...]:
        try:
            if self.method == "s3":
                self._client("s3").delete_object(Bucket=uploaded.get("bucket"), Key=uploaded.get("key"))
            else:
                self._client("ec2").delete_snapshot(SnapshotId=uploaded.get("snapshot"))
        except Exception:
            return uploaded.created
        return ()


def from_options(options: UploadOptions) -> AwsUploader:
    return AwsUploader(region=options.need("region", "aws", "eu-west-1"), method=options.method, bucket=options.bucket)
