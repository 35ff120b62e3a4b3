"""Job specifications: what the Builder runs (pydantic v2 models, imports only stdlib + pydantic).

A job spec is a mapping with a ``kind`` and kind-specific fields (snake_case, unknown fields are
rejected). :func:`parse_job_spec` validates one and returns a :data:`JobSpec`; any problem raises
:class:`JobSpecError`, whose message names the source, the dotted field and the fix, e.g.::

    backlog.yaml#jobs[0]: lora_train.learning_rate: learning_rate must be > 0, got -1

Kinds (see ``docs/jobs.md`` for every field, default, unit and the summary keys each kind writes):

- ``model_check``     load a model, count parameters, round-trip the tokenizer;
- ``inference_bench`` generate from prompts and measure prompt/generation tokens per second;
- ``lora_train``      LoRA / DoRA / full fine-tuning (QLoRA on a quantized base) with checkpoints and resume;
- ``memory_profile``  peak memory (GB) of one generation and of a few training steps, against a target;
- ``evaluate``        test loss and perplexity on a split, base vs adapted generations;
- ``dataset``         validate (and optionally split) JSONL in mlx-lm's formats, with statistics;
- ``quantize``        quantize a model to 2-8 bits (mlx-lm convert);
- ``fuse``            fuse adapters into the base model, optionally export GGUF;
- ``command``         run a shell command (or argv list) with a timeout.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sized
from typing import Annotated, Any, Literal, cast, get_args

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
    "DatasetJob",
    "Divergence",
    "EarlyStopping",
    "EvaluateJob",
    "FuseJob",
    "InferenceBenchJob",
    "JOB_KINDS",
    "JobSpec",
    "JobSpecError",
    "JobSpecField",
    "JobSpecModel",
    "LORA_PROFILES",
    "LoraParams",
    "LoraTrainJob",
    "LrSchedule",
    "MemoryProfileJob",
    "ModelCheckJob",
    "QuantizeJob",
    "SplitRatios",
    "job_spec_json_schema",
    "model_of_kind",
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
    inherit: bool = Field(
        True,
        description="training kinds: take the settings an accepted adaptation of a dependency found "
        "(fields this block leaves unset); false opts out",
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


class _FieldError(ValueError):
    """Raised inside an after-validator to blame a specific field (see parse_job_spec)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


#: Named ``lora_train`` profiles: defaults that any field of the spec overrides (``lora`` key by key).
#: ``epochs`` becomes ``iters`` at run time: ceil(epochs * (train records // batch_size)).
LORA_PROFILES: dict[str, dict[str, Any]] = {
    "fast_dev": {"lora": {"rank": 8, "alpha": 16.0}, "iters": 60, "learning_rate": 2e-4},
    "balanced": {"lora": {"rank": 16, "alpha": 16.0}, "epochs": 1.0, "learning_rate": 2e-4},
    "max_quality": {"lora": {"rank": 128, "alpha": 256.0}, "epochs": 3.0, "learning_rate": 1e-4},
}
#: ``iters`` when neither ``iters`` nor ``epochs`` is given (and no profile sets one).
DEFAULT_ITERS = 60

#: mlx.optimizers.schedulers supported in ``lr_schedule.name`` -> accepted counts of ``arguments``
#: (mlx-lm's positional arguments; the first is the initial learning rate).
LR_SCHEDULES: dict[str, tuple[int, ...]] = {
    "cosine_decay": (2, 3),  # (init, decay_steps[, end])
    "linear_schedule": (3,),  # (init, end, steps)
    "exponential_decay": (2,),  # (init, decay_rate)
    "step_decay": (3,),  # (init, decay_rate, step_size)
}


