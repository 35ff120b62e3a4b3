"""CPU fast path: run MLX job processes with OpenBLAS instead of the reference BLAS (stdlib only).

Why: the ``mlx-cpu`` wheel for Linux links the netlib *reference* BLAS (``mlx_cpu.libs/libblas-*.so``,
about 6 GFLOP/s for a float32 512x512 matmul on this kind of machine). Preloading an optimized OpenBLAS
into the job process makes mlx's ``cblas_sgemm`` calls resolve to OpenBLAS instead (``LD_PRELOAD`` puts
it first in the global symbol scope), which is 10-30x faster on matmul-bound work and numerically
equivalent (float32 rounding differences only). ``benchmarks/bench_cpu_fastpath.py`` measures it.

Where the OpenBLAS comes from, first match wins (:func:`find_openblas`):

1. ``OODATCAA_OPENBLAS`` — an explicit path to a ``libopenblas.so``;
2. the PyPI package ``cmeel-openblas`` (``pip install cmeel-openblas``; ``cmeel.prefix/lib/libopenblas.so.0``).
   It needs ``libgfortran.so.5``: when the system has none, the copy that the mlx-cpu wheel ships under
   a hashed name in ``mlx_cpu.libs/`` is exposed as ``libgfortran.so.5`` through a small directory of
   symlinks in the user cache, put on ``LD_LIBRARY_PATH``;
3. ``scipy-openblas64`` / ``scipy-openblas32`` — checked but never usable: they export only
   ``scipy_``-prefixed symbols (``scipy_cblas_sgemm``), which mlx does not call; they are skipped by the
   symbol check;
4. distribution packages: Debian/Ubuntu ``libopenblas0-pthread`` / ``-openmp`` / ``-serial``
   (``/usr/lib/<triplet>/openblas-*/libopenblas.so.0``), Fedora ``/usr/lib64/libopenblas*.so.0``.

A candidate is used only if its file exports ``cblas_sgemm`` (checked by scanning the file's bytes).

The fast path applies only on Linux with the mlx CPU backend (``mlx-cpu`` installed, no ``mlx-cuda``);
``OODATCAA_FASTPATH=0`` turns it off. OpenBLAS gets half the cores (``OPENBLAS_NUM_THREADS``; its
threads busy-wait, which hurts badly on a shared machine), unless ``OPENBLAS_NUM_THREADS`` or
``OODATCAA_BLAS_THREADS`` say otherwise. :func:`fastpath_env` returns the variables for the child process;
:func:`describe_blas` tells which BLAS the *current* process has loaded (read from ``/proc/self/maps``).

``python -m oodatcaa.jobs.cpu_fastpath`` prints the choice; ``--probe-matmul N`` (in a process started
with or without :func:`fastpath_env`) prints a JSON line with the measured float32 matmul GFLOP/s.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import mmap
import os
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "BlasLibrary",
    "default_blas_threads",
    "describe_blas",
    "fastpath_enabled",
    "fastpath_env",
    "find_openblas",
    "loaded_blas",
    "mlx_cpu_backend",
]

ENV_SWITCH = "OODATCAA_FASTPATH"
ENV_LIBRARY = "OODATCAA_OPENBLAS"
#: Set in the child by :func:`fastpath_env`: the route ("cmeel-openblas", ...) and the library path.
ENV_SOURCE = "OODATCAA_BLAS_SOURCE"
ENV_APPLIED = "OODATCAA_FASTPATH_APPLIED"
ENV_THREADS = "OODATCAA_BLAS_THREADS"

_TRIPLETS = ("x86_64-linux-gnu", "aarch64-linux-gnu")
_SYSTEM_LIB_DIRS = tuple(f"/usr/lib/{t}" for t in _TRIPLETS) + tuple(f"/lib/{t}" for t in _TRIPLETS) + (
    "/usr/lib64",
    "/lib64",
    "/usr/lib",
    "/usr/local/lib",
)


@dataclass(frozen=True)
class BlasLibrary:
    """An OpenBLAS shared library usable by mlx.

    Attributes:
        path: the ``.so`` to preload.
        source: how it was found: ``"env OODATCAA_OPENBLAS"``, ``"cmeel-openblas"``, ``"system"``, ...
        library_path: directories to prepend to ``LD_LIBRARY_PATH`` (for ``libgfortran.so.5``), maybe empty.
        skipped: candidates looked at and rejected before this one, as ``"path: reason"``.
    """

    path: Path
    source: str
    library_path: tuple[str, ...] = ()
    skipped: tuple[str, ...] = field(default=())


def fastpath_enabled(env: Mapping[str, str] | None = None) -> bool:
    """False when ``OODATCAA_FASTPATH`` is ``0``/``false``/``no``/``off`` (default: on)."""
    env = os.environ if env is None else env
    return env.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def _dist_installed(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def mlx_cpu_backend() -> bool:
    """True on Linux when mlx runs on the CPU backend (``mlx-cpu`` installed and no ``mlx-cuda*``).

    Decided from installed distributions, without importing mlx (this module must stay light).
    """
    if not sys.platform.startswith("linux"):
        return False
    if not _dist_installed("mlx-cpu"):
        return False
    return not any(_dist_installed(n) for n in ("mlx-cuda", "mlx-cuda12", "mlx-cuda13"))


@functools.lru_cache(maxsize=32)
def _scan(path: str, mtime_ns: int, size: int) -> tuple[bool, bool]:
    """(exports cblas_sgemm, needs libgfortran.so.5) by scanning the file's bytes (cached per version)."""
    del mtime_ns, size  # cache key only
    with open(path, "rb") as fh:
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            # In the dynamic string table every name is NUL-separated, so an unprefixed export is
            # "\0cblas_sgemm\0"; scipy-openblas only has "scipy_cblas_sgemm..." and fails this test.
            exports = mm.find(b"\x00cblas_sgemm\x00") >= 0
            needs_gfortran = mm.find(b"libgfortran.so.5\x00") >= 0
    return exports, needs_gfortran


