"""Filters that register the NVIDIA runtime with containerd without overwriting its configuration.

containerd 1.x merges an imported file into config.toml plugin by plugin: a drop-in that defines
``plugins."io.containerd.grpc.v1.cri"`` *replaces* config.toml's whole CRI section (containerd's ``mergeConfig``:
"Replace entire sections instead of merging map's values"). A drop-in holding only the nvidia runtime would silently
drop what config.toml sets there (Debian's package sets the CNI ``bin_dir``; sites set ``SystemdCgroup``, registry
mirrors). So the drop-in carries config.toml's CRI section with the nvidia runtime added, and config.toml itself only
gains an ``imports`` entry. containerd 2.x (config version 3) merges deeply; the same drop-in is correct there too.

Both filters are pure functions of their inputs (text in, text out), run on the controller (Python >= 3.11 for
``tomllib``) and are tested against golden files.
"""

from __future__ import annotations

import copy
import json
import re
import tomllib
from typing import Any

from ansible.errors import AnsibleFilterError

# The CRI plugin's key, and where its runtimes live below it, for each config version.
_CRI_PLUGIN = {1: "cri", 2: "io.containerd.grpc.v1.cri", 3: "io.containerd.cri.v1.runtime"}
# containerd's built-in runc runtime (the shim v2), present in its defaults in config versions 1 to 3
_RUNC_TYPE = "io.containerd.runc.v2"
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_TABLE_HEADER = re.compile(r"^\s*\[")
_IMPORTS = re.compile(r"^imports\s*=\s*\[[^\]]*\]", re.MULTILINE)


def _parse(text: str, what: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text or "")
    except tomllib.TOMLDecodeError as exc:
        raise AnsibleFilterError(
            f"{what} is not valid TOML ({exc}); fix it by hand, devserver does not overwrite it"
        ) from exc


def containerd_config_version(text: str) -> int:
    """The config version of a containerd config.toml: 1 when a file sets none (as containerd reads it); 2 for no
    file at all (containerd's built-in defaults, and the config :func:`containerd_with_import` then writes)."""
    if not (text or "").strip():
        return 2
    return int(_parse(text, "config.toml").get("version", 1))


def containerd_with_import(text: str, pattern: str) -> str:
    """config.toml with `pattern` in its top-level ``imports`` list; every other line is kept as it was.

    No file (empty text): a minimal version 2 config whose only setting is the import (containerd's defaults
    otherwise). An ``imports = [...]`` line gets the pattern appended; without one, the line is inserted before the
    first table header, where top-level keys must be.
    """
    config = _parse(text, "config.toml")
    imports = config.get("imports", [])
    if not isinstance(imports, list):
        raise AnsibleFilterError("config.toml's imports is not a list")
    if pattern in imports:
        return text
    line = "imports = " + json.dumps([*imports, pattern])
    if not text.strip():
        return f"version = 2\n{line}\n"
    if "imports" in config:
        updated, count = _IMPORTS.subn(line, text, count=1)
        if count == 1 and _parse(updated, "config.toml").get("imports") == [*imports, pattern]:
            return updated
        raise AnsibleFilterError(
            f"config.toml's imports line has a form devserver cannot edit safely; add {pattern!r} to it by hand"
        )
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    at = next((i for i, current in enumerate(lines) if _TABLE_HEADER.match(current)), len(lines))
    while at > 0 and not lines[at - 1].strip():  # right after the last top-level line, before the blank lines
        at -= 1
    lines.insert(at, line + "\n")
    return "".join(lines)


def containerd_nvidia_dropin(text: str, binary: str, default_runtime: bool = False, header: str = "") -> str:
    """The drop-in for conf.d: config.toml's CRI plugin section plus an ``nvidia`` runtime.

    The runtime copies the ``runc`` runtime's settings (``SystemdCgroup`` and the like, as nvidia-ctk does) with
    ``BinaryName`` set to `binary`; containerd's default ``runc`` runtime is written out when config.toml relies on
    it. With `default_runtime` nvidia becomes ``default_runtime_name``; without, the value config.toml sets (or
    containerd's default) stays.
    """
    config = _parse(text, "config.toml")
    version = containerd_config_version(text)
    if version not in _CRI_PLUGIN:
        raise AnsibleFilterError(f"containerd config version {version} is not supported (1, 2 or 3)")
    plugin = _CRI_PLUGIN[version]
    cri = copy.deepcopy(config.get("plugins", {}).get(plugin, {}))
    runtimes = cri.setdefault("containerd", {}).setdefault("runtimes", {})
    # Once the drop-in names any runtime, the runtimes table replaces containerd's default one, which holds runc:
    # without it here, a config.toml that relies on the default (Debian's) would lose runc, its default runtime.
    runtimes.setdefault("runc", {"runtime_type": _RUNC_TYPE})
    nvidia = copy.deepcopy(runtimes["runc"])
    nvidia.setdefault("runtime_type", _RUNC_TYPE)
    nvidia.setdefault("options", {})["BinaryName"] = binary
    runtimes["nvidia"] = nvidia
    if default_runtime:
        cri["containerd"]["default_runtime_name"] = "nvidia"
    document: dict[str, Any] = {"plugins": {plugin: cri}}
    if version != 1:  # a version 1 file has no version key; setting one would change how config.toml is read
        document = {"version": version, **document}
    body = _dump(document).lstrip("\n")
    prefix = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return prefix + body


# A TOML writer for what tomllib returns (tables, arrays, strings, numbers, booleans, dates)


def _key(name: str) -> str:
    return name if _BARE_KEY.match(name) else json.dumps(name, ensure_ascii=False)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:
            return "nan"
        if value in (float("inf"), float("-inf")):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise AnsibleFilterError(f"cannot write {type(value).__name__} to TOML")


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(item, dict) for item in value)


def _dump(table: dict[str, Any], path: tuple[str, ...] = ()) -> str:
    """Keys first, then sub-tables under [a."b.c".d] headers, indented by depth as containerd's own output is.
    A table holding only sub-tables gets no header of its own (TOML defines it implicitly)."""
    out = []
    pad = "  " * len(path)
    for name, value in table.items():
        if not isinstance(value, dict) and not _is_table_array(value):
            out.append(f"{pad}{_key(name)} = {_value(value)}\n")
    for name, value in table.items():
        sub = (*path, name)
        header = ".".join(_key(part) for part in sub)
        header_pad = "  " * (len(sub) - 1)
        if isinstance(value, dict):
            has_keys = not value or any(not isinstance(v, dict) and not _is_table_array(v) for v in value.values())
            if has_keys:
                out.append(f"\n{header_pad}[{header}]\n")
            out.append(_dump(value, sub))
        elif _is_table_array(value):
            for item in value:
                out.append(f"\n{header_pad}[[{header}]]\n")
                out.append(_dump(item, sub))
    return "".join(out)


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "containerd_config_version": containerd_config_version,
            "containerd_with_import": containerd_with_import,
            "containerd_nvidia_dropin": containerd_nvidia_dropin,
        }
