"""The dataset job: schemas, problems with line numbers, duplicates, near-duplicates, splits, statistics."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import jsonschema
import pytest

from conftest import TINY_QA, chat_record, write_tiny_dataset
from oodatcaa.jobs import dataset as ds
from oodatcaa.jobs.runner import JobResult, run_job


def _run(spec: dict, base: Path, name: str = "job") -> JobResult:
    return run_job(spec, workdir=base, run_dir=base / name / "run", artifacts_dir=base / name / "artifacts")


def _report(result: JobResult) -> dict:
    return json.loads((result.run_dir / "dataset_report.json").read_text())


def _jaccard(a: frozenset, b: frozenset) -> float:
    return len(a & b) / len(a | b)


# ---------------------------------------------------------------- pure functions


def test_near_duplicate_pairs_match_brute_force() -> None:
    texts = [
        "the cat sat on the mat today", "the cat sat on the mat today!", "The cat sat on a mat today",
        "a completely different sentence here", "the dog sat on the mat today", "", "one two",
        "one two", "the cat sat on the mat", "the cat sat on the mat today and tomorrow too",
    ]
    sets = [ds.shingles(t) if t else frozenset() for t in texts]
    for threshold in (0.3, 0.5, 0.8, 1.0):
        fast = {(a, b) for a, b, _ in ds.near_duplicate_pairs(sets, threshold)}
        brute = {(a, b) for a, b in itertools.combinations(range(len(sets)), 2)
                 if sets[a] and sets[b] and _jaccard(sets[a], sets[b]) >= threshold}
        assert fast == brute, threshold
    assert (0, 1) in {(a, b) for a, b, _ in ds.near_duplicate_pairs(sets, 1.0)}  # punctuation and case ignored


def test_split_counts_and_group_assignment() -> None:
    assert ds.split_counts(10, (0.8, 0.1, 0.1)) == (8, 1, 1)
    assert ds.split_counts(7, (0.8, 0.1, 0.1)) == (5, 1, 1)  # largest remainders: 0.7, 0.7 > 0.6
    assert sum(ds.split_counts(1001, (0.7, 0.2, 0.1))) == 1001
    groups = [[i] for i in range(20)] + [[20, 21, 22]]
    a = ds.assign_splits(groups, (0.8, 0.1, 0.1), seed=3)
    assert a == ds.assign_splits(groups, (0.8, 0.1, 0.1), seed=3)  # seeded
    assert a != ds.assign_splits(groups, (0.8, 0.1, 0.1), seed=4)
    assert len({a[20], a[21], a[22]}) == 1  # a group is never split
    assert sorted(a) == list(range(23))


def test_schemas_are_valid_json_schemas() -> None:
    for schema in ds.SCHEMAS.values():
        jsonschema.Draft202012Validator.check_schema(schema)


def test_token_stats() -> None:
    stats = ds.token_stats([1, 2, 3, 4, 100])
    assert (stats["tokens_min"], stats["tokens_max"], stats["tokens_p50"], stats["tokens_total"]) == (1, 100, 3, 110)
    assert stats["tokens_p95"] == pytest.approx(80.8)  # numpy's linear interpolation
    assert sum(b["rows"] for b in stats["histogram"]) == 5


# ---------------------------------------------------------------- the job


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_build_splits_reports_every_problem_with_its_line(tmp_path: Path) -> None:
    good = [json.dumps(chat_record(f"Question {i} about the topic number {i * 7}?", f"Answer {i} is {i * 13}."))
            for i in range(40)]
    near = json.dumps(chat_record("question 5 about the TOPIC number 35", "Answer 5 is 65!"))
    lines = good + [
        good[2],                                                       # 41 exact duplicate of line 3
        near,                                                          # 42 near-duplicate of line 6
        "",                                                            # 43 blank
        "{not json",                                                   # 44
        json.dumps({"prompt": "p", "completion": "c"}),                # 45 other format
        json.dumps({"messages": [{"role": "user", "content": "hi"}]}), # 46 no assistant message
        json.dumps({"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": ""}]}),  # 47 empty
        json.dumps([1, 2]),                                            # 48
        json.dumps({"foo": 1}),                                        # 49
        json.dumps({"messages": [{"role": "robot", "content": "x"}]}), # 50 bad role
        json.dumps(chat_record("long " * 50, "answer")),               # 51 too long
    ]
    _write(tmp_path / "raw.jsonl", lines)
    result = _run({"kind": "dataset", "source": "raw.jsonl", "output": "data/built", "max_tokens": 40, "seed": 1}, tmp_path)
    assert result.ok, result.error
    d = result.summary["dataset"]
    assert d["rows"] == 51 and d["rows_ok"] == 42
    assert (d["rows_invalid"], d["rows_empty"], d["rows_too_long"]) == (6, 2, 1)
    assert (d["rows_duplicate"], d["rows_near_duplicate"]) == (1, 1)
    assert d["format"] == "messages" and d["rows_messages"] == 42 and d["token_counter"] == "whitespace"
    assert (d["train_rows"], d["valid_rows"], d["test_rows"]) == (33, 4, 4)  # 41 kept (duplicate left out)
    report = _report(result)
    by_line = {p["line"]: p for p in report["problems"]}
    assert report["problems_total"] == d["problems"] == 11
    assert by_line[41] == {"file": "raw.jsonl", "line": 41, "problem": "duplicate", "of": "raw.jsonl:3"}
    assert by_line[42]["problem"] == "near_duplicate" and by_line[42]["of"] == "raw.jsonl:6"
    assert [by_line[n]["problem"] for n in range(43, 52)] == [
        "empty", "invalid_json", "format_mismatch", "schema", "empty", "not_object", "no_format", "schema", "too_long"]
    assert "at least one assistant message" in by_line[46]["detail"]
    assert "'robot' is not one of" in by_line[50]["detail"]
    out = tmp_path / "data" / "built"
    written = {name: (out / f"{name}.jsonl").read_text().splitlines() for name in ("train", "valid", "test")}
    assert sum(len(v) for v in written.values()) == 41
    assert all(json.loads(line) for v in written.values() for line in v)
    # the near-duplicate pair lands in one split (no leakage)
    with_pair = [name for name, v in written.items() if near in v or good[5] in v]
    assert len(with_pair) == 1
    # deterministic for a seed
    again = _run({"kind": "dataset", "source": "raw.jsonl", "output": "data/again", "max_tokens": 40, "seed": 1},
                 tmp_path, "again")
    assert again.ok
    for name in ("train", "valid", "test"):
        assert (tmp_path / "data" / "again" / f"{name}.jsonl").read_text() == (out / f"{name}.jsonl").read_text()
    # the built splits train
    assert json.loads((result.run_dir / "config.json").read_text())["dataset_output"]

    strict = _run({"kind": "dataset", "source": "raw.jsonl", "output": "data/s", "strict": True}, tmp_path, "strict")
    assert not strict.ok and "line 43: empty" in (strict.error or "") and strict.summary["dataset"]["rows_empty"] == 2


def test_validate_a_data_dir_with_a_tokenizer(tiny_model: Path, tmp_path: Path) -> None:
    write_tiny_dataset(tmp_path / "data", train_repeats=1)  # valid.jsonl repeats train.jsonl: leakage
    result = _run({"kind": "dataset", "data": "data", "model": str(tiny_model)}, tmp_path)
    assert result.ok, result.error
    d = result.summary["dataset"]
    assert d["token_counter"] == f"tokenizer:{tiny_model}"
    assert (d["train_rows"], d["valid_rows"], d["test_rows"], d["files"]) == (8, 8, 0, 2)
    assert d["rows_duplicate"] == 8 and d["cross_split_duplicates"] == 8
    assert d["tokens_min"] > 10 and d["tokens_max"] >= d["tokens_p95"] >= d["tokens_p50"] >= d["tokens_min"]
    report = _report(result)
    assert set(report["files"]) == {"train.jsonl", "valid.jsonl"}
    assert report["problems"][0] == {"file": "valid.jsonl", "line": 1, "problem": "duplicate", "of": "train.jsonl:1"}
    # the tokenizer's count matches mlx-lm's training tokenization (chat template applied)
    from mlx_lm.utils import load_tokenizer

    tok = load_tokenizer(tiny_model)
    q, a = TINY_QA[0]
    expected = len(tok.apply_chat_template(chat_record(q, a)["messages"], return_dict=False))
    assert ds.TokenCounter(tiny_model).count(chat_record(q, a), "messages") == expected


def test_dataset_input_errors(tmp_path: Path) -> None:
    result = _run({"kind": "dataset", "data": "nowhere"}, tmp_path, "a")
    assert not result.ok and "data directory does not exist" in (result.error or "")
    (tmp_path / "empty").mkdir()
    result = _run({"kind": "dataset", "data": "empty"}, tmp_path, "b")
    assert not result.ok and "none of train.jsonl" in (result.error or "")
    result = _run({"kind": "dataset", "source": "missing.jsonl", "output": "o"}, tmp_path, "c")
    assert not result.ok and "source file does not exist" in (result.error or "")
