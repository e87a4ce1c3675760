"""`devserver update` and `devserver status`: bring live hosts to the spec, and report how far they are from it.

Orchestration only: hosts come from :mod:`devserver.hosts`, SSH from :mod:`devserver.remote`, the playbook run
from :mod:`devserver.runner`, the role variables from :mod:`devserver.ansible_vars`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from devserver.errors import DevserverError, Problem, SpecError
from devserver.hosts import Host
from devserver.hoststate import diff
from devserver.hoststate.diff import Drift as Drift  # re-exported: the CLI renders it
from devserver.hoststate.expected import Expected, expected
from devserver.hoststate.observed import Observed, parse
from devserver.plan import Resolved
from devserver.remote import Preflight, RemoteError, preflight, probe, probe_with_stamp, write_stamp
from devserver.runner import HostStats, RunSummary, TaskEvent, ansible_root, run_playbook

PHASES = ("install", "configure")


def roles() -> list[str]:
    """The roles the playbook applies, in its order."""
    import yaml

    playbook = yaml.safe_load((ansible_root() / "playbooks" / "devserver.yml").read_text())
    names: list[str] = []
    for play in playbook:
        for entry in play.get("roles", []):
            names.append(entry["role"] if isinstance(entry, dict) else str(entry))
    return names


def tags_for(only: Sequence[str]) -> list[str]:
    """`--only ROLE[:install|configure]` → playbook tags; raises SpecError naming the bad value."""
    known = roles()
    tags = []
    for item in only:
        role, _, phase = item.partition(":")
        if role not in known:
            raise SpecError(
                "--only",
                [Problem("--only", "is not a role of the playbook", f"use one of {', '.join(known)}", repr(item))],
            )
        if phase and phase not in PHASES:
            raise SpecError(
                "--only",
                [
                    Problem(
                        "--only",
                        f"phase {phase!r} is not install or configure",
                        f"write {role}:install or {role}:configure",
                        repr(item),
                    )
                ],
            )
        tags.append(f"{role}_{phase}" if phase else role)
    return tags


def check_hosts(hosts: Sequence[Host], resolved: Resolved, known_hosts: Path | None) -> list[Preflight]:
    """Preflight every host in parallel: reachable, passwordless sudo, supported OS equal to the spec's."""

    def one(host: Host) -> Preflight | RemoteError:
        try:
            return preflight(host, known_hosts=known_hosts)
        except RemoteError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=min(16, len(hosts))) as pool:
        results = list(pool.map(one, hosts))
    problems = []
    for result in results:
        if isinstance(result, RemoteError):
            problems.append(Problem(result.host.name, result.message, result.fix))
        elif result.os != resolved.spec.os:
            problems.append(
                Problem(
                    result.host.name,
                    f"runs {result.os} but the spec says os: {resolved.spec.os}",
                    f"set os: {result.os} in the spec, or target a {resolved.spec.os} host",
                )
            )
    if problems:
        raise HostsError(problems)
    return [r for r in results if isinstance(r, Preflight)]


class HostsError(DevserverError):
    """One or more hosts failed (the preflight, or a probe), one problem each; nothing was changed on any host."""

    def __init__(self, problems: list[Problem]) -> None:
        count = len(problems)
        super().__init__("", f"{count} host problem(s); nothing was changed", problems=problems)


def update(
    hosts: Sequence[Host],
    resolved: Resolved,
    *,
    check: bool,
    diff: bool,
    only: Sequence[str],
    data_device: str | None,
    known_hosts: Path | None,
    mitogen: bool = True,
    converge: bool = False,
    on_event: Callable[[TaskEvent | str], None] | None = None,
) -> RunSummary:
    """Preflight all hosts, then run the playbook on those not up to date with the spec's variables.

    Up to date (:mod:`devserver.stamp`): the host's converge stamp names these inputs and its state now, and the
    host-state model finds no drift — checked in one round trip per host, and the playbook skipped there. `converge`
    (or `check`, or `only`) always runs it. A full run that finishes on a host writes its stamp.

    The playbook runs through Mitogen (:func:`devserver.runner.mitogen_envvars`) unless `mitogen` is false or a host
    lacks python3-apt. Without it, Ansible's apt module installs it and re-runs itself in a new Python, which cannot
    import the module code that Mitogen serves from memory; so a fresh host's first converge runs over Ansible's own
    connection (minutes of package installs either way), and the runs after it through Mitogen.

    `data_device` (``--data-device``) overrides the data volume's device; without it, the one the stack exported
    (:attr:`Host.data_device`) is used."""
    from devserver import stamp
    from devserver.ansible_vars import role_vars

    tags = tags_for(only)
    device = data_device_for(hosts, resolved, data_device)
    checked = check_hosts(hosts, resolved, known_hosts)
    extravars = role_vars(resolved, data_device=device)
    full = not check and not tags
    inputs = stamp.inputs_hash(extravars)
    current: dict[str, HostStats] = {}
    if full and not converge:
        if on_event is not None:
            on_event("converge stamp and host state")
        want = expected(resolved, data_device=device)
        current = _up_to_date(checked, want, inputs, known_hosts)
    todo = [p for p in checked if p.host.name not in current]
    if not todo:
        return RunSummary(rc=0, status="up to date", hosts=current)
    summary = run_playbook(
        [p.host for p in todo],
        extravars,
        check=check,
        diff=diff,
        tags=tags,
        known_hosts=known_hosts,
        pythons={p.host.name: p.python for p in todo},
        mitogen=mitogen and all(p.python_apt for p in todo),
        on_event=on_event,
    )
    if full and summary.rc == 0:
        _write_stamps([p.host for p in todo if _finished(summary, p.host.name)], inputs, known_hosts)
    summary.hosts.update(current)
    return summary


