"""``config.toml`` of a workspace and the role definitions in ``agents/<role>.md``.

Precedence (lowest first): the role definition shipped with the package (``agents/``), a
per-workspace override in ``.oodatcaa/agents/<role>.md``, then ``config.toml``'s ``[wip]`` and
``[lease_ttl_minutes]`` tables. Defaults are those of the hand-run original (DESIGN.md §2).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from oodatcaa.core.criteria import CheckPolicy
from oodatcaa.core.errors import ConfigError
from oodatcaa.core.statuses import TaskStatus

AGENT_ROLES = ("planner", "builder", "tester", "refiner", "integrator")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RoleDefinition(_Strict):
    """One role's definition file: what it consumes and produces, limits, and its playbook."""

    role: Literal["planner", "builder", "tester", "refiner", "integrator", "negotiator"]
    summary: str
    consumes: dict[str, Any] = Field(description="{kind: story|build|test, status: <TaskStatus>}")
    produces: list[str]
    lease_ttl_minutes: float = Field(gt=0)
    wip_limit: int = Field(ge=0)
    playbook: str = ""
    source: str = ""

    def claim_kind(self) -> str:
        return str(self.consumes.get("kind", ""))

    def claim_status(self) -> TaskStatus:
        return TaskStatus(self.consumes["status"])


class AgentsSection(_Strict):
    heartbeat_seconds: float = Field(default=30.0, gt=0)
    poll_seconds: float = Field(default=1.0, gt=0)


class LoopSection(_Strict):
    """Loop policy of the original process: adaptation loops per plan, then a person or a fresh plan."""

    max_adapt_loops: int = Field(default=3, ge=1)
    warn_at: int = Field(default=2, ge=1)
    on_limit: Literal["needs_manual", "start_over"] = Field(
        default="needs_manual",
        description="start_over: the Start-Over Gate — branches reset to the baseline tag, plan version +1, needs_plan")
    max_start_overs: int = Field(default=1, ge=0, description="Start-overs per task before a person is asked.")


class NegotiatorSection(_Strict):
    tick_seconds: float = Field(default=1.0, gt=0)
    max_restarts: int = Field(default=3, ge=0, description="Restarts of one agent before giving up.")
    restart_backoff_seconds: float = Field(default=2.0, ge=0)
    idle_timeout_seconds: float = Field(
        default=600.0, gt=0, description="Stuck: no status change and nothing held for this long."
    )


class EstimatesSection(_Strict):
    """Expected minutes of work per backlog complexity; a lease held over twice this is warned about."""

    S: float = Field(default=15.0, gt=0)
    M: float = Field(default=45.0, gt=0)
    L: float = Field(default=120.0, gt=0)
    XL: float = Field(default=240.0, gt=0)

    def minutes(self, complexity: str | None) -> float | None:
        """Estimate for a complexity label (case-insensitive), ``None`` when there is none."""
        return getattr(self, (complexity or "").strip().upper(), None) if complexity else None


class JobsSection(_Strict):
    timeout_minutes: float = Field(default=120.0, gt=0)
    default_model: str = Field(default="default", description="'default' = the bundled offline SmolLM2.")


class Config(_Strict):
    """The resolved configuration of a workspace."""

    wip: dict[str, int] = Field(default_factory=dict)
    lease_ttl_minutes: dict[str, float] = Field(default_factory=dict)
    agents: AgentsSection = AgentsSection()
    loop: LoopSection = LoopSection()
    check: CheckPolicy = CheckPolicy()
    negotiator: NegotiatorSection = NegotiatorSection()
    jobs: JobsSection = JobsSection()
    estimates: EstimatesSection = EstimatesSection()
    roles: dict[str, RoleDefinition] = Field(default_factory=dict)

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
        definition = RoleDefinition(**data, playbook=body.strip(), source=str(path))
        if definition.role != "negotiator":
            definition.claim_status()
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_first_error(exc)}") from None
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"{path}: field consumes.status: {exc}") from None
    return definition


def load_role_definitions(override_dir: Path | None = None) -> dict[str, RoleDefinition]:
    """Bundled role definitions, each replaced by ``override_dir/<role>.md`` when present."""
    defs: dict[str, RoleDefinition] = {}
    for path in sorted(bundled_dir("agents").glob("*.md")):
        definition = load_role_definition(path)
        defs[definition.role] = definition
    if override_dir and override_dir.is_dir():
        for role in (*AGENT_ROLES, "negotiator"):
            path = override_dir / f"{role}.md"
            if path.is_file():
                definition = load_role_definition(path)
                if definition.role != role:
                    raise ConfigError(f"{path}: field role is {definition.role!r}; the file name says {role!r}")
                defs[role] = definition
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


DEFAULT_CONFIG_TOML = """\
# oodatcaa workspace configuration. Every key is optional; shown values are the defaults
# (the hand-run original's). Role definitions in agents/*.md give the per-role defaults.

[wip]                 # concurrent claims per role
planner = 1
builder = 3
tester = 2
refiner = 1
integrator = 1

[lease_ttl_minutes]
planner = 30
builder = 90
tester = 45
refiner = 45
integrator = 30

[agents]
heartbeat_seconds = 30
poll_seconds = 1.0

[loop]                # adaptation loops per task before a person is asked
max_adapt_loops = 3
warn_at = 2
on_limit = "needs_manual"      # or "start_over": the Start-Over Gate (reset to the baseline tag, re-plan)
max_start_overs = 1

[check]               # Tester verdict (Check): ratios of passing acceptance criteria
accept_ratio = 0.8
gray_zone_ratio = 0.6
gray_zone_decision = "adapt"   # accept | adapt | needs_manual

[negotiator]
tick_seconds = 1.0
max_restarts = 3
restart_backoff_seconds = 2.0
idle_timeout_seconds = 600

[estimates]           # minutes per complexity; a task held over twice its estimate is warned about
S = 15
M = 45
L = 120
XL = 240

[jobs]
timeout_minutes = 120
default_model = "default"      # the bundled offline SmolLM2-135M-Instruct, or a local mlx-lm model dir
"""
