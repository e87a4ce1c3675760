"""ansible-runner adapter: run the one playbook against hosts and summarise what happened from its events and
stats (never from its stdout).

Contract: :func:`run_playbook` returns a :class:`RunSummary` for any playbook outcome (failed tasks and unreachable
hosts included); it raises only for a broken installation (playbook or roles missing).
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devserver.hosts import Host

# The task the nvidia_driver role runs (a debug message) only when a new driver needs a reboot to load.
REBOOT_TASK = "nvidia_driver : reboot required"
# gpu_verify's last task: its message ("passed: …" or "skipped: no GPU"…) is the host's GPU check in the summary.
GPU_CHECK_TASK = "gpu_verify : GPU check result"


@dataclass(frozen=True)
class TaskEvent:
    """One task outcome on one host, as ansible-runner reported it."""

    host: str
    task: str
    status: str  # ok | changed | failed | skipped | unreachable
    message: str = ""


@dataclass
class HostStats:
    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0
    reboot_required: bool = False
    gpu_check: str = ""  # gpu_verify's result; "" when it did not run (e.g. --only another role)
    up_to_date: bool = False  # the converge stamp and the host state matched: the playbook did not run here


@dataclass
class RunSummary:
    rc: int
    status: str
    hosts: dict[str, HostStats] = field(default_factory=dict)
    changed_tasks: list[TaskEvent] = field(default_factory=list)
    failures: list[TaskEvent] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.rc == 0
            and not self.failures
            and all(h.failed == 0 and h.unreachable == 0 for h in self.hosts.values())
        )

    @property
    def changed(self) -> int:
        return sum(h.changed for h in self.hosts.values())


def ansible_root() -> Path:
    """Folder holding ansible.cfg, playbooks/ and roles/: inside the installed package, or the source checkout."""
    packaged = Path(__file__).with_name("ansible")
    if (packaged / "playbooks").is_dir():
        return packaged
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "playbooks").is_dir():
        return checkout
    raise FileNotFoundError("devserver's playbooks/ and roles/ are missing from this installation")


def inventory(
    hosts: Sequence[Host], known_hosts: Path | None, pythons: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """An Ansible inventory for `hosts`. Host keys: accept a new one (fresh VMs), refuse a changed one.
    `pythons` maps a host's name to its python3 (from the preflight); the others get interpreter discovery."""
    ssh_args = ["-o StrictHostKeyChecking=accept-new", "-o ConnectTimeout=15"]
    if known_hosts is not None:
        ssh_args.append(f"-o UserKnownHostsFile={known_hosts}")
    entries: dict[str, Any] = {}
    for host in hosts:
        hostvars: dict[str, Any] = {
            "ansible_host": host.address,
            "ansible_user": host.user,
            "ansible_port": host.port,
            "ansible_ssh_common_args": " ".join(ssh_args),
            # Mitogen compresses its SSH stream by default: CPU for nothing on the fast links devservers sit behind
            # (measured: a no-op update 1 s slower with it).
            "mitogen_ssh_compression": False,
        }
        if pythons and host.name in pythons:
            # Discovery is one more round trip per host before the first task (1.1 s of each update under Mitogen).
            hostvars["ansible_python_interpreter"] = pythons[host.name]
        if host.key_file is not None:
            hostvars["ansible_ssh_private_key_file"] = str(host.key_file)
        entries[host.name] = hostvars
    return {"all": {"hosts": entries}}


def run_playbook(
    hosts: Sequence[Host],
    extravars: dict[str, Any],
    *,
    check: bool = False,
    diff: bool = False,
    tags: Sequence[str] = (),
    known_hosts: Path | None = None,
    pythons: Mapping[str, str] | None = None,
    forks: int = 10,
    mitogen: bool = True,
    on_event: Callable[[TaskEvent | str], None] | None = None,
) -> RunSummary:
    """Run playbooks/devserver.yml on `hosts` over SSH (in parallel, up to `forks`); see :func:`run` and
    :func:`inventory`."""
    return run(
        "devserver.yml",
        inventory(hosts, known_hosts, pythons),
        extravars,
        check=check,
        diff=diff,
        tags=tags,
        forks=forks,
        mitogen=mitogen,
        on_event=on_event,
    )


