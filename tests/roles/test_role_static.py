"""Static checks of the Ansible content: the roles' declared interface, their naming rule, the linters, the playbook.

No host needed; ansible-lint, yamllint and ansible-playbook come from the environment running the tests (the same
virtual environment as pytest).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ROLES_DIR = REPO / "roles"
PLAYBOOK = REPO / "playbooks" / "devserver.yml"
ROLES = (
    "devserver_base",
    "data_volume",
    "nvidia_driver",
    "cuda_toolkit",
    "container_runtime",
    "kind_cluster",
    "gpu_operator",
    "nvshare",
    "gpu_verify",
)

# argument_specs type → the Python types a default of that type may have
_TYPES: dict[str, tuple[type, ...]] = {"str": (str,), "bool": (bool,), "int": (int,), "list": (list,), "dict": (dict,)}


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _tool(name: str) -> str:
    """A console script of this environment (beside the interpreter), else from PATH; fail if missing."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install ansible-core ansible-lint yamllint")
    return found


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1", NO_COLOR="1")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, env=env, timeout=600)


def _tasks(node: Any, gated: bool = False) -> list[dict[str, Any]]:
    """Every task (and handler) in a task list, blocks flattened; a task inside a block with a `when` gets
    ``_gated: True``."""
    out: list[dict[str, Any]] = []
    for item in node or []:
        if not isinstance(item, dict):
            continue
        out.append({**item, "_gated": gated or "when" in item})
        for key in ("block", "rescue", "always"):
            out.extend(_tasks(item.get(key), gated or "when" in item))
    return out


def _defined_names(role: Path) -> dict[str, str]:
    """Every variable name a role defines → where: defaults, vars files, set_fact keys, register, loop_var."""
    names: dict[str, str] = {}
    for vars_file in [*role.glob("defaults/*.yml"), *role.glob("vars/*.yml")]:
        for name in _load(vars_file) or {}:
            names[name] = str(vars_file.relative_to(REPO))
    for task_file in [*role.glob("tasks/*.yml"), *role.glob("handlers/*.yml")]:
        where = str(task_file.relative_to(REPO))
        for task in _tasks(_load(task_file)):
            if "register" in task:
                names[task["register"]] = where
            facts = task.get("ansible.builtin.set_fact")
            if isinstance(facts, dict):
                for name in facts:
                    if name not in ("cacheable",):
                        names[name] = where
            loop_var = (task.get("loop_control") or {}).get("loop_var")
            if loop_var:
                names[loop_var] = where
            for name in task.get("vars") or {}:
                names[name] = where
    return names


def test_the_playbook_applies_the_roles_in_order_with_their_tags() -> None:
    (play,) = _load(PLAYBOOK)
    assert [entry["role"] for entry in play["roles"]] == list(ROLES)
    assert all(entry["tags"] == [entry["role"]] for entry in play["roles"])
    assert play["become"] is True
    assert play["gather_subset"] == ["min"]


@pytest.mark.parametrize("role", ROLES)
def test_role_has_the_fixed_anatomy(role: str) -> None:
    base = ROLES_DIR / role
    for part in ("defaults/main.yml", "meta/argument_specs.yml", "meta/main.yml", "tasks/main.yml", "README.md"):
        assert (base / part).is_file(), f"{role} lacks {part}"
    main = _load(base / "tasks/main.yml")
    imported = [task.get("ansible.builtin.import_tasks") for task in main if "ansible.builtin.import_tasks" in task]
    assert imported == ["preflight.yml", "install.yml", "configure.yml"], f"{role}/tasks/main.yml must only dispatch"
    # the install and configure phases carry the <role>_install / <role>_configure tags; preflight runs with both
    tags = {
        task["ansible.builtin.import_tasks"]: set(task.get("tags", []))
        for task in main
        if "ansible.builtin.import_tasks" in task
    }
    assert tags["install.yml"] == {f"{role}_install"}
    assert tags["configure.yml"] == {f"{role}_configure"}
    assert tags["preflight.yml"] == {f"{role}_install", f"{role}_configure"}


