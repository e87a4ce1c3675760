"""Golden-file tests of how container_runtime registers the NVIDIA runtime without overwriting configurations.

The role's own task files (``docker.yml``, ``containerd.yml``) run through ansible-runner with the local connection
against a temporary directory standing in for ``/`` (``container_runtime_config_root``), in image mode so that no
service is touched. Inputs are realistic existing configurations under ``golden/<engine>/<case>/``; the results must
equal the ``expected*`` files there byte for byte, keep every setting of the input, and a second run must change
nothing. Regenerate the expected files after a deliberate change with ``DEVSERVER_UPDATE_GOLDEN=1``, then review
the diff.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE = os.environ.get("DEVSERVER_UPDATE_GOLDEN") == "1"
RUNTIME = "/usr/bin/nvidia-container-runtime"
CRI = "io.containerd.grpc.v1.cri"


def _cases(engine: str) -> list[str]:
    return sorted(path.name for path in (GOLDEN / engine).iterdir() if path.is_dir())


def _run_role(root: Path, task_file: str, extra: dict[str, Any], work: Path) -> dict[str, Any]:
    """Run container_runtime's `task_file` against `root`; return ansible-runner's stats for localhost."""
    import ansible_runner

    (work / "runner").mkdir(parents=True, exist_ok=True)
    playbook = work / "play.yml"
    playbook.write_text(
        yaml.safe_dump(
            [
                {
                    "name": "Render container_runtime configs into a directory",
                    "hosts": "localhost",
                    "gather_facts": False,
                    "tasks": [
                        {
                            "name": f"container_runtime {task_file}",
                            "ansible.builtin.include_role": {"name": "container_runtime", "tasks_from": task_file},
                        }
                    ],
                }
            ]
        )
    )
    extravars = {
        "container_runtime_config_root": str(root),
        "container_runtime_image_mode": True,
        **extra,
    }
    result = ansible_runner.run(
        private_data_dir=str(work / "runner"),
        playbook=str(playbook),
        inventory={"all": {"hosts": {"localhost": {"ansible_connection": "local",
                                                   "ansible_python_interpreter": sys.executable}}}},
        extravars=extravars,
        envvars={
            "ANSIBLE_ROLES_PATH": str(REPO / "roles"),
            "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
            # ansible-runner starts ansible-playbook from PATH: the one beside this interpreter
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        },
        quiet=True,
    )  # fmt: skip
    stdout = result.stdout.read() if result.stdout else ""
    assert result.rc == 0, stdout[-4000:]
    stats = result.stats or {}
    return {key: (stats.get(key) or {}).get("localhost", 0) for key in ("ok", "changed", "failures", "skipped")}


def _check_golden(actual: Path | None, expected: Path) -> None:
    """`actual` (None: must not exist) equals `expected` byte for byte (or rewrite `expected` when updating)."""
    if UPDATE:
        if actual is None:
            expected.unlink(missing_ok=True)
        else:
            shutil.copyfile(actual, expected)
        return
    if actual is None:
        assert not expected.exists(), f"{expected} exists, but the role wrote no file"
        return
    assert expected.exists(), f"no golden file {expected}; run with DEVSERVER_UPDATE_GOLDEN=1 and review it"
    assert actual.read_text() == expected.read_text(), f"{actual} differs from {expected}"


def _setup(case_dir: Path, root: Path, name: str, target: str) -> Path | None:
    """Copy the case's input (if any) to its place under `root`; return the input path."""
    source = case_dir / name
    dest = root / target
    dest.parent.mkdir(parents=True, exist_ok=True)
    if source.exists():
        shutil.copyfile(source, dest)
        return source
    return None


def _without_nvidia(config: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(config))
    out.get("runtimes", {}).pop("nvidia", None)
    if not out.get("runtimes"):
        out.pop("runtimes", None)
    return out


