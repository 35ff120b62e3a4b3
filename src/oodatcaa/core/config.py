"""``config.toml`` of a workspace and the role definitions in ``agents/<role>.md``.

Precedence (lowest first): the role definition shipped with the package (``agents/``), a
per-workspace override in ``.oodatcaa/agents/<role>.md``, then ``config.toml``'s ``[wip]`` and
``[lease_ttl_minutes]`` tables. Defaults are those of the hand-run original (DESIGN.md §2).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from oodatcaa.core.criteria import CheckPolicy
from oodatcaa.core.errors import ConfigError
from oodatcaa.core.models import Estimate
from oodatcaa.core.statuses import AGENT_ROLES as _AGENT_ROLES
from oodatcaa.core.statuses import CLAIMS, Role, TaskStatus

#: Claiming roles, as strings (the values of :data:`oodatcaa.core.statuses.AGENT_ROLES`).
AGENT_ROLES: tuple[str, ...] = tuple(r.value for r in _AGENT_ROLES)
#: What each claiming role takes from the queue: role -> (item kind, claimable status), from
#: :data:`oodatcaa.core.statuses.CLAIMS`. A role definition may restate it but cannot change it.
ROLE_CONSUMES: dict[str, tuple[str, TaskStatus]] = {
    role.value: (kind.value, claimable) for role, (kind, claimable, _claimed) in CLAIMS.items()
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RoleDefinition(_Strict):
    """One role's definition file (``agents/<role>.md``): limits, what it produces, its playbook.

    ``lease_ttl_minutes`` (minutes, > 0) and ``wip_limit`` (>= 0 concurrent claims) are the role's
    defaults; a workspace's ``.oodatcaa/agents/<role>.md`` replaces the bundled file and
    ``config.toml``'s ``[wip]`` / ``[lease_ttl_minutes]`` override both. What a role claims is not part
    of its definition: the state machine fixes it (:data:`oodatcaa.core.statuses.CLAIMS`). A
    ``consumes`` key, which definitions copied from earlier versions carry, is accepted only when it
    equals that fixed value (:data:`ROLE_CONSUMES`) and is refused otherwise, so a definition can
    never claim something the code does not do.
    """

    role: Role
    summary: str
    consumes: dict[str, Any] | None = Field(
        default=None, description="Deprecated restatement of CLAIMS[role]: {kind: story|build|test, status: <TaskStatus>}")
    produces: list[str]
    lease_ttl_minutes: float = Field(gt=0, description="Lease time-to-live in minutes; must be positive.")
    wip_limit: int = Field(ge=0, description="Concurrent claims of this role; 0 disables it.")
    playbook: str = ""
    source: str = ""

    @model_validator(mode="after")
    def _consumes_matches(self) -> RoleDefinition:
        fixed = ROLE_CONSUMES.get(self.role.value)
        if self.consumes is None or fixed is None:
            return self
        kind, status = self.consumes.get("kind"), self.consumes.get("status")
        if (kind, status) != (fixed[0], fixed[1].value):
            raise ValueError(
                f"consumes is {{kind: {kind}, status: {status}}}, but a {self.role.value} always claims "
                f"{{kind: {fixed[0]}, status: {fixed[1].value}}} (fixed by the state machine); fix: delete the "
                "consumes line or restore that value")
        return self


class AgentsSection(_Strict):
    heartbeat_seconds: float = Field(default=30.0, gt=0, description="Seconds between lease renewals.")
    poll_seconds: float = Field(
        default=5.0, gt=0,
        description="Longest sleep of an idle agent (seconds): it wakes at once when SPRINT_QUEUE.json changes, and "
                    "after this long without a change (to notice a Negotiator that died).")
    negotiator_timeout_seconds: float = Field(
        default=120.0, gt=0,
        description="An agent exits (code 9) when the Negotiator it saw has not renewed its heartbeat for this long "
                    "(a dead pid on this host or an ended run is noticed at the next look).")


class LoopSection(_Strict):
    """Loop policy of the original process: adaptation loops per plan, then a person or a fresh plan."""

    max_adapt_loops: int = Field(default=3, ge=1)
    warn_at: int = Field(default=2, ge=1)
    on_limit: Literal["needs_manual", "start_over"] = Field(
        default="needs_manual",
        description="start_over: the Start-Over Gate — branches reset to the baseline tag, plan version +1, needs_plan")
    max_start_overs: int = Field(default=1, ge=0, description="Start-overs per task before a person is asked.")


#: The Refiner's policies in their default order (``oodatcaa.roles.policies.POLICIES`` holds them and
#: checks it has exactly these; see docs/refiner.md). Listed here so config.toml is validated without
#: importing the roles.
REFINER_POLICY_ORDER: tuple[str, ...] = (
    "branch_missing", "merge_conflict", "interrupted", "dataset", "divergence", "memory", "throughput", "loss",
)


class RefinerSection(_Strict):
    """Which Refiner policies run, in which order: the first that applies to a failure decides."""

    policies: list[str] = Field(
        default_factory=lambda: list(REFINER_POLICY_ORDER),
        description="policy names in the order tried; leave one out to disable it (see docs/refiner.md)")

    @field_validator("policies")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        known = ", ".join(REFINER_POLICY_ORDER)
        for name in value:
            if name not in REFINER_POLICY_ORDER:
                raise ValueError(f"unknown Refiner policy {name!r}; known policies: {known}")
        repeated = sorted({name for name in value if value.count(name) > 1})
        if repeated:
            raise ValueError(f"Refiner policy {repeated[0]!r} is listed twice; list each policy once")
        return value


class NegotiatorSection(_Strict):
    tick_seconds: float = Field(default=1.0, gt=0, description="Seconds between supervision sweeps.")
    max_restarts: int = Field(default=3, ge=0, description="Restarts of one agent before giving up.")
    restart_backoff_seconds: float = Field(default=2.0, ge=0)
    idle_timeout_seconds: float = Field(
        default=600.0, gt=0, description="Stuck: no status change and nothing held for this long."
    )
    person_wait_minutes: float = Field(
        default=60.0, gt=0,
        description="When only work waiting for a person is left: minutes to wait for approve/reject/resolve (then exit 8).")


class IntegratorSection(_Strict):
    """Integration policy: whether a person approves every accepted story before it is merged."""

    require_approval: bool = Field(
        default=False,
        description="true: every accepted story waits for `oodatcaa approve TASK` before it is merged.")


class ComplexityEstimate(_Strict):
    """The work one complexity label stands for: ``low_minutes``-``high_minutes`` plus a buffer.

    All three keys are required in ``config.toml`` (``M = {low_minutes = 120, high_minutes = 240,
    buffer_percent = 20}``), so overriding a range never drops its buffer silently.
    """

    low_minutes: float = Field(gt=0, description="Least work, in minutes, before the buffer.")
    high_minutes: float = Field(gt=0, description="Most work, in minutes, before the buffer.")
    buffer_percent: float = Field(ge=0, description="Added to both ends (20 = +20 %).")

    @model_validator(mode="after")
    def _ordered(self) -> ComplexityEstimate:
        if self.high_minutes < self.low_minutes:
            raise ValueError(f"high_minutes ({self.high_minutes:g}) is below low_minutes ({self.low_minutes:g})")
        return self

    def estimate(self) -> Estimate:
        """The range with its buffer applied, as an :class:`Estimate` of source ``"complexity"``."""
        factor = 1 + self.buffer_percent / 100
        return Estimate(low_minutes=round(self.low_minutes * factor, 1), high_minutes=round(self.high_minutes * factor, 1),
                        source="complexity")


#: Complexity words people write -> the :class:`EstimatesSection` key (after lower-casing).
_COMPLEXITY_WORDS = {
    "s": "S", "small": "S", "m": "M", "medium": "M", "l": "L", "large": "L",
    "xl": "XL", "x-large": "XL", "x large": "XL", "extra large": "XL", "extra-large": "XL",
}


def complexity_key(complexity: str | None) -> str | None:
    """``S``, ``M``, ``L`` or ``XL`` for a written complexity (``m``, ``Medium``, ``XL``), else ``None``."""
    if not complexity:
        return None
    return _COMPLEXITY_WORDS.get(" ".join(complexity.strip().lower().split()))


class EstimatesSection(_Strict):
    """How long a story of each complexity takes when its backlog item gives no ``**Estimated Time:**``.

    The one home of the original's heuristics: S under 2 h (30-120 min, no buffer), M 2-4 h + 20 %
    (144-288 min), L 4-8 h + 30 % (312-624 min), XL 8-16 h + 30 % (624-1248 min). The Negotiator
    warns about a claim held over twice the high end of its story's estimate.
    """

    S: ComplexityEstimate = Field(
        default=ComplexityEstimate(low_minutes=30, high_minutes=120, buffer_percent=0), description="under 2 h")
    M: ComplexityEstimate = Field(
        default=ComplexityEstimate(low_minutes=120, high_minutes=240, buffer_percent=20), description="2-4 h + 20 %")
    L: ComplexityEstimate = Field(
        default=ComplexityEstimate(low_minutes=240, high_minutes=480, buffer_percent=30), description="4-8 h + 30 %")
    XL: ComplexityEstimate = Field(
        default=ComplexityEstimate(low_minutes=480, high_minutes=960, buffer_percent=30), description="8-16 h + 30 %")

    def for_complexity(self, complexity: str | None) -> Estimate | None:
        """The estimate (minutes, buffer included) for a written complexity; ``None`` when it has no rule."""
        key = complexity_key(complexity)
        rule: ComplexityEstimate | None = getattr(self, key) if key else None
        return rule.estimate() if rule is not None else None


class JobsSection(_Strict):
    timeout_minutes: float = Field(default=120.0, gt=0, description="Wall-clock limit of one job, in minutes.")
    default_model: str = Field(
        default="default", description="'default' = the bundled offline SmolLM2-135M-Instruct, or a local mlx-lm model dir.")


class GitSection(_Strict):
    """Where the Integrator merges. ``oodatcaa init`` writes the repository's current branch here."""

    trunk: str = Field(
        default="main", min_length=1, max_length=200,
        description="The trunk branch stories merge into (main, master, trunk, develop...); init detects it.")

    @field_validator("trunk")
    @classmethod
    def _ref_safe(cls, value: str) -> str:
        # the same rules as `git check-ref-format --branch`, for the cases a typo produces
        bad = (value.startswith(("-", "/", ".")) or value.endswith((".", "/", ".lock")) or ".." in value
               or "//" in value or "@{" in value or any(c in value for c in " ~^:?*[\\") or any(ord(c) < 32 for c in value))
        if bad:
            raise ValueError(f"{value!r} is not a valid git branch name")
        return value


