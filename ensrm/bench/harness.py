"""Timing helpers and the subprocess runner every benchmark goes through.

Each configuration runs in a fresh Python process (:func:`run_job`), so its peak resident
memory is its own and nothing one configuration loaded (a torch import, a thread pool,
a memory arena) is still around when the next one is timed. Timings are warm-up calls
followed by repeated timed calls; reports use medians, which a shared, noisy machine
disturbs far less than means.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ensrm.errors import EnsrmError


def time_calls(fn: Callable[[], object], warmup: int = 1, repeats: int = 5, min_time: float = 0.0) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls.

    With ``min_time`` the calls go on past ``repeats`` until that many seconds were timed,
    so very fast calls still collect enough samples for a stable median and p99.

    >>> times = time_calls(lambda: sum(range(1000)), warmup=1, repeats=3)
    >>> len(times)
    3
    """
    for _ in range(warmup):
        fn()
    times: list[float] = []
    while len(times) < repeats or sum(times) < min_time:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def summarize(times: list[float]) -> dict[str, float]:
    """Median, p50, p99, min and count of a list of durations in seconds.

    >>> summarize([1.0, 2.0, 3.0])["median_s"]
    2.0
    """
    if not times:
        return {"median_s": float("nan"), "p50_s": float("nan"), "p99_s": float("nan"), "min_s": float("nan"),
                "samples": 0}
    values = np.asarray(times, dtype=np.float64)
    return {"median_s": float(np.median(values)), "p50_s": float(np.percentile(values, 50)),
            "p99_s": float(np.percentile(values, 99)), "min_s": float(values.min()), "samples": int(values.size)}


def _proc_status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MiB.

    Linux's ``ru_maxrss`` survives ``exec``: a worker started from a parent holding 600 MB
    would report the parent's peak. ``VmHWM`` belongs to the process image and starts afresh.
    """
    hwm = _proc_status_mb("VmHWM")
    if hwm is not None:
        return hwm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def current_rss_mb() -> float:
    """Resident set size now, in MiB (the peak where the current figure is unavailable)."""
    rss = _proc_status_mb("VmRSS")
    return rss if rss is not None else peak_rss_mb()


def load_average() -> list[float] | None:
    """The 1/5/15-minute load averages, recorded beside results so noisy runs can be spotted."""
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def child_env() -> dict[str, str]:
    """The parent's environment, with this ensrm importable and nothing downloaded."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "true")
    return env


def run_job(job: dict, timeout: float = 1800.0, worker: str = "ensrm.bench.worker") -> dict:
    """Run one job of :mod:`ensrm.bench.worker` (or of the module ``worker``, run with ``python -m``)
    in a fresh interpreter and return its result.

    A job that fails returns ``{"error": "..."}`` rather than raising, so one broken
    configuration (say, a precision this CPU cannot run) does not lose the whole run.

    (Not run by the doctests: it starts a worker process and times it.)

    >>> run_job({"kind": "matmul", "shapes": [[64, 64, 64]], "repeats": 2})["fp32"][0]["gflops"] > 0  # doctest: +SKIP
    True
    """
    with tempfile.TemporaryDirectory(prefix="ensrm-bench-") as tmp:
        spec_path, out_path = Path(tmp) / "job.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps(job))
        start = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, "-m", worker, str(spec_path), str(out_path)],
                                  env=child_env(), capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f}s", "job": job}
        wall = time.perf_counter() - start
        if proc.returncode != 0 or not out_path.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            return {"error": f"worker exited with status {proc.returncode}: {tail[0]}", "job": job}
        result = json.loads(out_path.read_text())
    # Peak memory of the child as the kernel saw it, in case the worker's own figure is missing.
    result.setdefault("process_wall_s", wall)
    return result


def interleave(jobs: dict[str, dict], rounds: int, progress: Callable[[str], None] | None = None) -> dict[str, list]:
    """Run every job once per round, round-robin, and return each job's list of results.

    Interleaving spreads slow phases of a shared machine over all configurations, so the
    ratios between them stay meaningful even when absolute numbers drift. The order rotates
    between rounds: in one run the configuration that always went first read 13% slower than a
    graph of the same speed (0.5% apart when the two were timed back to back in one process).
    """
    if rounds < 1:
        raise EnsrmError(f"rounds must be >= 1, got {rounds}")
    results: dict[str, list] = {name: [] for name in jobs}
    names = list(jobs)
    for r in range(rounds):
        # each round starts further along, so no configuration always runs first (or after the biggest)
        shift = r * len(names) // rounds
        for name in names[shift:] + names[:shift]:
            job = jobs[name]
            if progress:
                progress(f"round {r + 1}/{rounds}: {name}")
            results[name].append(run_job(job))
    return results
