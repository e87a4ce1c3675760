"""The bad-spec corpus: every file must exit 2 naming the field and the problem, never with a traceback.

Each corpus file starts with ``# expect: <field path or (file)> | <part of the message>``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from devserver.cli.main import app

CORPUS = sorted((Path(__file__).parent / "bad_specs").glob("*.yaml"))
runner = CliRunner()


def _expectation(path: Path) -> tuple[str, str]:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} lacks its expectation line"
    field, _, message = first.removeprefix("# expect: ").partition(" | ")
    return field.strip(), message.strip()


def test_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 25


@pytest.mark.parametrize("spec", CORPUS, ids=lambda p: p.stem)
def test_bad_spec_exits_2_naming_field(spec: Path) -> None:
    field, message = _expectation(spec)
    result = runner.invoke(app, ["validate", str(spec), "--json"])
    assert result.exit_code == 2, result.output
    payload = json.loads(result.stdout)
    assert payload["ok"] is False
    rendered = [(p["path"] or "(file)", f"{p['message']} (got {p['value']}) — {p['fix']}") for p in payload["problems"]]
    assert any(path == field and message in text for path, text in rendered), rendered
    assert all(p["fix"] for p in payload["problems"]), "every problem must say how to fix it"


@pytest.mark.parametrize("spec", CORPUS, ids=lambda p: p.stem)
def test_bad_spec_human_output_has_no_traceback(spec: Path) -> None:
    field, _ = _expectation(spec)
    result = runner.invoke(app, ["validate", str(spec)])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert field in result.stderr


def test_non_utf8(tmp_path: Path) -> None:
    spec = tmp_path / "latin1.yaml"
    spec.write_bytes("name: caf\xe9\ncloud: {provider: local}\n".encode("latin-1"))
    result = runner.invoke(app, ["validate", str(spec)])
    assert result.exit_code == 2
    assert "not UTF-8" in result.stderr


def test_missing_file(tmp_path: Path) -> None:
    result = runner.invoke(app, ["validate", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "does not exist" in result.stderr


def test_directory(tmp_path: Path) -> None:
    result = runner.invoke(app, ["plan", str(tmp_path)])
    assert result.exit_code == 2
    assert "is a directory" in result.stderr


def test_unreadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Root reads any file, so the permission error is raised where the loader reads the bytes.
    spec = tmp_path / "secret.yaml"
    spec.write_text("name: x\n")

    def deny(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", deny)
    result = runner.invoke(app, ["validate", str(spec)])
    assert result.exit_code == 2
    assert "permission denied" in result.stderr


def test_fifo_does_not_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "spec.yaml"
    os.mkfifo(fifo)
    result = runner.invoke(app, ["validate", str(fifo)])
    assert result.exit_code == 2
    assert "not a regular file" in result.stderr


def test_real_process_exit_code_and_no_traceback() -> None:
    spec = Path(__file__).parent / "bad_specs" / "t4_on_a2.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "devserver", "validate", str(spec)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "machine.type" in result.stderr
