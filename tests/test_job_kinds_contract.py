"""The contract every registered job kind keeps (``oodatcaa.jobs.registry``).

Per kind: its spec round-trips and refuses a bad field by name; run on the tiny model it writes exactly
the metrics the registry lists; ``docs/jobs.md`` has its section, documenting exactly those metrics.
A new kind that is registered but not added here fails :func:`test_every_kind_has_a_contract_spec`.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import write_tiny_dataset
from oodatcaa.jobs import registry
from oodatcaa.jobs.registry import JobKind, UnknownJobKindError, job_kind, kinds
from oodatcaa.jobs.runner import run_job
from oodatcaa.jobs.spec import JOB_KINDS, JobSpecError, parse_job_spec

DOCS = Path(__file__).resolve().parents[1] / "docs" / "jobs.md"

#: The smallest valid spec of each kind (paths are relative to the job's workdir, see _RUN_SPECS).
MINIMAL: dict[str, dict[str, Any]] = {
    "model_check": {"kind": "model_check"},
    "inference_bench": {"kind": "inference_bench"},
    "lora_train": {"kind": "lora_train", "data": "data"},
    "memory_profile": {"kind": "memory_profile"},
    "evaluate": {"kind": "evaluate", "data": "data"},
    "dataset": {"kind": "dataset", "data": "data"},
    "quantize": {"kind": "quantize"},
    "fuse": {"kind": "fuse", "adapter": "adapter"},
    "command": {"kind": "command", "run": "true"},
}

#: What each kind runs with in the contract run: small enough for about a second of work each.
_RUN_SPECS: dict[str, dict[str, Any]] = {
    "model_check": {},
    "inference_bench": {"max_tokens": 4, "warmup": False, "prompts": ["Say hello."]},
    "lora_train": {"iters": 4, "steps_per_report": 2, "save_every": 2, "batch_size": 2},
    "memory_profile": {"steps": 1, "max_tokens": 4, "batch_size": 2, "max_seq_length": 64, "target_gb": 1.0},
    "evaluate": {"adapter": "adapter", "max_tokens": 4, "num_prompts": 1},
    "dataset": {},
    "quantize": {"bits": 8, "group_size": 32},
    "fuse": {},
    "command": {},
}


def test_every_kind_has_a_contract_spec() -> None:
    assert tuple(MINIMAL) == kinds() == JOB_KINDS
    assert set(_RUN_SPECS) == set(kinds())


@pytest.mark.parametrize("name", kinds())
def test_registry_entry_is_consistent(name: str) -> None:
    kind = job_kind(name)
    assert kind.name == name
    assert type(parse_job_spec(MINIMAL[name])) is kind.spec
    assert kind.namespaces[0] == kind.namespace
    assert all(m.split(".", 1)[0] in kind.namespaces for m in kind.metrics)
    assert set(kind.key_metrics) <= set(kind.metrics)
    assert kind.module == f"oodatcaa.jobs.{name}"


@pytest.mark.parametrize("name", kinds())
def test_spec_round_trips(name: str) -> None:
    spec = parse_job_spec(MINIMAL[name])
    again = parse_job_spec(spec.model_dump(mode="json"), source="round-trip")
    assert again == spec
    assert again.model_dump(mode="json") == spec.model_dump(mode="json")


@pytest.mark.parametrize("name", kinds())
def test_unknown_field_is_refused_by_name(name: str) -> None:
    with pytest.raises(JobSpecError) as info:
        parse_job_spec({**MINIMAL[name], "no_such_field": 1})
    assert info.value.field == "no_such_field"
    assert "unknown field 'no_such_field'" in str(info.value)


@pytest.mark.parametrize("name", kinds())
def test_every_field_refuses_a_wrong_value_by_name(name: str) -> None:
    fields = [f for f in job_kind(name).spec.model_fields if f != "kind"]
    assert fields
    for field in fields:
        with pytest.raises(JobSpecError) as info:
            parse_job_spec({**MINIMAL[name], field: {"not": "a valid value"}})
        blamed = [f for f, _message in info.value.errors]
        assert any(f == field or f.startswith((f"{field}.", f"{field}[")) for f in blamed), (field, blamed)


def test_unknown_kind_names_the_known_ones() -> None:
    with pytest.raises(UnknownJobKindError, match=r"did you mean 'lora_train'\?; known kinds: model_check, "):
        job_kind("lora_trian")


def test_importing_the_registry_imports_no_mlx() -> None:
    import subprocess

    code = ("import sys, oodatcaa.jobs.registry as r; r.job_kind('lora_train')\n"
            "print(any(m.startswith('mlx') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------- metrics: registry helpers


def test_metrics_of_is_the_union_over_kinds() -> None:
    both = registry.metrics_of(["lora_train", "evaluate", "not_a_kind"])
    assert both == set(job_kind("lora_train").metrics) | set(job_kind("evaluate").metrics)
    assert registry.metrics_of([]) == set()


def test_key_metrics_flattens_the_headline_numbers() -> None:
    summary = {"train": {"final_loss": 1.234567, "first_loss": 3, "peak_memory_gb": None, "rank": 8},
               "command": {"returncode": True}, "eval": "not a mapping"}
    assert registry.key_metrics(summary) == {"train.first_loss": 3, "train.final_loss": 1.2346}


def test_check_metric_names_suggests_the_closest_known_metric() -> None:
    problems = registry.check_metric_names(["inference.generation_tokens", "inference.prompt_tps"], ["inference_bench"])
    assert len(problems) == 1
    assert problems[0].startswith(
        "unknown metric 'inference.generation_tokens' for job kinds inference_bench; "
        "did you mean 'inference.generated_tokens'? (known: inference.prompt_tps, "
    )


def test_check_metric_names_knows_every_step_of_the_story() -> None:
    story = ["dataset", "lora_train", "evaluate"]
    assert registry.check_metric_names(["dataset.rows_ok", "train.final_loss", "eval.perplexity"], story) == []
    [problem] = registry.check_metric_names(["eval.perplexty", "train.final_loss"], story)
    assert "did you mean 'eval.perplexity'?" in problem and "job kinds dataset, lora_train, evaluate" in problem
    [problem] = registry.check_metric_names(["memory.peak_memory_gb"], story)
    assert "(known: namespaces dataset, train, eval)" in problem
    assert registry.check_metric_names(["anything.at_all"], []) == []


# ---------------------------------------------------------------- docs/jobs.md


def _docs_sections() -> dict[str, str]:
    text = DOCS.read_text(encoding="utf-8")
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def _documented_metrics(section: str) -> set[str]:
    """``namespace.key`` names documented after each "Summary namespace `ns`" of a section: the first
    column of the table that follows, or the backticked names of the paragraph (parenthesised
    remarks, which quote values such as `synthetic`, left out)."""
    out: set[str] = set()
    for match in re.finditer(r"Summary namespace `([a-z_]+)`(.*?)(?=\n\n(?!\|)|\Z)", section, flags=re.S):
        ns, rest = match.group(1), match.group(2)
        rows = [line for line in rest.splitlines() if line.startswith("| `")]
        if rows:
            cells = [row.split("|")[1] for row in rows]
        else:
            cells = [rest]
        for cell in cells:
            while re.search(r"\([^()]*\)", cell):
                cell = re.sub(r"\([^()]*\)", "", cell)
            out.update(f"{ns}.{key}" for key in re.findall(r"`([a-z0-9_]+)`", cell))
    return out


@pytest.mark.parametrize("name", kinds())
def test_docs_have_the_section_and_its_metrics(name: str) -> None:
    kind = job_kind(name)
    sections = _docs_sections()
    assert kind.docs_section in sections, f"docs/jobs.md has no '## {kind.docs_section}' section"
    documented = _documented_metrics(sections[kind.docs_section])
    assert documented == set(kind.metrics), (
        f"docs only: {sorted(documented - set(kind.metrics))}; registry only: {sorted(set(kind.metrics) - documented)}"
    )


# ---------------------------------------------------------------- run on the tiny model


@pytest.fixture(scope="module")
def contract_workdir(tiny_model: Path, tiny_adapter: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workdir with ``data/`` (train, valid and test.jsonl) and ``adapter`` (the tiny trained adapter)."""
    base = tmp_path_factory.mktemp("contract")
    data = write_tiny_dataset(base / "data")
    (data / "test.jsonl").write_text((data / "valid.jsonl").read_text())
    (base / "adapter").symlink_to(tiny_adapter, target_is_directory=True)
    return base


@pytest.mark.slow
@pytest.mark.parametrize("name", kinds())
def test_run_writes_exactly_the_registered_metrics(name: str, tiny_model: Path, contract_workdir: Path) -> None:
    kind: JobKind = job_kind(name)
    spec = {**MINIMAL[name], **_RUN_SPECS[name]}
    if "model" in kind.spec.model_fields and name != "dataset":
        spec["model"] = str(tiny_model)
    result = run_job(spec, workdir=contract_workdir, run_dir=contract_workdir / name / "run",
                     artifacts_dir=contract_workdir / name / "artifacts")
    assert result.ok, result.error
    assert set(result.summary) <= set(kind.namespaces)
    written = {f"{ns}.{key}" for ns, values in result.summary.items() for key in values}
    assert written == set(kind.metrics), (
        f"written only: {sorted(written - set(kind.metrics))}; registry only: {sorted(set(kind.metrics) - written)}"
    )
