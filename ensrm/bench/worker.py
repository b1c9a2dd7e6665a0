"""One benchmark job, run in its own process: ``python -m ensrm.bench.worker JOB.json RESULT.json``.

Job kinds: ``ort`` (a bundle through :class:`~ensrm.Scorer`, K single-head bundles as K
sessions, or a plain graph with numpy aggregation), ``paired`` (several bundles in one
process, calls alternated, for differences of a few percent), ``torch`` (PyTorch eager),
``matmul`` (onnxruntime's own MatMul rate), ``torch_matmul`` (``torch.mm``'s), ``openvino_matmul``
(OpenVINO's), ``overhead`` (``Scorer.score`` minus
``session.run``), ``texts`` (``score_texts`` vs pre-tokenised, length grouping vs arrival
order), ``stacked_matmul`` (one batched product of stacked ``[K, ...]`` weights against K separate ones,
in torch and onnxruntime). Only the ``torch``, ``torch_matmul`` and ``stacked_matmul`` jobs import torch.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from ensrm.bench.harness import peak_rss_mb, summarize, time_calls


def random_feeds(input_names, batch: int, length: int, vocab_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Unpadded random token ids ``[batch, length]`` (ids above 1000 skip most special tokens)."""
    rng = np.random.default_rng(seed)
    low = min(1000, max(vocab_size // 2, 1))
    feeds = {"input_ids": rng.integers(low, vocab_size, (batch, length), dtype=np.int64),
             "attention_mask": np.ones((batch, length), dtype=np.int64),
             "token_type_ids": np.zeros((batch, length), dtype=np.int64)}
    return {name: feeds[name] for name in input_names}


def numpy_aggregates(heads: np.ndarray, uwo_lambda: float) -> dict[str, np.ndarray]:
    """What a user of a plain classifier computes after the graph: mean, std, min, uwo of ``[batch, K]``."""
    mean = heads.mean(axis=1)  # [batch]
    var = heads.var(axis=1)  # population variance, ddof=0
    return {"mean": mean, "std": np.sqrt(var), "min": heads.min(axis=1), "uwo": mean - uwo_lambda * var}


def _grid(call, job: dict, input_names, vocab_size: int) -> dict:
    """Time ``call(feeds)`` for every shape of the job, and latency at batch 1 if asked."""
    out = {"shapes": []}
    for batch, length in job.get("shapes", []):
        feeds = random_feeds(input_names, batch, length, vocab_size)
        times = time_calls(lambda: call(feeds), job.get("warmup", 1), job.get("repeats", 3), job.get("min_time", 0.0))
        out["shapes"].append({"batch": batch, "length": length, "times": times, **summarize(times)})
    latency = job.get("latency")
    if latency:
        feeds = random_feeds(input_names, 1, latency["length"], vocab_size)
        times = time_calls(lambda: call(feeds), 3, latency.get("repeats", 50), latency.get("min_time", 0.0))
        out["latency"] = {"length": latency["length"], "times": times, **summarize(times)}
    if job.get("latency_calls"):
        spec = job["latency_calls"]
        out["latency_calls"] = [_time_cycle(call, group, input_names, spec["repeats"], spec.get("max_s"))
                                for group in spec["calls"]]
    return out


def _time_cycle(call, group: dict, input_names, repeats: int, max_s: float | None = None) -> dict:
    """Wall and CPU seconds per call, cycling through a batch size's distinct batches.

    CPU time (``process_time``, all threads of the process) is recorded beside wall time:
    on a shared machine it is disturbed far less by the neighbours. After ``max_s`` seconds
    of timed calls (and one pass over the batches) it stops short of ``repeats``: on a
    loaded 2-core box eager at 2 threads took ~1 s for a single pair.
    """
    feeds = [{name: np.asarray(f[name], dtype=np.int64) for name in input_names if name in f}
             for f in group["feeds"]]
    for f in feeds:  # every shape once: first calls of a shape allocate
        call(f)
    times, cpu = [], []
    for i in range(max(repeats, len(feeds))):
        if max_s is not None and i >= len(feeds) and sum(times) >= max_s:
            break
        f = feeds[i % len(feeds)]
        wall0, cpu0 = time.perf_counter(), time.process_time()
        call(f)
        times.append(time.perf_counter() - wall0)
        cpu.append(time.process_time() - cpu0)
    lengths = [f["input_ids"].shape[1] for f in feeds]
    return {"batch": group["batch"], "mean_padded_length": float(np.mean(lengths)), "times": times, "cpu_times": cpu}


def ort_job(job: dict) -> dict:
    import onnxruntime  # noqa: F401 - imported before the baseline so the baseline includes it

    from ensrm.runtime.onnxruntime_backend import create_session
    from ensrm.runtime.scorer import Scorer

    baseline = peak_rss_mb()
    start = time.perf_counter()
    mode, threads, lam = job["mode"], job.get("threads"), job.get("uwo_lambda", 0.5)
    if mode == "scorer":
        scorer = Scorer(job["bundle"], threads=threads, precision=job.get("precision", "fp32"), verify="size",
                        backend=job.get("backend", "auto"))
        names, vocab = scorer.spec.inputs, scorer.spec.vocab_size
        described = scorer.description

        def call(feeds):
            return scorer.score(**feeds)
    elif mode == "sessions":
        # A full ensemble kept as K bundles: K sessions, heads concatenated, aggregates in numpy.
        scorers = [Scorer(b, threads=threads, verify="size") for b in job["bundles"]]
        names, vocab = scorers[0].spec.inputs, scorers[0].spec.vocab_size

        def call(feeds):
            heads = np.concatenate([s.score(**feeds).heads for s in scorers], axis=1)  # [batch, K]
            return numpy_aggregates(heads, lam)
    elif mode == "plain" and job.get("backend") == "openvino":
        # the route a CPU user takes without ensrm: OpenVINO on a plain logits export, aggregates in numpy
        from ensrm.runtime.openvino_backend import compile_options, core

        compiled = core().compile_model(job["file"], "CPU", compile_options(threads))
        request, names, vocab = compiled.create_infer_request(), tuple(p.get_any_name() for p in compiled.inputs), \
            job["vocab_size"]
        described = f"OpenVINO CPU f32 ({job['file']})"

        def call(feeds):
            logits = request.infer(feeds)[compiled.output(0)]  # [batch, K]
            return numpy_aggregates(logits, lam)
    elif mode == "plain":
        session = create_session(job["file"], threads=threads)
        names, vocab = tuple(i.name for i in session.get_inputs()), job["vocab_size"]
        described = f"onnxruntime CPU fp32 ({job['file']})"

        def call(feeds):
            logits = session.run(None, feeds)[0]  # [batch, K]
            return numpy_aggregates(logits, lam)
    else:
        raise ValueError(f"unknown ort mode {mode!r}")
    load_s = time.perf_counter() - start
    out = _grid(call, job, names, vocab)
    out.update(load_s=load_s, rss_baseline_mb=baseline, rss_peak_mb=peak_rss_mb())
    if mode != "sessions":
        out["runtime"] = described  # what actually ran: runtime, device, graph file, precision
    return out


def paired_job(job: dict) -> dict:
    """Several bundles in one process, one call each per round in rotating order.

    Differences of a few percent drown in the spread between processes on a shared 2-core
    machine (the K sweep read +40% across fresh processes and +3% paired on the same box).
    Each round's time of bundle i over bundle 0's, measured back to back, cancels the drift
    both saw; the median of those per-round ratios is reported.
    """
    from ensrm.runtime.scorer import Scorer

    scorers = [Scorer(b, threads=job.get("threads"), verify="size") for b in job["bundles"]]
    batch, length = job["shape"]
    feeds = [random_feeds(s.spec.inputs, batch, length, s.spec.vocab_size) for s in scorers]
    for scorer, feed in zip(scorers, feeds):
        for _ in range(job.get("warmup", 1)):
            scorer.score(**feed)
    times = [[] for _ in scorers]
    for r in range(job.get("rounds", 10)):
        order = list(range(len(scorers)))
        for i in order[r % len(order):] + order[:r % len(order)]:  # rotate: no bundle always runs first
            start = time.perf_counter()
            scorers[i].score(**feeds[i])
            times[i].append(time.perf_counter() - start)
    ratios = [[t / t0 for t, t0 in zip(ts, times[0])] for ts in times]
    return {"bundles": job["bundles"], "batch": batch, "length": length, "times": times,
            "median_s": [float(np.median(ts)) for ts in times],
            "paired_ratio": [float(np.median(r)) for r in ratios]}


def torch_job(job: dict) -> dict:
    import torch
    import transformers

    baseline = peak_rss_mb()
    threads = job.get("threads")
    if threads:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    kwargs = {"attn_implementation": job["attn_implementation"]} if job.get("attn_implementation") else {}
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        job["checkpoint"], dtype=torch.float32, **kwargs).eval()
    uses_types = getattr(model.config, "type_vocab_size", 0) > 1
    names = ("input_ids", "attention_mask") + (("token_type_ids",) if uses_types else ())
    load_s = time.perf_counter() - start

    # "bf16": PyTorch's bf16 autocast, the fair peer of a bf16 runtime (fp32 weights, bf16 products)
    autocast = job.get("autocast")

    def call(feeds):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast == "bf16"):
            logits = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits  # [batch, K]
        return numpy_aggregates(logits.float().numpy(), job.get("uwo_lambda", 0.5))

    out = _grid(call, job, names, model.config.vocab_size)
    out.update(load_s=load_s, rss_baseline_mb=baseline, rss_peak_mb=peak_rss_mb(),
               torch=torch.__version__, torch_threads=torch.get_num_threads(),
               attn_implementation=model.config._attn_implementation, autocast=autocast)
    return out