@pytest.mark.parametrize("case", _cases("docker"))
def test_daemon_json_merge(case: str, tmp_path: Path) -> None:
    case_dir = GOLDEN / "docker" / case
    params = json.loads((case_dir / "vars.json").read_text())
    root = tmp_path / "root"
    source = _setup(case_dir, root, "daemon.json", "etc/docker/daemon.json")

    stats = _run_role(root, "docker.yml", params, tmp_path / "first")
    written = root / "etc/docker/daemon.json"
    _check_golden(written, case_dir / "expected.json")

    before = json.loads(source.read_text() or "{}") if source is not None and source.read_text().strip() else {}
    after = json.loads(written.read_text())
    assert after["runtimes"]["nvidia"]["path"] == RUNTIME
    # every key of the input is still there with its value, except the ones devserver owns
    owned = {"default-runtime", "data-root"}
    for key, value in _without_nvidia(before).items():
        if key in owned:
            continue
        assert key in after, f"{key} lost"
        assert after[key] == value or key == "runtimes", f"{key} changed"
    for name, runtime in before.get("runtimes", {}).items():
        if name != "nvidia":
            assert after["runtimes"][name] == runtime, f"runtime {name} changed"
    if params["container_runtime_default_runtime_nvidia"]:
        assert after["default-runtime"] == "nvidia"
    elif before.get("default-runtime") == "nvidia":  # devserver set it earlier: it goes
        assert "default-runtime" not in after
    else:
        assert after.get("default-runtime") == before.get("default-runtime")
    if params["container_runtime_docker_data_root"]:
        assert after["data-root"] == params["container_runtime_docker_data_root"]
    else:
        assert after.get("data-root") == before.get("data-root")
    assert stats["changed"] >= 1, stats  # every case lacks the nvidia runtime as the role writes it

    again = _run_role(root, "docker.yml", params, tmp_path / "second")
    assert again["changed"] == 0, again


@pytest.mark.parametrize("case", _cases("containerd"))
def test_containerd_import_and_dropin(case: str, tmp_path: Path) -> None:
    case_dir = GOLDEN / "containerd" / case
    params = json.loads((case_dir / "vars.json").read_text())
    root = tmp_path / "root"
    source = _setup(case_dir, root, "config.toml", "etc/containerd/config.toml")

    stats = _run_role(root, "containerd.yml", params, tmp_path / "first")
    config = root / "etc/containerd/config.toml"
    dropin = root / "etc/containerd/conf.d/99-nvidia.toml"
    _check_golden(config, case_dir / "expected-config.toml")
    _check_golden(dropin, case_dir / "expected-99-nvidia.toml")

    before_text = source.read_text() if source is not None else ""
    before = tomllib.loads(before_text)
    after = tomllib.loads(config.read_text())
    assert "/etc/containerd/conf.d/*.toml" in after["imports"]
    # config.toml keeps every line it had; the only change is the imports entry
    added = [line for line in config.read_text().splitlines() if line not in before_text.splitlines()]
    assert all(line.startswith("imports = ") or line.startswith("version = ") for line in added), added
    assert {k: v for k, v in after.items() if k != "imports"} == {k: v for k, v in before.items() if k != "imports"} | (
        {"version": 2} if source is None else {}
    )
    assert [i for i in after["imports"] if i != "/etc/containerd/conf.d/*.toml"] == before.get("imports", [])

    # The drop-in replaces config.toml's CRI section under containerd 1.x: it must hold all of it, plus nvidia.
    version = before.get("version", 1) if source is not None else 2
    plugin = {1: "cri", 2: CRI, 3: "io.containerd.cri.v1.runtime"}[version]
    loaded = tomllib.loads(dropin.read_text())
    assert loaded.get("version", 1) == version
    cri = loaded["plugins"][plugin]
    original = before.get("plugins", {}).get(plugin, {})
    runtimes = cri["containerd"]["runtimes"]
    assert runtimes["nvidia"]["options"]["BinaryName"] == RUNTIME
    # containerd's default runc is written out when config.toml relies on it (the runtimes table is replaced whole)
    runc = original.get("containerd", {}).get("runtimes", {}).get("runc", {"runtime_type": "io.containerd.runc.v2"})
    assert runtimes["runc"] == runc
    # nvidia runs like runc (cgroup driver and all), only through NVIDIA's binary
    assert {k: v for k, v in runtimes["nvidia"].items() if k != "options"} == {
        k: v for k, v in runc.items() if k != "options"
    }
    assert runtimes["nvidia"]["options"] == runc.get("options", {}) | {"BinaryName": RUNTIME}
    expected_cri = json.loads(json.dumps(original))
    expected_cri.setdefault("containerd", {}).setdefault("runtimes", {})["runc"] = runc
    expected_cri["containerd"]["runtimes"]["nvidia"] = runtimes["nvidia"]
    if params["container_runtime_default_runtime_nvidia"]:
        expected_cri["containerd"]["default_runtime_name"] = "nvidia"
    assert cri == expected_cri
    assert stats["changed"] >= 1

    again = _run_role(root, "containerd.yml", params, tmp_path / "second")
    assert again["changed"] == 0, again


