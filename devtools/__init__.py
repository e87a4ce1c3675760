"""Development tools of the devserver project: what its tests, bench/ and scripts/ share. Not part of the product.

Not shipped in the wheel (only ``src/devserver`` is) and never imported by it; devtools may import devserver (its
locks and mounts are :mod:`devserver.sysutil`'s). Everything here that stands in for something real is a **test
fixture** and says so:

* :mod:`devtools.testhost`: booted Debian 12 test hosts (systemd-nspawn in a private netns, real SSH) for running the
  roles; ``scripts/testhost`` is its CLI.
* :mod:`devtools.fixture_repo`: the TEST FIXTURE standing in for NVIDIA's CUDA and container-toolkit apt repositories
  (signed local repositories, no NVIDIA software).
* :mod:`devtools.fixture_disk`: the TEST FIXTURE sparse raw disk the upload tests and bench/upload_bytes.py send.
* :mod:`devtools.emulators`: the cloud emulators (moto, Azurite, gcp-storage-emulator, Glance) on 127.0.0.1.

Tests get it on ``sys.path`` from pytest's ``pythonpath`` setting; bench/ and scripts/ put the repository root there
themselves.
"""
