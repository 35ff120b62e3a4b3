"""Role agents, one module each. ``AGENT_CLASSES`` maps a role name to its class."""

from __future__ import annotations

from oodatcaa.roles.builder import Builder
from oodatcaa.roles.integrator import Integrator
from oodatcaa.roles.planner import Planner
from oodatcaa.roles.refiner import Refiner
from oodatcaa.roles.tester import Tester

AGENT_CLASSES = {
    "planner": Planner,
    "builder": Builder,
    "tester": Tester,
    "refiner": Refiner,
    "integrator": Integrator,
}
