"""The devserver policy pack. Pulumi runs this file as the analyzer; the policies are in devserver.infra.policies.

Only this file constructs the PolicyPack: constructing one starts the analyzer server and blocks.
"""

from pulumi_policy import EnforcementLevel, PolicyPack

from devserver.infra.policies import POLICIES

PolicyPack(name="devserver", enforcement_level=EnforcementLevel.MANDATORY, policies=list(POLICIES))
