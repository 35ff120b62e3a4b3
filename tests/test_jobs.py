"""Jobs end to end: every kind through run_job in a real child process, on the tiny model.

No timing assertions: speeds are only checked to be positive numbers.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import write_tiny_dataset
from oodatcaa.jobs import cpu_fastpath, runner
from oodatcaa.jobs._common import DivergedError, JobFailure, OutOfMemoryJobError
from oodatcaa.jobs.runner import JobResult, run_job
from support import wait_dead

MODEL_KEYS = {
    "parameters_total", "parameters_millions", "dtype", "quantization", "load_seconds", "tokenizer_roundtrip",
    "chat_template", "device", "blas", "mlx_version", "mlx_lm_version",
}
INFERENCE_KEYS = {"prompt_tps", "generation_tps", "time_to_first_token_s", "peak_memory_gb", "generated_tokens", "trials"}
TRAIN_KEYS = {
    "first_loss", "final_loss", "first_val_loss", "final_val_loss", "tokens_per_second", "iterations_per_second",
    "peak_memory_gb", "iters", "trained_tokens", "train_seconds", "rank", "alpha", "scale", "batch_size",
    "grad_accumulation_steps", "grad_checkpoint",
}


def _run(spec: dict, base: Path, name: str = "job", **kwargs) -> JobResult:
    return run_job(spec, workdir=base, run_dir=base / name / "run", artifacts_dir=base / name / "artifacts", **kwargs)


def _metrics(result: JobResult) -> list[dict]:
    path = result.run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []




# ---------------------------------------------------------------- model_check


def test_model_check_on_tiny_model(tiny_model: Path, tmp_path: Path) -> None:
    result = _run({"kind": "model_check", "model": str(tiny_model)}, tmp_path)
    assert result.ok, result.error
    assert result.returncode == 0 and result.error is None
    model = result.summary["model"]
    assert MODEL_KEYS <= set(model)
    assert 300_000 < model["parameters_total"] < 500_000
    assert model["parameters_millions"] == pytest.approx(model["parameters_total"] / 1e6, rel=1e-3)
    assert model["dtype"] == "float32" and model["quantization"] == "none"
    assert model["tokenizer_roundtrip"] == 1 and model["chat_template"] == 1 and model["forward_ok"] == 1
    assert model["device"] == "cpu"
    if cpu_fastpath.fastpath_env():
        assert model["blas"].startswith("openblas"), model["blas"]
    assert result.max_rss_gb is not None and result.max_rss_gb > 0
    config = json.loads((result.run_dir / "config.json").read_text())
    assert config["spec"]["model"] == str(tiny_model)
    assert config["versions"]["mlx-lm"] and config["env"]["MLX_DISABLE_COMPILE"] == "1"
    assert config["env"]["HF_HUB_OFFLINE"] == "1"
    assert (result.run_dir / "job.log").read_text().count("job finished ok") == 1
    assert "\x1b[" not in (result.run_dir / "job.log").read_text()


def test_default_model_comes_from_runner_argument(tiny_model: Path, tmp_path: Path) -> None:
    result = _run({"kind": "model_check"}, tmp_path, default_model=str(tiny_model))
    assert result.ok, result.error
    config = json.loads((result.run_dir / "config.json").read_text())
    assert config["model_path"] == str(tiny_model)


def test_missing_model_path_fails_clearly(tmp_path: Path) -> None:
    result = _run({"kind": "model_check", "model": "models/nowhere"}, tmp_path)
    assert not result.ok
    assert result.error == f"model path does not exist: {tmp_path / 'models' / 'nowhere'}"
    assert result.summary == {}
    assert result.returncode == 1


def test_not_a_model_dir_fails_clearly(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = _run({"kind": "inference_bench", "model": "empty"}, tmp_path)
    assert not result.ok and "no config.json" in (result.error or "")


# ---------------------------------------------------------------- inference_bench


def test_inference_bench_on_tiny_model(tiny_model: Path, tmp_path: Path) -> None:
    events: list[dict] = []
    spec = {"kind": "inference_bench", "model": str(tiny_model), "prompts": ["Hello", "What is the capital of France?"],
            "max_tokens": 12, "trials": 3}
    result = _run(spec, tmp_path, on_progress=events.append)
    assert result.ok, result.error
    inference = result.summary["inference"]
    assert INFERENCE_KEYS <= set(inference)
    assert inference["trials"] == 3
    assert inference["prompt_tps"] > 0 and inference["generation_tps"] > 0
    assert inference["time_to_first_token_s"] > 0 and inference["peak_memory_gb"] > 0
    assert 2 <= inference["generated_tokens"] <= 24
    generations = [e for e in events if e["event"] == "generation"]
    assert len(generations) == 6
    assert {(e["trial"], e["prompt_index"]) for e in generations} == {(t, p) for t in range(3) for p in range(2)}
    outputs = json.loads((result.run_dir / "outputs.json").read_text())["outputs"]
    assert [o["prompt"] for o in outputs] == spec["prompts"]
    assert all(isinstance(o["output"], str) for o in outputs)


def test_inference_bench_missing_adapter(tiny_model: Path, tmp_path: Path) -> None:
    result = _run({"kind": "inference_bench", "model": str(tiny_model), "adapter": "no/adapters"}, tmp_path)
    assert not result.ok and result.error == f"adapter path does not exist: {tmp_path / 'no' / 'adapters'}"


# ---------------------------------------------------------------- lora_train


@pytest.fixture(scope="module")
def trained(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[JobResult, list[dict], Path]:
    """One 50-iteration LoRA run on the learnable tiny dataset, shared by the tests below."""
    base = tmp_path_factory.mktemp("lora")
    write_tiny_dataset(base / "data")
    events: list[dict] = []
    spec = {
        "kind": "lora_train", "model": str(tiny_model), "data": "data", "iters": 50, "batch_size": 4,
        "learning_rate": 1e-3, "steps_per_report": 5, "steps_per_eval": 25, "lora": {"rank": 8, "alpha": 16},
    }
    return _run(spec, base, "lora", on_progress=events.append), events, base


@pytest.mark.slow
def test_lora_loss_goes_down(trained: tuple[JobResult, list[dict], Path]) -> None:
    result, _, _ = trained
    assert result.ok, result.error
    train = result.summary["train"]
    assert TRAIN_KEYS <= set(train)
    assert train["final_loss"] < train["first_loss"] - 1.0
    assert train["final_val_loss"] < train["first_val_loss"] / 2
    assert train["iters"] == 50 and train["rank"] == 8 and train["alpha"] == 16 and train["scale"] == 2.0
    assert train["grad_checkpoint"] == 0 and train["num_layers"] == 2
    assert train["iterations_per_second"] > 0 and train["tokens_per_second"] > 0 and train["trained_tokens"] > 0
    assert train["peak_memory_gb"] > 0


@pytest.mark.slow
def test_lora_reports_progress_and_metrics(trained: tuple[JobResult, list[dict], Path]) -> None:
    result, events, _ = trained
    metrics = _metrics(result)
    assert events == metrics  # on_progress saw every record, in order
    train_events = [m for m in metrics if m["event"] == "train"]
    val_events = [m for m in metrics if m["event"] == "val"]
    assert [m["iteration"] for m in train_events] == list(range(5, 51, 5))
    assert [m["iteration"] for m in val_events] == [0, 25, 50]  # start, every steps_per_eval, end
    for m in train_events:
        assert {"train_loss", "learning_rate", "tokens_per_second", "iterations_per_second", "peak_memory_gb"} <= set(m)
    assert result.summary["train"]["first_loss"] == train_events[0]["train_loss"]
    assert result.summary["train"]["final_val_loss"] == val_events[-1]["val_loss"]
    config = json.loads((result.run_dir / "config.json").read_text())
    data = Path(config["dataset"]["dir"])
    assert config["dataset"]["train.jsonl"]["sha256"] == hashlib.sha256((data / "train.jsonl").read_bytes()).hexdigest()
    assert config["seed"] == 0


@pytest.mark.slow
def test_lora_artifacts_hashed_and_loadable(trained: tuple[JobResult, list[dict], Path], tiny_model: Path) -> None:
    result, _, base = trained
    artifacts_dir = base / "lora" / "artifacts"
    adapter_files = {rel for rel in result.artifacts if rel.startswith("adapters/")}
    assert adapter_files == {"adapters/adapter_config.json", "adapters/adapters.safetensors"}
    assert "checkpoints/completed.json" in result.artifacts
    for rel, digest in result.artifacts.items():
        assert hashlib.sha256((artifacts_dir / rel).read_bytes()).hexdigest() == digest
    adapter_config = json.loads((artifacts_dir / "adapters" / "adapter_config.json").read_text())
    assert adapter_config["fine_tune_type"] == "lora"
    assert adapter_config["lora_parameters"] == {"rank": 8, "scale": 2.0, "dropout": 0.0}
    # mlx_lm.load(adapter_path=...) in a job process: the inference bench with the trained adapter.
    bench = run_job(
        {"kind": "inference_bench", "model": str(tiny_model), "adapter": str(artifacts_dir / "adapters"),
         "prompts": ["What color is the sky?"], "max_tokens": 12, "warmup": False},
        workdir=base, run_dir=base / "bench" / "run", artifacts_dir=base / "bench" / "artifacts",
    )
    assert bench.ok, bench.error
    outputs = json.loads((bench.run_dir / "outputs.json").read_text())
    assert outputs["adapter"] == str(artifacts_dir / "adapters")


def test_lora_data_problems_fail_clearly(tiny_model: Path, tmp_path: Path) -> None:
    base = {"kind": "lora_train", "model": str(tiny_model), "iters": 2}
    result = _run({**base, "data": "nodata"}, tmp_path, "a")
    assert not result.ok and result.error == f"data directory does not exist: {tmp_path / 'nodata'}"

    data = write_tiny_dataset(tmp_path / "data")
    (data / "valid.jsonl").unlink()
    result = _run({**base, "data": "data"}, tmp_path, "b")
    assert not result.ok and "has no valid.jsonl" in (result.error or "")

    write_tiny_dataset(data)
    with open(data / "train.jsonl", "a") as fh:
        fh.write("{not json\n")
    result = _run({**base, "data": "data"}, tmp_path, "c")
    assert not result.ok and "train.jsonl line 33 is not valid JSON" in (result.error or "")

    write_tiny_dataset(data)
    result = _run({**base, "data": "data", "batch_size": 64}, tmp_path, "d")
    assert not result.ok and "fewer than batch_size=64" in (result.error or "")


@pytest.mark.slow  # seconds of real MLX / agent work: `make test` runs it
def test_lora_too_many_layers(tiny_model: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    spec = {"kind": "lora_train", "model": str(tiny_model), "data": str(tiny_dataset), "iters": 2, "num_layers": 5}
    result = _run(spec, tmp_path)
    assert not result.ok and "num_layers=5 but the model has only 2 layers" in (result.error or "")


def test_cancel_stops_an_mlx_job(tiny_model: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    cancel = threading.Event()

    def on_progress(record: dict) -> None:
        if record["event"] == "train":
            cancel.set()

    spec = {"kind": "lora_train", "model": str(tiny_model), "data": str(tiny_dataset), "iters": 100000, "steps_per_report": 2}
    result = _run(spec, tmp_path, cancel=cancel, on_progress=on_progress)
    assert not result.ok and result.cancelled and result.error == "job cancelled"
    assert result.returncode is not None and result.returncode < 0


# ---------------------------------------------------------------- command


def test_command_ok(tmp_path: Path) -> None:
    result = _run({"kind": "command", "run": "echo out-line; echo err-line >&2; pwd"}, tmp_path)
    assert result.ok, result.error
    command = result.summary["command"]
    assert command["returncode"] == 0 and command["duration_s"] >= 0 and command["timed_out"] == 0
    assert "out-line" in command["output_tail"] and "err-line" in command["output_tail"]
    assert str(tmp_path) in command["output_tail"]  # runs in the workdir
    assert "out-line" in (result.run_dir / "job.log").read_text()


def test_command_argv_and_environment(tmp_path: Path) -> None:
    code = "import os; print(os.environ['MLX_DISABLE_COMPILE'], os.environ['HF_HUB_OFFLINE'])"
    result = _run({"kind": "command", "run": [sys.executable, "-c", code]}, tmp_path)
    assert result.ok, result.error
    assert "1 1" in result.summary["command"]["output_tail"]


def test_command_failure(tmp_path: Path) -> None:
    result = _run({"kind": "command", "run": "echo about to fail; exit 3"}, tmp_path)
    assert not result.ok
    assert result.summary["command"]["returncode"] == 3
    assert result.error == "command exited with status 3: about to fail"


def test_command_timeout(tmp_path: Path) -> None:
    result = _run({"kind": "command", "run": "sleep 30", "timeout_s": 0.5}, tmp_path)
    assert not result.ok and result.error == "command timed out after 0.5 s"
    assert result.summary["command"]["timed_out"] == 1


def test_runner_timeout(tmp_path: Path) -> None:
    result = _run({"kind": "command", "run": "sleep 30"}, tmp_path, timeout_s=0.5)
    assert not result.ok and result.timed_out
    assert result.error == "job timed out after 0.5 s"


def test_cancel_stops_command_and_its_children(tmp_path: Path) -> None:
    cancel = threading.Event()
    script = "echo $$ > shell.pid; sleep 60 & echo $! > sleep.pid; wait"
    box: dict[str, JobResult] = {}
    thread = threading.Thread(target=lambda: box.update(r=_run({"kind": "command", "run": script}, tmp_path, cancel=cancel)))
    thread.start()
    deadline = time.monotonic() + 30
    while not (tmp_path / "sleep.pid").exists() or not (tmp_path / "sleep.pid").read_text().strip():
        assert time.monotonic() < deadline, "command never started"
        time.sleep(0.05)
    shell_pid = int((tmp_path / "shell.pid").read_text())
    sleep_pid = int((tmp_path / "sleep.pid").read_text())
    cancel.set()
    thread.join(60)
    result = box["r"]
    assert not result.ok and result.cancelled and result.error == "job cancelled"
    assert wait_dead(shell_pid) and wait_dead(sleep_pid)


def test_crash_is_reported_with_log_tail(tmp_path: Path) -> None:
    result = _run({"kind": "command", "run": "kill -KILL $PPID; sleep 5"}, tmp_path)
    assert not result.ok
    assert result.returncode == -9
    assert "SIGKILL" in (result.error or "") and "command job started" in (result.error or "")


def test_exit_zero_without_summary_is_not_ok(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = tmp_path / "job" / "run"
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text('{"stale": {"x": 1}}')  # from an earlier attempt: must not count
    monkeypatch.setattr(runner, "_worker_command", lambda jobfile: [sys.executable, "-c", "print('did nothing')"])
    result = _run({"kind": "command", "run": "true"}, tmp_path)
    assert not result.ok and result.returncode == 0 and result.summary == {}
    assert "wrote no summary.json" in (result.error or "") and "did nothing" in (result.error or "")


# ---------------------------------------------------------------- typed failures (error.json)


def _run_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, raise_: BaseException) -> tuple[int, dict]:
    """Run a command job through the worker in this process, its ``run`` replaced by one raising ``raise_``
    (a command job: the worker neither re-executes itself nor wraps stdout for it)."""
    from oodatcaa.jobs import command, worker

    def failing_run(spec: object, ctx: object) -> dict:
        raise raise_

    monkeypatch.setattr(command, "run", failing_run)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    jobfile = run_dir / "job.json"
    jobfile.write_text(json.dumps({"spec": {"kind": "command", "run": "true"}, "workdir": str(tmp_path),
                                   "run_dir": str(run_dir), "artifacts_dir": str(tmp_path / "artifacts")}))
    status = worker.run_jobfile(jobfile)
    return status, json.loads((run_dir / "error.json").read_text())


def test_diverged_is_typed_whatever_the_message_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import random
    import string

    message = "".join(random.choice(string.ascii_letters + " ") for _ in range(40))
    status, error = _run_in_process(tmp_path, monkeypatch,
                                    DivergedError(message, iteration=7, loss=float("nan"), initial_loss=2.5))
    assert status == 1
    assert error == {"error": message, "type": "job_failure", "failure_kind": "diverged",
                     "details": {"iteration": 7, "loss": None, "initial_loss": 2.5}}


def _job_failure_from_memory_error() -> BaseException:
    """A loader's JobFailure wrapping the MemoryError it caught (``raise ... from exc``)."""
    try:
        try:
            raise MemoryError()
        except MemoryError as exc:
            raise JobFailure("could not load model /m: MemoryError") from exc
    except JobFailure as wrapped:
        return wrapped


