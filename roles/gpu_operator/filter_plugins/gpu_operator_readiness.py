"""Readiness of the GPU operator, as pure functions over `kubectl get -o json` documents (a List of Pods, a List of
Nodes). Run on the controller by the role's wait tasks; tested with synthetic documents."""

from __future__ import annotations

from typing import Any

# The operator's validator DaemonSet pod: its init containers validate the driver, the toolkit, CUDA (by starting
# the nvidia-cuda-validator pod) and the device plugin, in that order; it turns Ready when all of them passed.
VALIDATOR_APP = "nvidia-operator-validator"
CUDA_VALIDATOR_APP = "nvidia-cuda-validator"


def _items(document: Any) -> list[dict[str, Any]]:
    if not isinstance(document, dict) or not isinstance(document.get("items"), list):
        return []
    return [item for item in document["items"] if isinstance(item, dict)]


def _app(pod: dict[str, Any]) -> str:
    return str(((pod.get("metadata") or {}).get("labels") or {}).get("app", ""))


def _name(pod: dict[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("name", "?"))


def _ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions if isinstance(c, dict))


def gpu_operator_validation_pending(pods: Any) -> list[str]:
    """What keeps the validation from being done, one line each; empty when it is done.

    Done means: at least one validator pod, every one Running and Ready with each init container terminated with
    exit code 0, and no CUDA validator pod Failed.
    """
    pending: list[str] = []
    validators = [pod for pod in _items(pods) if _app(pod) == VALIDATOR_APP]
    if not validators:
        pending.append(f"no {VALIDATOR_APP} pod yet")
    for pod in validators:
        status = pod.get("status") or {}
        for init in status.get("initContainerStatuses") or []:
            terminated = (init.get("state") or {}).get("terminated")
            if not terminated or terminated.get("exitCode") != 0:
                pending.append(f"{_name(pod)}: {init.get('name', '?')} has not passed")
        if status.get("phase") != "Running" or not _ready(pod):
            pending.append(f"{_name(pod)}: not running and ready")
    for pod in _items(pods):
        if _app(pod) == CUDA_VALIDATOR_APP and (pod.get("status") or {}).get("phase") == "Failed":
            pending.append(f"{_name(pod)}: the CUDA validation failed")
    return pending


def gpu_operator_validation_done(pods: Any) -> bool:
    """True when :func:`gpu_operator_validation_pending` finds nothing."""
    return not gpu_operator_validation_pending(pods)


def gpu_operator_allocatable(nodes: Any, resource: str) -> int:
    """The cluster's allocatable count of `resource` (e.g. nvidia.com/gpu), summed over its nodes."""
    total = 0
    for node in _items(nodes):
        value = ((node.get("status") or {}).get("allocatable") or {}).get(resource, "0")
        try:
            total += int(str(value))
        except ValueError:
            continue  # extended resources are integers; anything else is not a count of devices
    return total


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "gpu_operator_validation_pending": gpu_operator_validation_pending,
            "gpu_operator_validation_done": gpu_operator_validation_done,
            "gpu_operator_allocatable": gpu_operator_allocatable,
        }