def matmul_graph(m: int, k: int, n: int, precision: str, seed: int = 0):
    """A one-node graph ``A [m, k] @ B [k, n]`` with ``B`` a constant, as weights are in a model."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    if precision == "fp32":
        weight = numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "B")
        node = helper.make_node("MatMul", ["A", "B"], ["Y"])
        a_type, y_type = TensorProto.FLOAT, TensorProto.FLOAT
        opset = 17
    else:
        # uint8 activations x int8 weights: the pairing AVX-512 VNNI (vpdpbusd) multiplies natively.
        weight = numpy_helper.from_array(rng.integers(-127, 128, (k, n)).astype(np.int8), "B")
        node = helper.make_node("MatMulInteger", ["A", "B"], ["Y"])
        a_type, y_type = TensorProto.UINT8, TensorProto.INT32
        opset = 17
    graph = helper.make_graph([node], "matmul", [helper.make_tensor_value_info("A", a_type, [m, k])],
                              [helper.make_tensor_value_info("Y", y_type, [m, n])], initializer=[weight])
    return onnx.helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def matmul_job(job: dict) -> dict:
    import onnxruntime as ort

    from ensrm.runtime.onnxruntime_backend import session_options

    out = {}
    rng = np.random.default_rng(1)
    for precision in job.get("precisions", ["fp32", "int8"]):
        rows = []
        for m, k, n in job["shapes"]:
            model = matmul_graph(m, k, n, precision)
            session = ort.InferenceSession(model.SerializeToString(), session_options(job.get("threads")),
                                           providers=["CPUExecutionProvider"])
            a = (rng.standard_normal((m, k)).astype(np.float32) if precision == "fp32"
                 else rng.integers(0, 256, (m, k)).astype(np.uint8))
            times = time_calls(lambda: session.run(None, {"A": a}), job.get("warmup", 2), job.get("repeats", 10),
                               job.get("min_time", 0.0))
            stats = summarize(times)
            rows.append({"m": m, "k": k, "n": n, "times": times, **stats,
                         "gflops": 2.0 * m * k * n / stats["median_s"] / 1e9})
        out[precision] = rows
    out["rss_peak_mb"] = peak_rss_mb()
    return out


def torch_matmul_job(job: dict) -> dict:
    """``torch.mm`` at the same shapes and threads as :func:`matmul_job`: the GEMM eager runs on.

    On the development box (AVX-512 Xeon, 1 thread) MKL's sgemm ran 1.4-1.65x onnxruntime's
    MatMul at the encoder's shapes, which bounds what any fp32 graph can gain over eager.
    """
    import torch

    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    rng = np.random.default_rng(1)
    rows = []
    for m, k, n in job["shapes"]:
        a = torch.from_numpy(rng.standard_normal((m, k)).astype(np.float32))
        b = torch.from_numpy(rng.standard_normal((k, n)).astype(np.float32))
        with torch.inference_mode():
            times = time_calls(lambda: torch.mm(a, b), job.get("warmup", 2), job.get("repeats", 10),
                               job.get("min_time", 0.0))
        stats = summarize(times)
        rows.append({"m": m, "k": k, "n": n, "times": times, **stats,
                     "gflops": 2.0 * m * k * n / stats["median_s"] / 1e9})
    return {"torch_fp32": rows, "rss_peak_mb": peak_rss_mb()}


def openvino_matmul_job(job: dict) -> dict:
    """OpenVINO's fp32 MatMul (oneDNN) at the same shapes and threads as :func:`matmul_job`.

    The product is built as an OpenVINO model (activation ``[m, k]`` times a constant ``[k, n]``),
    compiled with ensrm's own options, so the rate is what the OpenVINO backend's GEMMs can reach.
    """
    from ensrm.runtime.openvino_backend import compile_options, core, openvino

    ov = openvino()
    rng = np.random.default_rng(1)
    rows = []
    for m, k, n in job["shapes"]:
        a = ov.opset13.parameter([m, k], ov.Type.f32, name="A")
        b = ov.opset13.constant(rng.standard_normal((k, n)).astype(np.float32))
        model = ov.Model([ov.opset13.matmul(a, b, False, False)], [a], "matmul")
        compiled = core().compile_model(model, "CPU", compile_options(job.get("threads")))
        request = compiled.create_infer_request()
        x = rng.standard_normal((m, k)).astype(np.float32)
        times = time_calls(lambda: request.infer({0: x}), job.get("warmup", 2), job.get("repeats", 10),
                           job.get("min_time", 0.0))
        stats = summarize(times)
        rows.append({"m": m, "k": k, "n": n, "times": times, **stats,
                     "gflops": 2.0 * m * k * n / stats["median_s"] / 1e9})
    return {"openvino_fp32": rows, "rss_peak_mb": peak_rss_mb()}


class _TimedSession:
    """Wraps a runtime backend (or an ``InferenceSession``) and accumulates the time spent inside ``run``."""

    def __init__(self, session):
        self.session, self.inside = session, 0.0

    def run(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.session.run(*args, **kwargs)
        finally:
            self.inside += time.perf_counter() - start

    def __getattr__(self, name):
        return getattr(self.session, name)


def overhead_job(job: dict) -> dict:
    """Per call: time in ``Scorer.score`` and, of it, time inside ``session.run``."""
    from ensrm.runtime.scorer import Scorer

    scorer = Scorer(job["bundle"], threads=job.get("threads"), verify="size", backend=job.get("backend", "auto"))
    timed = _TimedSession(scorer.backend)  # the runtime's own time, whichever runtime it is
    scorer.backend = timed
    feeds = random_feeds(scorer.spec.inputs, job["batch"], job["length"], scorer.spec.vocab_size)
    for _ in range(job.get("warmup", 2)):
        scorer.score(**feeds)
    total, inside = [], []
    for _ in range(job.get("repeats", 10)):
        timed.inside = 0.0
        start = time.perf_counter()
        scorer.score(**feeds)
        total.append(time.perf_counter() - start)
        inside.append(timed.inside)
    overhead = [t - i for t, i in zip(total, inside)]
    return {"batch": job["batch"], "length": job["length"], "score_s": summarize(total),
            "session_run_s": summarize(inside), "overhead_s": summarize(overhead),
            "overhead_fraction": float(np.median(overhead) / np.median(inside))}


_WORDS = ("the a model reward answer question helpful careful bread water mountain python list tuple "
          "explain because however therefore quickly slowly yesterday tomorrow garden kitchen engine "
          "policy ensemble gradient sample honest harmless clear short long example result method").split()


def mixed_pairs(n: int, min_words: int, max_words: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """``n`` (prompt, response) pairs whose total length is spread uniformly between the bounds."""
    rng = np.random.default_rng(seed)
    prompts, responses = [], []
    for total in rng.integers(min_words, max_words + 1, n):
        split = max(1, int(total * rng.uniform(0.1, 0.4)))
        prompts.append(" ".join(rng.choice(_WORDS, split)) + "?")
        responses.append(" ".join(rng.choice(_WORDS, max(1, int(total) - split))) + ".")
    return prompts, responses


def _arrival_batches(encoder, encodings, batch_size: int):
    """Batches in arrival order, each padded to its own longest member (no length grouping)."""
    for start in range(0, len(encodings), batch_size):
        rows = np.arange(start, min(start + batch_size, len(encodings)))
        # TextEncoder.batches sorts by length; a single batch sorted internally is still padded to its longest.
        yield from ((rows[r], feeds) for r, feeds in encoder.batches([encodings[i] for i in rows], len(rows)))


def texts_job(job: dict) -> dict:
    """``score_texts`` vs scoring the same pairs pre-tokenised; grouped vs arrival-order batches."""
    from ensrm.runtime.scorer import Scorer

    scorer = Scorer(job["bundle"], threads=job.get("threads"), verify="size")
    encoder = scorer.text_encoder
    batch_size = job.get("batch_size", 32)
    # Words per pair chosen so tokens land near the requested range; the real lengths are reported.
    prompts, responses = mixed_pairs(job["pairs"], job["min_words"], job["max_words"], job.get("seed", 0))
    encodings = encoder.encode(prompts, responses)
    lengths = np.array([len(e.ids) for e in encodings])
    grouped = list(encoder.batches(encodings, batch_size))
    arrival = list(_arrival_batches(encoder, encodings, batch_size))

    def run_texts():
        scorer.score_texts(prompts, responses, batch_size=batch_size)

    def run_batches(batches):
        for _, feeds in batches:
            scorer.score(**feeds)

    cases = {"score_texts": run_texts, "pretokenised_grouped": lambda: run_batches(grouped),
             "pretokenised_arrival": lambda: run_batches(arrival)}
    for fn in cases.values():
        fn()  # warm-up: every shape once
    times = {name: [] for name in cases}
    for _ in range(job.get("repeats", 3)):
        for name, fn in cases.items():  # interleaved, so drift hits every case alike
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    padded = {"pretokenised_grouped": sum(f["input_ids"].size for _, f in grouped),
              "pretokenised_arrival": sum(f["input_ids"].size for _, f in arrival)}
    out = {"pairs": len(prompts), "batch_size": batch_size, "tokens": int(lengths.sum()),
           "length_min": int(lengths.min()), "length_max": int(lengths.max()),
           "length_mean": float(lengths.mean()), "padded_tokens": padded, "cases": {}}
    for name, values in times.items():
        stats = summarize(values)
        out["cases"][name] = {"times": values, **stats, "pairs_per_s": len(prompts) / stats["median_s"]}
    return out


JOBS = {"ort": ort_job, "paired": paired_job, "torch": torch_job, "matmul": matmul_job,
        "torch_matmul": torch_matmul_job, "openvino_matmul": openvino_matmul_job, "overhead": overhead_job,
        "texts": texts_job}


def main(argv: list[str], jobs: dict | None = None) -> int:
    """Run the job in ``argv[0]`` (JSON) and write its result to ``argv[1]``; ``jobs`` adds kinds to :data:`JOBS`."""
    job_path, out_path = argv
    with open(job_path) as handle:
        job = json.load(handle)
    result = {**JOBS, **(jobs or {})}[job["kind"]](job)
    result.setdefault("rss_peak_mb", peak_rss_mb())
    with open(out_path + ".tmp", "w") as handle:
        json.dump(result, handle)
    import os

    os.replace(out_path + ".tmp", out_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