class GateSpec(_Strict):
    """One workspace quality gate (``[[gates]]``): a command run on the merge result before the trunk moves.

    ``run`` is a command line run with bash (:func:`oodatcaa.core.process.run_process`) in the
    integration checkout of the merge result; exit 0 passes. ``timeout_s`` (seconds, > 0) bounds it; a
    command that times out or cannot run fails the gate with that reason. With ``baseline = "trunk"``
    the command also runs on the trunk's commit (cached per commit in ``state/gates/<sha>/``) and only
    output lines not already printed there fail it (one problem per output line: the original's
    "0 new errors against a baseline of 28"); its exit status is then not what decides.
    """

    name: str = Field(min_length=1, max_length=80, description="Shown in reports and the failure.")
    run: str = Field(min_length=1, max_length=4000, description="Command line, run with bash in the merge checkout.")
    timeout_s: float = Field(default=900.0, gt=0, description="Seconds before the gate is stopped and failed.")
    baseline: Literal["trunk"] | None = Field(
        default=None, description='"trunk": only output lines not printed on the trunk fail the gate.')

    @field_validator("name")
    @classmethod
    def _printable(cls, value: str) -> str:
        if not value.strip() or any(ord(c) < 32 for c in value):
            raise ValueError(f"gate name {value!r} must be printable text on one line")
        return value.strip()