@pytest.mark.parametrize("role", ROLES)
def test_argument_specs_equal_defaults(role: str) -> None:
    """meta/argument_specs.yml declares exactly the variables of defaults/main.yml, with the same defaults, and
    each default has the declared type (and is among the declared choices)."""
    base = ROLES_DIR / role
    defaults = _load(base / "defaults/main.yml") or {}
    options = _load(base / "meta/argument_specs.yml")["argument_specs"]["main"]["options"]
    assert sorted(options) == sorted(defaults), f"{role}: argument_specs and defaults name different variables"
    for name, spec in options.items():
        assert "type" in spec, f"{role}: {name} has no type"
        assert "description" in spec, f"{role}: {name} has no description"
        assert spec.get("default") == defaults[name], f"{role}: {name} default differs from defaults/main.yml"
        value = defaults[name]
        expected = _TYPES[spec["type"]]
        # bool is an int in Python: an int option must not default to a bool
        assert isinstance(value, expected), f"{role}: {name} defaults to {value!r}, not a {spec['type']}"
        assert not (spec["type"] == "int" and isinstance(value, bool)), f"{role}: {name} defaults to a bool"
        if spec["type"] == "list" and "elements" in spec:
            assert all(isinstance(item, _TYPES[spec["elements"]]) for item in value), f"{role}: {name} elements"
        if "choices" in spec:
            assert value in spec["choices"], f"{role}: {name} default {value!r} is not among its choices"


@pytest.mark.parametrize("role", ROLES)
def test_every_variable_is_prefixed_with_its_role(role: str) -> None:
    names = _defined_names(ROLES_DIR / role)
    assert names, f"{role} defines no variables?"
    wrong = {name: where for name, where in names.items() if not name.startswith(f"{role}_")}
    assert not wrong, f"{role} defines variables without the {role}_ prefix: {wrong}"


def test_the_reboot_task_has_the_name_the_runner_reads() -> None:
    """devserver.runner.REBOOT_TASK is "nvidia_driver : reboot required": the role must have a task named exactly
    "reboot required", and it may only report (debug), never act."""
    from devserver.runner import REBOOT_TASK

    role, _, name = REBOOT_TASK.partition(" : ")
    tasks = _tasks(_load(ROLES_DIR / role / "tasks/configure.yml"))
    matching = [task for task in tasks if task.get("name", "").split(" # ")[0] == name]
    assert len(matching) == 1, f"{role}/tasks/configure.yml needs exactly one task named {name!r}"
    assert set(matching[0]) - {"_gated"} <= {"name", "ansible.builtin.debug", "when"}


def test_the_gpu_check_task_has_the_name_the_runner_reads() -> None:
    """devserver.runner.GPU_CHECK_TASK is "gpu_verify : GPU check result": one task of that name, a report (debug)
    that is never skipped, so that every update's summary says whether the GPU was checked."""
    from devserver.runner import GPU_CHECK_TASK

    role, _, name = GPU_CHECK_TASK.partition(" : ")
    tasks = _tasks(_load(ROLES_DIR / role / "tasks/configure.yml"))
    matching = [task for task in tasks if task.get("name") == name]
    assert len(matching) == 1, f"{role}/tasks/configure.yml needs exactly one task named {name!r}"
    assert set(matching[0]) - {"_gated"} == {"name", "ansible.builtin.debug"}
    assert matching[0]["_gated"] is False
    assert "skipped: " in matching[0]["ansible.builtin.debug"]["msg"]