def _inspect(path: Path) -> tuple[bool, bool]:
    st = path.stat()
    return _scan(str(path), st.st_mtime_ns, st.st_size)


def _mlx_cpu_libs_dir() -> Path | None:
    try:
        d = Path(str(importlib.metadata.distribution("mlx-cpu").locate_file("mlx_cpu.libs")))
        if d.is_dir():
            return d
    except importlib.metadata.PackageNotFoundError:
        pass
    for entry in sys.path:
        d = Path(entry or ".") / "mlx_cpu.libs"
        if d.is_dir():
            return d
    return None


def _system_has(soname: str) -> bool:
    return any(Path(d, soname).exists() for d in _SYSTEM_LIB_DIRS)


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "oodatcaa" / "blas-compat"


def _gfortran_compat_dir() -> Path | None:
    """A directory where ``libgfortran.so.5`` (and its libquadmath) point at the mlx-cpu wheel's copies.

    The wheel's copies carry hashed sonames (``libgfortran-f7379c93.so.5.0.0``), which the dynamic
    loader does not match against a ``NEEDED libgfortran.so.5``; symlinks with the plain name fix that.
    Returns None when the wheel ships no libgfortran or no cache directory is writable.
    """
    libs = _mlx_cpu_libs_dir()
    if libs is None:
        return None
    gfortran = sorted(libs.glob("libgfortran*.so*"))
    if not gfortran:
        return None
    links = {"libgfortran.so.5": gfortran[0]}
    for dep in libs.glob("libquadmath*.so*"):
        links[dep.name] = dep  # the hashed libgfortran NEEDs the hashed libquadmath by its own name
    tag = hashlib.sha1(str(libs.resolve()).encode()).hexdigest()[:12]
    for root in (_cache_root(), Path(tempfile.gettempdir()) / f"oodatcaa-{os.getuid()}" / "blas-compat"):
        target = root / tag
        try:
            target.mkdir(parents=True, exist_ok=True)
            for name, src in links.items():
                link = target / name
                if link.is_symlink() and os.readlink(link) == str(src):
                    continue
                tmp = target / f".{name}.{os.getpid()}.tmp"
                if tmp.is_symlink() or tmp.exists():
                    tmp.unlink()
                tmp.symlink_to(src)
                os.replace(tmp, link)  # atomic: concurrent jobs never see a half-made link
            return target
        except OSError:
            continue
    return None


