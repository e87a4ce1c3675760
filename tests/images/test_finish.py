"""The finish step both local builders share (chroot and qemu): components read from the finished disk, the target's
formats, the manifest, the artifact folder appearing whole. On a small raw disk made here (no build, no root)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from devserver import loader, plan
from devserver.images import artifact, build, disk


def _disk(tmp_path: Path, components: dict[str, str] | None) -> Path:
    """A raw disk holding an ext4 root where disk.assemble puts it, with image_validate's file when given."""
    tree = tmp_path / "tree"
    (tree / Path(build.COMPONENTS_FILE).parent).mkdir(parents=True)
    if components is not None:
        (tree / build.COMPONENTS_FILE).write_text(json.dumps(components))
    raw = tmp_path / "disk.raw"
    size_mib = 64
    with raw.open("wb") as out:
        out.truncate(disk.ROOT_START + size_mib * 1024 * 1024)
    argv = ["mkfs.ext4", "-q", "-F", "-E", f"offset={disk.ROOT_START}", "-d", str(tree), str(raw), f"{size_mib}M"]
    subprocess.run(argv, check=True, capture_output=True)
    return raw


def _finish(tmp_path: Path, raw: Path, validated_in: str) -> tuple[build.BuildResult, list[tuple[str, object]]]:
    resolved = plan.resolve(loader.load_builtin_local())
    options = build.BuildOptions(target="local", out_dir=tmp_path / "out", cache_dir=tmp_path / "cache")
    work = options.out_dir / ".work"  # beside the artifacts, as build() makes it
    work.mkdir(parents=True)
    reported: list[tuple[str, object]] = []
    timings = {"provision": 1.04, validated_in: 2.0}
    result = build._finish_artifact(
        resolved, options, "ab" * 32, tmp_path / "out" / "artifact", work, raw, ("bios", "uefi"), validated_in,
        timings, lambda phase, what: reported.append((phase, what)),
    )  # fmt: skip
    return result, reported


def test_the_finish_step_writes_the_artifact_from_the_disk(tmp_path: Path) -> None:
    components = {"nvidia_driver": "535.309.01", "kernels": "6.1.0-57-cloud-amd64"}
    result, reported = _finish(tmp_path, _disk(tmp_path, components), "finish")
    assert result.folder == tmp_path / "out" / "artifact"
    assert not (tmp_path / "out" / ".work" / "artifact").exists()
    assert not result.skipped
    manifest = artifact.load_manifest(result.folder)
    assert manifest == result.manifest
    assert manifest.components == components
    assert manifest.firmware == ("bios", "uefi")
    assert manifest.inputs_hash == "ab" * 32
    assert manifest.name == f"local-dev-{'ab' * 6}"
    assert [d.format for d in manifest.disks] == [f for f, _ in artifact.TARGET_FORMATS["local"]]
    assert list(manifest.timings) == ["provision", "finish", "formats"]
    assert manifest.timings["provision"] == 1.0  # rounded to a tenth
    assert result.timings == manifest.timings
    assert [phase for phase, _ in reported] == ["formats"]
    assert (result.folder / "spec.yaml").is_file()


@pytest.mark.parametrize("validated_in", ["finish", "packer"])
def test_an_image_without_components_fails_the_phase_that_validated_it(tmp_path: Path, validated_in: str) -> None:
    with pytest.raises(build.BuildError) as err:
        _finish(tmp_path, _disk(tmp_path, None), validated_in)
    assert err.value.phase == validated_in
    assert build.COMPONENTS_FILE in err.value.message
    assert not (tmp_path / "out" / "artifact").exists()