class LrSchedule(_Job):
    """Learning-rate schedule, built with ``mlx_lm.tuner.utils.build_schedule``.

    ``arguments`` are mlx-lm's positional arguments of ``mlx.optimizers.<name>`` (the first one is the
    initial learning rate). Omitted, they are derived from the job: ``cosine_decay`` ->
    ``[learning_rate, updates - warmup, end_lr]``, ``linear_schedule`` -> ``[learning_rate, end_lr,
    updates - warmup]`` (updates = iters // grad_accumulation_steps); ``exponential_decay`` and
    ``step_decay`` need explicit ``arguments``. ``warmup`` optimizer updates ramp linearly from
    ``warmup_init`` to the initial learning rate first.
    """

    name: Literal["cosine_decay", "linear_schedule", "exponential_decay", "step_decay"]
    warmup: Int = Field(0, ge=0, le=10_000_000, description="optimizer updates of linear warm-up")
    warmup_init: Float = Field(0.0, ge=0.0, le=10.0, description="learning rate at the start of warm-up")
    end_lr: Float = Field(0.0, ge=0.0, le=10.0, description="final learning rate when arguments are derived")
    arguments: list[Float] | None = Field(None, description="mlx-lm positional arguments (first = initial lr)")

    @model_validator(mode="after")
    def _check_arguments(self) -> LrSchedule:
        allowed = LR_SCHEDULES[self.name]
        if self.arguments is None:
            if self.name in ("exponential_decay", "step_decay"):
                shape = "[init, decay_rate]" if self.name == "exponential_decay" else "[init, decay_rate, step_size]"
                raise _FieldError("arguments", f"arguments is required for {self.name}: {shape}")
        elif len(self.arguments) not in allowed:
            counts = " or ".join(str(n) for n in allowed)
            raise _FieldError("arguments", f"arguments of {self.name} takes {counts} values, got {len(self.arguments)}")
        elif self.arguments[0] <= 0:
            raise _FieldError(
                "arguments", f"arguments[0] is the initial learning rate and must be > 0, got {_show(self.arguments[0])}"
            )
        return self


class EarlyStopping(_Job):
    """Stop when the validation loss has not improved by more than ``min_delta`` for ``patience`` validations."""

    patience: Int = Field(..., ge=1, le=100_000, description="validations without improvement before stopping")
    min_delta: Float = Field(0.0, ge=0.0, description="smallest decrease of the validation loss (nats/token) that counts")


class Divergence(_Job):
    """When ``lora_train`` calls a run diverged (the typed ``diverged`` failure; each check ``null`` = off).

    ``train.initial_loss`` is the loss of the first batch before any optimizer update. A run diverged
    when a training or validation loss is not finite; when a report window's mean training loss exceeds
    ``max_loss_ratio`` x the loss before training (the larger of the initial loss and the step-0
    validation loss); when the final validation loss ends more than
    ``max_val_increase`` nats/token above the first (step 0) validation loss; or when it ends at the
    uniform-distribution level, within ``uniform_tolerance`` x ln(vocab size) of ln(vocab size), after
    starting clearly below it.
    """

    max_loss_ratio: Float | None = Field(2.0, gt=1.0, description="train loss / initial loss above this = diverged")
    max_val_increase: Float | None = Field(
        0.5, ge=0.0, description="final - first validation loss (nats/token) above this = diverged")
    uniform_tolerance: Float | None = Field(
        0.02, ge=0.0, lt=1.0, description="final validation loss >= (1 - this) x ln(vocab) = diverged (collapsed)")


FineTuneType = Literal["lora", "dora", "full"]
QuantBits = Literal[2, 3, 4, 5, 6, 8]
GroupSize = Literal[32, 64, 128]


class _TrainingFields(_ModelJob):
    """Fields shared by ``lora_train`` and ``memory_profile`` (what shapes one training step)."""

    batch_size: Int = Field(4, ge=1, le=4096)
    lora: LoraParams = Field(default_factory=LoraParams)
    fine_tune_type: FineTuneType = Field("lora", description="lora, dora (weight-decomposed LoRA) or full")
    num_layers: Int | None = Field(
        None, description="number of last layers to adapt; default all (capped at 16); -1 = all"
    )
    learning_rate: Float = Field(2e-4, gt=0.0, le=10.0)
    max_seq_length: Int = Field(512, ge=8, le=1_000_000)
    grad_checkpoint: bool = False
    grad_accumulation_steps: Int = Field(1, ge=1, le=4096)
    mask_prompt: bool = Field(False, description="compute the loss on the completion / last assistant turn only")
    quantize: QuantBits | None = Field(
        None, description="quantize the base to this many bits before adding LoRA layers (QLoRA)"
    )
    quantize_group_size: GroupSize = Field(64, description="quantization group size (with quantize)")
    seed: Int = Field(0, ge=0)

    @field_validator("num_layers")
    @classmethod
    def _check_num_layers(cls, v: int | None) -> int | None:
        if v is not None and v != -1 and v < 1:
            raise ValueError(f"num_layers must be >= 1 or -1 (all layers), got {v}")
        return v

    def _check_fine_tune(self, explicit_lora: bool) -> None:
        if self.fine_tune_type == "full":
            if self.quantize is not None:
                raise _FieldError(
                    "quantize", "quantize (QLoRA) needs fine_tune_type lora or dora; full fine-tuning trains float weights"
                )
            if explicit_lora:
                raise _FieldError("lora", "lora settings apply to fine_tune_type lora or dora, not full; remove lora")


