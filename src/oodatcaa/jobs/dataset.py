"""Job kind ``dataset``: validate (and optionally split) JSONL data in mlx-lm's formats.

Two modes:

- ``data: DIR``: validates each of ``DIR/train.jsonl``, ``valid.jsonl``, ``test.jsonl`` that exists
  (at least one must), and looks for duplicates across them (leakage between splits);
- ``source: FILE`` + ``output: DIR``: validates one JSONL file and writes ``DIR/{train,valid,test}.jsonl``
  with the ``split`` ratios (default 0.8 / 0.1 / 0.1), shuffled with ``seed``. Rows with a problem
  (invalid, empty, too long) and, with ``dedupe``, exact duplicates after their first occurrence are
  left out of the splits and listed in the report; near-duplicates stay, but each group of them goes
  into one split, so that no near-copy of a training row lands in valid or test.

Every row is checked against a JSON Schema for its format (checked with ``jsonschema``, Draft 2020-12):

- ``messages`` (chat): ``{"messages": [{"role": system|user|assistant|tool, "content": str}, ...]}``
  with at least one assistant message;
- ``prompt/completion``: ``{"prompt": str, "completion": str}``;
- ``text``: ``{"text": str}``.

The format of a row is picked as mlx-lm picks it (``prompt``+``completion``, else ``messages``, else
``text``); a file's format is its first valid row's, and rows in another format are invalid (mlx-lm
reads the whole file in the first row's format). A blank line, or a row whose text is only whitespace,
is *empty*. Token lengths come from the tokenizer of ``model`` (applying the chat template as mlx-lm's
training datasets do) or, without a model, from whitespace-separated words (``token_counter`` in the
summary says which). Rows over ``max_tokens`` are *too long*.

Duplicates: *exact* = the same JSON value (keys sorted); *near* = word 3-shingle Jaccard similarity
>= ``near_duplicate_threshold`` on the normalised text (lower case, punctuation removed, whitespace
collapsed), found exactly with the prefix-filtering all-pairs algorithm (Bayardo, Ma, Srikant 2007,
"Scaling up all pairs similarity search"). The later row is reported, naming the earlier one.

Nothing is dropped silently: ``dataset_report.json`` in the run dir lists every problem with its file
and line number (the first 1000; ``problems_total`` counts all), and the statistics.

Summary namespace ``dataset``: ``rows``, ``rows_ok``, ``rows_invalid``, ``rows_empty``, ``rows_too_long``,
``rows_duplicate``, ``rows_near_duplicate``, ``cross_split_duplicates``, ``problems``, ``format``,
``rows_messages``, ``rows_prompt_completion``, ``rows_text``, ``token_counter``, ``tokens_total``,
``tokens_min``, ``tokens_mean``, ``tokens_p50``, ``tokens_p95``, ``tokens_max``, ``tokens_longest``, ``train_rows``,
``valid_rows``, ``test_rows``, ``files``, ``dataset_sha256`` (of the validated file(s), in order).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oodatcaa.jobs._common import JobContext, JobFailure, record_format, sha256_file, write_json
from oodatcaa.jobs.spec import DatasetJob

SPLITS = ("train", "valid", "test")
FORMATS = ("messages", "prompt/completion", "text")
#: Problems listed in dataset_report.json (all are counted).
MAX_REPORTED_PROBLEMS = 1000
SHINGLE_WORDS = 3

_MESSAGE = {
    "type": "object",
    "required": ["role", "content"],
    "properties": {"role": {"enum": ["system", "user", "assistant", "tool"]}, "content": {"type": "string"}},
}
#: JSON Schema of each mlx-lm format (extra keys are allowed, as mlx-lm ignores them).
SCHEMAS: dict[str, dict[str, Any]] = {
    "messages": {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["messages"],
        "properties": {
            "messages": {
                "type": "array",
                "minItems": 1,
                "items": _MESSAGE,
                "contains": {"type": "object", "properties": {"role": {"const": "assistant"}}, "required": ["role"]},
            },
            "tools": {"type": "array"},
        },
    },
    "prompt/completion": {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["prompt", "completion"],
        "properties": {"prompt": {"type": "string"}, "completion": {"type": "string"}},
    },
    "text": {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["text"],
        "properties": {"text": {"type": "string"}},
    },
}




def record_text(record: dict[str, Any], fmt: str) -> str:
    """The text of a record used for emptiness, duplicates and whitespace token counts."""
    if fmt == "messages":
        return "\n".join(f"{m.get('role')}: {m.get('content')}" for m in record["messages"])
    if fmt == "prompt/completion":
        return f"{record['prompt']}\n{record['completion']}"
    return str(record["text"])


def _content_empty(record: dict[str, Any], fmt: str) -> bool:
    if fmt == "messages":
        return all(not str(m.get("content", "")).strip() for m in record["messages"])
    if fmt == "prompt/completion":
        return not str(record["completion"]).strip()
    return not str(record["text"]).strip()


_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)


def normalize(text: str) -> str:
    """Lower case, NFKC, punctuation removed, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(_PUNCT.sub(" ", text).split())


