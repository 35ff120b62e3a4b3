"""The gated path onto the trunk (a merge queue of one): build, test, compare-and-swap, retry.

Used by the Integrator (merging a story) and by ``oodatcaa revert`` (reverting one). Each attempt:

1. reads the trunk's commit ``OLD`` and checks it out, detached, in the caller's integration
   checkout ``state/integration/<owner>/`` (created or reused through :mod:`oodatcaa.gitops`);
2. lets the caller build the candidate commit there (``build(checkout, OLD) -> NEW``: a ``--no-ff``
   merge plus the CHANGELOG and docs, or a revert) — nothing outside the checkout changes;
3. runs every ``[[gates]]`` on ``NEW`` in that checkout (:mod:`oodatcaa.gates`);
4. when all pass, moves the trunk from ``OLD`` to ``NEW`` by compare-and-swap
   (:meth:`oodatcaa.gitops.GitRepo.land`). If the trunk moved meanwhile, the attempt is discarded and
   the next one starts from the new trunk, up to ``max_attempts``.

So the commit that lands is exactly the commit the gates passed, and a failing gate leaves the trunk
where it was. The checkouts are removed after each attempt (gate logs stay under ``state/gates/``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from oodatcaa.core.config import GateSpec
from oodatcaa.core.errors import TrunkMovedError
from oodatcaa.core.process import CancelSignal
from oodatcaa.core.workspace import Workspace
from oodatcaa.gates import GateResult, run_gates
from oodatcaa.gitops import GitRepo

#: Attempts before giving up when the trunk keeps moving under a landing.
MAX_LANDING_ATTEMPTS = 3


@dataclass
class LandingOutcome:
    """What :func:`land_gated` did.

    Attributes:
        status: ``landed`` (the trunk is at ``commit``), ``gate_failed`` (``results[-1]`` failed; the
            trunk untouched) or ``trunk_moving`` (lost the compare-and-swap ``max_attempts`` times).
        commit: the candidate commit of the last attempt (the landed commit when ``landed``).
        trunk_before: the trunk commit that attempt was built on.
        results: the gate results of the last attempt.
        attempts: attempts made (1 = no retry).
    """

    status: Literal["landed", "gate_failed", "trunk_moving"]
    commit: str
    trunk_before: str
    results: list[GateResult] = field(default_factory=list)
    attempts: int = 1

    @property
    def failed_gate(self) -> GateResult | None:
        """The gate that stopped the landing, if one did."""
        return self.results[-1] if self.results and not self.results[-1].passed else None


def integration_dir(ws: Workspace, owner: str) -> Path:
    """The integration checkout of agent ``owner``: ``state/integration/<owner>`` (git-ignored)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", owner).strip("-.") or "agent"
    return ws.state_dir / "integration" / safe


def land_gated(ws: Workspace, git: GitRepo, gates: Sequence[GateSpec], build: Callable[[Path, str], str], *,
               owner: str, cancel: CancelSignal | None = None,
               max_attempts: int = MAX_LANDING_ATTEMPTS, guard: Callable[[], None] | None = None) -> LandingOutcome:
    """Build a candidate with ``build(checkout, trunk_commit)``, gate it and land it (see the module doc).

    ``build`` returns the candidate commit (a descendant of ``trunk_commit``) and may raise (e.g.
    :class:`~oodatcaa.core.errors.MergeConflictError`); the exception propagates with the trunk
    untouched. :class:`~oodatcaa.core.errors.UncommittedChangesError` from the landing propagates too.

    ``guard()`` runs under the git lock right before each compare-and-swap, with the lock held across
    both, so no other landing can come between them; the Integrator passes its claim check
    (:func:`oodatcaa.core.leases.assert_holds`). Whatever it raises (a
    :class:`~oodatcaa.core.errors.LeaseError`) propagates with the trunk untouched.
    """
    checkout = integration_dir(ws, owner)
    trunk_checkout = checkout.with_name(checkout.name + "-trunk")
    outcome: LandingOutcome | None = None
    for attempt in range(1, max_attempts + 1):
        old = git.trunk_sha()
        try:
            git.add_detached_worktree(checkout, old)
            new = build(checkout, old)

            def prepare_trunk(old: str = old) -> Path:
                git.add_detached_worktree(trunk_checkout, old)
                return trunk_checkout

            results = run_gates(ws, gates, checkout, new, trunk_commit=old, prepare_trunk=prepare_trunk, cancel=cancel)
            if results and not results[-1].passed:
                return LandingOutcome("gate_failed", new, old, results, attempt)
            try:
                with git.locked():  # re-entrant: land() takes the same lock
                    if guard is not None:
                        guard()
                    git.land(new, old)
            except TrunkMovedError:
                outcome = LandingOutcome("trunk_moving", new, old, results, attempt)
                continue
            return LandingOutcome("landed", new, old, results, attempt)
        finally:
            git.remove_worktree(checkout)
            if trunk_checkout.exists():
                git.remove_worktree(trunk_checkout)
    assert outcome is not None
    return outcome