def _candidates(env: Mapping[str, str]) -> list[tuple[Path, str]]:
    out: list[tuple[Path, str]] = []
    explicit = env.get(ENV_LIBRARY, "").strip()
    if explicit:
        out.append((Path(explicit).expanduser(), f"env {ENV_LIBRARY}"))
    for dist, rel in (
        ("cmeel-openblas", "cmeel.prefix/lib/libopenblas.so.0"),
        ("scipy-openblas64", "scipy_openblas64/lib/libscipy_openblas64_.so"),
        ("scipy-openblas32", "scipy_openblas32/lib/libscipy_openblas.so"),
    ):
        try:
            out.append((Path(str(importlib.metadata.distribution(dist).locate_file(rel))), dist))
        except importlib.metadata.PackageNotFoundError:
            continue
    for triplet in _TRIPLETS:
        for flavour in ("openblas-pthread", "openblas-openmp", "openblas-serial"):
            out.append((Path(f"/usr/lib/{triplet}/{flavour}/libopenblas.so.0"), f"system {flavour}"))
        out.append((Path(f"/usr/lib/{triplet}/libopenblas.so.0"), "system"))
    for name in ("libopenblasp.so.0", "libopenblas.so.0", "libopenblaso.so.0"):
        out.append((Path("/usr/lib64") / name, "system"))
    return out


def find_openblas(env: Mapping[str, str] | None = None) -> BlasLibrary | None:
    """The first usable OpenBLAS (see the module docstring for the order), or None.

    Ignores the on/off switch and the backend check (see :func:`fastpath_env` for those). Never raises:
    unreadable or unsuitable candidates are recorded in ``BlasLibrary.skipped``.
    """
    env = os.environ if env is None else env
    skipped: list[str] = []
    for path, source in _candidates(env):
        if not path.is_file():
            if source.startswith("env") or not source.startswith("system"):
                skipped.append(f"{path}: not found ({source})")
            continue
        try:
            exports, needs_gfortran = _inspect(path)
        except OSError as exc:
            skipped.append(f"{path}: unreadable ({exc})")
            continue
        if not exports:
            skipped.append(f"{path}: no unprefixed cblas_sgemm symbol ({source}); mlx cannot use it")
            continue
        library_path: tuple[str, ...] = ()
        if needs_gfortran and not _system_has("libgfortran.so.5"):
            compat = _gfortran_compat_dir()
            if compat is None:
                skipped.append(f"{path}: needs libgfortran.so.5, none found ({source})")
                continue
            library_path = (str(compat),)
        return BlasLibrary(path=path, source=source, library_path=library_path, skipped=tuple(skipped))
    return None


