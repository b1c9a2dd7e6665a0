"""Peak RSS of `ens-export` against the weights' bytes, and the step where the peak falls.

Builds a random-weight decoder reward model of a real shape (tests/models.py: Qwen2-0.5B or
Llama-3.2-1B, optionally with fewer layers) saved in bf16 as sharded safetensors, exports it once
per dtype in a child process, samples the RSS of that process and of its own children (a large
source is traced in one, ``ensrm.export.trace_child``) every 0.1 s, summed, and attributes each
sample to the export step running at the time (the progress lines, echoed to stderr as they come
with the peak since the line before). The overall peak is the larger of the sampled sum and the
largest single process's own peak (``VmHWM``, which the kernel keeps between samples; not
``ru_maxrss``, which also counts the parent's pages that a child held between fork and exec). The
sum counts pages that the processes share (libraries) once per process, so it is an upper bound; ``peak_pss_bytes``
(proportional set size, shared pages split between their processes) is the tighter figure.
Prints one JSON line per export. The checkpoint is built in a child too.

    python scripts/export_memory.py --shape qwen2-0.5b --layers 2 --dtype bf16,fp32 --max-length 512

Run it alone on a shared machine: the full 0.5B shape in fp32 peaks at about 4 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _proc_bytes(path: str, key: str) -> int:
    """The ``key:`` line of a /proc file given in kB, in bytes (0 when the process is gone)."""
    try:
        with open(path, encoding="ascii") as handle:
            for line in handle:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def rss_bytes(pid: int) -> int:
    return _proc_bytes(f"/proc/{pid}/status", "VmRSS:")


def hwm_bytes(pid: int) -> int:
    """The process's peak RSS since its exec, as the kernel keeps it."""
    return _proc_bytes(f"/proc/{pid}/status", "VmHWM:")


def pss_bytes(pid: int) -> int:
    return _proc_bytes(f"/proc/{pid}/smaps_rollup", "Pss:")


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    pids, i = [pid], 0
    while i < len(pids):
        try:
            with open(f"/proc/{pids[i]}/task/{pids[i]}/children", encoding="ascii") as handle:
                pids += [int(child) for child in handle.read().split()]
        except OSError:
            pass
        i += 1
    return pids


def measure(source: Path, out: Path, dtype: str, max_length: int | None) -> dict:
    """Run one export; its peak RSS overall and per step (the step a sample falls in is the one
    whose progress line comes next)."""
    cmd = [sys.executable, "-m", "ensrm.cli", "export", str(source), "-o", str(out), "--dtype", dtype, "--overwrite"]
    if max_length:
        cmd += ["--max-length", str(max_length)]
    start = time.perf_counter()
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONPATH": path})
    samples: list[tuple[float, int]] = []  # (seconds, RSS summed over the export's processes)
    pss: list[int] = []
    hwm = 0  # the largest single process's own peak
    steps: list[tuple[float, str]] = []

    def read_steps():  # each progress line as it comes, with the peak RSS since the one before
        for line in proc.stderr:
            at = time.perf_counter() - start
            if line.startswith("["):
                last = max((t for t, text in steps if text.startswith("[")), default=0.0)
                since = max((r for t, r in samples if t > last), default=0)
                print(f"  {at:7.1f}s  peak {since / 2 ** 30:5.2f} GiB before: {line.strip()[:110]}",
                      file=sys.stderr, flush=True)
            steps.append((at, line.strip()))

    reader = threading.Thread(target=read_steps, daemon=True)
    reader.start()
    while proc.poll() is None:
        pids = tree(proc.pid)
        samples.append((time.perf_counter() - start, sum(rss_bytes(pid) for pid in pids)))
        hwm = max([hwm] + [hwm_bytes(pid) for pid in pids])
        pss.append(sum(pss_bytes(pid) for pid in pids))
        time.sleep(0.1)
    reader.join()
    peaks: dict[str, int] = {}
    for at, rss in samples:
        label = next((line for t, line in steps if t >= at and line.startswith("[")), "end")
        label = label.split("] ", 1)[-1].split(":")[0].split(" (")[0][:40]
        peaks[label] = max(peaks.get(label, 0), rss)
    return {"returncode": proc.returncode, "seconds": round(time.perf_counter() - start, 1),
            "peak_rss_bytes": max(hwm, max((r for _, r in samples), default=0)),
            "peak_pss_bytes": max(pss, default=0), "peak_by_step": peaks,
            "last_lines": [line for _, line in steps[-3:]]}


def main() -> None:
    from ensrm.export.dtypes import ITEMSIZE
    from ensrm.export.memory import checkpoint_parameters
    from tests.models import REAL_SHAPES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(REAL_SHAPES), default="qwen2-0.5b")
    parser.add_argument("--layers", type=int, help="reduce the depth (default: the real one)")
    parser.add_argument("--dtype", default="bf16,fp32")
    parser.add_argument("--max-length", type=int, help="--max-length of the export (default: the config's)")
    parser.add_argument("--work", type=Path, help="directory for the checkpoint and bundles (default: a temporary one)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="ensrm-export-memory-"))
    source = work / f"{args.shape}-l{args.layers or 'full'}"
    if not (source / "config.json").is_file():  # in a child, so this process holds no torch model
        subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; from tests.models import "
                        "build_real_shape as b; b(sys.argv[1], Path(sys.argv[2]), "
                        "layers=int(sys.argv[3]) if sys.argv[3] else None)",
                        args.shape, str(source), str(args.layers or "")], check=True, cwd=ROOT)
    params = checkpoint_parameters(source)
    for dtype in args.dtype.split(","):
        result = measure(source, work / f"bundle-{dtype}", dtype, args.max_length)
        weights = params * ITEMSIZE[dtype]
        print(json.dumps({"shape": args.shape, "layers": args.layers or REAL_SHAPES[args.shape]["num_hidden_layers"],
                          "dtype": dtype, "max_length": args.max_length, "params": params, "weights_bytes": weights,
                          "peak_over_weights": round(result["peak_rss_bytes"] / weights, 2),
                          "peak_pss_over_weights": round(result["peak_pss_bytes"] / weights, 2), **result}), flush=True)


if __name__ == "__main__":
    main()
