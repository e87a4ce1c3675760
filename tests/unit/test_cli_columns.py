"""`devserver catalog` and `devserver plan` read in an 80-column terminal: no cell cut short ("…"), no line wider
than the terminal, machine types whole on one line, image names whole (folded onto the next line only when longer
than any line can hold)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from devserver import catalog
from devserver.cli.main import app
from devserver.cli.output import out
from devserver.loader import load_spec
from devserver.plan import planned_resources, resolve

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))
CAT = catalog.load()
WIDTH = 80
runner = CliRunner()


@pytest.fixture(autouse=True)
def _eighty_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    # The CLI's console reads COLUMNS once, when the module is first imported: pin it for these runs.
    monkeypatch.setattr(out(), "width", WIDTH)


def invoke(*argv: str) -> str:
    result = runner.invoke(app, list(argv), env={"COLUMNS": str(WIDTH), "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    return result.stdout


def assert_fits(text: str) -> list[str]:
    lines = text.splitlines()
    assert "…" not in text
    assert max(len(line) for line in lines) <= WIDTH
    return lines


def details_column(lines: list[str]) -> str:
    """The plan table's details column, its lines joined without whitespace (so folded values read whole)."""
    header = next(index for index, line in enumerate(lines) if re.match(r"^\s*resource\s+details\s*$", line))
    start = lines[header].index("details")
    end = next(index for index in range(header + 2, len(lines)) if not lines[index].strip())
    return "".join(re.sub(r"\s+", "", line[start:]) for line in lines[header + 2 : end])


def whole_on_a_line(lines: list[str], word: str) -> bool:
    return any(re.search(rf"(^|\s){re.escape(word)}(\s|$)", line) for line in lines)


@pytest.mark.parametrize("argv", [[], *(["--cloud", c] for c in CAT.clouds), ["--gpu", "h200"], ["--gpu", "H100"]])
def test_catalog_at_80_columns_cuts_nothing(argv: list[str]) -> None:
    lines = assert_fits(invoke("catalog", *argv))
    clouds = [argv[1]] if argv[:1] == ["--cloud"] else list(CAT.clouds)
    gpu = CAT.gpu_key(argv[1]) if argv[:1] == ["--gpu"] else None
    shown = [
        name for cloud in clouds for name, machine in CAT.clouds[cloud].machines.items() if gpu in (None, machine.gpu)
    ]
    assert shown
    for name in shown:
        assert whole_on_a_line(lines, name), name
    for key in {CAT.clouds[c].machines[n].gpu for c in clouds for n in CAT.clouds[c].machines if n in shown}:
        assert whole_on_a_line(lines, key), key


def test_catalog_gpu_filter_and_json_rows() -> None:
    rows = json.loads(invoke("catalog", "--gpu", "h200", "--json"))
    assert {(r["cloud"], r["machine_type"]) for r in rows} == {
        ("gce", "a3-ultragpu-8g"),
        ("azure", "Standard_ND96isr_H200_v5"),
        ("aws", "p5e.48xlarge"),
        ("aws", "p5en.48xlarge"),
    }
    # The rows keep their shape: the same keys as before the filter existed.
    everything = json.loads(invoke("catalog", "--json"))
    assert all(set(r) == {"cloud", "machine_type", "gpu", "count", "nvswitch", "grid"} for r in everything)
    assert [r for r in everything if r["gpu"] == "h200"] == rows
    both = json.loads(invoke("catalog", "--cloud", "aws", "--gpu", "l40s", "--json"))
    assert {r["machine_type"] for r in both} == {n for n, m in CAT.clouds["aws"].machines.items() if m.gpu == "l40s"}
    bad = runner.invoke(app, ["catalog", "--gpu", "h2000"])
    assert bad.exit_code == 2
    assert "did you mean h200?" in bad.stderr


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_plan_at_80_columns_cuts_nothing(example: Path) -> None:
    lines = assert_fits(invoke("plan", str(example)))
    resolved = resolve(load_spec(example), str(example))
    if resolved.machine is not None:
        assert whole_on_a_line(lines, resolved.machine.type)
    for pool in resolved.node_pools:
        assert whole_on_a_line(lines, pool.machine.type)
    # Every detail is all there, folded or not: a line wider than the terminal would be cropped by the console, and
    # a cropped line still measures 80 columns, so read the details column itself.
    column = details_column(lines)
    for resource in planned_resources(resolved):
        for key, value in resource.details.items():
            assert re.sub(r"\s+", "", f"{key}: {value}") in column, (resource.name, key)
    # An image name folds only where no line of the details column can hold it; folded, it is still all there.
    image = resolved.image
    if resolved.spec.cloud.provider != "local":
        assert image in re.sub(r"\s+", "", "".join(lines))
        if len(image) <= WIDTH - 20:
            assert whole_on_a_line(lines, image), image


def test_a_real_80_column_terminal_gets_the_same_catalog() -> None:
    env = {**os.environ, "COLUMNS": str(WIDTH), "NO_COLOR": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "devserver", "catalog", "--cloud", "azure"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    lines = assert_fits(result.stdout)
    assert whole_on_a_line(lines, "Standard_NC320lds_xl_RTXPRO6000BSE_v6")
