"""Pulumi program: a GPU devserver on Google Compute Engine, built from the spec named by `devserver:spec`.

The spec path in stack config is relative to this directory. A spec that `devserver plan` rejects stops the
program before any resource is registered, with the same problem lines.
"""

from pathlib import Path

import pulumi

from devserver.infra import component_for
from devserver.infra.common import export_outputs, resolve_for_stack

PROVIDER = "gce"

spec_path = Path(__file__).parent / pulumi.Config("devserver").require("spec")
resolved = resolve_for_stack(spec_path, PROVIDER)
export_outputs(component_for(PROVIDER)(resolved))
