"""oodatcaa: a multi-agent orchestrator for the OODATCAA loop.

Observe, Orient, Decide (Planner), Act (Builder), Test and Check (Tester), Adapt (Refiner),
Archive (Integrator), with a Negotiator keeping the sprint moving. Agents are separate
processes that coordinate only through ``SPRINT_QUEUE.json`` and ``AGENT_LOG.md`` under file
locks. See ``docs/`` for the concepts and the guarantees.
"""

__version__ = "0.1.0"
