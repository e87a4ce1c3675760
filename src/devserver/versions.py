"""Pinned versions and default package sources: the one place each is set.

The spec's defaults come from here; a spec may override any of them. Bump a pin here and everything that reads it
(roles, stacks, image builds) follows, and the image inputs hash changes. The roles' own defaults (which must stand
alone, without devserver) repeat some of these values; tests/unit/test_pins_agree.py fails when a copy differs.
"""

from __future__ import annotations

# NVIDIA container toolkit (nvidia-container-toolkit + libnvidia-container) release
CONTAINER_TOOLKIT = "1.17.8"
# NVIDIA GPU operator Helm chart release (NVIDIA/gpu-operator tag v26.7.0, 2026-08-20; its Kubernetes and OS
# support is in data/catalog.yaml `kubernetes.gpu_operator`)
GPU_OPERATOR = "v26.7.0"
GPU_OPERATOR_CHART_REPO = "https://helm.ngc.nvidia.com/nvidia"
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

# Kubernetes on the devserver itself (roles/kind_cluster). Each binary is checked against its sha256 before it is
# installed; a mirror serves the same files under the same names (repositories.kind_url etc.). The digests are the
# upstream release files' own (<file>.sha256sum / <file>.sha256 beside each download), as recorded in
# docs/kubernetes.md with where they were read.
# kind v0.32.0 (kubernetes-sigs/kind tag v0.32.0, 2026-06-02): https://github.com/kubernetes-sigs/kind/releases
KIND_VERSION = "v0.32.0"
KIND_URL = "https://github.com/kubernetes-sigs/kind/releases/download"
KIND_SHA256 = {
    "amd64": "50030de23cf40a18505f20426f6a8506bedf13c6e509244bd1fa9463721b0f54",
    "arm64": "b92cd615e97585de8ddade28ed5cd7feb4248d717c233eea5b03c37298900f5d",
}
# kind v0.32.0's default node image (pkg/apis/config/defaults/image.go at the tag), pinned by digest
KIND_NODE_IMAGE = "kindest/node:v1.36.1@sha256:3489c7674813ba5d8b1a9977baea8a6e553784dab7b84759d1014dbd78f7ebd5"
# kubectl matching the node image's Kubernetes (the version skew policy allows ±1 minor)
KUBECTL_VERSION = "v1.36.1"
KUBECTL_URL = "https://dl.k8s.io/release"
KUBECTL_SHA256 = {
    "amd64": "629d3f410e09bf49b64ae7079f7f0bda1191efed311f7d37fdbab0ad5b0ec2b7",
    "arm64": "59f7ee8e477fae658447607dc3c8790ac17a1b016c01c622c12070e969e2d4e7",
}
# Helm v4.2.2 (tarball helm-<version>-linux-<arch>.tar.gz)
HELM_VERSION = "v4.2.2"
HELM_URL = "https://get.helm.sh"
HELM_SHA256 = {
    "amd64": "9adafecab4d406853bba163a70e9f104f47dbbf65ce24b7653bae7e36150bcb6",
    "arm64": "78803142087a0069fa4b50d3f32a84d3ef25c14d1ee8a40fbccf86a6216d2f36",
}
# nvshare v0.1.1 (grgalex/nvshare tag v0.1.1, 2024-01-29): the images its manifests name. The tag suffix matches no
# public commit and the registry was not reachable from here, so they are pinned by tag; a spec may name a digest.
NVSHARE_LIB_IMAGE = "docker.io/grgalex/nvshare:libnvshare-v0.1-8c2f5b90"
NVSHARE_DEVICE_PLUGIN_IMAGE = "docker.io/grgalex/nvshare:nvshare-device-plugin-v0.1-8c2f5b90"
NVSHARE_SCHEDULER_IMAGE = "docker.io/grgalex/nvshare:nvshare-scheduler-v0.1-8c2f5b90"