def default_blas_threads(cpu_count: int | None = None) -> int:
    """OpenBLAS threads for a job when the user set none: half the cores, at least 1.

    Why not all cores: OpenBLAS worker threads busy-wait, and a job shares the machine with the agents
    and often with other jobs. Measured on a 2-core machine under load (benchmarks/bench_cpu_fastpath.py):
    1 thread gave 230 GFLOP/s on a 512x512 matmul against 11 GFLOP/s with 2 threads, and LoRA on
    SmolLM2-135M ran 12x faster.
    """
    n = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    return max(1, n // 2)


def _prepend(value: str, existing: str | None, sep: str) -> str:
    parts = [value] + [p for p in (existing or "").split(sep) if p and p != value]
    return sep.join(parts)


def fastpath_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment variables that give a child process the OpenBLAS fast path.

    Args:
        env: the environment the child will inherit (default ``os.environ``); existing ``LD_PRELOAD`` /
            ``LD_LIBRARY_PATH`` entries are kept after ours.

    Returns:
        ``{}`` when off (``OODATCAA_FASTPATH=0``), not Linux + mlx CPU backend, or no usable OpenBLAS;
        otherwise ``LD_PRELOAD`` (the library first), ``LD_LIBRARY_PATH`` when libgfortran is needed,
        ``OODATCAA_BLAS_SOURCE`` (the route, for :func:`describe_blas`), ``OODATCAA_FASTPATH_APPLIED=1``
        and ``OPENBLAS_NUM_THREADS`` — from ``OODATCAA_BLAS_THREADS`` if set, else
        :func:`default_blas_threads` — unless ``OPENBLAS_NUM_THREADS`` is already set (then it is kept).
    """
    env = os.environ if env is None else env
    if not fastpath_enabled(env) or not mlx_cpu_backend():
        return {}
    lib = find_openblas(env)
    if lib is None:
        return {}
    out = {
        "LD_PRELOAD": _prepend(str(lib.path), env.get("LD_PRELOAD"), " "),
        ENV_SOURCE: lib.source,
        ENV_APPLIED: "1",
    }
    if not env.get("OPENBLAS_NUM_THREADS"):
        threads = env.get(ENV_THREADS, "").strip()
        out["OPENBLAS_NUM_THREADS"] = threads if threads.isdigit() and int(threads) > 0 else str(default_blas_threads())
    if lib.library_path:
        ld = env.get("LD_LIBRARY_PATH")
        for d in reversed(lib.library_path):
            ld = _prepend(d, ld, ":")
        out["LD_LIBRARY_PATH"] = ld or ""
    return out


def loaded_blas() -> dict[str, str]:
    """The BLAS libraries mapped into the current process (Linux ``/proc/self/maps``).

    Returns ``{"kind": ..., "path": ...}`` where kind is ``"openblas"``, ``"mkl"``, ``"blis"``,
    ``"reference"`` (netlib libblas, as shipped by the mlx-cpu wheel), ``"accelerate"`` (macOS) or
    ``"none"`` (nothing loaded yet: call after ``import mlx.core``) / ``"unknown"``.
    """
    if sys.platform == "darwin":
        return {"kind": "accelerate", "path": ""}
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as fh:
            paths = {line.split(None, 5)[-1].strip() for line in fh if ".so" in line}
    except OSError:
        return {"kind": "unknown", "path": ""}
    names = sorted(p for p in paths if "/" in p)
    for kind, needle in (("openblas", "openblas"), ("mkl", "libmkl_rt"), ("blis", "libblis")):
        for p in names:
            base = os.path.basename(p)
            if needle in base and "scipy_openblas" not in base:
                return {"kind": kind, "path": p}
    for p in names:
        base = os.path.basename(p)
        if base.startswith("libblas") or base.startswith("libcblas"):
            return {"kind": "reference", "path": p}
    return {"kind": "none", "path": ""}


def describe_blas() -> str:
    """One line naming the BLAS this process uses, e.g. ``"openblas (cmeel-openblas) /…/libopenblas.so.0"``.

    Reads the mapped libraries (so call it after ``import mlx.core`` in a job process); adds the route
    recorded by :func:`fastpath_env` in ``OODATCAA_BLAS_SOURCE`` when OpenBLAS is the one loaded.
    """
    info = loaded_blas()
    kind, path = info["kind"], info["path"]
    if kind == "openblas":
        source = os.environ.get(ENV_SOURCE)
        return f"openblas ({source}) {path}" if source else f"openblas {path}"
    if kind == "reference":
        return f"reference (netlib, slow) {path}"
    return f"{kind} {path}".strip()


def _probe_matmul(n: int, seconds: float = 1.0) -> dict[str, float | str | int]:
    """Measure float32 n x n matmul throughput with mlx on the CPU (GFLOP/s = 2 n^3 / time / 1e9)."""
    import time

    import mlx.core as mx

    mx.set_default_device(mx.cpu)
    mx.random.seed(0)
    a = mx.random.normal((n, n))
    b = mx.random.normal((n, n))
    mx.eval(a, b)
    for _ in range(2):
        mx.eval(a @ b)
    reps = 0
    start = time.perf_counter()
    while True:
        mx.eval(a @ b)
        reps += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and reps >= 3:
            break
    return {"n": n, "reps": reps, "seconds": elapsed, "gflops": 2.0 * n**3 * reps / elapsed / 1e9, "blas": describe_blas()}


def _main(argv: list[str]) -> int:
    if argv[:1] == ["--probe-matmul"]:
        n = int(argv[1]) if len(argv) > 1 else 512
        print(json.dumps(_probe_matmul(n)))
        return 0
    lib = find_openblas()
    print(f"fast path enabled: {fastpath_enabled()}   mlx cpu backend: {mlx_cpu_backend()}")
    if lib is None:
        print("no usable OpenBLAS found (pip install cmeel-openblas, or apt-get install libopenblas0-pthread)")
    else:
        print(f"OpenBLAS: {lib.path} via {lib.source}")
        for s in lib.skipped:
            print(f"  skipped {s}")
    for k, v in fastpath_env().items():
        print(f"  {k}={v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
