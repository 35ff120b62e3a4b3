"""Role agents, one module each. ``AGENT_CLASSES`` maps a claiming role's name to its class."""

from __future__ import annotations

from oodatcaa.core.statuses import AGENT_ROLES, Role
from oodatcaa.roles.base import RoleAgent
from oodatcaa.roles.builder import Builder
from oodatcaa.roles.integrator import Integrator
from oodatcaa.roles.planner import Planner
from oodatcaa.roles.refiner import Refiner
from oodatcaa.roles.tester import Tester

AGENT_CLASSES: dict[str, type[RoleAgent]] = {
    Role.PLANNER.value: Planner,
    Role.BUILDER.value: Builder,
    Role.TESTER.value: Tester,
    Role.REFINER.value: Refiner,
    Role.INTEGRATOR.value: Integrator,
}
assert set(AGENT_CLASSES) == {r.value for r in AGENT_ROLES}
assert all(cls.role == name for name, cls in AGENT_CLASSES.items())
