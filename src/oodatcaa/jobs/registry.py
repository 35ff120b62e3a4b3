"""The job-kind registry: one table saying, per job kind, everything the rest of the project needs.

Each :class:`JobKind` names its spec model (:mod:`oodatcaa.jobs.spec`), the module whose ``run`` does
the work, whether it needs MLX, whether it trains, the summary namespace it writes, the metrics it
documents (``namespace.key``, as acceptance criteria name them) and the headline ones, and its
section in ``docs/jobs.md``. The worker, the backlog's hints, the Builder's headline metrics and the
Refiner's training rules all read this table; ``tests/test_job_kinds_contract.py`` checks every entry
against its spec, its module's real summary and the documentation.

Importing this module imports only the standard library, pydantic and :mod:`oodatcaa.jobs.spec`:
a kind's module (which imports mlx) is imported by :meth:`JobKind.run`, in the job process.

Adding a job kind: its spec model in ``jobs/spec.py`` (the class and one entry in ``JobSpec``), its
module ``jobs/<kind>.py`` with ``run(spec, ctx)``, one :class:`JobKind` line in :data:`_REGISTRY`,
and a ``## <kind>`` section of ``docs/jobs.md`` (see ``docs/contributing.md``).
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from oodatcaa.jobs import spec as S

if TYPE_CHECKING:
    from oodatcaa.jobs._common import JobContext

__all__ = [
    "JobKind",
    "RunFunction",
    "UnknownJobKindError",
    "check_metric_names",
    "job_kind",
    "key_metrics",
    "kinds",
    "metrics_of",
    "mlx_kinds",
    "training_kinds",
]

#: A kind's ``run(spec, ctx)``: returns the namespaced summary ``{namespace: {key: value}}``; raises
#: :class:`oodatcaa.jobs._common.JobFailure` (or a subclass) for a failure worth showing as is.
RunFunction = Callable[[Any, "JobContext"], dict[str, dict[str, Any]]]


class UnknownJobKindError(LookupError):
    """No job kind of that name is registered; the message names the closest one and every known kind."""


@dataclass(frozen=True)
class JobKind:
    """One job kind.

    Attributes:
        name: the ``kind`` value of a spec, e.g. ``"lora_train"``.
        spec: its pydantic spec model, e.g. :class:`~oodatcaa.jobs.spec.LoraTrainJob`.
        module: import path of the module holding ``run(spec, ctx)``; imported only by :meth:`run`.
        uses_mlx: the job imports mlx (the worker then preloads the CPU fast path and strips colour codes).
        trains: the job runs training steps, so it takes ``batch_size``, ``grad_checkpoint`` and
            ``grad_accumulation_steps`` (what the Refiner's memory rule adapts).
        namespace: the summary namespace the kind writes (``"train"`` for ``lora_train``).
        key_metrics: the headline metrics shown in ``status`` and the CHANGELOG, ``namespace.key``.
        metrics: every summary metric the kind documents in ``docs/jobs.md``, ``namespace.key``; the
            contract test checks that the module writes exactly these.
        docs_section: the heading of the kind's section in ``docs/jobs.md`` (``## <docs_section>``).
    """

    name: str
    spec: type[BaseModel]
    module: str
    uses_mlx: bool
    trains: bool
    namespace: str
    key_metrics: tuple[str, ...]
    metrics: tuple[str, ...]
    docs_section: str

    def __post_init__(self) -> None:
        # A typo in a registry line should fail at import, not when a criterion is checked.
        missing = [m for m in self.key_metrics if m not in self.metrics]
        if missing:
            raise ValueError(f"job kind {self.name}: key metrics {missing} are not among its metrics")
        if len(set(self.metrics)) != len(self.metrics):
            raise ValueError(f"job kind {self.name}: a metric is listed twice")
        if any("." not in m for m in self.metrics):
            raise ValueError(f"job kind {self.name}: metrics must be namespace.key names")

    @property
    def namespaces(self) -> tuple[str, ...]:
        """Every namespace the kind's summary has: :attr:`namespace` first, then any other its metrics use."""
        out = [self.namespace]
        for metric in self.metrics:
            ns = metric.split(".", 1)[0]
            if ns not in out:
                out.append(ns)
        return tuple(out)

    def run(self) -> RunFunction:
        """The module's ``run(spec, ctx)`` (imports the module, hence mlx for an MLX kind).

        Raises:
            ImportError: the module (or a library it needs) cannot be imported.
            AttributeError: the module has no ``run``.
        """
        function: RunFunction = importlib.import_module(self.module).run
        return function


def _keys(namespace: str, keys: str) -> tuple[str, ...]:
    """``_keys("train", "a b")`` -> ``("train.a", "train.b")``: registry lines stay readable."""
    return tuple(f"{namespace}.{key}" for key in keys.split())


_REGISTRY: tuple[JobKind, ...] = (
    JobKind(
        "model_check", S.ModelCheckJob, "oodatcaa.jobs.model_check", uses_mlx=True, trains=False, namespace="model",
        key_metrics=_keys("model", "parameters_millions load_seconds"),
        metrics=_keys("model", "parameters_total parameters_millions parameters_trainable dtype quantization load_seconds "
                               "tokenizer_roundtrip chat_template forward_ok device blas mlx_version mlx_lm_version "
                               "model_type num_layers hidden_size vocab_size"),
        docs_section="model_check",
    ),
    JobKind(
        "inference_bench", S.InferenceBenchJob, "oodatcaa.jobs.inference_bench", uses_mlx=True, trains=False,
        namespace="inference",
        key_metrics=_keys("inference", "generation_tps prompt_tps peak_memory_gb"),
        metrics=_keys("inference", "prompt_tps generation_tps time_to_first_token_s prompt_tps_spread generation_tps_spread "
                                   "peak_memory_gb generated_tokens prompt_tokens trials load_seconds"),
        docs_section="inference_bench",
    ),
    JobKind(
        "lora_train", S.LoraTrainJob, "oodatcaa.jobs.lora_train", uses_mlx=True, trains=True, namespace="train",
        key_metrics=_keys("train", "first_loss final_loss tokens_per_second peak_memory_gb"),
        metrics=_keys("train", "initial_loss first_loss final_loss first_val_loss final_val_loss best_val_loss best_iteration "
                               "adapters_selected tokens_per_second iterations_per_second train_seconds val_seconds "
                               "wall_seconds peak_memory_gb iters iterations_done epochs profile fine_tune_type "
                               "lr_schedule final_learning_rate stopped_early resumed_at_iteration checkpoints_saved "
                               "trained_tokens truncated_sequences quantize_bits rank alpha scale dropout num_layers "
                               "trainable_parameters batch_size grad_accumulation_steps grad_checkpoint learning_rate "
                               "train_examples valid_examples vocab_size max_grad_norm load_seconds loss_curve_png"),
        docs_section="lora_train",
    ),
    JobKind(
        "memory_profile", S.MemoryProfileJob, "oodatcaa.jobs.memory_profile", uses_mlx=True, trains=True,
        namespace="memory",
        key_metrics=_keys("memory", "peak_memory_gb headroom_gb"),
        metrics=_keys("memory", "inference_peak_gb train_peak_gb peak_memory_gb target_gb headroom_gb within_target "
                                "max_rss_gb rss_minus_mlx_gb weights_gb steps tokens_per_step train_seconds batch_size "
                                "max_seq_length grad_checkpoint grad_accumulation_steps fine_tune_type rank num_layers "
                                "trainable_parameters quantize_bits generation_tokens data load_seconds"),
        docs_section="memory_profile",
    ),
    JobKind(
        "evaluate", S.EvaluateJob, "oodatcaa.jobs.evaluate", uses_mlx=True, trains=False, namespace="eval",
        key_metrics=_keys("eval", "loss perplexity peak_memory_gb"),
        metrics=_keys("eval", "loss perplexity base_loss base_perplexity loss_delta tokens examples batches split prompts "
                              "adapter eval_seconds load_seconds peak_memory_gb"),
        docs_section="evaluate",
    ),
    JobKind(
        "dataset", S.DatasetJob, "oodatcaa.jobs.dataset", uses_mlx=True, trains=False, namespace="dataset",
        key_metrics=_keys("dataset", "rows_ok problems"),
        metrics=_keys("dataset", "rows rows_ok rows_invalid rows_empty rows_too_long rows_duplicate rows_near_duplicate "
                                 "cross_split_duplicates problems format rows_messages rows_prompt_completion rows_text "
                                 "token_counter tokens_total tokens_min tokens_mean tokens_p50 tokens_p95 tokens_max "
                                 "tokens_longest train_rows valid_rows test_rows files dataset_sha256"),
        docs_section="dataset",
    ),
    JobKind(
        "quantize", S.QuantizeJob, "oodatcaa.jobs.quantize", uses_mlx=True, trains=False, namespace="quantize",
        key_metrics=_keys("quantize", "bits_per_weight compression_ratio"),
        metrics=_keys("quantize", "bits group_size bits_per_weight size_gb_before size_gb_after compression_ratio "
                                  "top1_agreement mean_abs_logit_diff output seconds"),
        docs_section="quantize",
    ),
    JobKind(
        "fuse", S.FuseJob, "oodatcaa.jobs.fuse", uses_mlx=True, trains=False, namespace="fuse",
        key_metrics=_keys("fuse", "max_abs_logit_diff"),
        metrics=_keys("fuse", "fused_modules fine_tune_type dequantized quantization size_gb gguf gguf_size_gb "
                              "max_abs_logit_diff top1_agreement output seconds load_seconds"),
        docs_section="fuse",
    ),
    JobKind(
        "command", S.CommandJob, "oodatcaa.jobs.command", uses_mlx=False, trains=False, namespace="command",
        key_metrics=_keys("command", "returncode"),
        metrics=_keys("command", "returncode duration_s timed_out output_tail"),
        docs_section="command",
    ),
)

_BY_NAME: dict[str, JobKind] = {k.name: k for k in _REGISTRY}

# spec.py cannot import this module (it is imported by it), so the two tables are checked against
# each other here, once, when the registry is first imported.
if tuple(_BY_NAME) != S.JOB_KINDS or any(S.model_of_kind(k.name) is not k.spec for k in _REGISTRY):
    raise RuntimeError(
        f"job kind registry {tuple(_BY_NAME)} does not match the spec models in oodatcaa.jobs.spec {S.JOB_KINDS}"
    )


def kinds() -> tuple[str, ...]:
    """Every registered job kind, in documentation order (``("model_check", ..., "command")``)."""
    return tuple(_BY_NAME)


def job_kind(name: str) -> JobKind:
    """The :class:`JobKind` called ``name``.

    Raises:
        UnknownJobKindError: no such kind; the message suggests the closest name and lists them all.
    """
    try:
        return _BY_NAME[name]
    except (KeyError, TypeError):
        pass
    close = difflib.get_close_matches(str(name), list(_BY_NAME), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise UnknownJobKindError(f"unknown job kind {name!r}{hint}; known kinds: {', '.join(_BY_NAME)}") from None


def training_kinds() -> tuple[str, ...]:
    """The kinds whose :attr:`JobKind.trains` is set (``("lora_train", "memory_profile")``)."""
    return tuple(k.name for k in _REGISTRY if k.trains)


def mlx_kinds() -> tuple[str, ...]:
    """The kinds whose :attr:`JobKind.uses_mlx` is set (every kind but ``command``)."""
    return tuple(k.name for k in _REGISTRY if k.uses_mlx)


def metrics_of(kinds: Iterable[str]) -> set[str]:
    """Every documented ``namespace.key`` metric of the given kinds (unregistered names are skipped:
    a bad ``kind`` is reported by spec validation, not here)."""
    out: set[str] = set()
    for name in kinds:
        kind = _BY_NAME.get(name)
        if kind is not None:
            out.update(kind.metrics)
    return out


def numeric_metrics(summary: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Flat ``{"namespace.key": value}`` of every number in a job summary — what a story records.

    ``summary`` is a job's namespaced summary (``{"train": {"final_loss": 1.23, ...}}``); nested
    sections are not descended, strings and booleans are left out (booleans are not numbers here),
    floats are rounded to 6 decimals. An objective's ``metric: T005.eval.base_loss`` reads these.
    """
    out: dict[str, Any] = {}
    for ns, section in summary.items():
        if not isinstance(section, dict):
            continue
        for key, value in section.items():
            if isinstance(value, float):
                out[f"{ns}.{key}"] = round(value, 6)
            elif isinstance(value, int) and not isinstance(value, bool):
                out[f"{ns}.{key}"] = value
    return out


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """The headline metrics (each kind's ``key_metrics``) present in flat ``metrics``, in registry order.

    Floats are rounded to 4 decimals: this is what tags, the CHANGELOG and ``status`` show.
    """
    out: dict[str, Any] = {}
    for kind in _REGISTRY:
        for metric in kind.key_metrics:
            value = metrics.get(metric)
            if metric in out or value is None or isinstance(value, bool):
                continue
            if isinstance(value, float):
                out[metric] = round(value, 4)
            elif isinstance(value, int):
                out[metric] = value
    return out


def key_metrics(summary: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Flat ``{"namespace.key": value}`` of the headline metrics present in a job summary (see :func:`headline`)."""
    return headline(numeric_metrics(summary))


def check_metric_names(metric_names: list[str], job_kinds: list[str]) -> list[str]:
    """One human problem per metric name that none of ``job_kinds`` documents.

    A story's criteria may name a metric of any of its steps, so the known metrics are the union over
    its job kinds. Each problem names the closest known metric (difflib) and the known ones of that
    namespace (or the known namespaces), e.g.::

        unknown metric 'inference.generation_tokens' for job kinds inference_bench; did you mean
        'inference.generated_tokens'? (known: inference.prompt_tps, inference.generation_tps, ...)

    Returns ``[]`` when every name is known, or when none of ``job_kinds`` is registered (a story
    without jobs has nothing to check against; a bad kind is reported by spec validation).
    """
    registered = [k for k in dict.fromkeys(job_kinds) if k in _BY_NAME]
    if not registered:
        return []
    ordered = [m for k in registered for m in _BY_NAME[k].metrics]
    known = set(ordered)
    namespaces = [ns for k in registered for ns in _BY_NAME[k].namespaces]
    problems: list[str] = []
    for name in dict.fromkeys(metric_names):
        if name in known:
            continue
        close = difflib.get_close_matches(name, ordered, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        ns = name.split(".", 1)[0]
        same_ns = [m for m in dict.fromkeys(ordered) if m.split(".", 1)[0] == ns]
        listing = ", ".join(same_ns) if same_ns else "namespaces " + ", ".join(dict.fromkeys(namespaces))
        problems.append(f"unknown metric {name!r} for job kinds {', '.join(registered)}{hint} (known: {listing})")
    return problems