# (error.json type, the exception the job raises, failure_kind, details)
FAILURES = {
    "job-failure": ("job_failure", lambda: JobFailure("data directory does not exist: /x"), "job_error", {}),
    "job-failure-details": ("job_failure", lambda: JobFailure("x", details={"file": "train.jsonl"}), "job_error",
                            {"file": "train.jsonl"}),
    "oom-job-error": ("job_failure", lambda: OutOfMemoryJobError("needs 9 GB", details={"requested_gb": 9}), "oom",
                      {"requested_gb": 9}),
    "job-failure-from-memory-error": ("job_failure", _job_failure_from_memory_error, "oom", {"exception": "MemoryError"}),
    "memory-error": ("exception", MemoryError, "oom", {"exception": "MemoryError"}),
    "mlx-malloc": ("exception", lambda: RuntimeError("[malloc] Unable to allocate 68719476736 bytes."), "oom",
                   {"exception": "RuntimeError"}),
    "bad-alloc": ("exception", lambda: RuntimeError("std::bad_alloc"), "oom", {"exception": "RuntimeError"}),
    "other": ("exception", lambda: ValueError("shapes (2,3) and (4,5) cannot be broadcast"), "job_error",
              {"exception": "ValueError"}),
    "interrupt": ("exception", KeyboardInterrupt, "job_error", {"exception": "KeyboardInterrupt"}),
}