def shingles(text: str, k: int = SHINGLE_WORDS) -> frozenset[str]:
    """Word k-shingles of the normalised text (the whole text when it has fewer than k words)."""
    words = normalize(text).split()
    if len(words) < k:
        return frozenset([" ".join(words)])
    return frozenset(" ".join(words[i : i + k]) for i in range(len(words) - k + 1))


def near_duplicate_pairs(sets: list[frozenset[str]], threshold: float) -> list[tuple[int, int, float]]:
    """All pairs (i, j, jaccard) with i < j and Jaccard(sets[i], sets[j]) >= threshold, exactly.

    Prefix filtering (Bayardo et al. 2007): with tokens ordered by ascending global frequency, two sets
    with Jaccard >= t share a token among the first ``|x| - ceil(t |x|) + 1`` tokens of each; candidates
    also pass the size filter ``|y| >= t |x|``. Empty sets never match.
    """
    freq: dict[str, int] = {}
    for s in sets:
        for tok in s:
            freq[tok] = freq.get(tok, 0) + 1
    order = sorted(range(len(sets)), key=lambda i: (len(sets[i]), i))
    index: dict[str, list[int]] = {}
    pairs: list[tuple[int, int, float]] = []
    for x in order:
        sx = sets[x]
        if not sx:
            continue
        tokens = sorted(sx, key=lambda t: (freq[t], t))
        prefix = len(tokens) - math.ceil(threshold * len(tokens) - 1e-9) + 1
        seen: set[int] = set()
        for tok in tokens[:prefix]:
            for y in index.get(tok, ()):
                if y in seen:
                    continue
                seen.add(y)
                sy = sets[y]
                if len(sy) < threshold * len(sx) - 1e-9:
                    continue
                inter = len(sx & sy)
                jac = inter / (len(sx) + len(sy) - inter)
                if jac >= threshold - 1e-12:
                    pairs.append((min(x, y), max(x, y), jac))
            index.setdefault(tok, []).append(x)
    return sorted(pairs)