def mitogen_envvars() -> dict[str, str]:
    """Ansible settings that run a playbook with Mitogen's linear strategy (same task order and semantics as
    Ansible's own). Mitogen keeps one Python interpreter per host and target user alive for the whole run and
    sends each module once, instead of one SSH round trip, module upload and interpreter start per task: a no-op
    update runs its ~65 host tasks at ~0.1 s each instead of ~0.3 s (bench/update_noop.py)."""
    import ansible_mitogen

    return {
        "ANSIBLE_STRATEGY_PLUGINS": str(Path(ansible_mitogen.__file__).parent / "plugins" / "strategy"),
        "ANSIBLE_STRATEGY": "mitogen_linear",
    }


def run(
    playbook: str,
    hosts_inventory: dict[str, Any],
    extravars: dict[str, Any],
    *,
    check: bool = False,
    diff: bool = False,
    tags: Sequence[str] = (),
    forks: int = 10,
    mitogen: bool = False,
    on_event: Callable[[TaskEvent | str], None] | None = None,
) -> RunSummary:
    """Run playbooks/`playbook` against `hosts_inventory` (any connection: SSH hosts, a chroot). `on_event`
    receives each task's start (its name, a str) and each outcome (a TaskEvent), for progress display.
    `mitogen`: run with Mitogen's strategy (:func:`mitogen_envvars`), for SSH hosts; a chroot build keeps
    Ansible's own, which its connection plugin is written against.

    A KeyboardInterrupt (SIGINT) stops ansible-playbook and all its processes (ansible-runner kills its process
    group) before it propagates, so no task keeps running behind the caller's cleanup.
    """
    from ansible_runner.interface import init_runner

    root = ansible_root()
    summary = RunSummary(rc=0, status="")

    def handle(event: dict[str, Any]) -> bool:
        kind = event.get("event", "")
        data = event.get("event_data", {})
        if kind == "playbook_on_task_start" and on_event is not None:
            on_event(_task_name(data))
        outcome = _outcome(kind, data)
        if outcome is not None:
            stats = summary.hosts.setdefault(outcome.host, HostStats())
            if outcome.status == "changed":
                summary.changed_tasks.append(outcome)
            if outcome.status in ("failed", "unreachable") and not data.get("ignore_errors"):
                summary.failures.append(outcome)
            if outcome.task == REBOOT_TASK and outcome.status in ("ok", "changed"):
                stats.reboot_required = True
            if outcome.task == GPU_CHECK_TASK and outcome.status == "ok":
                stats.gpu_check = outcome.message
            if on_event is not None:
                on_event(outcome)
        return True  # keep ansible-runner's own artifact record of the event

    with tempfile.TemporaryDirectory(prefix="devserver-run-") as private:
        envvars = {
            "ANSIBLE_CONFIG": str(root / "ansible.cfg"),
            "ANSIBLE_ROLES_PATH": str(root / "roles"),
            "ANSIBLE_CONNECTION_PLUGINS": str(root / "plugins" / "connection"),
            # Ansible's controller-side temp files go with the private folder, even when the run is killed.
            "ANSIBLE_LOCAL_TEMP": str(Path(private) / "tmp"),
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_PYTHON_INTERPRETER": "auto_silent",
        }
        if mitogen:
            envvars.update(mitogen_envvars())
        cmdline = " ".join(flag for flag, on in (("--check", check), ("--diff", diff)) if on)
        # ansible-runner starts ansible-playbook from PATH: make it the one installed beside this interpreter.
        envvars["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        interrupted = threading.Event()
        result = init_runner(
            private_data_dir=private,
            playbook=str(root / "playbooks" / playbook),
            inventory=hosts_inventory,
            extravars=extravars,
            envvars=envvars,
            cmdline=cmdline or None,
            tags=",".join(tags) or None,
            forks=forks,
            quiet=True,
            event_handler=handle,
            cancel_callback=interrupted.is_set,
            # how often ansible-runner polls cancel_callback (seconds)
            settings={"pexpect_timeout": 0.5},
        )
        crashed: list[BaseException] = []

        def work() -> None:
            try:
                result.run()
            except BaseException as exc:  # re-raised in the calling thread below
                crashed.append(exc)

        thread = threading.Thread(target=work, name="ansible-runner", daemon=True)
        thread.start()
        # The run happens in ansible-runner's thread; this one only waits, so that SIGINT (delivered to the main
        # thread) lands here and can cancel the run instead of abandoning it.
        try:
            while thread.is_alive():
                try:
                    thread.join(timeout=0.5)
                except KeyboardInterrupt:
                    interrupted.set()
        finally:
            # ansible-runner ended without finishing (an exception in its thread, e.g. from on_event): its
            # ansible-playbook, in a session of its own, would run on unsupervised.
            if result.status not in _FINISHED:
                _kill_playbooks_of(private)
        if interrupted.is_set():
            raise KeyboardInterrupt
        if crashed:
            raise crashed[0]
        summary.rc = int(result.rc)
        summary.status = str(result.status)
        _merge_stats(summary, result.stats or {})
    return summary


# ansible-runner's final statuses: its ansible-playbook has been reaped.
_FINISHED = frozenset({"successful", "failed", "canceled", "timeout"})


def _kill_playbooks_of(private: str) -> None:
    """SIGKILL the process group of every ansible-playbook started for the private data folder `private`."""
    marker = private.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            if any(b"ansible-playbook" in part for part in cmdline[:2]) and any(marker in p for p in cmdline):
                os.killpg(os.getpgid(int(entry.name)), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue  # gone meanwhile


def _task_name(data: dict[str, Any]) -> str:
    """'role : task' as Ansible prints it; ansible-runner reports the role and the task name in separate fields."""
    task = str(data.get("task", ""))
    role = data.get("role")
    return f"{role} : {task}" if role else task


def _outcome(kind: str, data: dict[str, Any]) -> TaskEvent | None:
    host = str(data.get("host", ""))
    task = _task_name(data)
    res = data.get("res", {}) if isinstance(data.get("res"), dict) else {}
    if kind == "runner_on_ok":
        return TaskEvent(host, task, "changed" if res.get("changed") else "ok", str(res.get("msg", "")))
    if kind == "runner_on_failed":
        message = res.get("msg") or res.get("stderr") or res.get("stdout") or ""
        # A loop's own msg is only "One or more items failed": say which items, and why.
        items = [r for r in res.get("results") or [] if isinstance(r, dict) and r.get("failed")]
        if items:
            message = "; ".join(str(r.get("msg") or r.get("stderr") or r.get("item", "")).strip() for r in items)
        return TaskEvent(host, task, "failed", str(message).strip()[-2000:])
    if kind == "runner_on_unreachable":
        return TaskEvent(host, task, "unreachable", str(res.get("msg", "")).strip())
    if kind == "runner_on_skipped":
        return TaskEvent(host, task, "skipped")
    return None


def _merge_stats(summary: RunSummary, stats: dict[str, Any]) -> None:
    """Per-host counts from the playbook_on_stats record (the authoritative totals)."""
    for key, attr in (
        ("ok", "ok"),
        ("changed", "changed"),
        ("failures", "failed"),
        ("dark", "unreachable"),
        ("skipped", "skipped"),
    ):
        for host, count in (stats.get(key) or {}).items():
            setattr(summary.hosts.setdefault(host, HostStats()), attr, int(count))
