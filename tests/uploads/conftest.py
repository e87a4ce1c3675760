"""Fixtures for the upload tests: a realistic sparse raw disk, artifacts built from it, and the emulators.

The disk is the TEST FIXTURE of devtools/fixture_disk.py (1 GiB virtual, scattered data extents, explicit zeros,
holes), written once per session. Artifacts are made from it with devserver.images.formats.write_formats (qemu-img,
oldgnu sparse tar) and a manifest whose inputs hash is fresh for every artifact, so tests sharing one emulator never
see each other's images. The emulators are devtools/emulators.py's.

Per emulator, a fresh place to upload to: ``container`` (Azurite), ``bucket`` (gcp-storage-emulator, with
STORAGE_EMULATOR_HOST set), ``clouds_yaml`` (Glance, named ``CLOUD``, through OS_CLIENT_CONFIG_FILE), ``aws_env``
(moto through boto3's own settings); and ``compute`` (module scope), the GCE compute API stand-in of
tests/uploads/cloud_fixtures.py. Artifacts made by the real image builder come from ``cloud_artifact``
(tests/support/image_builds.py).
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import typer
from typer.testing import CliRunner

from devserver.cli.upload import upload
from devserver.images.artifact import Manifest, write_manifest
from devserver.images.formats import write_formats
from devtools import emulators
from devtools.fixture_disk import write_fixture_disk

if TYPE_CHECKING:
    from tests.uploads.cloud_fixtures import ComputeFixture

# Its asserts (the ARM request checks) report like a test's.
pytest.register_assert_rewrite("tests.uploads.cloud_fixtures")


@pytest.fixture(scope="session")
def fixture_disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("disk") / "fixture-disk.raw"
    write_fixture_disk(path)
    return path


@pytest.fixture(scope="session")
def formats_folder(tmp_path_factory: pytest.TempPathFactory, fixture_disk: Path) -> Callable[[str], Path]:
    """Per target, a folder holding write_formats' disk files for the fixture disk (made once, shared read-only)."""
    made: dict[str, Path] = {}

    def get(target: str) -> Path:
        if target not in made:
            folder = tmp_path_factory.mktemp(f"formats-{target}")
            files = write_formats(fixture_disk, target, folder)
            (folder / "disks.json").write_text("[" + ",".join(f.model_dump_json() for f in files) + "]")
            made[target] = folder
        return made[target]

    return get


ArtifactFactory = Callable[..., Path]


@pytest.fixture
def make_artifact(tmp_path: Path, formats_folder: Callable[[str], Path]) -> ArtifactFactory:
    """make_artifact(target) → a fresh artifact folder: the shared disk files hard-linked, a new inputs hash."""
    from pydantic import TypeAdapter

    from devserver.images.artifact import DiskFile

    def make(target: str, firmware: tuple[str, ...] = ("bios", "uefi")) -> Path:
        source = formats_folder(target)
        disks = TypeAdapter(list[DiskFile]).validate_json((source / "disks.json").read_text())
        inputs_hash = secrets.token_hex(32)
        folder = tmp_path / f"artifact-{target}-{inputs_hash[:8]}"
        folder.mkdir()
        for disk in disks:
            os.link(source / disk.path, folder / disk.path)
        manifest = Manifest(
            name=f"ml-dev-{inputs_hash[:12]}",
            family="ml-dev",
            target=target,  # type: ignore[arg-type]
            distro="debian-12",
            builder="chroot",
            inputs_hash=inputs_hash,
            firmware=firmware,  # type: ignore[arg-type]
            hyperv_generation="V2" if target == "azure" else None,
            disks=tuple(disks),
            created="2026-12-01T00:00:00Z",
        )
        write_manifest(folder, manifest)
        return folder

    return make


def _session_emulator(start: Callable[[], emulators.Emulator]) -> Iterator[emulators.Emulator]:
    emulator = start()
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[emulators.Emulator]:
    yield from _session_emulator(emulators.start_moto)


@pytest.fixture(scope="session")
def azurite() -> Iterator[emulators.Emulator]:
    yield from _session_emulator(emulators.start_azurite)


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[emulators.Emulator]:
    yield from _session_emulator(emulators.start_gcs)


@pytest.fixture(scope="session")
def glance() -> Iterator[emulators.Emulator]:
    yield from _session_emulator(emulators.start_glance)


@pytest.fixture
def aws_env(moto_server: emulators.Emulator, monkeypatch: pytest.MonkeyPatch) -> emulators.Emulator:
    """boto3 pointed at moto through its own AWS_ENDPOINT_URL setting, with moto's test credentials."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return moto_server


@pytest.fixture(scope="module")
def compute() -> Iterator[ComputeFixture]:
    """The compute API stand-in (cloud_fixtures.ComputeFixture) on a free port, one per test module."""
    from tests.uploads.cloud_fixtures import ComputeFixture

    server = ComputeFixture()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def bucket(gcs_emulator: emulators.Emulator, monkeypatch: pytest.MonkeyPatch) -> str:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    from tests.uploads.cloud_fixtures import PROJECT

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.url)
    name = f"images-{secrets.token_hex(4)}"
    storage.Client(project=PROJECT, credentials=AnonymousCredentials()).create_bucket(name)
    return name


@pytest.fixture
def container(azurite: emulators.Emulator) -> str:
    from azure.storage.blob import BlobServiceClient

    name = f"images-{secrets.token_hex(4)}"
    BlobServiceClient.from_connection_string(emulators.azurite_connection_string(azurite)).create_container(name)
    return name


CLOUD = "glance-test"


@pytest.fixture
def clouds_yaml(glance: emulators.Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = emulators.glance_clouds_yaml(glance, tmp_path, CLOUD)
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(path))
    return path


def upload_app() -> typer.Typer:
    """The upload command in a Typer app of its own, as the CLI owner registers it under `devserver image`."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

    @app.callback()
    def image() -> None:
        """A group callback keeps `upload` a subcommand, as under `devserver image`."""

    app.command("upload")(upload)
    return app


def run_upload_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, object], str]:
    """Run `upload ARGS --json`; return the exit code, the parsed JSON document and stderr."""
    import json

    result = CliRunner().invoke(upload_app(), ["upload", *args, "--json"], env=env, catch_exceptions=False)
    return result.exit_code, json.loads(result.stdout), result.stderr
