"""Image upload and registration per cloud: each cloud registry entry names its uploader.

Every module here imports its cloud SDK inside functions, so importing this package costs nothing. Each uploader
factory builds the target's :class:`~devserver.clouds.common.Uploader` from the command-line options; it is imported
only when asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from devserver import registry
from devserver.clouds.common import Uploader, UploadOptions

#: target -> the factory of its uploader (imported on access), for every cloud with one.
UPLOADERS: Mapping[str, Callable[[UploadOptions], Uploader]] = registry.View(
    lambda cloud: _uploader(cloud), where=lambda cloud: cloud.uploader is not None
)
#: target -> the SDK modules its uploader needs; the extra named after the target installs them (the hint when one
#: is missing).
SDK_MODULES: Mapping[str, tuple[str, ...]] = registry.View(
    lambda cloud: cloud.upload_sdk, where=lambda cloud: cloud.uploader is not None
)


def _uploader(cloud: registry.Cloud) -> Callable[[UploadOptions], Uploader]:
    assert cloud.uploader is not None
    factory: Callable[[UploadOptions], Uploader] = cloud.uploader.load(f"uploading to {cloud.name}")
    return factory
