"""Filters that merge the NVIDIA runtime (and devserver's settings) into Docker's daemon.json, keeping every key
that is already there. Pure text in, text out; run on the controller; tested against golden files."""

from __future__ import annotations

import json
from typing import Any

from ansible.errors import AnsibleFilterError

DEFAULT_DATA_ROOT = "/var/lib/docker"


def _load(text: str) -> dict[str, Any]:
    if not (text or "").strip():
        return {}
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AnsibleFilterError(
            f"/etc/docker/daemon.json is not valid JSON ({exc}); fix it by hand, devserver does not overwrite it"
        ) from exc
    if not isinstance(config, dict):
        raise AnsibleFilterError("/etc/docker/daemon.json does not hold a JSON object; fix it by hand")
    return config


def docker_data_root(text: str) -> str:
    """The data-root daemon.json sets, or Docker's default."""
    return str(_load(text).get("data-root") or DEFAULT_DATA_ROOT)


def docker_daemon_json(text: str, runtime_path: str, default_runtime: bool = False, data_root: str = "") -> str:
    """daemon.json with the ``nvidia`` runtime registered; the input text itself when nothing needs to change.

    Existing keys and runtimes stay (an existing ``nvidia`` runtime keeps its other keys, ``runtimeArgs`` say). With
    `default_runtime`, ``default-runtime`` becomes ``nvidia``; without, a ``default-runtime: nvidia`` is removed
    (devserver set it) and any other value is kept. `data_root` sets ``data-root``; "" leaves it as it is.
    """
    current = _load(text)
    wanted = json.loads(json.dumps(current))  # a deep copy, key order kept
    runtimes = wanted.setdefault("runtimes", {})
    if not isinstance(runtimes, dict):
        raise AnsibleFilterError("daemon.json's runtimes is not an object; fix it by hand")
    nvidia = runtimes.setdefault("nvidia", {})
    if not isinstance(nvidia, dict):
        raise AnsibleFilterError("daemon.json's runtimes.nvidia is not an object; fix it by hand")
    nvidia["path"] = runtime_path
    if default_runtime:
        wanted["default-runtime"] = "nvidia"
    elif wanted.get("default-runtime") == "nvidia":
        del wanted["default-runtime"]
    if data_root:
        wanted["data-root"] = data_root
    if wanted == current and text.strip():
        return text
    return json.dumps(wanted, indent=2) + "\n"


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"docker_daemon_json": docker_daemon_json, "docker_data_root": docker_data_root}
