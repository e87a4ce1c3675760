"""devserver.runner's inventory and its Mitogen settings, checked against the installed ansible-core."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from devserver import runner
from devserver.hosts import Host


def test_inventory_hands_over_the_preflight_python() -> None:
    hosts = [Host("a", "192.0.2.1", "ops", 2222, Path("/k")), Host("b", "192.0.2.2", "ops")]
    entries = runner.inventory(hosts, Path("/kh"), {"a": "/usr/bin/python3"})["all"]["hosts"]
    assert entries["a"]["ansible_python_interpreter"] == "/usr/bin/python3"
    assert "ansible_python_interpreter" not in entries["b"]  # no preflight result: Ansible discovers it
    assert entries["a"]["ansible_port"] == 2222
    assert entries["a"]["ansible_ssh_private_key_file"] == "/k"
    assert "UserKnownHostsFile=/kh" in entries["a"]["ansible_ssh_common_args"]


def test_mitogen_settings_run_modules_in_mitogens_interpreter(tmp_path: Path) -> None:
    """The strategy mitogen_envvars() names loads with this ansible-core, and a task's module runs inside the
    interpreter Mitogen keeps (its process title says so), not in a Python started for the task."""
    playbook = tmp_path / "probe.yml"
    playbook.write_text(
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n"
        "    - ansible.builtin.shell: tr '\\0' ' ' < /proc/$PPID/cmdline\n      register: parent\n"
        "    - ansible.builtin.debug:\n        msg: 'parent: {{ parent.stdout }}'\n"
    )

    def parent_of_module(env: dict[str, str]) -> str:
        argv = [
            str(Path(sys.executable).with_name("ansible-playbook")), "-i", "localhost,", "-c", "local",
            "-e", f"ansible_python_interpreter={sys.executable}", str(playbook),
        ]  # fmt: skip
        result = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **env}, timeout=120)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        (line,) = [line for line in result.stdout.splitlines() if '"msg": "parent: ' in line]
        return line

    assert "(mitogen:" in parent_of_module(runner.mitogen_envvars())
    assert "(mitogen:" not in parent_of_module({"ANSIBLE_STRATEGY": "linear"})  # the probe can tell them apart
