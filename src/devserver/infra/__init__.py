"""Pulumi components that build a devserver on each cloud, behind one explicit registry.

Importing this package imports no Pulumi SDK at all: :func:`component_for` imports the one cloud module asked for
(and with it that cloud's provider SDK, from the cloud's extra), so `devserver --help` and `devserver validate`
never pay for Pulumi.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from devserver.infra.common import DevserverComponent


class _Entry(NamedTuple):
    module: str
    component: str
    extra: str


_REGISTRY: dict[str, _Entry] = {
    "gce": _Entry("devserver.infra.gce", "GceDevserver", "gce"),
    "azure": _Entry("devserver.infra.azure", "AzureDevserver", "azure"),
    "aws": _Entry("devserver.infra.aws", "AwsDevserver", "aws"),
    "openstack": _Entry("devserver.infra.openstack", "OpenStackDevserver", "openstack"),
}

PROVIDERS: tuple[str, ...] = tuple(_REGISTRY)


class MissingExtraError(ImportError):
    """The Pulumi SDK for a cloud is not installed; the message names the extra that brings it."""


def component_for(provider: str) -> type[DevserverComponent]:
    """The component class for `provider` (gce, azure, aws, openstack).

    Raises KeyError for a provider without stacks (``local``) and :class:`MissingExtraError`, with the pip command
    to run, when that cloud's Pulumi provider is not installed.
    """
    if provider not in _REGISTRY:
        raise KeyError(f"no Pulumi stack for provider {provider!r}; stacks exist for {', '.join(PROVIDERS)}")
    entry = _REGISTRY[provider]
    try:
        module = importlib.import_module(entry.module)
    except ModuleNotFoundError as exc:
        if exc.name is None or not exc.name.startswith("pulumi"):
            raise
        raise MissingExtraError(
            f"the {provider} stack needs {exc.name}: pip install 'devserver[{entry.extra}]'", name=exc.name
        ) from exc
    component: type[DevserverComponent] = getattr(module, entry.component)
    return component
