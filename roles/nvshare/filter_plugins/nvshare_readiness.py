"""Readiness of nvshare, as pure functions over `kubectl get -o json` documents (a List of DaemonSets, a List of
Nodes). Run on the controller by the role's wait tasks; tested with synthetic documents."""

from __future__ import annotations

from typing import Any


def _items(document: Any) -> list[dict[str, Any]]:
    if not isinstance(document, dict) or not isinstance(document.get("items"), list):
        return []
    return [item for item in document["items"] if isinstance(item, dict)]


def nvshare_daemonsets_ready(daemonsets: Any, names: list[str]) -> bool:
    """Every DaemonSet in `names` exists, has observed its current spec, and runs an updated, ready pod on each of
    the (at least one) nodes it selects."""
    found = {str((ds.get("metadata") or {}).get("name")): ds for ds in _items(daemonsets)}
    for name in names:
        ds = found.get(name)
        if ds is None:
            return False
        status = ds.get("status") or {}
        generation = (ds.get("metadata") or {}).get("generation", 0)
        desired = status.get("desiredNumberScheduled", 0)
        if status.get("observedGeneration", -1) < generation or desired < 1:
            return False
        if status.get("numberReady", 0) != desired or status.get("updatedNumberScheduled", 0) != desired:
            return False
    return True


def nvshare_allocatable(nodes: Any, resource: str) -> int:
    """The cluster's allocatable count of `resource` (nvidia.com/gpu, nvshare.com/gpu), summed over its nodes."""
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
        return {"nvshare_daemonsets_ready": nvshare_daemonsets_ready, "nvshare_allocatable": nvshare_allocatable}
