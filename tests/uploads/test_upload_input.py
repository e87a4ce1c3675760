"""User mistakes before any cloud is contacted: exit 2 and one line naming the problem; and the sparse scanner."""

from __future__ import annotations

import json
import os
from pathlib import Path

from typer.testing import CliRunner

from devserver.clouds.common import data_runs
from tests.uploads.conftest import ArtifactFactory, run_upload_cli, upload_app

AZURE_ARGS = ("--container", "c", "--resource-group", "rg", "--location", "westeurope", "--subscription", "s")


def test_corrupt_manifest_is_a_usage_error(make_artifact: ArtifactFactory) -> None:
    folder = make_artifact("openstack")
    (folder / "manifest.json").write_text('{"name": "ml-dev", "disks": [')
    code, doc, _ = run_upload_cli(str(folder), "--target", "openstack")
    assert code == 2
    assert "manifest.json: is not valid JSON" in doc["error"]


def test_manifest_with_a_bad_field_is_a_usage_error(make_artifact: ArtifactFactory) -> None:
    folder = make_artifact("openstack")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["inputs_hash"] = "not-a-hash"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    code, doc, _ = run_upload_cli(str(folder), "--target", "openstack")
    assert code == 2
    assert "field inputs_hash" in doc["error"]


def test_artifact_for_another_target_is_a_usage_error(make_artifact: ArtifactFactory) -> None:
    code, doc, _ = run_upload_cli(str(make_artifact("openstack")), "--target", "azure", *AZURE_ARGS)
    assert code == 2
    assert "is an image for openstack, not azure" in doc["error"]
    assert "--target azure" in doc["error"]


def test_disk_in_the_wrong_format_is_a_usage_error(make_artifact: ArtifactFactory, tmp_path: Path) -> None:
    """A qcow2 put where the manifest says fixed VHD, at the recorded size: caught by looking at the bytes."""
    folder = make_artifact("azure")
    vhd = folder / "disk.vhd"
    size = vhd.stat().st_size
    vhd.unlink()
    with vhd.open("wb") as f:
        f.write(b"QFI\xfb")
        f.truncate(size)
    code, doc, _ = run_upload_cli(str(folder), "--target", "azure", *AZURE_ARGS)
    assert code == 2
    assert "disk.vhd: is not a fixed VHD (footer) as the manifest says" in doc["error"]


def test_truncated_disk_is_a_usage_error(make_artifact: ArtifactFactory) -> None:
    folder = make_artifact("openstack")
    qcow2 = folder / "disk.qcow2"
    data = qcow2.read_bytes()
    qcow2.unlink()
    qcow2.write_bytes(data[:4096])
    code, doc, _ = run_upload_cli(str(folder), "--target", "openstack")
    assert code == 2
    assert "(truncated or replaced?)" in doc["error"]


def test_missing_folder_and_missing_options_are_usage_errors(tmp_path: Path, make_artifact: ArtifactFactory) -> None:
    code, doc, _ = run_upload_cli(str(tmp_path / "nope"), "--target", "openstack")
    assert code == 2
    assert "does not exist" in doc["error"]
    code, doc, _ = run_upload_cli(str(make_artifact("gce")), "--target", "gce", "--bucket", "b")
    assert code == 2
    assert doc["error"].startswith("--project: is required with --target gce")


def test_human_output_is_one_line_without_traceback(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text("[]")
    result = CliRunner().invoke(upload_app(), ["upload", str(tmp_path), "--target", "aws"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output + result.stderr


def test_data_runs_skip_holes_and_zero_blocks(tmp_path: Path) -> None:
    path = tmp_path / "sparse.raw"
    with path.open("wb") as f:
        f.truncate(64 << 20)
        f.seek(1 << 20)
        f.write(b"\x01" * 5000)  # spans two 4 KiB blocks
        f.seek(8 << 20)
        f.write(bytes(2 << 20))  # allocated, all zero
        f.seek(12 << 20)
        f.write(b"\x02" * (8 << 20))  # longer than the run limit
        f.seek((64 << 20) - 100)
        f.write(b"\x03" * 100)  # the file's last, partial block
    runs = list(data_runs(path, 4096, limit=4 << 20))
    assert runs == [
        (1 << 20, 8192),
        (12 << 20, 4 << 20),
        (16 << 20, 4 << 20),
        ((64 << 20) - 4096, 4096),
    ]
    assert list(data_runs(path, 512 * 1024)) == [
        (1 << 20, 512 * 1024),
        (12 << 20, 8 << 20),
        ((64 << 20) - 512 * 1024, 512 * 1024),
    ]


def test_data_runs_on_a_file_without_holes(tmp_path: Path) -> None:
    path = tmp_path / "dense.raw"
    path.write_bytes(bytes(8192) + b"\x07" * 512 + bytes(8192 - 512))
    assert list(data_runs(path, 512)) == [(8192, 512)]
    os.truncate(path, 8192 + 100)
    assert list(data_runs(path, 512)) == [(8192, 100)]
    empty = tmp_path / "empty.raw"
    empty.write_bytes(b"")
    assert list(data_runs(empty, 512)) == []


def test_registry_covers_every_cloud_target() -> None:
    from devserver.clouds import SDK_MODULES, UPLOADERS
    from devserver.images.artifact import TARGET_FORMATS

    clouds = set(TARGET_FORMATS) - {"local"}
    assert set(UPLOADERS) == clouds
    assert set(SDK_MODULES) == clouds


def test_the_upload_command_imports_no_cloud_sdk() -> None:
    """Loading the command (what `devserver --help` does) must not pay for any cloud SDK."""
    import subprocess
    import sys

    probe = (
        "import sys, devserver.cli.upload, devserver.clouds;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('boto3', 'botocore', 'azure', 'google', 'openstack', 'keystoneauth1')))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
