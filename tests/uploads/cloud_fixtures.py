"""Stand-ins for the cloud APIs no emulator implements, shared by the upload tests (a module, not a test file).

* Azure: :class:`RecordingArmTransport`, azure-core's own requests transport answering ARM's images API in-process
  (each PUT body checked with azure-mgmt-compute's models), and :class:`FixtureCredential`.
* GCE: :class:`ComputeFixture`, a compute API server on 127.0.0.1 that decodes every request with
  google-cloud-compute's own message types (the ``compute`` fixture in conftest.py serves one per module).
"""

from __future__ import annotations

import io
import json
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import requests
import requests.adapters
import urllib3
from azure.core.credentials import AccessToken
from azure.core.pipeline.transport import RequestsTransport
from azure.mgmt.compute import models
from google.cloud import compute_v1

from devserver.clouds.azure import AzureUploader
from devtools import emulators

SUBSCRIPTION = "00000000-0000-0000-0000-000000000001"


class FixtureCredential:
    """A TokenCredential fixture: the recording transport never forwards the token anywhere."""

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("fixture-token", int(time.time()) + 3600)


def check_rest_shape(model: type, body: dict[str, Any]) -> None:
    """Every key of `body` is a writable REST field of the azure-mgmt-compute `model` (names as the SDK sends them)."""
    fields = {rf._rest_name: rf for rf in model._attr_to_rest_field.values()}  # type: ignore[attr-defined]
    unknown = set(body) - set(fields)
    assert not unknown, f"{model.__name__}: fields the API does not have: {unknown}"
    readonly = {name for name, rf in fields.items() if "read" in rf._visibility and len(rf._visibility) == 1}
    assert not readonly & set(body), f"{model.__name__}: read-only fields sent: {readonly & set(body)}"


class RecordingArmTransport(RequestsTransport):
    """azure-core's own requests transport, whose session answers ARM's images API in-process.

    Records every request and validates PUT bodies with azure-mgmt-compute's model (deserialize + validate).
    """

    def __init__(self, fail_put: tuple[int, str] | None = None) -> None:
        self.requests: list[tuple[str, str, Any]] = []
        self.images: dict[str, dict[str, Any]] = {}
        self.fail_put = fail_put
        session = requests.Session()
        session.mount("https://management.azure.com/", _ArmAdapter(self))
        super().__init__(session=session, session_owner=False)

    def answer(self, method: str, url: str, body: Any) -> tuple[int, object]:
        self.requests.append((method, url, body))
        path = url.split("?")[0].removeprefix("https://management.azure.com")
        if method == "PUT":
            if self.fail_put:
                code, error = self.fail_put
                return code, {"error": {"code": error, "message": f"fixture {error}"}}
            check_rest_shape(models.Image, body)
            check_rest_shape(models.ImageProperties, body["properties"])
            check_rest_shape(models.ImageStorageProfile, body["properties"]["storageProfile"])
            check_rest_shape(models.ImageOSDisk, body["properties"]["storageProfile"]["osDisk"])
            image = models.Image(body)
            assert image.properties.storage_profile.os_disk.blob_uri, "osDisk.blobUri missing"
            stored = {**body, "id": path, "name": path.rsplit("/", 1)[1], "type": "Microsoft.Compute/images"}
            stored["properties"]["provisioningState"] = "Succeeded"
            self.images[path] = stored
            return 200, stored
        if method == "GET" and path.endswith("/providers/Microsoft.Compute/images"):
            prefix = path.removesuffix("/providers/Microsoft.Compute/images")
            return 200, {"value": [i for k, i in self.images.items() if k.startswith(prefix)]}
        return 404, {"error": {"code": "NotFound", "message": path}}

    def puts(self) -> list[dict[str, Any]]:
        return [body for method, _, body in self.requests if method == "PUT"]