class LoraTrainJob(_TrainingFields):
    """Fine-tuning (LoRA, DoRA or full; QLoRA on a quantized base) with our own mlx-lm-based training loop."""

    kind: Literal["lora_train"]
    profile: Literal["fast_dev", "balanced", "max_quality"] | None = Field(
        None, description="named defaults (see LORA_PROFILES); every field of the spec overrides them"
    )
    data: str = Field(
        ...,
        min_length=1,
        description="directory with train.jsonl and valid.jsonl in an mlx-lm format "
        '({"messages": [...]}, {"prompt", "completion"} or {"text"}); relative to the workdir',
    )
    iters: Int | None = Field(None, ge=1, le=1_000_000, description="training steps (batches); default 60")
    epochs: Float | None = Field(
        None, gt=0.0, le=100_000, description="passes over train.jsonl; iters = ceil(epochs * (records // batch_size))"
    )
    lr_schedule: LrSchedule | None = None
    steps_per_report: Int = Field(10, ge=1)
    steps_per_eval: Int | None = Field(None, ge=1, description="default: iters (validate at start and end)")
    val_batches: Int = Field(-1, description="-1 = the whole valid.jsonl, else a positive number of batches")
    save_every: Int = Field(100, ge=1, description="steps between resumable checkpoints")
    resume: bool | Literal["auto"] = Field(
        "auto",
        description="auto: resume from a checkpoint in the artifacts dir if one fits; true: must resume; false: start over",
    )
    resume_from: str | None = Field(
        None, min_length=1,
        description="checkpoints directory (or artifacts dir) of another run to resume from; with resume auto a "
        "checkpoint that does not fit is ignored, with resume true it is an error",
    )
    keep_best: bool = Field(False, description="adapters/ gets the weights with the lowest validation loss")
    early_stopping: EarlyStopping | None = None
    max_grad_norm: Float | None = Field(
        None, gt=0.0, description="clip the global gradient norm to this before each optimizer update; none = no clipping")
    divergence: Divergence = Field(default_factory=Divergence, description="when a run counts as diverged")

    @field_validator("val_batches")
    @classmethod
    def _check_val_batches(cls, v: int) -> int:
        if v != -1 and v < 1:
            raise ValueError(f"val_batches must be >= 1 or -1 (whole validation set), got {v}")
        return v

    @field_validator("resume", mode="before")
    @classmethod
    def _check_resume(cls, v: Any) -> Any:
        if v is True or v is False or v == "auto":
            return v
        raise ValueError(f"resume must be true, false or 'auto', got {_show(v)}")

    @model_validator(mode="before")
    @classmethod
    def _apply_profile(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        profile = data.get("profile")
        if not isinstance(profile, str) or profile not in LORA_PROFILES:
            return data
        out = dict(data)
        length_given = data.get("iters") is not None or data.get("epochs") is not None
        for key, value in LORA_PROFILES[profile].items():
            if key in ("iters", "epochs"):
                if not length_given:
                    out[key] = value
            elif key == "lora":
                user = data.get("lora")
                if user is None:
                    out["lora"] = dict(value)
                elif isinstance(user, Mapping):
                    out["lora"] = {**value, **user}
            elif data.get(key) is None:
                out[key] = value
        return out

    @model_validator(mode="after")
    def _resolve_defaults(self) -> LoraTrainJob:
        if self.iters is not None and self.epochs is not None:
            raise _FieldError("epochs", "give either iters or epochs, not both")
        if self.iters is None and self.epochs is None:
            object.__setattr__(self, "iters", DEFAULT_ITERS)
        if self.steps_per_eval is None and self.iters is not None:
            object.__setattr__(self, "steps_per_eval", self.iters)
        self._check_fine_tune(explicit_lora=self.profile is None and self.lora != LoraParams())
        if self.resume is False and self.resume_from is not None:
            raise _FieldError("resume_from", "resume_from needs resume true or auto, not false")
        return self


class MemoryProfileJob(_TrainingFields):
    """Peak memory (GB) of one generation and of ``steps`` training steps, against ``target_gb``."""

    kind: Literal["memory_profile"]
    data: str | None = Field(
        None, min_length=1, description="directory with train.jsonl; default: synthetic batches of max_seq_length tokens"
    )
    steps: Int = Field(3, ge=1, le=10_000, description="training steps to measure")
    target_gb: Float | None = Field(None, gt=0.0, description="memory budget in GB (1e9 bytes)")
    prompt: str = Field("What is the capital of France?", min_length=1, description="prompt of the measured generation")
    max_tokens: Int = Field(32, ge=1, le=32768, description="tokens generated in the measured generation")

    @model_validator(mode="after")
    def _check(self) -> MemoryProfileJob:
        self._check_fine_tune(explicit_lora=self.lora != LoraParams())
        return self


Split = Literal["train", "valid", "test"]


class EvaluateJob(_ModelJob):
    """Test loss and perplexity on one split; base vs adapted generations on fixed prompts."""

    kind: Literal["evaluate"]
    data: str = Field(..., min_length=1, description="directory with <split>.jsonl")
    split: Split = "test"
    adapter: str | None = Field(None, min_length=1, description="adapter directory (adapter_config.json)")
    batch_size: Int = Field(4, ge=1, le=4096)
    max_seq_length: Int = Field(2048, ge=8, le=1_000_000)
    max_batches: Int = Field(-1, description="-1 = the whole split, else a positive number of batches")
    mask_prompt: bool = Field(False, description="loss on the completion / last assistant turn only")
    prompts: list[Annotated[str, Field(min_length=1)]] | None = Field(
        None, min_length=1, description="generation prompts; default: the first num_prompts prompts of the split"
    )
    num_prompts: Int = Field(3, ge=0, le=1000, description="prompts taken from the split when prompts is not given")
    max_tokens: Int = Field(64, ge=1, le=32768)
    temperature: Float = Field(0.0, ge=0.0, le=10.0)
    compare_base: bool = Field(True, description="with an adapter, also evaluate and generate with the base model")
    seed: Int = Field(0, ge=0)

    @field_validator("max_batches")
    @classmethod
    def _check_max_batches(cls, v: int) -> int:
        if v != -1 and v < 1:
            raise ValueError(f"max_batches must be >= 1 or -1 (whole split), got {v}")
        return v


class SplitRatios(_Job):
    """train / valid / test fractions (each 0..1, summing to 1)."""

    train: Float = Field(0.8, gt=0.0, le=1.0)
    valid: Float = Field(0.1, ge=0.0, le=1.0)
    test: Float = Field(0.1, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _check_sum(self) -> SplitRatios:
        total = self.train + self.valid + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split ratios must sum to 1, got {_show(round(total, 6))}")
        return self


class DatasetJob(_Job):
    """Validate JSONL in mlx-lm's formats (and optionally split one file into train/valid/test)."""

    kind: Literal["dataset"]
    data: str | None = Field(None, min_length=1, description="directory with train/valid/test.jsonl to validate")
    source: str | None = Field(None, min_length=1, description="one JSONL file to validate and split into output/")
    output: str | None = Field(None, min_length=1, description="directory for train/valid/test.jsonl (with source)")
    split: SplitRatios = Field(default_factory=SplitRatios)
    model: str | None = Field(
        None, min_length=1, description="tokenizer for token lengths ('default' or a model dir); none = whitespace words"
    )
    max_tokens: Int | None = Field(None, ge=1, description="rows longer than this (tokens) are reported as too long")
    near_duplicate_threshold: Float = Field(0.9, gt=0.0, le=1.0, description="word 3-shingle Jaccard similarity")
    dedupe: bool = Field(True, description="with source: leave exact duplicates (after the first) out of the splits")
    strict: bool = Field(False, description="fail the job when any row is invalid, empty or too long")
    seed: Int = Field(0, ge=0)

    @model_validator(mode="after")
    def _check_mode(self) -> DatasetJob:
        if (self.data is None) == (self.source is None):
            raise _FieldError("data", "give either data (a directory to validate) or source (a JSONL file to split)")
        if self.source is not None and self.output is None:
            raise _FieldError("output", "output is required with source: the directory for train/valid/test.jsonl")
        if self.data is not None and self.output is not None:
            raise _FieldError("output", "output goes with source; with data the files are only validated")
        return self


class QuantizeJob(_ModelJob):
    """Quantize a model with ``mlx_lm.convert`` into ``artifacts_dir/quantized``."""

    kind: Literal["quantize"]
    bits: QuantBits = 4
    group_size: GroupSize = 64


class FuseJob(_ModelJob):
    """Fuse an adapter into the base (``artifacts_dir/fused``); optionally export GGUF (llama/mistral/mixtral)."""

    kind: Literal["fuse"]
    adapter: str = Field(..., min_length=1, description="adapter directory (adapter_config.json)")
    dequantize: bool = Field(False, description="save the fused model dequantized (float)")
    export_gguf: bool = Field(False, description="also write a GGUF file (float16; llama, mistral, mixtral only)")
    gguf_name: str = Field("ggml-model-f16.gguf", min_length=1, description="file name of the GGUF in artifacts_dir/fused")

    @field_validator("gguf_name")
    @classmethod
    def _check_gguf_name(cls, v: str) -> str:
        if "/" in v or "\\" in v or v.startswith(".") or not v.endswith(".gguf"):
            raise ValueError(f"gguf_name must be a plain file name ending in .gguf, got {_show(v)}")
        return v


class CommandJob(_Job):
    """Run a command in the job's workdir; ok when it exits 0 within ``timeout_s`` seconds."""

    kind: Literal["command"]
    run: str | list[str] = Field(
        ..., description="a command line (run by bash -c; bash is required) or an argv list (no shell)"
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
JobSpec = (
    ModelCheckJob | InferenceBenchJob | LoraTrainJob | MemoryProfileJob | EvaluateJob | DatasetJob | QuantizeJob | FuseJob
    | CommandJob
)
JobSpecModel = JobSpec  # alias
#: The discriminated union for pydantic fields (``kind`` selects the model), e.g. ``list[JobSpecField]``.
JobSpecField = Annotated[JobSpec, Field(discriminator="kind")]



def _kind_of(model: type[_Job]) -> str:
    (kind,) = get_args(model.model_fields["kind"].annotation)
    return str(kind)


# Derived from the union so that a new kind is added in one place here (its class and its entry in
# JobSpec); oodatcaa.jobs.registry, which imports this module, checks its own table against this one.
_MODELS: dict[str, type[_Job]] = {_kind_of(model): model for model in get_args(JobSpec)}
#: The known job kinds, in documentation order (the order of :data:`JobSpec`, and of the registry).
JOB_KINDS: tuple[str, ...] = tuple(_MODELS)


def model_of_kind(kind: str) -> type[BaseModel]:
    """The spec model of a job kind (``"lora_train"`` -> :class:`LoraTrainJob`).

    Raises:
        JobSpecError: unknown kind (the message lists the known kinds).
    """
    model = _MODELS.get(kind)
    if model is None:
        raise JobSpecError("<job>", "kind", f"unknown job kind {_show(kind)}; known kinds: {', '.join(JOB_KINDS)}")
    return model

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
        got = len(value) if isinstance(value, Sized) else _show(value)
        return f"{name} must have at least {ctx.get('min_length', 1)} item(s), got {got}"
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
    if etype == "literal_error":
        expected = str(ctx.get("expected", ""))
        choices = [c.strip().strip("'") for c in expected.replace(" or ", ", ").split(",") if c.strip()]
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"{name} must be one of {', '.join(choices)}, got {_show(value)}{hint}"
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
        return cast(JobSpec, data)
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
            blamed = (err.get("ctx") or {}).get("error")
            if isinstance(blamed, _FieldError):  # a cross-field check that names its field
                loc = (*loc, *blamed.field.split("."))
                field = _field_path(loc)
                errors.append((field, str(blamed)))
                continue
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


def flatten_spec(spec: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A job block with nested tables flattened: ``{"lora": {"rank": 8}}`` -> ``{"lora.rank": 8}``.

    Lists are kept as values. Used where specs are compared key by key (``compare``, the HTML report).
    """
    out: dict[str, Any] = {}
    for key, value in spec.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten_spec(value, name + "."))
        else:
            out[name] = value
    return out