class Config(_Strict):
    """The resolved configuration of a workspace."""

    wip: dict[str, Annotated[int, Field(ge=0)]] = Field(default_factory=dict)
    lease_ttl_minutes: dict[str, Annotated[float, Field(gt=0)]] = Field(default_factory=dict)
    agents: AgentsSection = AgentsSection()
    loop: LoopSection = LoopSection()
    refiner: RefinerSection = RefinerSection()
    check: CheckPolicy = CheckPolicy()
    negotiator: NegotiatorSection = NegotiatorSection()
    integrator: IntegratorSection = IntegratorSection()
    jobs: JobsSection = JobsSection()
    git: GitSection = GitSection()
    gates: list[GateSpec] = Field(
        default_factory=list, description="Quality gates run on every merge result before the trunk moves.")
    estimates: EstimatesSection = EstimatesSection()
    roles: dict[str, RoleDefinition] = Field(default_factory=dict)

    @field_validator("gates")
    @classmethod
    def _unique_gate_names(cls, value: list[GateSpec]) -> list[GateSpec]:
        names = [g.name for g in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"two [[gates]] are named {', '.join(map(repr, dupes))}; give each gate its own name")
        return value

    def wip_limit(self, role: str) -> int:
        """Maximum concurrent claims by ``role`` (config.toml over the role definition)."""
        if role in self.wip:
            return self.wip[role]
        return self.roles[role].wip_limit

    def lease_ttl_seconds(self, role: str) -> float:
        """Lease TTL of ``role`` in seconds."""
        minutes = self.lease_ttl_minutes.get(role, self.roles[role].lease_ttl_minutes)
        return float(minutes) * 60.0


