"""The worker jobs of the project's experiment suites, run as ``python -m benchmarks.worker JOB OUT``.

Every job kind of :data:`ensrm.bench.JOBS` runs here too; this module adds ``stacked_matmul`` and the
decoder suite's ``decoder_export`` and ``decoder_variant`` (each export or variant in a process of its own:
its peak memory is its own, and a 0.5B model's export never piles up in the suite's process).
"""

from __future__ import annotations

import sys
import time

import numpy as np

from ensrm.bench import peak_rss_mb, summarize, time_calls, worker_main


def stacked_matmul_graph(members: int, tokens: int, k: int, n: int, stacked: bool, seed: int = 0):
    """``members`` products ``A_i [tokens, k] @ B_i [k, n]`` with constant ``B_i``: one batched MatMul of
    ``A [members, tokens, k]`` by ``B [members, k, n]`` (``stacked``), or ``members`` MatMul nodes, as
    the partial-trunk export's K copies of a member layer run them."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((members, k, n)).astype(np.float32)
    if stacked:
        nodes = [helper.make_node("MatMul", ["A", "B"], ["Y"])]
        inputs = [helper.make_tensor_value_info("A", TensorProto.FLOAT, [members, tokens, k])]
        outputs = [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [members, tokens, n])]
        initializers = [numpy_helper.from_array(weights, "B")]
    else:
        nodes = [helper.make_node("MatMul", [f"A{i}", f"B{i}"], [f"Y{i}"]) for i in range(members)]
        inputs = [helper.make_tensor_value_info(f"A{i}", TensorProto.FLOAT, [tokens, k]) for i in range(members)]
        outputs = [helper.make_tensor_value_info(f"Y{i}", TensorProto.FLOAT, [tokens, n]) for i in range(members)]
        initializers = [numpy_helper.from_array(weights[i], f"B{i}") for i in range(members)]
    graph = helper.make_graph(nodes, "stacked_matmul", inputs, outputs, initializer=initializers)
    return onnx.helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def stacked_matmul_job(job: dict) -> dict:
    """Stacked ``[K, ...]`` weights as one batched product against K separate products, per shape.

    torch: ``torch.bmm`` of ``[K, tokens, k] x [K, k, n]`` against K ``torch.mm``; onnxruntime: one
    3-D MatMul against K MatMul nodes in one graph (the form the partial-trunk export writes).
    The four cases of a shape alternate over ``rounds``, each timed for ``min_time`` seconds a round,
    so drift on a shared machine hits them alike; medians of the pooled calls are reported.
    """
    import onnxruntime as ort
    import torch

    from ensrm.runtime.onnxruntime_backend import session_options

    threads = job.get("threads")
    if threads:
        torch.set_num_threads(threads)
    members, tokens = job["members"], job["tokens"]
    rng = np.random.default_rng(1)
    rows = []
    for k, n in job["shapes"]:
        a = rng.standard_normal((members, tokens, k)).astype(np.float32)
        b = rng.standard_normal((members, k, n)).astype(np.float32)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        sessions = {stacked: ort.InferenceSession(
            stacked_matmul_graph(members, tokens, k, n, stacked).SerializeToString(), session_options(threads),
            providers=["CPUExecutionProvider"]) for stacked in (True, False)}
        feeds = {True: {"A": a}, False: {f"A{i}": np.ascontiguousarray(a[i]) for i in range(members)}}

        def torch_bmm():
            with torch.inference_mode():
                return torch.bmm(ta, tb)

        def torch_mm():
            with torch.inference_mode():
                return [torch.mm(ta[i], tb[i]) for i in range(members)]

        cases = {"torch_bmm": torch_bmm, "torch_mm_copies": torch_mm,
                 "ort_batched_matmul": lambda: sessions[True].run(None, feeds[True]),
                 "ort_matmul_copies": lambda: sessions[False].run(None, feeds[False])}
        times = {name: [] for name in cases}
        for r in range(job.get("rounds", 3)):
            names = list(cases)
            for name in names[r % len(names):] + names[:r % len(names)]:
                times[name] += time_calls(cases[name], job.get("warmup", 1) if r == 0 else 0,
                                          job.get("repeats", 3), job.get("min_time", 0.0))
        flops = 2.0 * members * tokens * k * n
        row = {"k": k, "n": n, "cases": {}}
        for name, values in times.items():
            stats = summarize(values)
            row["cases"][name] = {**stats, "gflops": flops / stats["median_s"] / 1e9}
        cases_out = row["cases"]
        # > 1: the batched product is faster than K copies
        row["torch_copies_over_bmm"] = cases_out["torch_mm_copies"]["median_s"] / cases_out["torch_bmm"]["median_s"]
        row["ort_copies_over_batched"] = (cases_out["ort_matmul_copies"]["median_s"]
                                          / cases_out["ort_batched_matmul"]["median_s"])
        rows.append(row)
    return {"members": members, "tokens": tokens, "shapes": rows, "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "rss_peak_mb": peak_rss_mb()}


def decoder_export_job(job: dict) -> dict:
    """``ensrm.export_bundle`` of ``checkpoint`` into ``output`` with graph ``dtype`` and ``max_length``."""
    import ensrm

    start = time.perf_counter()
    settings = ensrm.ExportSettings(max_length=job["max_length"], dtype=job["dtype"], threads=job.get("threads"))
    ensrm.export_bundle([job["checkpoint"]], job["output"], settings, progress=None)
    return {"export_s": time.perf_counter() - start, "rss_peak_mb": peak_rss_mb()}


def decoder_variant_job(job: dict) -> dict:
    """``ensrm.add_variants`` of one ``precision`` (with ``int8_mode`` when given) to ``bundle``, gated on the
    ``calibration`` and ``eval_on`` records."""
    import ensrm

    start = time.perf_counter()
    options = {"int8_mode": job["int8_mode"]} if job.get("int8_mode") else {}
    ensrm.add_variants(job["bundle"], job["precision"], calibration=job["calibration"], eval_on=job["eval_on"],
                       threads=job.get("threads"), **options)
    return {"variant_s": time.perf_counter() - start, "rss_peak_mb": peak_rss_mb()}


JOBS = {"stacked_matmul": stacked_matmul_job, "decoder_export": decoder_export_job,
        "decoder_variant": decoder_variant_job}

if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:], JOBS))