@dataclass
class Row:
    """One line of a JSONL file."""

    file: str
    line: int
    raw: str
    record: dict[str, Any] | None = None
    fmt: str | None = None
    problem: str | None = None  # invalid_json | not_object | no_format | format_mismatch | schema | empty | tokenize | too_long
    detail: str = ""
    tokens: int | None = None
    duplicate_of: int | None = None  # index into the row list
    near_of: tuple[int, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


class TokenCounter:
    """Token length of a record: the model's tokenizer (chat template as in mlx-lm's datasets) or words."""

    def __init__(self, model_path: Path | None):
        self.tokenizer = None
        self.name = "whitespace"
        if model_path is not None:
            from mlx_lm.utils import load_tokenizer

            self.tokenizer = load_tokenizer(model_path)
            self.name = f"tokenizer:{model_path}"

    def count(self, record: dict[str, Any], fmt: str) -> int:
        tok = self.tokenizer
        if tok is None:
            return len(record_text(record, fmt).split()) if fmt != "messages" else sum(
                len(str(m.get("content", "")).split()) for m in record["messages"]
            )
        if fmt == "messages":
            ids = tok.apply_chat_template(record["messages"], tools=record.get("tools"), return_dict=False)
        elif fmt == "prompt/completion":
            messages = [{"role": "user", "content": record["prompt"]}, {"role": "assistant", "content": record["completion"]}]
            ids = tok.apply_chat_template(messages, tools=record.get("tools"), return_dict=False)
        else:
            ids = tok.encode(record["text"])
            if not ids or ids[-1] != tok.eos_token_id:
                ids = [*ids, tok.eos_token_id]
        return len(ids)


def read_rows(path: Path, validators: dict[str, Any]) -> list[Row]:
    """Parse and schema-check every line of ``path`` (problems recorded on the rows, nothing raised).

    Raises:
        JobFailure: the file cannot be read.
    """
    rows: list[Row] = []
    expected: str | None = None
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise JobFailure(f"cannot read {path}: {exc}") from None
    if lines and lines[-1] == "":
        lines.pop()  # the final newline
    for lineno, line in enumerate(lines, 1):
        row = Row(path.name, lineno, line)
        rows.append(row)
        if not line.strip():
            row.problem, row.detail = "empty", "blank line"
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            row.problem, row.detail = "invalid_json", str(exc)
            continue
        if not isinstance(record, dict):
            row.problem, row.detail = "not_object", f"a JSON {type(record).__name__}, not an object"
            continue
        row.record = record
        fmt = record_format(record)
        if fmt is None:
            row.problem, row.detail = "no_format", 'none of the keys "messages", "prompt"+"completion", "text"'
            continue
        row.fmt = fmt
        # the most specific problem first (the deepest path), e.g. messages/0/role before messages
        errors = sorted(validators[fmt].iter_errors(record),
                        key=lambda e: (-len(e.absolute_path), [str(p) for p in e.absolute_path]))
        if errors:
            err = errors[0]
            at = "/".join(str(p) for p in err.absolute_path) or "(record)"
            message = "needs at least one assistant message" if err.validator == "contains" else err.message
            row.problem, row.detail = "schema", f"{fmt} schema: {at}: {message}"
            continue
        if expected is None:
            expected = fmt
        elif fmt != expected:
            row.problem, row.detail = "format_mismatch", f"{fmt} row in a {expected} file (mlx-lm uses the first row's format)"
            continue
        if _content_empty(record, fmt):
            row.problem, row.detail = "empty", "only whitespace content"
    return rows


def _percentile(sorted_values: list[int], q: float) -> float:
    """Linear-interpolation percentile (numpy's default method) of already sorted values."""
    if not sorted_values:
        return float("nan")
    pos = (len(sorted_values) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def token_stats(lengths: list[int]) -> dict[str, Any]:
    """min / mean / p50 / p95 / max / total of token lengths, and a 10-bin histogram."""
    s = sorted(lengths)
    if not s:
        return {"tokens_total": 0, "tokens_min": None, "tokens_mean": None, "tokens_p50": None, "tokens_p95": None,
                "tokens_max": None, "histogram": []}
    lo, hi = s[0], s[-1]
    width = max(1, math.ceil((hi - lo + 1) / 10))
    bins: dict[int, int] = {}
    for v in s:
        b = (v - lo) // width
        bins[b] = bins.get(b, 0) + 1
    hist = [{"from": lo + b * width, "to": lo + (b + 1) * width - 1, "rows": n} for b, n in sorted(bins.items())]
    return {"tokens_total": sum(s), "tokens_min": lo, "tokens_mean": round(sum(s) / len(s), 3),
            "tokens_p50": _percentile(s, 0.5), "tokens_p95": _percentile(s, 0.95), "tokens_max": hi, "histogram": hist}


def split_counts(n: int, ratios: tuple[float, float, float]) -> tuple[int, int, int]:
    """Rows per split by the largest-remainder method (Hamilton): sums to n, each within 1 of ratio * n."""
    raw = [r * n for r in ratios]
    counts = [math.floor(x) for x in raw]
    for i in sorted(range(3), key=lambda i: raw[i] - counts[i], reverse=True)[: n - sum(counts)]:
        counts[i] += 1
    return counts[0], counts[1], counts[2]


def assign_splits(groups: list[list[int]], ratios: tuple[float, float, float], seed: int) -> dict[int, str]:
    """Shuffle the groups (``random.Random(seed)``) and fill train, then valid, then test up to their
    row targets (:func:`split_counts`); a group never straddles two splits. Returns row -> split."""
    order = list(groups)
    random.Random(seed).shuffle(order)
    targets = split_counts(sum(len(g) for g in groups), ratios)
    out: dict[int, str] = {}
    filled = [0, 0, 0]
    for group in order:
        k = next((i for i in range(3) if filled[i] < targets[i]), 2)
        for row in group:
            out[row] = SPLITS[k]
        filled[k] += len(group)
    return out


#: Problems that make a row invalid (``rows_invalid``); ``empty`` and ``too_long`` are counted apart.
INVALID_PROBLEMS = ("invalid_json", "not_object", "no_format", "format_mismatch", "schema", "tokenize")


@dataclass(frozen=True)
class _Inputs:
    """What a run reads and writes: the JSONL files to validate, in order (``data`` mode: the splits
    that exist; ``source`` mode: the one file) and, in ``source`` mode, the output directory."""

    files: list[Path]
    out_dir: Path | None  # None in ``data`` mode (validate only, nothing written but the report)


class _NearGroups:
    """Union-find over row indices (path halving): rows joined by near-duplicate pairs share a root."""

    def __init__(self, members: list[int]) -> None:
        self.parent = {i: i for i in members}

    def find(self, i: int) -> int:
        """The root of row ``i``'s group."""
        parent = self.parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def join(self, earlier: int, later: int) -> None:
        """Put ``later``'s group under ``earlier``'s root."""
        root = self.find(earlier)
        self.parent[self.find(later)] = root


def run(spec: DatasetJob, ctx: JobContext) -> dict[str, dict[str, Any]]:
    """Run a ``dataset`` job; returns ``{"dataset": {...}}`` (see the module docstring).

    Phases: inputs, rows (parse, schema, tokens), duplicates, splits (``source`` mode writes them),
    summary and report.

    Raises:
        JobFailure: missing files, an output directory that is the source's own directory with
            existing splits, or (with ``strict``) any invalid, empty or too-long row (summary kept).
    """
    import jsonschema

    validators = {fmt: jsonschema.Draft202012Validator(schema) for fmt, schema in SCHEMAS.items()}
    inputs = _inputs(spec, ctx)
    counter = TokenCounter(ctx.resolve_model(spec.model) if spec.model else None)
    ctx.log(f"token lengths by {counter.name}")
    rows = _read_and_measure(inputs.files, validators, counter, spec.max_tokens)
    groups = _mark_duplicates(rows, spec.near_duplicate_threshold)
    problems = _problems(rows)
    if inputs.out_dir is None:
        split_rows = _rows_per_split_file(rows)
    else:
        split_rows = _write_splits(spec, ctx, rows, groups, inputs.out_dir)
    stats = token_stats([r.tokens for r in rows if r.problem is None and r.tokens is not None])
    summary = _summary(rows, problems, inputs.files, stats, split_rows, counter.name)
    _write_report(ctx, rows, inputs.files, summary, stats, problems, counter.name)
    result = {"dataset": summary}
    if spec.strict:
        _check_strict(summary, problems, result)
    return result


def _inputs(spec: DatasetJob, ctx: JobContext) -> _Inputs:
    """Resolve and check ``data`` or ``source`` + ``output``; records the files' sha256 in the config.

    Raises:
        JobFailure: a missing data directory or source file, a data directory with none of the splits,
            an output that is a file.
    """
    if spec.data is not None:
        data_dir = ctx.resolve(spec.data)
        if not data_dir.is_dir():
            raise JobFailure(f"data directory does not exist: {data_dir}")
        files = [data_dir / f"{name}.jsonl" for name in SPLITS if (data_dir / f"{name}.jsonl").is_file()]
        if not files:
            raise JobFailure(f"data directory {data_dir} has none of train.jsonl, valid.jsonl, test.jsonl")
        out_dir = None
    else:
        # DatasetJob's validator guarantees source and output when data is not given
        assert spec.source is not None and spec.output is not None
        source = ctx.resolve(spec.source)
        if not source.is_file():
            raise JobFailure(f"source file does not exist: {source}")
        files = [source]
        out_dir = ctx.resolve(spec.output)
        if out_dir.exists() and not out_dir.is_dir():
            raise JobFailure(f"output is not a directory: {out_dir}")
    ctx.config_extra["dataset"] = {str(f): {"sha256": sha256_file(f)} for f in files}
    return _Inputs(files, out_dir)


def _read_and_measure(files: list[Path], validators: dict[str, Any], counter: TokenCounter,
                      max_tokens: int | None) -> list[Row]:
    """Every line of ``files`` as a :class:`Row` (:func:`read_rows`), with the token length of each row
    without a problem; a tokenizer error marks the row ``tokenize``, more than ``max_tokens`` ``too_long``.

    Raises:
        JobFailure: a file cannot be read.
    """
    rows: list[Row] = []
    for path in files:
        rows.extend(read_rows(path, validators))
    for row in rows:
        if row.problem is None and row.record is not None and row.fmt is not None:
            try:
                row.tokens = counter.count(row.record, row.fmt)
            except Exception as exc:  # noqa: BLE001 - a tokenizer / chat template error for this row
                row.problem, row.detail = "tokenize", f"{type(exc).__name__}: {exc}"
                continue
            if max_tokens is not None and row.tokens > max_tokens:
                row.problem, row.detail = "too_long", f"{row.tokens} tokens > max_tokens {max_tokens}"
    return rows


def _mark_duplicates(rows: list[Row], threshold: float) -> _NearGroups:
    """Among the rows without a problem: set ``duplicate_of`` on each exact duplicate (the same JSON
    value, keys sorted) of an earlier row, and ``near_of`` (the earlier row, its Jaccard similarity;
    the most similar one) on each other row that is a near duplicate (>= ``threshold``) of an earlier one.

    Returns the near-duplicate groups over the rows that are no exact duplicate.
    """
    good = [i for i, r in enumerate(rows) if r.problem is None]
    first_seen: dict[str, int] = {}
    for i in good:
        key = hashlib.sha256(json.dumps(rows[i].record, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
        if key in first_seen:
            rows[i].duplicate_of = first_seen[key]
        else:
            first_seen[key] = i
    unique = [i for i in good if rows[i].duplicate_of is None]
    # rows without a problem have their record and format
    sets = [shingles(record_text(rows[i].record, rows[i].fmt)) for i in unique]  # type: ignore[arg-type]
    groups = _NearGroups(unique)
    for a, b, jac in near_duplicate_pairs(sets, threshold):
        ia, ib = unique[a], unique[b]
        later = rows[ib]
        if later.near_of is None or jac > later.near_of[1]:
            later.near_of = (ia, jac)
        groups.join(ia, ib)
    return groups


def _problems(rows: list[Row]) -> list[dict[str, Any]]:
    """One entry per row with a problem or a duplicate, in file and line order: ``{"file", "line",
    "problem", "detail"}``, or ``"of"`` (``file:line`` of the earlier row) for duplicates, plus
    ``"similarity"`` (Jaccard, 4 decimals) for near duplicates."""
    problems: list[dict[str, Any]] = []
    for row in rows:
        if row.problem is not None:
            problems.append({"file": row.file, "line": row.line, "problem": row.problem, "detail": row.detail})
        elif row.duplicate_of is not None:
            problems.append({"file": row.file, "line": row.line, "problem": "duplicate", "of": rows[row.duplicate_of].where})
        elif row.near_of is not None:
            problems.append({"file": row.file, "line": row.line, "problem": "near_duplicate", "of": rows[row.near_of[0]].where,
                             "similarity": round(row.near_of[1], 4)})
    return problems


def _rows_per_split_file(rows: list[Row]) -> dict[str, int]:
    """``data`` mode: rows without a problem in each of train / valid / test.jsonl (duplicates included)."""
    split_rows = {name: 0 for name in SPLITS}
    for r in rows:
        if r.problem is None:
            split_rows[r.file.removesuffix(".jsonl")] += 1
    return split_rows


def _write_splits(spec: DatasetJob, ctx: JobContext, rows: list[Row], groups: _NearGroups, out_dir: Path) -> dict[str, int]:
    """``source`` mode: write ``out_dir/{train,valid,test}.jsonl`` and return the rows in each.

    Rows with a problem and (with ``dedupe``) exact duplicates are left out; an exact duplicate that is
    kept goes with its original's near-duplicate group, and each group into one split
    (:func:`assign_splits`); each split is shuffled with ``random.Random(f"{seed}-{name}")``. A split
    with no rows has no file (an old one is removed). Records the written files' sha256 in the config.
    """
    keep = [i for i, r in enumerate(rows) if r.problem is None and not (spec.dedupe and r.duplicate_of is not None)]
    clusters: dict[int, list[int]] = {}
    for i in keep:
        original = rows[i].duplicate_of
        root = groups.find(i if original is None else original)
        clusters.setdefault(root, []).append(i)
    ratios = (spec.split.train, spec.split.valid, spec.split.test)
    assignment = assign_splits(sorted(clusters.values()), ratios, spec.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    split_rows = {name: 0 for name in SPLITS}
    for name in SPLITS:
        chosen = [i for i in keep if assignment[i] == name]
        random.Random(f"{spec.seed}-{name}").shuffle(chosen)
        split_rows[name] = len(chosen)
        target = out_dir / f"{name}.jsonl"
        if chosen:
            target.write_text("".join(rows[i].raw.strip() + "\n" for i in chosen), encoding="utf-8")
        else:
            target.unlink(missing_ok=True)
    ctx.config_extra["dataset_output"] = {
        str(out_dir / f"{n}.jsonl"): sha256_file(out_dir / f"{n}.jsonl") for n in SPLITS if split_rows[n]
    }
    ctx.log(f"wrote {split_rows['train']} / {split_rows['valid']} / {split_rows['test']} rows to {out_dir}")
    return split_rows


def _summary(rows: list[Row], problems: list[dict[str, Any]], files: list[Path], stats: dict[str, Any],
             split_rows: dict[str, int], token_counter: str) -> dict[str, Any]:
    """The ``dataset`` namespace of the summary (the module docstring lists every key); ``stats`` is
    :func:`token_stats` of the rows without a problem."""

    def count(pred: Callable[[Row], bool]) -> int:
        return sum(1 for r in rows if pred(r))

    ok_rows = [r for r in rows if r.problem is None]
    formats = {fmt: sum(1 for r in ok_rows if r.fmt == fmt) for fmt in FORMATS}
    used = [fmt for fmt, n in formats.items() if n]
    cross_dup = count(lambda r: r.duplicate_of is not None and rows[r.duplicate_of].file != r.file)
    cross_near = count(lambda r: r.duplicate_of is None and r.near_of is not None and rows[r.near_of[0]].file != r.file)
    digest = hashlib.sha256("".join(sha256_file(f) for f in files).encode()).hexdigest()
    return {
        "rows": len(rows),
        "rows_ok": len(ok_rows),
        "rows_invalid": count(lambda r: r.problem in INVALID_PROBLEMS),
        "rows_empty": count(lambda r: r.problem == "empty"),
        "rows_too_long": count(lambda r: r.problem == "too_long"),
        # the longest row counting the too-long ones: the max_tokens that would keep every row
        "tokens_longest": max((r.tokens for r in rows if r.problem in (None, "too_long") and r.tokens is not None),
                              default=None),
        "rows_duplicate": count(lambda r: r.problem is None and r.duplicate_of is not None),
        "rows_near_duplicate": count(lambda r: r.problem is None and r.duplicate_of is None and r.near_of is not None),
        "cross_split_duplicates": cross_dup + cross_near,
        "problems": len(problems),
        "format": used[0] if len(used) == 1 else ("mixed" if used else "none"),
        "rows_messages": formats["messages"],
        "rows_prompt_completion": formats["prompt/completion"],
        "rows_text": formats["text"],
        "token_counter": token_counter,
        **{k: v for k, v in stats.items() if k != "histogram"},
        "train_rows": split_rows["train"],
        "valid_rows": split_rows["valid"],
        "test_rows": split_rows["test"],
        "files": len(files),
        "dataset_sha256": digest,
    }


def _write_report(ctx: JobContext, rows: list[Row], files: list[Path], summary: dict[str, Any], stats: dict[str, Any],
                  problems: list[dict[str, Any]], token_counter: str) -> None:
    """Write ``dataset_report.json`` (summary, schemas, histogram, per-file statistics and the first
    :data:`MAX_REPORTED_PROBLEMS` problems) and log the first 20 problems."""
    by_file = {}
    for path in files:
        mine = [r for r in rows if r.file == path.name]
        by_file[path.name] = {
            "rows": len(mine), "rows_ok": sum(1 for r in mine if r.problem is None),
            **token_stats([r.tokens for r in mine if r.problem is None and r.tokens is not None]),
        }
    write_json(ctx.run_dir / "dataset_report.json", {
        "summary": summary,
        "schemas": SCHEMAS,
        "token_counter": token_counter,
        "histogram": stats["histogram"],
        "files": by_file,
        "problems_total": len(problems),
        "problems": problems[:MAX_REPORTED_PROBLEMS],
    })
    for p in problems[:20]:
        ctx.log(f"{p['file']}:{p['line']}: {p['problem']}: {p.get('detail') or 'of ' + str(p.get('of'))}")


def _check_strict(summary: dict[str, Any], problems: list[dict[str, Any]], result: dict[str, dict[str, Any]]) -> None:
    """``strict``: raise for any invalid, empty or too-long row (duplicates are allowed).

    Raises:
        JobFailure: naming the count and the first such row, with ``result`` kept as the summary and
            ``details`` ``rows_invalid``, ``rows_empty``, ``rows_too_long``, ``tokens_longest`` (the Refiner's
            dataset policy raises ``max_tokens`` from them).
    """
    bad = summary["rows_invalid"] + summary["rows_empty"] + summary["rows_too_long"]
    if bad:
        first = next(p for p in problems if p["problem"] not in ("duplicate", "near_duplicate"))
        raise JobFailure(
            f"{bad} row(s) invalid, empty or too long (strict), first: {first['file']} line {first['line']}: "
            f"{first['problem']}: {first.get('detail', '')}", summary=result,
            details={key: summary.get(key) for key in ("rows_invalid", "rows_empty", "rows_too_long", "tokens_longest")},
        )