def bundled_dir(name: str) -> Path:
    """A directory shipped with the package: ``agents`` or ``demo`` (the repo's ``.oodatcaa``).

    Installed wheels carry them under ``oodatcaa/_bundled``; a source checkout reads the repo.
    """
    package = Path(__file__).resolve().parents[1]
    inside = package / "_bundled" / name
    if inside.is_dir():
        return inside
    repo = package.parents[1]
    candidate = repo / ("agents" if name == "agents" else ".oodatcaa")
    if candidate.is_dir():
        return candidate
    raise ConfigError(f"bundled {name!r} directory not found under {inside} or {candidate}; reinstall oodatcaa")


def load_role_definition(path: Path) -> RoleDefinition:
    """Parse ``agents/<role>.md``: YAML front matter between ``---`` lines, then the playbook.

    Raises :class:`ConfigError` naming the file and the field.
    """
    text = Path(path).read_text(encoding="utf-8")
    if not text.startswith("---\n"):
        raise ConfigError(f"{path}: must start with a '---' YAML front matter block")
    try:
        _, front, body = text.split("---\n", 2)
    except ValueError:
        raise ConfigError(f"{path}: front matter is not closed by a '---' line") from None
    try:
        data = yaml.safe_load(front) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: front matter is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: front matter must be a mapping")
    try:
        return RoleDefinition(**data, playbook=body.strip(), source=str(path))
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_first_error(exc)}") from None
    except TypeError as exc:  # e.g. a front matter key that collides with a keyword argument
        raise ConfigError(f"{path}: front matter: {exc}") from None


def load_role_definitions(override_dir: Path | None = None) -> dict[str, RoleDefinition]:
    """Bundled role definitions, each replaced by ``override_dir/<role>.md`` when present."""
    defs: dict[str, RoleDefinition] = {}
    for path in sorted(bundled_dir("agents").glob("*.md")):
        definition = load_role_definition(path)
        defs[definition.role.value] = definition
    known = {r.value for r in Role} - {Role.SPRINT_PLANNER.value}
    if override_dir and override_dir.is_dir():
        for path in sorted(override_dir.glob("*.md")):
            if path.name.lower() == "readme.md":
                continue
            if path.stem not in known:
                raise ConfigError(f"{path}: no role is called {path.stem!r}; name a workspace role definition after "
                                  f"its role: {', '.join(sorted(known))}.md (or delete the file)")
            definition = load_role_definition(path)
            if definition.role.value != path.stem:
                raise ConfigError(f"{path}: field role is {definition.role.value!r}; the file name says {path.stem!r}")
            defs[path.stem] = definition
    missing = [r for r in AGENT_ROLES if r not in defs]
    if missing:
        raise ConfigError(f"role definitions missing for: {', '.join(missing)}")
    return defs


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    return f"field {loc}: {err['msg']}"