def test_golden_cases_exist() -> None:
    """The cases the role must handle are all present (a deleted case would otherwise pass silently)."""
    assert set(_cases("docker")) >= {"missing", "empty", "site-settings", "site-settings-default-nvidia",
                                      "previous-nvidia-default"}  # fmt: skip
    assert set(_cases("containerd")) >= {"missing", "stock-1.6-default", "stock-with-imports", "debian-package",
                                          "systemd-cgroup-mirrors", "docker-containerd-io-v1"}  # fmt: skip


def _containerd() -> str | None:
    """A containerd binary to check the results with: $DEVSERVER_CONTAINERD, else containerd on PATH."""
    return os.environ.get("DEVSERVER_CONTAINERD") or shutil.which("containerd")


def _dump(binary: str, config: Path) -> dict[str, Any]:
    """The configuration containerd itself reads from `config` (imports merged), as a dict."""
    proc = subprocess.run([binary, "--config", str(config), "config", "dump"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return tomllib.loads(proc.stdout)


@pytest.mark.skipif(
    _containerd() is None, reason="no containerd binary (set DEVSERVER_CONTAINERD or install containerd)"
)
@pytest.mark.parametrize(
    "case", ["stock-1.6-default", "stock-with-imports", "debian-package", "systemd-cgroup-mirrors"]
)
def test_containerd_reads_config_toml_plus_the_nvidia_runtime(case: str, tmp_path: Path) -> None:
    """What containerd itself makes of the golden result: exactly the original configuration plus runtimes.nvidia
    (and default_runtime_name where asked). With the naive drop-in (only the nvidia runtime) containerd 1.x loses
    config.toml's CRI settings; this proves the drop-in does not."""
    binary = _containerd()
    assert binary is not None
    case_dir = GOLDEN / "containerd" / case
    params = json.loads((case_dir / "vars.json").read_text())
    dropins = tmp_path / "conf.d"
    dropins.mkdir()
    shutil.copyfile(case_dir / "expected-99-nvidia.toml", dropins / "99-nvidia.toml")
    site = tmp_path / "site.toml"  # stands in for a file the case's config.toml imports
    site.write_text("version = 2\n")

    def local(text: str) -> str:
        return text.replace("/etc/containerd/conf.d/", f"{dropins}/").replace(
            "/etc/containerd/site.d/registry.toml", str(site)
        )

    original = tmp_path / "original.toml"
    original.write_text(local((case_dir / "config.toml").read_text()))
    result = tmp_path / "config.toml"
    result.write_text(local((case_dir / "expected-config.toml").read_text()))
    before, after = _normalised(_dump(binary, original)), _normalised(_dump(binary, result))
    cri_after = after["plugins"][CRI]
    nvidia = cri_after["containerd"]["runtimes"].pop("nvidia")
    runc = before["plugins"][CRI]["containerd"]["runtimes"]["runc"]
    assert nvidia["options"] == runc["options"] | {"BinaryName": RUNTIME}
    assert {k: v for k, v in nvidia.items() if k != "options"} == {k: v for k, v in runc.items() if k != "options"}
    if params["container_runtime_default_runtime_nvidia"]:
        assert cri_after["containerd"]["default_runtime_name"] == "nvidia"
        cri_after["containerd"]["default_runtime_name"] = before["plugins"][CRI]["containerd"]["default_runtime_name"]
    for dumped in (before, after):
        dumped.pop("imports", None)
    assert after == before


def _normalised(config: dict[str, Any]) -> dict[str, Any]:
    """containerd prints a runtime's options with every field when it comes from its defaults, and only the set
    ones when it comes from a file: unset (zero) options are dropped so that both read the same."""
    for runtime in config.get("plugins", {}).get(CRI, {}).get("containerd", {}).get("runtimes", {}).values():
        options = runtime.get("options") or {}
        runtime["options"] = {key: value for key, value in options.items() if value not in ("", 0, False, None, [])}
    return config
