"""The comparisons of ``ensrm bench``: which jobs run, in what order, and what they add up to.

Suites (``--suite``): ``compare`` (every configuration at the target shape, interleaved over
rounds: precisions, PyTorch eager, the plain export, the K sweep, full ensembles), ``grid``
(throughput over batch sizes and lengths and batch-1 latency for each precision and eager),
``ceiling`` (onnxruntime's own MatMul rate, torch.mm's and OpenVINO's), ``runtime`` (Scorer overhead, ``score_texts``,
length grouping, import-and-load time), ``latency`` (per-call p50/p99 at batch 1-8 of realistic
pairs, each precision against eager, at one thread and at all cores).

A subclass of :class:`Bench` adds suites by naming them in ``SUITES`` and defining ``suite_<name>``
(the repository's ``benchmarks/`` does, for the project's experiments).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ensrm.bench.harness import child_env, interleave, load_average, run_job, summarize
from ensrm.bundle import load_spec
from ensrm.errors import EnsrmError
from ensrm.spec import HINTED_PRECISIONS, MODEL_FILES

DEFAULT_SUITES = ("compare", "grid", "ceiling", "runtime", "latency")
SUITES = DEFAULT_SUITES
#: The ceiling suite's GEMM rates: onnxruntime's MatMul and MatMulInteger, torch.mm, OpenVINO's MatMul.
CEILING_KINDS = ("fp32", "int8", "torch_fp32", "openvino_fp32")


def openvino_installed() -> bool:
    """Whether the OpenVINO rows can run (the runtime's own check, without importing OpenVINO)."""
    from ensrm.runtime.openvino_backend import installed

    return installed()


@dataclass
class BenchConfig:
    """What to measure; :meth:`quick` is a smaller grid for a first look (a few minutes)."""

    batches: tuple[int, ...] = (1, 8, 32, 64)
    lengths: tuple[int, ...] = (32, 128, 256, 512)  # those above the bundle's max_length are skipped
    target_batch: int = 32
    target_length: int = 128
    heads_sweep: tuple[int, ...] = (1, 4, 16, 64)
    full_ensemble_sizes: tuple[int, ...] = (1, 2, 4)
    rounds: int = 3
    repeats: int = 3
    warmup: int = 1
    paired_rounds: int = 12
    grid_repeats: int = 2
    latency_repeats: int = 50
    text_pairs: int = 256
    text_words: tuple[int, int] = (12, 200)  # words per pair; ~16-256 tokens with a WordPiece vocabulary
    matmul_shapes: tuple[tuple[int, int, int], ...] = ((4096, 384, 1536), (4096, 384, 384), (4096, 1536, 384))
    matmul_min_time: float = 1.0  # seconds of timed MatMul calls per shape
    startup_runs: int = 3
    latency_batches: tuple[int, ...] = (1, 2, 4, 8)
    latency_tokens: tuple[int, int] = (20, 200)  # pairs outside this range (after truncation) are left out
    latency_calls: int = 16  # distinct batches per batch size, cycled through the timed calls
    latency_rounds: int = 2
    latency_max_s: float = 10.0  # timed seconds per batch size and process at most (fewer calls, then)
    threads: int | None = field(default_factory=os.cpu_count)
    backend: str = "auto"  # the runtime the bundle's rows run on (ScorerConfig.backend)

    @classmethod
    def quick(cls, **overrides) -> BenchConfig:
        """The smaller grid; ``overrides`` set further fields (a subclass's, say)."""
        return cls(**overrides, batches=(1, 32), lengths=(32, 128), heads_sweep=(1, 4, 64), full_ensemble_sizes=(1, 4),
                   rounds=2, repeats=3, paired_rounds=6, grid_repeats=2, latency_repeats=20, text_pairs=128,
                   startup_runs=2, latency_calls=8, latency_rounds=1, latency_max_s=4.0)


def machine_info() -> dict:
    """CPU model, core count and library versions, recorded beside every result."""
    import onnxruntime

    model = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        model = fields.get("Model name", model).strip()
        flags = fields.get("Flags", "")
        isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8") if f in flags.split()]
    except (OSError, subprocess.SubprocessError):
        isa = []
    openvino = None
    if openvino_installed():
        from ensrm.runtime.openvino_backend import version

        openvino = version()
    return {"cpu": model, "cores": os.cpu_count(), "isa": isa, "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__, "openvino": openvino, "numpy": np.__version__,
            "platform": platform.platform(),
            "env": {k: v for k, v in os.environ.items()
                    if k.startswith(("OMP_", "OPENBLAS_", "MKL_", "ORT_"))}}


def _median(results: list[dict], path: Callable[[dict], float]) -> float | None:
    values = [path(r) for r in results if "error" not in r]
    return float(np.median(values)) if values else None


def pooled_shape(results: list[dict], index: int = 0) -> dict:
    """Pool the timed calls of every round of one job and summarise them."""
    ok = [r for r in results if "error" not in r]
    if not ok:
        return {"error": results[0].get("error", "no result") if results else "no result"}
    times = [t for r in ok for t in r["shapes"][index]["times"]]
    shape = ok[0]["shapes"][index]
    stats = summarize(times)
    return {"batch": shape["batch"], "length": shape["length"], **stats,
            "seq_per_s": shape["batch"] / stats["median_s"],
            "tokens_per_s": shape["batch"] * shape["length"] / stats["median_s"],
            "rss_peak_mb": _median(ok, lambda r: r["rss_peak_mb"]),
            "rss_model_mb": _median(ok, lambda r: r["rss_peak_mb"] - r["rss_baseline_mb"]),
            "load_s": _median(ok, lambda r: r["load_s"]), "rounds": len(ok),
            **({"runtime": ok[0]["runtime"]} if ok[0].get("runtime") else {})}


def onnx_size_mb(bundle: Path, name: str) -> float | None:
    """Size of ``bundle/name`` and its external-data file, if any (the weights, essentially)."""
    files = [bundle / name, bundle / (name + ".data")]
    return dir_size_mb([f for f in files if f.is_file()]) if files[0].is_file() else None


def dir_size_mb(paths) -> float:
    total = 0
    for path in paths:
        path = Path(path)
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        total += sum(p.stat().st_size for p in files)
    return total / (1 << 20)


class Bench:
    """One benchmark run: a bundle, the checkpoint it (or a model of its shape) came from, a config.

    ``SUITES`` are the suites it can run, in order, ``DEFAULT_SUITES`` those a run without a choice
    runs; ``BUNDLE_FREE_SUITES`` those that build their own models from the checkpoint and need no
    bundle (none here; a subclass may add some).
    """

    SUITES: tuple[str, ...] = SUITES
    DEFAULT_SUITES: tuple[str, ...] = DEFAULT_SUITES
    BUNDLE_FREE_SUITES: tuple[str, ...] = ()

    def __init__(self, bundle: str | Path, checkpoint: str | Path, cache_dir: str | Path, config: BenchConfig,
                 progress: Callable[[str], None] | None = None):
        from ensrm.bench.models import ModelCache

        # no bundle: only the suites that build their own models can run (BUNDLE_FREE_SUITES)
        self.bundle = Path(bundle) if bundle is not None else None
        self.checkpoint = Path(checkpoint)
        self.spec = load_spec(self.bundle, verify="size") if self.bundle is not None else None
        self.config = config
        self.progress = progress
        self.models = ModelCache(self.checkpoint, cache_dir, max_length=max(config.target_length, 8),
                                 progress=progress)
        self.precisions = list(self.spec.usable_precisions) if self.spec is not None else []
        self.results: dict = {}
        self.started = time.perf_counter()

    def say(self, message: str) -> None:
        if self.progress:
            self.progress(f"[{time.perf_counter() - self.started:6.1f}s] {message}")

    def job_spec(self, kind: str, **fields) -> dict:
        """A worker job of ``kind`` with this run's threads, warmup, repeats and the bundle's lambda."""
        c = self.config
        return {"kind": kind, "threads": c.threads, "backend": c.backend, "warmup": c.warmup, "repeats": c.repeats,
                "uwo_lambda": self.spec.uwo_lambda if self.spec is not None else 0.5, **fields}

    # -- suites --------------------------------------------------------------------------------

    def run(self, suites: Sequence[str] | None = None) -> dict:
        suites = self.DEFAULT_SUITES if suites is None else suites
        unknown = set(suites) - set(self.SUITES)
        if unknown:
            raise EnsrmError(f"unknown suite(s) {sorted(unknown)}; choose from {', '.join(self.SUITES)}")
        needing = set(suites) - set(self.BUNDLE_FREE_SUITES)
        if self.bundle is None and needing:
            raise EnsrmError(f"suite(s) {sorted(needing)} measure a bundle; none given")
        self.results["load_average_start"] = load_average()
        for suite in self.SUITES:
            if suite in suites:
                self.say(f"suite {suite}")
                getattr(self, f"suite_{suite}")()
        self.results["load_average_end"] = load_average()
        self.results["wall_s"] = time.perf_counter() - self.started
        return self.results

    def suite_compare(self) -> None:
        """Every configuration at the target shape, in fresh processes, interleaved over rounds."""
        c = self.config
        shape = [[c.target_batch, min(c.target_length, self.spec.max_length)]]
        jobs: dict[str, dict] = {}
        for precision in self.precisions:
            jobs[f"bundle/{precision}"] = self.job_spec("ort", mode="scorer", bundle=str(self.bundle),
                                                    precision=precision, shapes=shape)
        jobs["torch/eager"] = self.job_spec("torch", checkpoint=str(self.checkpoint), shapes=shape)
        # the runtimes side by side: auto's rows above (OpenVINO where installed) against onnxruntime's
        # fp32, and PyTorch's bf16 autocast as the peer of a bf16 runtime
        if self._resolved("fp32") != "onnxruntime":
            jobs["bundle/fp32@onnxruntime"] = self.job_spec("ort", mode="scorer", bundle=str(self.bundle),
                                                            precision="fp32", shapes=shape, backend="onnxruntime")
        if "bf16" in self.precisions:
            jobs["torch/eager-bf16"] = self.job_spec("torch", checkpoint=str(self.checkpoint), shapes=shape,
                                                     autocast="bf16")
        self.say("building the comparison models (cached after the first run)")
        plain = dict(mode="plain", file=str(self.models.plain(self.spec.num_heads)), vocab_size=self.spec.vocab_size,
                     shapes=shape)
        jobs[f"plain/k{self.spec.num_heads}"] = self.job_spec("ort", **plain, backend="onnxruntime")
        if c.backend != "onnxruntime" and openvino_installed():
            # the peer a CPU user would build: the same checkpoint's plain export on OpenVINO
            jobs[f"plain/k{self.spec.num_heads}@openvino"] = self.job_spec("ort", **plain, backend="openvino")
        sizes = {"multihead": {}, "full_sessions": {}, "full_graph": {}}
        # The multi-head model at the largest full-ensemble size is needed for the K-for-K comparison.
        # the K sweep's time is measured back to back below; fresh processes for the ends of the
        # sweep (memory against K) and the K-for-K comparison with the full ensemble
        for k in sorted({min(c.heads_sweep), max(c.heads_sweep), max(c.full_ensemble_sizes)}):
            bundle = self.models.multi_head(k)
            sizes["multihead"][k] = dir_size_mb([bundle])
            jobs[f"multihead/k{k}"] = self.job_spec("ort", mode="scorer", bundle=str(bundle), shapes=shape)
        members = self.models.member_bundles(max(c.full_ensemble_sizes))
        for m in c.full_ensemble_sizes:
            sizes["full_sessions"][m] = dir_size_mb(members[:m])
            jobs[f"full_sessions/k{m}"] = self.job_spec("ort", mode="sessions", bundles=[str(b) for b in members[:m]],
                                                    shapes=shape)
        biggest = max(c.full_ensemble_sizes)
        if biggest > 1:
            graph = self.models.full_ensemble(biggest)
            sizes["full_graph"][biggest] = dir_size_mb([graph])
            jobs[f"full_graph/k{biggest}"] = self.job_spec("ort", mode="scorer", bundle=str(graph), shapes=shape)
        self.say(f"timing {len(jobs)} configurations x {c.rounds} rounds")
        raw = interleave(jobs, c.rounds, progress=self.say)
        self.results["compare"] = {name: pooled_shape(rs) for name, rs in raw.items()}
        sweep = sorted(c.heads_sweep)
        self.say(f"K sweep in one process, calls alternated: K = {', '.join(map(str, sweep))}")
        paired = run_job(self.job_spec("paired", bundles=[str(self.models.multi_head(k)) for k in sweep],
                                   shape=shape[0], rounds=c.paired_rounds))
        self.results["heads_sweep"] = paired if "error" in paired else {
            "heads": sweep, "rounds": c.paired_rounds, "median_s": paired["median_s"],
            "paired_ratio": paired["paired_ratio"]}
        self.results["bundle_size_mb"] = {
            **{p: dir_size_mb([self.bundle / v.file] + ([self.bundle / (v.file + ".data")]
                               if (self.bundle / (v.file + ".data")).exists() else []))
               for p, v in self.spec.variants.items() if v.usable},
            "bundle_dir": dir_size_mb([self.bundle]), **{f"{k}": v for k, v in sizes.items()}}

    def suite_grid(self) -> None:
        """Throughput over batch sizes x lengths, and batch-1 latency, per precision and for eager."""
        c = self.config
        lengths = [n for n in c.lengths if n <= self.spec.max_length] or [self.spec.max_length]
        shapes = [[b, n] for n in lengths for b in c.batches]
        latency = {"length": min(c.target_length, self.spec.max_length), "repeats": c.latency_repeats}
        jobs = {f"bundle/{p}": self.job_spec("ort", mode="scorer", bundle=str(self.bundle), precision=p, shapes=shapes,
                                         latency=latency, repeats=c.grid_repeats) for p in self.precisions}
        jobs["torch/eager"] = self.job_spec("torch", checkpoint=str(self.checkpoint), shapes=shapes, latency=latency,
                                        repeats=c.grid_repeats)
        out = {}
        for name, job in jobs.items():
            self.say(f"grid: {name} ({len(shapes)} shapes)")
            result = run_job(job)
            if "error" in result:
                out[name] = {"error": result["error"]}
                continue
            rows = [{"batch": s["batch"], "length": s["length"], "median_s": s["median_s"],
                     "seq_per_s": s["batch"] / s["median_s"], "tokens_per_s": s["batch"] * s["length"] / s["median_s"]}
                    for s in result["shapes"]]
            lat = result["latency"]
            out[name] = {"shapes": rows, "latency_batch1": {k: lat[k] for k in ("length", "p50_s", "p99_s", "samples")},
                         "rss_peak_mb": result["rss_peak_mb"],
                         "rss_model_mb": result["rss_peak_mb"] - result["rss_baseline_mb"]}
        self.results["grid"] = out

    def suite_ceiling(self) -> None:
        """onnxruntime's fp32 and int8 MatMul rate on encoder-shaped products (``tokens x in x out``)."""
        c = self.config
        self.say("ceiling: MatMul / MatMulInteger rate, and torch.mm's (what eager runs on)")
        job = {"kind": "matmul", "threads": c.threads, "shapes": [list(s) for s in c.matmul_shapes],
               "warmup": 2, "repeats": max(5, c.repeats), "min_time": c.matmul_min_time}
        result = run_job(job)
        if "error" in result:
            self.results["ceiling"] = {"error": result["error"]}
            return
        peers = [("torch_matmul", "torch_fp32")] + ([("openvino_matmul", "openvino_fp32")]
                                                    if openvino_installed() else [])
        for kind, key in peers:
            peer = run_job({**job, "kind": kind})
            if "error" not in peer:
                result[key] = peer[key]
        self.results["ceiling"] = {
            p: {"shapes": [{k: r[k] for k in ("m", "k", "n", "median_s", "gflops")} for r in result[p]],
                "gflops": max(r["gflops"] for r in result[p])}
            for p in CEILING_KINDS if p in result}

    def suite_runtime(self) -> None:
        """Scorer overhead at the target shape, score_texts vs pre-tokenised, grouping, startup."""
        c = self.config
        self.say("runtime: Scorer.score overhead")
        self.results["overhead"] = run_job(self.job_spec("overhead", bundle=str(self.bundle), batch=c.target_batch,
                                                     length=min(c.target_length, self.spec.max_length),
                                                     repeats=max(10, c.repeats)))
        self.say("runtime: score_texts, pre-tokenised, length grouping")
        low, high = c.text_words
        self.results["texts"] = run_job(self.job_spec("texts", bundle=str(self.bundle), pairs=c.text_pairs,
                                                  min_words=low, max_words=high, batch_size=c.target_batch,
                                                  repeats=max(3, c.repeats)))
        self.say("runtime: import ensrm + Scorer(bundle) in a fresh process")
        self.results["startup"] = startup_time(self.bundle, c.startup_runs)

    def suite_latency(self) -> None:
        """Per-call latency of small batches of realistic pairs, each precision against eager.

        Every configuration scores the same calls: batches of 1, 2, ... generated
        (prompt, response) pairs of 20-200 tokens, each padded only to its own longest pair,
        as a filter service receives them. Run at one thread (one scorer per core) and at
        ``threads`` (one scorer using every core); precisions the bundle lacks or rejected are
        reported as absent.
        """
        c = self.config
        try:
            calls, pairs = latency_calls(self.bundle, self.spec, c)
        except EnsrmError as exc:  # the suites before this one keep their results
            self.results["latency"] = {"error": str(exc)}
            return
        settings = sorted({1, c.threads or os.cpu_count() or 1})
        latency = {"calls": calls, "repeats": c.latency_repeats, "max_s": c.latency_max_s}
        jobs, absent = {}, {}
        # bf16 (a runtime hint, not a file) and int4 (OpenVINO's alone) are listed only where the bundle judged them
        shown = [p for p in MODEL_FILES if (p not in HINTED_PRECISIONS and p != "int4") or p in self.spec.variants]
        names = []
        for precision in shown:
            variant = self.spec.variants.get(precision)
            # every runtime x precision: the bench's backend, and onnxruntime beside it where that is another
            backends = [(c.backend, "")]
            onnx = ((variant.file if variant is not None else None) or MODEL_FILES[precision]).endswith(".onnx")
            if precision not in HINTED_PRECISIONS and onnx and self._resolved(precision) != "onnxruntime":
                backends.append(("onnxruntime", "@onnxruntime"))
            for backend, suffix in backends:
                name = f"bundle/{precision}{suffix}"
                names.append(name)
                if variant is None or not variant.usable:
                    absent[name] = (f"no {precision} variant in the bundle" if variant is None
                                    else f"the {precision} variant was rejected by its accuracy gate")
                    continue
                for t in settings:
                    jobs[f"t{t}/{name}"] = self.job_spec("ort", mode="scorer", bundle=str(self.bundle),
                                                         precision=precision, threads=t, latency_calls=latency,
                                                         backend=backend)
        for t in settings:
            jobs[f"t{t}/torch/eager"] = self.job_spec("torch", checkpoint=str(self.checkpoint), threads=t,
                                                  latency_calls=latency)
        self.say(f"latency: {len(jobs)} configurations x {c.latency_rounds} rounds, batches "
                 f"{', '.join(map(str, c.latency_batches))}")
        raw = interleave(jobs, c.latency_rounds, progress=self.say)
        by_threads = []
        names.append("torch/eager")
        for t in settings:
            runs = {name: {"absent": absent[name]} if name in absent else _pooled_latency(raw[f"t{t}/{name}"])
                    for name in names}
            eager = {r["batch"]: r["p50_s"] for r in runs["torch/eager"].get("rows", [])}
            for name in names[:-1]:
                for row in runs[name].get("rows", []):
                    row["eager_p50_ratio"] = eager[row["batch"]] / row["p50_s"] if row["batch"] in eager else None
            by_threads.append({"threads": t, "runs": runs})
        self.results["latency"] = {"batches": list(c.latency_batches), "pairs": pairs, "rounds": c.latency_rounds,
                                   "by_threads": by_threads}

    def _resolved(self, precision: str) -> str:
        """The runtime the bench's ``backend`` runs ``precision`` of the bundle on (``auto`` resolved)."""
        from ensrm.runtime.backend import resolve_backend
        from ensrm.runtime.config import ScorerConfig

        return resolve_backend(ScorerConfig(self.bundle, backend=self.config.backend), self.spec, precision)

    # -- facts about the model -----------------------------------------------------------------

    def model_info(self) -> dict:
        from ensrm._optional import require
        from ensrm.bench.models import matrix_flops

        transformers = require("transformers", "export")
        onnx = require("onnx", "export")
        config = transformers.AutoConfig.from_pretrained(self.checkpoint)
        if self.spec is None:  # a run of bundle-free suites only
            return {"bundle": None, "checkpoint": str(self.checkpoint), "model_type": config.model_type,
                    "hidden_size": config.hidden_size, "layers": config.num_hidden_layers,
                    "intermediate_size": getattr(config, "intermediate_size", None), "precisions": []}
        length = min(self.config.target_length, self.spec.max_length)
        graph = onnx.load(str(self.bundle / "model.onnx"), load_external_data=False).graph
        narrowed = any(n.op_type == "Slice" and n.name.endswith("/pooled_row") for n in graph.node)
        return {"bundle": str(self.bundle), "checkpoint": str(self.checkpoint), "model_type": self.spec.model_type,
                "num_heads": self.spec.num_heads, "hidden_size": config.hidden_size,
                "layers": config.num_hidden_layers, "intermediate_size": config.intermediate_size,
                "precisions": self.precisions, "max_length": self.spec.max_length,
                "matrix_flops_per_seq": matrix_flops(config, length, self.spec.num_heads,
                                                     pooled_token_only=narrowed),
                "flops_length": length, "last_layer_pooled_token_only": narrowed}


_STARTUP = """
import json, sys, time
t0 = time.perf_counter()
import ensrm
t1 = time.perf_counter()
scorer = ensrm.Scorer(sys.argv[1])
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "total_s": t2 - t0}))
"""


def startup_time(bundle: Path, runs: int = 3) -> dict:
    """``import ensrm`` + ``Scorer(bundle)`` (default sha256 check), timed inside fresh interpreters.

    The first run may read the bundle from disk; the median of the runs is reported.
    """
    import json

    samples = []
    for _ in range(max(runs, 1)):
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", _STARTUP, str(bundle)], env=child_env(),
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
        sample = json.loads(proc.stdout.strip().splitlines()[-1])
        sample["process_s"] = time.perf_counter() - start
        samples.append(sample)
    return {key: float(np.median([s[key] for s in samples])) for key in samples[0]} | {"runs": samples}


def latency_calls(bundle: Path, spec, config: BenchConfig) -> tuple[list[dict], dict]:
    """Token-id batches for the latency suite from generated pairs, and facts about their lengths.

    ``config.latency_calls`` batches per batch size, each of consecutive pairs of
    ``latency_tokens`` tokens (as many as the bundle's ``max_length`` allows), padded as
    ``score_texts`` pads them: to the batch's longest pair only.
    """
    from ensrm.data.synthetic import generate_candidates
    from ensrm.runtime.texts import TextEncoder

    if not spec.tokenizer_file:
        raise EnsrmError("the latency suite scores generated text pairs and needs the bundle's tokenizer; "
                         "this bundle has none")
    low, high = config.latency_tokens
    high = min(high, spec.max_length)
    low = min(low, high)
    needed = config.latency_calls * max(config.latency_batches)
    encoder = TextEncoder(bundle, spec)
    encodings = []
    for seed in range(20):  # a few draws are enough: most generated pairs fall in the range
        records = generate_candidates(max(needed // 4, 1), 4, seed=seed)
        encodings += [e for e in encoder.encode([r["prompt"] for r in records], [r["response"] for r in records])
                      if low <= len(e.ids) <= high]
        if len(encodings) >= needed:
            break
    if len(encodings) < needed:
        raise EnsrmError(f"only {len(encodings)} generated pairs have {low}-{high} tokens; the latency suite "
                         f"needs {needed}")
    calls = []
    for batch in config.latency_batches:
        feeds = []
        for i in range(config.latency_calls):
            chunk = encodings[i * batch:(i + 1) * batch]
            (_, feed), = encoder.batches(chunk, batch)
            feeds.append({name: value.tolist() for name, value in feed.items()})
        calls.append({"batch": batch, "feeds": feeds})
    lengths = np.array([len(e.ids) for e in encodings[:needed]])
    return calls, {"count": int(lengths.size), "length_min": int(lengths.min()), "length_max": int(lengths.max()),
                   "length_mean": float(lengths.mean()), "source": "ensrm.data.synthetic.generate_candidates"}


def _pooled_latency(results: list[dict]) -> dict:
    """Pool the per-call times of every round of one latency job, per batch size."""
    ok = [r for r in results if "error" not in r]
    if not ok:
        return {"error": results[0].get("error", "no result") if results else "no result"}
    rows = []
    for i, first in enumerate(ok[0]["latency_calls"]):
        stats = summarize([t for r in ok for t in r["latency_calls"][i]["times"]])
        cpu = [t for r in ok for t in r["latency_calls"][i]["cpu_times"]]
        rows.append({"batch": first["batch"], "mean_padded_length": first["mean_padded_length"],
                     **{k: stats[k] for k in ("p50_s", "p99_s", "samples")}, "cpu_p50_s": float(np.median(cpu))})
    return {"rows": rows, "rounds": len(ok), "rss_peak_mb": _median(ok, lambda r: r["rss_peak_mb"])}


def config_dict(config: BenchConfig) -> dict:
    return asdict(config)
