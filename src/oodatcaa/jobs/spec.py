"""Job specifications: what the Builder runs (pydantic v2 models, imports only stdlib + pydantic).

A job spec is a mapping with a ``kind`` and kind-specific fields (snake_case, unknown fields are
rejected). :func:`parse_job_spec` validates one and returns a :data:`JobSpec`; any problem raises
:class:`JobSpecError`, whose message names the source, the dotted field and the fix, e.g.::

    backlog.yaml#jobs[0]: lora_train.learning_rate: learning_rate must be > 0, got -1

Kinds (see ``docs/jobs.md`` for every field, default, unit and the summary keys each kind writes):

- ``model_check``     load a model, count parameters, round-trip the tokenizer;
- ``inference_bench`` generate from prompts and measure prompt/generation tokens per second;
- ``lora_train``      LoRA fine-tuning with mlx-lm on a local chat/completions/text JSONL dataset;
- ``command``         run a shell command (or argv list) with a timeout.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

__all__ = [
    "CommandJob",
    "InferenceBenchJob",
    "JOB_KINDS",
    "JobSpec",
    "JobSpecError",
    "JobSpecField",
    "JobSpecModel",
    "LoraParams",
    "LoraTrainJob",
    "ModelCheckJob",
    "job_spec_json_schema",
    "parse_job_spec",
]

#: ``num_layers`` default for lora_train: all layers, capped at this many (the last ones).
MAX_DEFAULT_LORA_LAYERS = 16


class JobSpecError(ValueError):
    """A job spec failed validation.

    Attributes:
        source: where the spec came from (a file name, ``backlog.yaml#jobs[2]``, ``<job>``).
        field: dotted path of the offending field (``lora.rank``, ``prompts[1]``, ``kind``; ``""`` for
            the spec as a whole).
        message: what is wrong and how to fix it (``"learning_rate must be > 0, got -1"``).
        errors: every problem found, as ``(field, message)`` pairs (the first is ``field``/``message``).

    ``str()`` is ``"<source>: <field>: <message>"`` for one problem, one line per problem otherwise.
    """

    def __init__(self, source: str, field: str, message: str, errors: list[tuple[str, str]] | None = None):
        self.source = source
        self.field = field
        self.message = message
        self.errors = errors or [(field, message)]
        super().__init__(self._render())

    def _render(self) -> str:
        lines = []
        for field, message in self.errors:
            lines.append(f"{self.source}: {field}: {message}" if field else f"{self.source}: {message}")
        if len(lines) == 1:
            return lines[0]
        return f"{len(lines)} problems in job spec\n" + "\n".join("  " + line for line in lines)


def _reject_bool_int(value: Any) -> Any:
    # pydantic's lax mode turns true/false into 1/0 for numbers; a boolean for a number is a mistake.
    if isinstance(value, bool):
        raise ValueError("expected an integer, got a boolean")
    return value


def _reject_bool_float(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected a number, got a boolean")
    return value


Int = Annotated[int, BeforeValidator(_reject_bool_int)]
Float = Annotated[float, BeforeValidator(_reject_bool_float)]


class _Job(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class _ModelJob(_Job):
    model: str = Field(
        "default",
        min_length=1,
        description='"default" (env OODATCAA_DEFAULT_MODEL or the built-in SmolLM2-135M-Instruct) or a '
        "local mlx-lm model directory (relative paths resolve against the job's workdir).",
    )


class ModelCheckJob(_ModelJob):
    """Load a model and report its size, dtype, quantization and tokenizer sanity."""

    kind: Literal["model_check"]


DEFAULT_PROMPTS = (
    "What is the capital of France?",
    "Write one sentence about the sea.",
)


class InferenceBenchJob(_ModelJob):
    """Generate from ``prompts`` and measure throughput (tokens/s), time to first token (s), peak memory (GB)."""

    kind: Literal["inference_bench"]
    prompts: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=lambda: list(DEFAULT_PROMPTS), min_length=1
    )
    max_tokens: Int = Field(64, ge=1, le=32768, description="tokens generated per prompt (at most)")
    trials: Int = Field(1, ge=1, le=100, description="measured repetitions; the summary is the median")
    warmup: bool = Field(True, description="one unmeasured short generation first")
    adapter: str | None = Field(None, min_length=1, description="LoRA adapter directory (adapter_config.json)")
    temperature: Float = Field(0.0, ge=0.0, le=10.0, description="0 = greedy")
    seed: Int = Field(0, ge=0)


class LoraParams(_Job):
    """LoRA hyper-parameters. mlx-lm's ``scale`` is ``alpha / rank`` (Hu et al. 2021, LoRA, section 4.1)."""

    rank: Int = Field(8, ge=1, le=4096)
    alpha: Float = Field(16.0, gt=0.0)
    dropout: Float = Field(0.0, ge=0.0, lt=1.0)

    @property
    def scale(self) -> float:
        """mlx-lm LoRA ``scale`` = alpha / rank (dimensionless)."""
        return self.alpha / self.rank


class LoraTrainJob(_ModelJob):
    """LoRA fine-tuning with mlx-lm's trainer (Adam optimizer, constant learning rate)."""

    kind: Literal["lora_train"]
    data: str = Field(
        ...,
        min_length=1,
        description="directory with train.jsonl and valid.jsonl in an mlx-lm format "
        '({"messages": [...]}, {"prompt", "completion"} or {"text"}); relative to the workdir',
    )
    iters: Int = Field(60, ge=1, le=1_000_000)
    batch_size: Int = Field(4, ge=1, le=4096)
    lora: LoraParams = Field(default_factory=LoraParams)
    num_layers: Int | None = Field(
        None, description="number of last layers to adapt; default all (capped at 16); -1 = all"
    )
    learning_rate: Float = Field(2e-4, gt=0.0, le=10.0)
    max_seq_length: Int = Field(512, ge=8, le=1_000_000)
    grad_checkpoint: bool = False
    grad_accumulation_steps: Int = Field(1, ge=1, le=4096)
    steps_per_report: Int = Field(10, ge=1)
    steps_per_eval: Int | None = Field(None, ge=1, description="default: iters (validate at start and end)")
    val_batches: Int = Field(-1, description="-1 = the whole valid.jsonl, else a positive number of batches")
    mask_prompt: bool = Field(False, description="compute the loss on the completion / last assistant turn only")
    seed: Int = Field(0, ge=0)

    @field_validator("num_layers")
    @classmethod
    def _check_num_layers(cls, v: int | None) -> int | None:
        if v is not None and v != -1 and v < 1:
            raise ValueError(f"num_layers must be >= 1 or -1 (all layers), got {v}")
        return v

    @field_validator("val_batches")
    @classmethod
    def _check_val_batches(cls, v: int) -> int:
        if v != -1 and v < 1:
            raise ValueError(f"val_batches must be >= 1 or -1 (whole validation set), got {v}")
        return v

    @model_validator(mode="after")
    def _resolve_defaults(self) -> LoraTrainJob:
        if self.steps_per_eval is None:
            object.__setattr__(self, "steps_per_eval", self.iters)
        return self


class CommandJob(_Job):
    """Run a command in the job's workdir; ok when it exits 0 within ``timeout_s`` seconds."""

    kind: Literal["command"]
    run: str | list[str] = Field(
        ..., description="a command line (run by bash -c, or /bin/sh -c without bash) or an argv list (no shell)"
    )
    timeout_s: Float = Field(600.0, gt=0.0, le=7 * 24 * 3600, description="seconds")

    @field_validator("run", mode="before")
    @classmethod
    def _check_run(cls, v: Any) -> Any:
        if isinstance(v, str):
            if not v.strip():
                raise ValueError("run must be a non-empty command line, got an empty string")
            return v
        if isinstance(v, (list, tuple)):
            if not v:
                raise ValueError("run must be a command line or a non-empty argv list, got []")
            for i, item in enumerate(v):
                if not isinstance(item, str) or not item:
                    raise ValueError(f"run[{i}] must be a non-empty string, got {_show(item)}")
            return list(v)
        raise ValueError(f"run must be a command line (string) or an argv list of strings, got {_show(v)}")


#: Any job spec model (usable with isinstance and in annotations).
JobSpec = Union[ModelCheckJob, InferenceBenchJob, LoraTrainJob, CommandJob]
JobSpecModel = JobSpec  # alias
#: The discriminated union for pydantic fields (``kind`` selects the model), e.g. ``list[JobSpecField]``.
JobSpecField = Annotated[JobSpec, Field(discriminator="kind")]

_MODELS: dict[str, type[_Job]] = {
    "model_check": ModelCheckJob,
    "inference_bench": InferenceBenchJob,
    "lora_train": LoraTrainJob,
    "command": CommandJob,
}
#: The known job kinds, in documentation order.
JOB_KINDS: tuple[str, ...] = tuple(_MODELS)

_ADAPTER: TypeAdapter[Any] = TypeAdapter(JobSpecField)


def job_spec_json_schema() -> dict[str, Any]:
    """JSON schema of a job spec (the discriminated union), for docs and editors."""
    return _ADAPTER.json_schema()


_OPS = {
    "greater_than": (">", "gt"),
    "greater_than_equal": (">=", "ge"),
    "less_than": ("<", "lt"),
    "less_than_equal": ("<=", "le"),
}


def _field_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and (
            part in ("str", "int", "float", "list[str]") or part.startswith(("function-", "constrained-"))
        ):
            continue  # pydantic union member tags, not user fields
        else:
            out += ("." if out else "") + str(part)
    return out


def _show(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _message(err: Mapping[str, Any], field: str, kind: str | None) -> str:
    etype = err.get("type", "")
    ctx = err.get("ctx") or {}
    value = err.get("input")
    name = field.rsplit(".", 1)[-1] if field else "spec"
    if etype in _OPS:
        op, key = _OPS[etype]
        return f"{name} must be {op} {_show(ctx.get(key))}, got {_show(value)}"
    if etype == "missing":
        return f"{name} is required for kind {kind!r}; add it"
    if etype == "extra_forbidden":
        model = _MODELS.get(kind or "")
        known = _known_fields(model, field) if model else []
        hint = ""
        close = difflib.get_close_matches(name, known, n=1)
        if close:
            hint = f"; did you mean {close[0]!r}?"
        listing = f" (known fields: {', '.join(known)})" if known else ""
        return f"unknown field {name!r}{hint}{listing}; remove it"
    if etype in ("too_short", "string_too_short"):
        if isinstance(value, str):
            return f"{name} must not be empty"
        return f"{name} must have at least {ctx.get('min_length', 1)} item(s), got {len(value) if hasattr(value, '__len__') else _show(value)}"
    if etype in ("too_long", "string_too_long"):
        return f"{name} is too long (at most {ctx.get('max_length')})"
    if etype in ("int_parsing", "int_type", "int_from_float"):
        return f"{name} must be an integer, got {_show(value)}"
    if etype in ("float_parsing", "float_type"):
        return f"{name} must be a number, got {_show(value)}"
    if etype in ("bool_parsing", "bool_type"):
        return f"{name} must be true or false, got {_show(value)}"
    if etype in ("string_type",):
        return f"{name} must be a string, got {_show(value)}"
    if etype in ("list_type",):
        return f"{name} must be a list, got {_show(value)}"
    if etype in ("model_type", "model_attributes_type", "dict_type"):
        return f"{name} must be a mapping, got {_show(value)}"
    if etype == "value_error":
        msg = str(ctx.get("error", err.get("msg", "")))
        if msg.startswith("expected a number"):
            return f"{name} must be a number, got {_show(value)}"
        if msg.startswith("expected an integer"):
            return f"{name} must be an integer, got {_show(value)}"
        return msg
    return f"{name}: {err.get('msg', 'invalid value')} (got {_show(value)})"


def _known_fields(model: type[BaseModel], field: str) -> list[str]:
    # For nested models (lora.xxx) list the nested model's fields.
    parts = field.split(".")[:-1]
    current: Any = model
    for part in parts:
        info = getattr(current, "model_fields", {}).get(part)
        if info is None or not (isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)):
            return []
        current = info.annotation
    return [name for name in current.model_fields if name != "kind"]


def parse_job_spec(data: Any, *, source: str = "<job>") -> JobSpec:
    """Validate ``data`` (a mapping, or an already-built job model) and return the job spec model.

    Args:
        data: the spec, e.g. ``{"kind": "lora_train", "data": "data/chat", "iters": 50}``.
        source: where it came from, used in error messages.

    Returns:
        A :class:`ModelCheckJob`, :class:`InferenceBenchJob`, :class:`LoraTrainJob` or :class:`CommandJob`
        (frozen; ``LoraTrainJob.steps_per_eval`` defaults to ``iters``).

    Raises:
        JobSpecError: not a mapping, missing/unknown ``kind`` (the message lists the known kinds),
            unknown field, wrong type or out-of-range value.
    """
    if isinstance(data, tuple(_MODELS.values())):
        return data
    if not isinstance(data, Mapping):
        raise JobSpecError(source, "", f"a job spec must be a mapping with a 'kind', got {type(data).__name__}")
    known = ", ".join(JOB_KINDS)
    if "kind" not in data:
        raise JobSpecError(source, "kind", f"kind is required; one of: {known}")
    kind = data["kind"]
    if not isinstance(kind, str) or kind not in _MODELS:
        close = difflib.get_close_matches(str(kind), JOB_KINDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise JobSpecError(source, "kind", f"unknown job kind {_show(kind)}{hint}; known kinds: {known}")
    try:
        return _ADAPTER.validate_python(dict(data))
    except ValidationError as exc:
        errors: list[tuple[str, str]] = []
        for err in exc.errors():
            loc = tuple(err.get("loc", ()))
            if loc and loc[0] == kind:
                loc = loc[1:]
            field = _field_path(loc)
            errors.append((field, _message(err, field, kind)))
        # Several union branches for one field (command.run) produce duplicate fields: keep the first.
        seen: set[str] = set()
        unique = []
        for field, message in errors:
            if field in seen:
                continue
            seen.add(field)
            unique.append((field, message))
        first_field, first_message = unique[0]
        raise JobSpecError(source, first_field, first_message, unique) from None