@pytest.mark.parametrize("case", FAILURES)
def test_error_json_failure_kinds(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    type_, make, kind, details = FAILURES[case]
    status, error = _run_in_process(tmp_path, monkeypatch, make())
    assert status == 1
    assert (error["type"], error["failure_kind"], error["details"]) == (type_, kind, details)
    assert error["error"]


def test_unreadable_job_file_is_a_job_error(tmp_path: Path) -> None:
    from oodatcaa.jobs import worker

    jobfile = tmp_path / "job.json"
    jobfile.write_text("{not json")
    assert worker.run_jobfile(jobfile) == 2
    error = json.loads((tmp_path / "error.json").read_text())
    assert error["type"] == "job_file" and error["failure_kind"] == "job_error"
    assert error["details"] == {"exception": "JSONDecodeError"} and "cannot read job file" in error["error"]


def test_failed_job_reports_its_failure_kind_end_to_end(tmp_path: Path) -> None:
    result = _run({"kind": "model_check", "model": str(tmp_path / "nope")}, tmp_path)
    assert not result.ok
    error = json.loads((result.run_dir / "error.json").read_text())
    assert error["failure_kind"] == "job_error" and error["type"] == "job_failure"
    assert error["error"].startswith("model path does not exist")


# ---------------------------------------------------------------- cpu fast path


def test_fastpath_switch_and_symbol_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert cpu_fastpath.fastpath_env({"OODATCAA_FASTPATH": "0"}) == {}
    good = tmp_path / "libgood.so"
    good.write_bytes(b"\x7fELF....\x00cblas_sgemm\x00sgemm_\x00")
    prefixed = tmp_path / "libprefixed.so"
    prefixed.write_bytes(b"\x7fELF....\x00scipy_cblas_sgemm\x00")
    assert cpu_fastpath._inspect(good) == (True, False)
    assert cpu_fastpath._inspect(prefixed)[0] is False
    lib = cpu_fastpath.find_openblas({"OODATCAA_OPENBLAS": str(good)})
    assert lib is not None and lib.path == good and lib.source == "env OODATCAA_OPENBLAS"
    lib = cpu_fastpath.find_openblas({"OODATCAA_OPENBLAS": str(prefixed)})
    assert lib is None or lib.path != prefixed
    if cpu_fastpath.mlx_cpu_backend():
        env = cpu_fastpath.fastpath_env({"OODATCAA_OPENBLAS": str(good), "LD_PRELOAD": "/x/other.so"})
        assert env["LD_PRELOAD"] == f"{good} /x/other.so"


def test_fastpath_off_runs_reference_blas(tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OODATCAA_FASTPATH", "0")
    result = _run({"kind": "model_check", "model": str(tiny_model)}, tmp_path)
    assert result.ok, result.error
    assert not result.summary["model"]["blas"].startswith("openblas")


@pytest.mark.slow  # seconds of real MLX / agent work: `make test` runs it
def test_trainable_count_and_throughput_spread_are_reported(tiny_model, tmp_path):
    from oodatcaa.jobs.runner import run_job

    check = run_job({"kind": "model_check", "model": str(tiny_model)}, workdir=tmp_path, run_dir=tmp_path / "r1",
                    artifacts_dir=tmp_path / "a1")
    model = check.summary["model"]
    assert check.ok and model["parameters_trainable"] == model["parameters_total"]
    bench = run_job({"kind": "inference_bench", "model": str(tiny_model), "prompts": ["hi"], "max_tokens": 4,
                     "trials": 3}, workdir=tmp_path, run_dir=tmp_path / "r2", artifacts_dir=tmp_path / "a2")
    inference = bench.summary["inference"]
    assert bench.ok and inference["trials"] == 3
    assert inference["generation_tps_spread"] >= 0 and inference["prompt_tps_spread"] >= 0