def load_config(path: Path, agents_override_dir: Path | None = None) -> Config:
    """Read ``config.toml`` (missing file = all defaults) and merge the role definitions.

    Raises :class:`ConfigError` naming the file and the offending key.
    """
    data: dict[str, Any] = {}
    path = Path(path)
    if path.exists():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    roles = load_role_definitions(agents_override_dir)
    for table in ("wip", "lease_ttl_minutes"):
        for key in data.get(table, {}) or {}:
            if key not in roles:
                raise ConfigError(f"{path}: [{table}] has unknown role {key!r}; known: {', '.join(sorted(roles))}")
    try:
        return Config(**data, roles=roles)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_first_error(exc)}") from None


_SECTION_NOTES = {
    "agents": "agent processes",
    "loop": "adaptation loops per task before a person is asked (the original's loop policy)",
    "refiner": "Refiner policies tried in this order (the first that applies decides); leave one out to disable it",
    "check": "Tester verdict (Check): ratios of passing acceptance criteria",
    "negotiator": "the supervisor",
    "integrator": "merging accepted stories (a person's approval first, when required)",
    "estimates": ("minutes per complexity when a backlog item has no Estimated Time (buffer added to both ends); "
                  "a claim held over twice its story's estimate is warned about"),
    "jobs": "Builder jobs",
    "git": "the branch stories merge into",
}


_GATES_EXAMPLE = (
    "# Quality gates, run on the merge result before the trunk moves (none by default). One block per gate:",
    "# [[gates]]",
    '# name = "unit tests"',
    '# run = "pytest -q"        # run with bash in the integration checkout; exit 0 = pass',
    "# timeout_s = 900",
    '# baseline = "trunk"       # optional: only output lines not already printed on the trunk fail it',
)


def _toml_value(value: Any) -> str:
    if isinstance(value, BaseModel):  # an inline table: `M = {low_minutes = 120, ...}`
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.model_dump().items()) + "}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return f"{value:g}" if isinstance(value, float) else str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def default_config_toml(roles: dict[str, RoleDefinition] | None = None, *, trunk: str | None = None) -> str:
    """The ``config.toml`` that ``oodatcaa init`` writes: every key present, commented out.

    Values are read from the one place each default lives (the section models here, the bundled
    role definitions for ``[wip]`` and ``[lease_ttl_minutes]``), so the documented precedence —
    bundled role definition < workspace role definition < ``config.toml`` — holds: nothing in the
    file overrides a role definition until a person uncomments it. ``trunk`` (detected by ``init``)
    is the one key written active.
    """
    roles = roles if roles is not None else load_role_definitions()
    out = [
        "# oodatcaa workspace configuration. Every key is optional: a commented line shows the default.",
        "# Precedence (lowest first): oodatcaa's agents/<role>.md < .oodatcaa/agents/<role>.md < this file.",
        "",
        "[wip]                 # concurrent claims per role (default: the role definition's wip_limit)",
        *(f"# {r} = {roles[r].wip_limit}" for r in AGENT_ROLES if r in roles),
        "",
        "[lease_ttl_minutes]   # lease time-to-live per role (default: the role definition's lease_ttl_minutes)",
        *(f"# {r} = {_toml_value(roles[r].lease_ttl_minutes)}" for r in AGENT_ROLES if r in roles),
    ]
    for name, field in Config.model_fields.items():
        if name == "gates":
            out += ["", *_GATES_EXAMPLE]
            continue
        model = field.annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            continue
        out += ["", f"[{name}]" + (f"  # {_SECTION_NOTES[name]}" if name in _SECTION_NOTES else "")]
        for key, sub in model.model_fields.items():
            note = f"  # {sub.description}" if sub.description else ""
            if name == "git" and key == "trunk" and trunk is not None:
                out.append(f"{key} = {_toml_value(trunk)}  # detected by `oodatcaa init`")
            else:
                out.append(f"# {key} = {_toml_value(sub.get_default(call_default_factory=True))}{note}")
    return "\n".join(out) + "\n"
