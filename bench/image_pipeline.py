"""Time the image pipeline on this machine: base build (cold and cached), disk assembly, each format, boot to SSH.

Usage (root): ``.venv/bin/python bench/image_pipeline.py [--cold] [--skip-boot] [--workdir DIR]``

``--cold`` builds the base into an empty cache (a full mmdebstrap run) instead of the user cache. Prints one JSON
object: seconds per phase, and the raw disk's virtual, allocated and per-format file sizes. The numbers in
docs/images.md come from this script.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from devserver import loader
from devserver.images import base, disk, formats, qemu
from devserver.images.artifact import TARGET_FORMATS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cold", action="store_true", help="build the base into an empty cache")
    parser.add_argument("--skip-boot", action="store_true", help="do not boot the disk")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temp folder)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="devserver-bench-", dir=args.workdir))
    spec = base.BaseSpec.from_spec(loader.load_builtin_local())
    times: dict[str, float] = {}
    sizes: dict[str, int] = {}
    try:
        cache = work / "cache" if args.cold else base.default_cache_dir()
        started = time.monotonic()
        tarball = base.build_base(spec, cache)
        times["base_build_cold" if args.cold else "base_build"] = time.monotonic() - started
        started = time.monotonic()
        base.build_base(spec, cache)
        times["base_build_cached"] = time.monotonic() - started
        started = time.monotonic()
        base.extract(tarball, work / "rootfs")
        times["extract"] = time.monotonic() - started
        raw = work / "disk.raw"
        started = time.monotonic()
        layout = disk.assemble(work / "rootfs", raw)
        times["disk_assemble"] = time.monotonic() - started
        sizes["virtual"] = layout.size_bytes
        sizes["allocated"] = formats.allocated_bytes(raw)
        sizes["base_tarball"] = tarball.stat().st_size
        for target in TARGET_FORMATS:
            if target == "local":  # the same qcow2 as openstack
                continue
            folder = work / f"artifact-{target}"
            started = time.monotonic()
            for file in formats.write_formats(raw, target, folder):
                sizes[f"file_{file.format}"] = file.file_size
            times[f"format_{target}"] = time.monotonic() - started
            shutil.rmtree(folder)
        if not args.skip_boot:
            for firmware in ("bios", "uefi"):
                started = time.monotonic()
                with qemu.boot(raw, firmware=firmware, workdir=work / "vms") as vm:
                    times[f"boot_to_ssh_{firmware}_{vm.accel}"] = time.monotonic() - started
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"seconds": {k: round(v, 1) for k, v in times.items()}, "bytes": sizes}, indent=2))


if __name__ == "__main__":
    main()
