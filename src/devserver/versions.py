"""Pinned versions and default package sources: the one place each is set.

The spec's defaults come from here; a spec may override any of them. Bump a pin here and everything that reads it
(roles, stacks, image builds) follows, and the image inputs hash changes. The roles' own defaults (which must stand
alone, without devserver) repeat some of these values; tests/unit/test_pins_agree.py fails when a copy differs.
"""

from __future__ import annotations

# NVIDIA container toolkit (nvidia-container-toolkit + libnvidia-container) release
CONTAINER_TOOLKIT = "1.17.8"
# NVIDIA GPU operator Helm chart release for the Kubernetes node pools
GPU_OPERATOR = "v25.3.2"
# Driver branch used with `driver.source: cuda-repo` when the spec names none (R580: long-term support branch)
CUDA_REPO_DRIVER_BRANCH = 580

DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_SECURITY_MIRROR = "http://deb.debian.org/debian-security"
UBUNTU_MIRROR = "http://archive.ubuntu.com/ubuntu"
# Ubuntu's security pocket lives on its own host; a site with its own mirror serves every pocket from that mirror.
UBUNTU_SECURITY_MIRROR = "http://security.ubuntu.com/ubuntu"
# NVIDIA's CUDA repository root; the role appends <distro>/x86_64/ (e.g. debian12, ubuntu2404)
CUDA_REPO = "https://developer.download.nvidia.com/compute/cuda/repos"
# NVIDIA's CUDA repository signing key file, relative to <CUDA_REPO>/<distro>/x86_64/ (in use since April 2022)
CUDA_REPO_KEY_FILE = "3bf863cc.pub"
CUDA_REPO_KEY_FINGERPRINT = "EB693B3035CD5710E231E123A4B469963BF863CC"
# The apt source is "<CONTAINER_TOOLKIT_REPO>/$(ARCH) /" (a flat repository)
CONTAINER_TOOLKIT_REPO = "https://nvidia.github.io/libnvidia-container/stable/deb"
CONTAINER_TOOLKIT_KEY_URL = "https://nvidia.github.io/libnvidia-container/gpgkey"
# Fingerprint of the libnvidia-container / nvidia-container-toolkit repository key (its gpgkey file)
CONTAINER_TOOLKIT_KEY_FINGERPRINT = "C95B321B61E88C1809C4F759DDCAE044F796ECB0"
