"""The one error base (devserver.errors) and the one way the CLI renders it (devserver.cli.output)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from devserver.cli import output
from devserver.cli.main import app
from devserver.clouds.common import CloudError, OptionError
from devserver.errors import DevserverError, InputError, Problem, SpecError, problems_text
from devserver.hosts import Host
from devserver.hoststate.probe import ProbeError
from devserver.images.api import NeedsRootError
from devserver.images.artifact import ArtifactError
from devserver.images.base import ImageBuildError
from devserver.images.build import BuildError
from devserver.images.chroot import ChrootError
from devserver.images.packer import PackerError
from devserver.remote import RemoteError
from devserver.sysutil import MountError
from devserver.update import HostsError

REPO = Path(__file__).resolve().parents[2]
HOST = Host(name="gpu-1", address="203.0.113.7", user="devserver", port=2222)
PROBLEM = Problem("machine.gpu.count", "t4 attaches in counts of 1, 2, 4", "pick one of those", "3")

# (error, its where, its exit code): one of every DevserverError subclass in the product.
ONE_LINE_ERRORS: list[tuple[DevserverError, str, output.ExitCode]] = [
    (ImageBuildError("mkfs.ext4", "failed (exit 1)", "make the disk bigger"), "mkfs.ext4", output.ExitCode.FAILED),
    (ArtifactError("out/x", "has no manifest.json", "build one"), "out/x", output.ExitCode.BAD_INPUT),
    (PackerError("packer build (qemu)", "failed", "see the log", Path("p.log")), "packer build (qemu)", 1),
    (BuildError("provision", "devserver.yml: task failed", Path("f.json")), "provision", output.ExitCode.FAILED),
    (ChrootError("/srv/tree is not a root filesystem"), "chroot", output.ExitCode.FAILED),
    (CloudError("bucket 'b' not found", "create the bucket"), "", output.ExitCode.FAILED),
    (OptionError("--project", "is required with --target gce", "pass it"), "--project", output.ExitCode.BAD_INPUT),
    (RemoteError(HOST, "cannot connect over SSH", "check the address"), "devserver@203.0.113.7:2222", 1),
    (InputError("--distro", "unknown distribution 'x'", "use debian-12"), "--distro", output.ExitCode.BAD_INPUT),
    (NeedsRootError("devserver image base"), "", output.ExitCode.FAILED),
    (ProbeError("the probe printed no JSON: 'x'"), "host-state probe", output.ExitCode.FAILED),
    (MountError("/srv/tree/proc", "mount -t proc proc /srv/tree/proc failed: denied"), "/srv/tree/proc", 1),
]
PROBLEM_ERRORS: list[tuple[DevserverError, str, output.ExitCode]] = [
    (SpecError("gce.yaml", [PROBLEM]), "gce.yaml", output.ExitCode.BAD_INPUT),
    (HostsError([Problem("gpu-1", "cannot connect over SSH", "check the address")]), "", output.ExitCode.FAILED),
]


def _subclasses(cls: type) -> set[type]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= _subclasses(sub)
    return found


def test_every_error_class_is_covered_here() -> None:
    """A new DevserverError subclass must be added above, so that its rendering and exit code are checked."""
    covered = {type(error) for error, _, _ in ONE_LINE_ERRORS + PROBLEM_ERRORS}
    assert _subclasses(DevserverError) - covered == set()


@pytest.mark.parametrize(
    ("error", "where", "code"), ONE_LINE_ERRORS, ids=[type(e).__name__ for e, _, _ in ONE_LINE_ERRORS]
)
def test_one_line_error_renders_where_message_fix(error: DevserverError, where: str, code: int) -> None:
    assert error.where == where
    assert error.message, "every error says what is wrong"
    assert error.fix, "every error says how to fix it"
    line = str(error)
    assert "\n" not in line
    assert line.startswith(f"{where}: {error.message}" if where else error.message)
    assert f" — fix: {error.fix}" in line
    if error.log is not None:
        assert line.endswith(f"(log: {error.log})")
    assert output.exit_code(error) == code
    assert output.error_payload(error) == {"ok": False, "error": line, "fix": error.fix}
    assert output.error_payload(error, "image build failed")["error"] == f"image build failed: {line}"


@pytest.mark.parametrize(
    ("error", "where", "code"), PROBLEM_ERRORS, ids=[type(e).__name__ for e, _, _ in PROBLEM_ERRORS]
)
def test_problem_list_error_renders_headline_and_one_line_per_problem(
    error: DevserverError, where: str, code: int
) -> None:
    assert error.where == where
    lines = str(error).splitlines()
    assert lines[0] == error.headline
    assert lines[1:] == [f"  ✗ {problem.render()}" for problem in error.problems]
    assert output.exit_code(error) == code
    payload = output.error_payload(error)
    assert payload["ok"] is False
    assert payload["problems"] == [problem.as_dict() for problem in error.problems]
    assert ("source" in payload) == bool(where)


def test_spec_error_text_is_what_plan_prints_and_stacks_raise() -> None:
    error = SpecError("gce.yaml", [PROBLEM, PROBLEM])
    assert error.source == "gce.yaml"
    assert str(error) == problems_text("gce.yaml: 2 problems", [PROBLEM, PROBLEM])
    assert str(SpecError("x.yaml", [PROBLEM])).splitlines()[0] == "x.yaml: 1 problem"
    assert isinstance(error, DevserverError)
    assert error.bad_input


def test_exit_codes_are_the_documented_ones() -> None:
    assert [(c.name, int(c)) for c in output.ExitCode] == [
        ("OK", 0),
        ("FAILED", 1),
        ("BAD_INPUT", 2),
        ("INTERRUPTED", 130),
    ]
    readme = (REPO / "README.md").read_text()
    assert "Exit codes: 0 success, 2 a problem with the input (spec," in readme
    assert "130 interrupted" in readme


def test_fail_prints_one_line_on_stderr_and_exits_with_the_class_code(capsys: pytest.CaptureFixture[str]) -> None:
    error = OptionError("--region", "is required with --target aws", "pass it, e.g. --region eu-west-1")
    with pytest.raises(typer.Exit) as raised:
        output.fail(error)
    assert raised.value.exit_code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"error: {error}\n"


def test_fail_with_json_prints_the_payload_on_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit) as raised:
        output.fail(HostsError([Problem("gpu-1", "sudo without a password is refused", "add a sudoers rule")]), True)
    assert raised.value.exit_code == 1
    payload = json.loads(capsys.readouterr().out)
    assert payload["error"] == "1 host problem(s); nothing was changed"
    assert [p["message"] for p in payload["problems"]] == ["sudo without a password is refused"]


def test_fail_prints_a_problem_list_with_its_marks(capsys: pytest.CaptureFixture[str]) -> None:
    error = SpecError("a [b].yaml", [PROBLEM])  # brackets: printed as they are, never read as Rich markup
    with pytest.raises(typer.Exit):
        output.fail(error)
    assert capsys.readouterr().err == f"error: {error}\n"


def test_interrupted_exits_130(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit) as raised:
        output.interrupted("upload interrupted", "run the same command again to resume", json_out=True)
    assert raised.value.exit_code == 130
    payload = json.loads(capsys.readouterr().out)
    assert payload == {
        "ok": False,
        "error": "upload interrupted — fix: run the same command again to resume",
        "fix": "run the same command again to resume",
    }


BAD_SPEC = str(REPO / "tests" / "unit" / "bad_specs" / "t4_on_a2.yaml")
USER_MISTAKES = [
    ["validate", BAD_SPEC],
    ["plan", BAD_SPEC],
    ["catalog", "--cloud", "ibm"],
    ["update", "not a target", "--spec", str(REPO / "examples" / "local.yaml")],
    ["status", "devserver@203.0.113.7", "--key", "/nonexistent/key"],
    ["ssh", "not a target"],
    ["exec", "not a target", "true"],
    ["image", "base", "--distro", "debian-11"],
    ["image", "build", "--target", "local", "--builder", "cloud"],
    ["image", "build", "--target", "vsphere"],
    ["image", "boot", "/nonexistent/artifact"],
    ["image", "test", "/nonexistent/artifact"],
    ["image", "upload", "/nonexistent/artifact", "--target", "aws", "--region", "eu-west-1"],
]


@pytest.mark.parametrize("argv", USER_MISTAKES, ids=lambda a: " ".join(a[:2]))
def test_each_command_maps_a_user_mistake_to_exit_2_without_traceback(argv: list[str]) -> None:
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    assert result.stderr.startswith(("error: ", "Usage: ")), result.stderr


# The commands that take --json (ssh, exec and image boot print no results; an unknown --target choice is Typer's
# own usage error, raised before the command runs).
JSON_MISTAKES = [a for a in USER_MISTAKES if a[0] not in ("ssh", "exec") and "vsphere" not in a and "boot" not in a]


@pytest.mark.parametrize("argv", JSON_MISTAKES, ids=lambda a: " ".join(a[:2]))
def test_json_errors_are_one_document_on_stdout(argv: list[str]) -> None:
    result = CliRunner().invoke(app, [*argv, "--json"])
    assert result.exit_code == 2, result.output
    payload = json.loads(result.stdout)
    assert payload["ok"] is False
    assert payload["error"]
    assert payload.get("fix") or all(p["fix"] for p in payload["problems"])


def test_a_build_that_needs_root_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    argv = ["image", "build", "--target", "local", "--builder", "chroot", "--out", str(tmp_path), "--force"]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error: devserver image build --builder chroot needs root — fix: run it with sudo")
