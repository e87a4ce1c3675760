"""Image upload and registration per cloud: the one registry from target name to uploader.

Every module here imports its cloud SDK inside functions, so importing this package costs nothing. Each entry
builds the target's :class:`~devserver.clouds.common.Uploader` from the command-line options.
"""

from __future__ import annotations

from collections.abc import Callable

from devserver.clouds import aws, azure, gce, openstack
from devserver.clouds.common import Uploader, UploadOptions

UPLOADERS: dict[str, Callable[[UploadOptions], Uploader]] = {
    "gce": gce.from_options,
    "azure": azure.from_options,
    "aws": aws.from_options,
    "openstack": openstack.from_options,
}
# The SDK modules each target needs and the extra that installs them (the hint when one is missing).
SDK_MODULES: dict[str, tuple[str, ...]] = {
    "gce": ("google.cloud.storage", "google.cloud.compute_v1"),
    "azure": ("azure.storage.blob", "azure.mgmt.compute", "azure.identity"),
    "aws": ("boto3",),
    "openstack": ("openstack",),
}
