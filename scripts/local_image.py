"""The README's main job: build the built-in local devserver image, then boot it and check it against its spec.

Runs the real CLI: `devserver image build --target local` (chroot builder: Debian 12, the real Debian NVIDIA driver
built by DKMS for the image's kernel, CUDA, Docker + containerd), then `devserver image test` (qemu, UEFI and BIOS,
SSH through cloud-init, `devserver status` against the spec).

The container toolkit comes from NVIDIA's repository. Where that is unreachable (an offline machine, or this
project's CI), the build uses the signed TEST FIXTURE repository of devtools/fixture_repo.py instead and says
so loudly: its packages are stand-ins, not NVIDIA software, and such an image is for trying devserver out only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devserver import versions  # noqa: E402


def reachable(url: str) -> bool:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=5):  # noqa: S310 (fixed https URL)
            return True
    except OSError:
        return False


@contextlib.contextmanager
def offline_spec(out: Path) -> Iterator[Path]:
    """The built-in local spec pointed at the TEST FIXTURE toolkit repository, served while the block runs."""
    from devtools import fixture_repo

    cache = Path.home() / ".cache" / "devserver-tests"
    root = fixture_repo.build_fixture_repo(cache / "nvidia-fixture-repo", toolkit_version=versions.CONTAINER_TOOLKIT)
    # A fixed port: the same spec on every run, so an unchanged image is not rebuilt.
    with fixture_repo.serve(root, "127.0.0.1", port=33979) as repo:
        spec = yaml.safe_load((ROOT / "src" / "devserver" / "data" / "local.yaml").read_text())
        spec["repositories"] = repo.toolkit_repositories()
        out.mkdir(parents=True, exist_ok=True)
        path = out / "local-offline.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        yield path


def devserver(*args: str) -> int:
    return subprocess.run([sys.executable, "-m", "devserver", *args], cwd=ROOT, check=False).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts")
    parser.add_argument("--force", action="store_true", help="rebuild even when the inputs did not change")
    args = parser.parse_args()
    build = ["image", "build", "--target", "local", "--out", str(args.out)]
    with contextlib.ExitStack() as stack:
        if not reachable(versions.CONTAINER_TOOLKIT_KEY_URL):
            print(
                "NOTE: NVIDIA's container-toolkit repository is unreachable from here; building with the TEST FIXTURE\n"
                "      stand-in (devtools/fixture_repo.py). Its toolkit packages are NOT NVIDIA software: the\n"
                "      image is for trying devserver out, not for use.",
                file=sys.stderr,
            )
            build += ["--spec", str(stack.enter_context(offline_spec(args.out)))]
        if (code := devserver(*build, *(["--force"] if args.force else []))) != 0:
            return code
        # The same inputs again: skipped in a second, and its JSON names the artifact folder.
        found = subprocess.run(
            [sys.executable, "-m", "devserver", *build, "--json"], cwd=ROOT, capture_output=True, text=True, check=True
        )
        payload = json.loads(found.stdout)
    return devserver("image", "test", payload["folder"])


if __name__ == "__main__":
    sys.exit(main())
