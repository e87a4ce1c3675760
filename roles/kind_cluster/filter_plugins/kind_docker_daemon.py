"""The filter that makes nvidia Docker's default runtime for kind's GPU node, merged into daemon.json: every key
already there stays. Pure text in, text out; run on the controller; tested against golden files."""

from __future__ import annotations

import json
from typing import Any

from ansible.errors import AnsibleFilterError


def kind_docker_daemon_json(text: str, runtime_path: str) -> str:
    """daemon.json with ``default-runtime: nvidia`` and an ``nvidia`` runtime; the input itself when both are there.

    An existing ``nvidia`` runtime keeps its path and other keys (container_runtime registers it; this filter adds
    one only where none is). Any other ``default-runtime`` is replaced: a kind node gets its GPUs only through the
    nvidia runtime, which Docker uses for the node only as its default (kind has no per-node runtime setting).
    """
    stripped = (text or "").strip()
    try:
        current = json.loads(stripped) if stripped else {}
    except json.JSONDecodeError as exc:
        raise AnsibleFilterError(
            f"/etc/docker/daemon.json is not valid JSON ({exc}); fix it by hand, devserver does not overwrite it"
        ) from exc
    if not isinstance(current, dict):
        raise AnsibleFilterError("/etc/docker/daemon.json does not hold a JSON object; fix it by hand")
    wanted = json.loads(json.dumps(current))  # a deep copy, key order kept
    runtimes = wanted.setdefault("runtimes", {})
    if not isinstance(runtimes, dict):
        raise AnsibleFilterError("daemon.json's runtimes is not an object; fix it by hand")
    runtimes.setdefault("nvidia", {"path": runtime_path})
    wanted["default-runtime"] = "nvidia"
    if wanted == current and stripped:
        return text
    return json.dumps(wanted, indent=2) + "\n"


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"kind_docker_daemon_json": kind_docker_daemon_json}