class _ArmAdapter(requests.adapters.BaseAdapter):
    def __init__(self, arm: RecordingArmTransport) -> None:
        super().__init__()
        self.arm = arm

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        body = json.loads(request.body) if request.body else None
        status, payload = self.arm.answer(str(request.method), str(request.url), body)
        content = json.dumps(payload).encode()
        raw = urllib3.HTTPResponse(
            body=io.BytesIO(content),
            headers={"Content-Type": "application/json", "Content-Length": str(len(content))},
            status=status,
            preload_content=False,
        )
        return requests.adapters.HTTPAdapter().build_response(request, raw)

    def close(self) -> None:
        pass


PROJECT = "devserver-test"


class ComputeFixture(ThreadingHTTPServer):
    """A compute API stand-in on 127.0.0.1 for project PROJECT: images insert/get/list, global operations."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ComputeHandler)
        self.images: dict[str, dict[str, Any]] = {}
        self.inserts: list[compute_v1.Image] = []
        self.fail_insert: str | None = None
        # (status, message) answered to every request, e.g. (401, …) for credentials the API refuses
        self.fail_all: tuple[int, str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ComputeHandler(BaseHTTPRequestHandler):
    server: ComputeFixture

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, payload: object) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _route(self) -> tuple[str, list[str], dict[str, list[str]]] | None:
        if self.server.fail_all:
            status, message = self.server.fail_all
            self._send(status, {"error": {"code": status, "message": message}})
            return None
        url = urlparse(self.path)
        parts = url.path.strip("/").split("/")
        # compute/v1/projects/{project}/global/{collection}[/{name}]
        if parts[:3] != ["compute", "v1", "projects"] or len(parts) < 6:
            self._send(404, {"error": {"code": 404, "message": f"no route {url.path}"}})
            return None
        if parts[3] != PROJECT:
            self._send(404, {"error": {"code": 404, "message": f"The resource 'projects/{parts[3]}' was not found"}})
            return None
        return parts[5], parts[6:], parse_qs(url.query)

    def do_GET(self) -> None:
        route = self._route()
        if route is None:
            return
        collection, rest, query = route
        if collection == "images" and rest:
            image = self.server.images.get(rest[0])
            self._send(200, image) if image else self._send(404, {"error": {"code": 404, "message": rest[0]}})
        elif collection == "images":
            (flt,) = query.get("filter", [""])
            key, _, value = flt.partition("=")
            label = key.removeprefix("labels.")
            items = [i for i in self.server.images.values() if i.get("labels", {}).get(label) == value]
            self._send(200, {"items": items})
        elif collection == "operations" and rest:
            self._send(200, {"name": rest[0], "status": "DONE", "operationType": "insert"})
        else:
            self._send(404, {"error": {"code": 404, "message": self.path}})

    def do_POST(self) -> None:
        route = self._route()
        if route is None:
            return
        collection, _, _ = route
        body = self.rfile.read(int(self.headers["Content-Length"]))
        image = compute_v1.Image.from_json(body, ignore_unknown_fields=False)
        self.server.inserts.append(image)
        if collection != "images":
            self._send(404, {"error": {"code": 404, "message": collection}})
            return
        if self.server.fail_insert:
            self._send(403, {"error": {"code": 403, "message": self.server.fail_insert}})
            return
        stored = json.loads(compute_v1.Image.to_json(image))
        stored["id"] = str(len(self.server.images) + 1000)
        self.server.images[image.name] = stored
        self._send(200, {"name": f"operation-{stored['id']}", "status": "DONE", "operationType": "insert"})


def azure_uploader(azurite: emulators.Emulator, container: str, transport: RecordingArmTransport) -> AzureUploader:
    """An AzureUploader on Azurite's blob service with the recording ARM transport for the image calls."""
    return AzureUploader(
        container=container,
        resource_group="images-rg",
        location="westeurope",
        subscription=SUBSCRIPTION,
        connection_string=emulators.azurite_connection_string(azurite),
        credential=FixtureCredential(),
        arm_transport=transport,
    )