def _up_to_date(
    checked: Sequence[Preflight], want: Expected, inputs: str, known_hosts: Path | None
) -> dict[str, HostStats]:
    """The hosts whose stamp and state say the playbook has nothing to do, with their stats (in parallel)."""
    from devserver import stamp

    def one(host: Host) -> HostStats | None:
        try:
            raw, found = probe_with_stamp(host, known_hosts=known_hosts)
        except RemoteError:
            return None  # the playbook's own run reports what is wrong with the host
        observed = parse(raw)
        if not stamp.matches(found, inputs) or diff.drift(want, observed):
            return None
        return HostStats(up_to_date=True, reboot_required=bool(observed.reboot_markers))

    with ThreadPoolExecutor(max_workers=min(16, len(checked))) as pool:
        results = list(pool.map(one, [p.host for p in checked]))
    return {p.host.name: stats for p, stats in zip(checked, results, strict=True) if stats is not None}


def _finished(summary: RunSummary, name: str) -> bool:
    stats = summary.hosts.get(name)
    return stats is not None and stats.failed == 0 and stats.unreachable == 0


def _write_stamps(hosts: Sequence[Host], inputs: str, known_hosts: Path | None) -> None:
    """Stamp each host a full run finished on. A host whose stamp cannot be written keeps its old one, whose state
    no longer matches: its next update runs the playbook again, which is slower, never wrong."""

    def one(host: Host) -> None:
        with contextlib.suppress(RemoteError):
            write_stamp(host, inputs, known_hosts=known_hosts)

    with ThreadPoolExecutor(max_workers=max(1, min(16, len(hosts)))) as pool:
        list(pool.map(one, hosts))


def data_device_for(hosts: Sequence[Host], resolved: Resolved, override: str | None) -> str | None:
    """The data volume's device for the roles: `override` (``--data-device``) when given, else the device the
    stack exported for its one host (hosts from an inventory or ``user@host`` carry none: the data volume is then
    left alone, as before). Raises SpecError when a stack exports a data device but the spec has no
    ``disks.data`` (the spec is not the one the stack was deployed from)."""
    if override is not None:
        return override
    exported = sorted({h.data_device for h in hosts if h.data_device is not None})
    if not exported:
        return None
    if resolved.spec.disks.data is None:
        raise SpecError(
            "disks.data",
            [
                Problem(
                    "disks.data",
                    f"is not in the spec, but the stack exports a data disk ({', '.join(exported)})",
                    "pass --spec with the spec the stack was deployed from",
                )
            ],
        )
    if len(exported) > 1:
        raise SpecError(
            "--data-device",
            [
                Problem(
                    "--data-device", "differs between the hosts", "update one stack at a time, or pass --data-device"
                )
            ],
        )
    return exported[0]


def status(host: Host, resolved: Resolved, known_hosts: Path | None) -> tuple[Observed, list[Drift]]:
    """What the host is, and every difference from what the spec resolves to (one probe round trip)."""
    observed = parse(probe(host, known_hosts=known_hosts))
    device = host.data_device if resolved.spec.disks.data is not None else None
    return observed, diff.drift(expected(resolved, data_device=device), observed)


def drift(facts: dict[str, Any], resolved: Resolved) -> list[Drift]:
    """Compare the probe's raw JSON with the resolved spec (pure: tested without a host)."""
    return diff.drift(expected(resolved), parse(facts))
