"""The cloud emulators the upload tests and bench/upload_bytes.py run on 127.0.0.1, each a real server process.

moto (S3, EBS direct API, EC2), Azurite (blob service, from npm), gcp-storage-emulator (GCS JSON API and resumable
uploads) and a real Glance (sqlite database, file store, no keystone) served by gunicorn from its own venv
(.venv-glance, made by scripts/bootstrap: Glance's pins clash with the project's). Each :func:`start_*` returns an
:class:`Emulator`; ``stop()`` ends the process group and removes its data.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AZURITE = ROOT / ".tools" / "azurite" / "node_modules" / ".bin" / "azurite-blob"
GLANCE_VENV = ROOT / ".venv-glance"
# Azurite's well-known development account (public, documented by Microsoft for the emulator).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@dataclass
class Emulator:
    """A running emulator: its base URL, its process and its scratch folder."""

    name: str
    url: str
    port: int
    process: subprocess.Popen[bytes]
    scratch: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        shutil.rmtree(self.scratch, ignore_errors=True)

    def log(self) -> str:
        path = self.scratch / "log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawn(
    name: str,
    argv: list[str],
    ready: str,
    env: dict[str, str] | None = None,
    port: int = 0,
    scratch: Path | None = None,
    timeout: float = 60,
) -> Emulator:
    scratch = scratch or Path(tempfile.mkdtemp(prefix=f"devserver-{name}-"))
    log = (scratch / "log").open("wb")
    process = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        cwd=scratch,
        start_new_session=True,
    )
    emulator = Emulator(name, f"http://127.0.0.1:{port}", port, process, scratch)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            emulator.stop()
            raise RuntimeError(f"{name} exited with {process.returncode}: {emulator.log()}")
        try:
            urllib.request.urlopen(emulator.url + ready, timeout=2)  # noqa: S310 (http://127.0.0.1, our emulator)
            return emulator
        except urllib.error.HTTPError:
            return emulator  # answering at all is ready
        except OSError:
            time.sleep(0.2)
    emulator.stop()
    raise RuntimeError(f"{name} did not answer on {emulator.url} within {timeout} s")


def start_moto() -> Emulator:
    port = free_port()
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    return _spawn("moto", argv, "/moto-api/", port=port)


def start_azurite() -> Emulator:
    if not AZURITE.exists():
        raise RuntimeError(f"{AZURITE} is missing: run scripts/bootstrap")
    port = free_port()
    scratch = Path(tempfile.mkdtemp(prefix="devserver-azurite-"))
    argv = [
        str(AZURITE),
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        str(port),
        "--location",
        str(scratch / "data"),
        "--disableTelemetry",
        "--skipApiVersionCheck",
        "--loose",
    ]
    emulator = _spawn("azurite", argv, f"/{AZURITE_ACCOUNT}?comp=list", port=port, scratch=scratch)
    emulator.url = f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"
    return emulator


def azurite_connection_string(emulator: Emulator, key: str = AZURITE_KEY) -> str:
    return f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={key};BlobEndpoint={emulator.url};"


def start_gcs() -> Emulator:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "gcp_storage_emulator",
        "start",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--in-memory",
    ]
    return _spawn("gcs", argv, "/storage/v1/b", port=port)


GLANCE_CONF = """\
[DEFAULT]
enabled_backends = file:file
bind_host = 127.0.0.1
worker_self_reference_url = {url}
enabled_import_methods = []
[database]
connection = sqlite:///{scratch}/glance.sqlite
[paste_deploy]
flavor =
config_file = {venv}/etc/glance/glance-api-paste.ini
[glance_store]
default_backend = file
[file]
filesystem_store_datadir = {scratch}/store
[os_glance_staging_store]
filesystem_store_datadir = {scratch}/staging
[os_glance_tasks_store]
filesystem_store_datadir = {scratch}/tasks
[oslo_policy]
# Without keystone the request context has no roles; the legacy rules let that anonymous context own images.
enforce_new_defaults = false
enforce_scope = false
"""


def start_glance() -> Emulator:
    """Glance API without keystone (the paste pipeline's unauthenticated context), sqlite + file store."""
    if not (GLANCE_VENV / "bin" / "gunicorn").exists():
        raise RuntimeError(f"{GLANCE_VENV} is missing: run scripts/bootstrap")
    port = free_port()
    scratch = Path(tempfile.mkdtemp(prefix="devserver-glance-"))
    url = f"http://127.0.0.1:{port}"
    conf = scratch / "glance-api.conf"
    conf.write_text(GLANCE_CONF.format(url=url, scratch=scratch, venv=GLANCE_VENV))
    env = {"OS_GLANCE_CONFIG_DIR": str(scratch)}
    subprocess.run(
        [str(GLANCE_VENV / "bin" / "glance-manage"), "--config-file", str(conf), "db_sync"],
        env={**os.environ, **env},
        check=True,
        capture_output=True,
    )
    argv = [
        str(GLANCE_VENV / "bin" / "gunicorn"),
        "-b",
        f"127.0.0.1:{port}",
        "-w",
        "1",
        "--threads",
        "4",
        "--timeout",
        "300",
        "glance.wsgi.api:application",
    ]
    return _spawn("glance", argv, "/v2/images", env=env, port=port, scratch=scratch, timeout=90)


def glance_clouds_yaml(emulator: Emulator, folder: Path, name: str = "glance-test") -> Path:
    """A clouds.yaml naming the Glance emulator: no keystone (auth_type none), the image endpoint overridden."""
    path = folder / "clouds.yaml"
    path.write_text(
        "clouds:\n"
        f"  {name}:\n"
        "    auth_type: none\n"
        f"    auth: {{endpoint: '{emulator.url}'}}\n"
        f"    image_endpoint_override: '{emulator.url}/'\n"
        "    region_name: RegionOne\n"
    )
    return path