def test_fully_qualified_module_names() -> None:
    """Every task names its module with a collection (ansible.builtin.*); no short names."""
    keywords = {
        "name", "when", "register", "loop", "loop_control", "notify", "tags", "changed_when", "failed_when",
        "check_mode", "become", "block", "rescue", "always", "listen", "vars", "environment", "no_log", "args",
        "delegate_to", "run_once", "ignore_errors", "until", "retries", "delay", "_gated",
    }  # fmt: skip
    short = []
    for task_file in [*ROLES_DIR.glob("*/tasks/*.yml"), *ROLES_DIR.glob("*/handlers/*.yml")]:
        for task in _tasks(_load(task_file)):
            modules = [key for key in task if key not in keywords]
            short += [f"{task_file.relative_to(REPO)}: {key}" for key in modules if "." not in key]
    assert not short, short


def test_commands_are_probes_or_gated_actions() -> None:
    """STYLE 6: every command/shell either is a read-only probe (changed_when: false and check_mode: false) or
    declares its change (changed_when: true) and is gated by a condition (or is a handler)."""
    bad = []
    for task_file in [*ROLES_DIR.glob("*/tasks/*.yml"), *ROLES_DIR.glob("*/handlers/*.yml")]:
        handler = task_file.parent.name == "handlers"
        for task in _tasks(_load(task_file)):
            if not ({"ansible.builtin.command", "ansible.builtin.shell"} & set(task)):
                continue
            where = f"{task_file.relative_to(REPO)}: {task.get('name')}"
            if task.get("changed_when") is False:
                if task.get("check_mode") is not False and not handler:
                    bad.append(f"{where}: a probe must run in check mode too (check_mode: false)")
            elif task.get("changed_when") is True:
                if not handler and not task["_gated"]:
                    bad.append(f"{where}: an action must be gated on a probe (when:)")
            else:
                bad.append(f"{where}: changed_when must say whether it is a probe or an action")
    assert not bad, "\n".join(bad)


def test_yamllint_is_clean() -> None:
    proc = _run([_tool("yamllint"), "--strict", "roles", "playbooks", ".yamllint", ".ansible-lint"])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_yamllint_config_does_catch_problems(tmp_path: Path) -> None:
    """The config is not so lax that the clean run above means nothing."""
    config = yaml.safe_load((REPO / ".yamllint").read_text())
    config.pop("ignore", None)  # the rules, applied to a file outside the tree
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(config))
    bad = tmp_path / "bad.yml"
    bad.write_text("key: yes\nother:   [a,b]\n")
    proc = _run([_tool("yamllint"), "--strict", "-c", str(tmp_path / "rules.yml"), str(bad)])
    assert proc.returncode != 0
    assert "truthy" in proc.stdout
    assert "document-start" in proc.stdout


def test_ansible_lint_production_profile_is_clean() -> None:
    proc = _run([_tool("ansible-lint"), "--profile", "production", "--nocolor"])
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]
    assert "Profile 'production' was required, and it passed" in proc.stdout + proc.stderr


def test_playbook_syntax_check() -> None:
    proc = _run([_tool("ansible-playbook"), "--syntax-check", "-i", "localhost,", str(PLAYBOOK)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_role_tag_selects_tasks() -> None:
    """--tags <role>, <role>_install and <role>_configure (what `devserver update --only` passes) each select
    tasks of that role and of no other."""
    proc = _run([_tool("ansible-playbook"), "--list-tasks", "-i", "localhost,", str(PLAYBOOK)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for role in ROLES:
        for tag in (role, f"{role}_install", f"{role}_configure"):
            listed = _run([_tool("ansible-playbook"), "--list-tasks", "--tags", tag, "-i", "localhost,", str(PLAYBOOK)])
            assert listed.returncode == 0, listed.stdout + listed.stderr
            # every role's argument validation is tagged "always" and runs whatever the tags: not counted
            lines = [line for line in listed.stdout.splitlines() if "Validating arguments against arg spec" not in line]
            task_roles = set(re.findall(r"^\s+(\w+) : ", "\n".join(lines), re.MULTILINE))
            assert task_roles == {role}, f"--tags {tag} selects tasks of {sorted(task_roles)}"
