"""The CLI through Typer's runner and as a real process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from devserver.cli.main import app

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))
runner = CliRunner()


def test_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("validate", "plan", "schema", "catalog"):
        assert command in result.stdout


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_plan_every_example(example: Path) -> None:
    result = runner.invoke(app, ["plan", str(example), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["ok"] is True
    assert payload["software"]["driver"].startswith(str(payload["resolved"]["driver"]["branch"]))
    human = runner.invoke(app, ["plan", str(example)])
    assert human.exit_code == 0
    assert "Would create" in human.stdout
    assert "Would install" in human.stdout


def test_plan_without_file_is_builtin_local() -> None:
    result = runner.invoke(app, ["plan", "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["resolved"]["cloud"] == "local"


def test_validate_human() -> None:
    result = runner.invoke(app, ["validate", str(EXAMPLES[0])])
    assert result.exit_code == 0
    assert "valid" in result.stdout


def test_schema_is_json_schema() -> None:
    result = runner.invoke(app, ["schema"])
    schema = json.loads(result.stdout)
    assert schema["title"] == "devserver spec"


def test_catalog_listing() -> None:
    result = runner.invoke(app, ["catalog", "--cloud", "aws", "--json"])
    rows = json.loads(result.stdout)
    assert {
        "cloud": "aws",
        "machine_type": "p5.48xlarge",
        "gpu": "h100-80gb",
        "count": 8,
        "nvswitch": True,
        "grid": False,
    } in rows
    bad = runner.invoke(app, ["catalog", "--cloud", "ibm"])
    assert bad.exit_code == 2


SDK_PREFIXES = (
    "pulumi",
    "google.cloud",
    "googleapiclient",
    "azure",
    "boto3",
    "botocore",
    "openstack",
    "ansible",
    "ansible_runner",
    "fabric",
    "paramiko",
)
PROBE = """
import sys
from devserver.cli.main import app
try:
    app(ARGV)
except SystemExit as exc:
    assert exc.code in (0, None), exc.code
prefixes = PREFIXES
loaded = sorted(m for m in sys.modules if any(m == p or m.startswith(p + ".") for p in prefixes))
print("LOADED", loaded, "SPEC", "devserver.spec" in sys.modules)
"""


@pytest.mark.parametrize("argv", [["--help"], ["validate", "examples/gce.yaml"], ["plan", "examples/aws.yaml"]])
def test_commands_import_no_cloud_sdk(argv: list[str]) -> None:
    """Start-up stays cheap: these commands must not import any cloud SDK, Pulumi or Ansible module."""
    probe = PROBE.replace("ARGV", repr(argv)).replace("PREFIXES", repr(SDK_PREFIXES))
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=Path(__file__).parents[2], check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "LOADED []" in result.stdout
    # The probe must really have run the command: validate/plan load the spec model, --help does not.
    assert ("SPEC True" in result.stdout) == (argv != ["--help"])
