"""Pulumi components that build a devserver on each cloud, named by the cloud registry's entries.

Importing this package imports no Pulumi SDK at all: :func:`component_for` imports the one cloud module asked for
(and with it that cloud's provider SDK, from the cloud's extra), so `devserver --help` and `devserver validate`
never pay for Pulumi.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from devserver import registry
from devserver.registry import MissingExtraError

if TYPE_CHECKING:
    from devserver.infra.common import DevserverComponent

#: The clouds with a stack, in registry order (read when imported; :func:`component_for` reads the registry).
PROVIDERS: tuple[str, ...] = registry.with_stacks()

__all__ = ["PROVIDERS", "MissingExtraError", "component_for"]


def component_for(provider: str) -> type[DevserverComponent]:
    """The component class for `provider` (a cloud with a stack in the registry).

    Raises KeyError for a provider without stacks (``local``) and :class:`MissingExtraError`, with the pip command
    to run, when that cloud's Pulumi provider is not installed.
    """
    stacks = registry.with_stacks()
    if provider not in stacks:
        raise KeyError(f"no Pulumi stack for provider {provider!r}; stacks exist for {', '.join(stacks)}")
    entry = registry.get(provider).component
    assert entry is not None
    component: type[DevserverComponent] = entry.load(f"the {provider} stack")
    return component
