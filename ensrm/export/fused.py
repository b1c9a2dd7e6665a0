"""The fused-graph step: a faster CPU form of ``model.onnx``, verified against it, as ``model.cpu.onnx``.

``model.onnx`` (standard ONNX operators, what TensorRT and the converters read) stays the
source of truth. onnxruntime's transformer optimizer rewrites a copy of it into the contrib
operators its CPU kernels run fused (``SkipLayerNormalization``, ``BiasGelu``/``FastGelu``,
``SkipSimplifiedLayerNormalization``, attention when it matches); the copy is kept only if it
fused something and scores the export's verification inputs (every padding side the bundle
is fed with) within the tolerance of the portable graph. :class:`~ensrm.runtime.scorer.Scorer`
runs it on the CPU provider only (:data:`ensrm.spec.FUSED_FILES`).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from ensrm._optional import require
from ensrm.builder import BundleBuilder, Progress
from ensrm.errors import EnsrmError
from ensrm.export.memory import FUSED_MAX_BYTES
from ensrm.spec import FUSED_FILES, MODEL_FILES, OUTPUT_NAMES, EnsembleSpec, FusedGraph

CPU = "CPUExecutionProvider"
#: The optimizer's options: its generic (``bert``) fusions, no onnxruntime graph optimisation baked
#: in (the session applies its own at load), heads and width found from the graph.
OPTIMIZER = {"tool": "onnxruntime.transformers.optimizer", "model_type": "bert", "opt_level": 0,
             "num_heads": 0, "hidden_size": 0}
#: Above this size (graph and weights) the step is not attempted (:data:`ensrm.export.memory.FUSED_MAX_BYTES`).
MAX_BYTES = FUSED_MAX_BYTES


def optimize_graph(portable: Path, target: Path) -> dict[str, int]:
    """Write the optimizer's form of ``portable`` to ``target`` (weights in ``target.data``);
    return the fusions that fired (operator -> count), empty when nothing fused (nothing written)."""
    require("onnxruntime", "core")
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    # The optimizer's modules log each pattern they fail to match, each on its own logger
    # ("fusion_attention", "onnx_model", ...); the step reports itself.
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        model = optimize_model(str(portable), model_type=OPTIMIZER["model_type"], num_heads=0, hidden_size=0,
                               optimization_options=FusionOptions(OPTIMIZER["model_type"]), opt_level=0)
    finally:
        logging.disable(previous)
    fusions = {op: int(n) for op, n in model.get_fused_operator_statistics().items() if n}
    # LayerNormalization is a standard operator the session fuses by itself: not worth a file.
    if not {op for op in fusions if op != "LayerNormalization"}:
        return {}
    model.save_model_to_file(str(target), use_external_data_format=True)
    for path, like in ((target, portable), (target.with_name(target.name + ".data"), portable)):
        if path.exists():  # onnx writes the weights owner-only; give them the portable graph's mode
            path.chmod(like.stat().st_mode & 0o777)
    return fusions


def verification_batches(staging: Path, spec: EnsembleSpec) -> list[dict[str, np.ndarray]]:
    """The export's verification pairs, tokenised by the bundle's tokenizer, in mixed-length
    batches on every padding side the bundle can be fed with (:mod:`ensrm.export.verify`)."""
    from ensrm.export.verify import _PROMPTS, _RESPONSES, pad_batch
    from ensrm.runtime.texts import TextEncoder

    pairs = [(p, r) for p in _PROMPTS for r in _RESPONSES]
    # the sizes the verification found to fit in memory (recorded when below the bundle's maximum)
    checks = spec.variants["fp32"].checks if "fp32" in spec.variants else {}
    length = int(checks.get("length_cap", spec.max_length))
    rows = int(checks.get("rows_per_run", len(pairs)))
    encodings = TextEncoder(staging, spec).encode([p for p, _ in pairs], [r for _, r in pairs])
    items = [{"input_ids": np.asarray(e.ids[-length:] if spec.truncation_side == "left" else e.ids[:length],
                                      dtype=np.int64)}
             | ({"token_type_ids": np.asarray(e.type_ids[:length], dtype=np.int64)} if spec.uses_token_type_ids else {})
             for e in encodings]
    sides = ["right", "left"] if spec.architecture == "decoder" else ["right"]
    order = list(range(len(items)))
    chunks = [order, order[::-1][: len(order) // 2], order[len(order) // 2:], order[:1]]
    return [pad_batch([items[i] for i in chunk[start:start + rows]], spec, side)
            for side in sides for chunk in chunks for start in range(0, len(chunk), rows)]


def compare_graphs(portable: Path, fused: Path, batches: list[dict[str, np.ndarray]], tolerance: float,
                   threads: int | None = None) -> dict:
    """Score ``batches`` with both graphs on the CPU provider; the largest differences and ``passed``.

    One graph at a time: the portable graph's outputs are kept (a few floats per row) and its
    session is closed before the fused graph loads, so the step never holds two copies of the
    weights (:func:`~ensrm.export.verify.verification_session`).
    """
    from ensrm.export.verify import release_memory, verification_session

    def scores(path: Path) -> list[dict[str, np.ndarray]]:
        session = verification_session(path, threads)
        feeds = {i.name for i in session.get_inputs()}
        return [dict(zip(OUTPUT_NAMES, session.run(list(OUTPUT_NAMES), {k: v for k, v in batch.items() if k in feeds})))
                for batch in batches]

    want = scores(portable)
    release_memory()
    got = scores(fused)
    release_memory()
    head_diff = agg_diff = 0.0
    for a, b in zip(want, got):
        head_diff = max(head_diff, float(np.abs(a["heads"] - b["heads"]).max()))
        agg_diff = max(agg_diff, max(float(np.abs(a[k] - b[k]).max()) for k in a if k != "heads"))
    return {"passed": bool(head_diff <= tolerance and agg_diff <= tolerance), "max_abs_diff_heads": head_diff,
            "max_abs_diff_aggregates": agg_diff, "tolerance": tolerance, "batches": len(batches),
            "sequences": sum(len(batch["input_ids"]) for batch in batches)}


def _remove(build: BundleBuilder, name: str) -> None:
    for path in (build.path(name), build.path(name + ".data")):
        path.unlink(missing_ok=True)


def _drop(build: BundleBuilder, message: str) -> None:
    _remove(build, FUSED_FILES[CPU])
    build.spec = build.spec.replace(fused={p: g for p, g in build.spec.fused.items() if p != CPU})
    build.step(message)


def fuse_cpu_graph(build: BundleBuilder, *, tolerance: float = 1e-4) -> None:
    """The fused-graph step: optimise ``model.onnx`` into ``model.cpu.onnx``, verify it, record it.

    Nothing fused, an optimizer failure or a difference above ``tolerance`` drops the file with a
    note; the bundle stays complete with its portable graph (and the export goes on).
    """
    from ensrm.export.verify import release_memory

    name = FUSED_FILES[CPU]
    portable, target = build.path(MODEL_FILES["fp32"]), build.path(name)
    _remove(build, name)
    weights = sum(p.stat().st_size for p in (portable, portable.with_name(portable.name + ".data")) if p.exists())
    if weights > MAX_BYTES:
        return _drop(build, f"no fused CPU graph: not attempted for a graph of {weights / 2 ** 30:.1f} GiB, above "
                            f"{MAX_BYTES / 2 ** 20:.0f} MiB (onnxruntime's optimizer peaks at about 7x the graph)")
    try:
        fusions = optimize_graph(portable, target)
    except Exception as exc:  # noqa: BLE001 - the optimizer raises anything; the portable graph suffices
        return _drop(build, f"no fused CPU graph: the optimizer failed ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''})")
    release_memory()  # the optimizer's copy of the model, before the comparison loads the graphs
    if not fusions:
        return _drop(build, "no fused CPU graph: the optimizer found nothing to fuse in this model")
    check_fused(build, FusedGraph(CPU, name, checks={}, method={**OPTIMIZER, "fusions": fusions}), tolerance)


def check_fused(build: BundleBuilder, graph: FusedGraph, tolerance: float = 1e-4) -> None:
    """Compare ``graph`` with the staged portable graph; record it in the spec if it passes, else drop it."""
    try:
        report = compare_graphs(build.path(MODEL_FILES[graph.base]), build.path(graph.file),
                                verification_batches(build.staging, build.spec), tolerance, build.threads)
    except EnsrmError:
        raise
    except Exception as exc:  # noqa: BLE001 - onnxruntime cannot load or run it: drop it, keep the bundle
        return _drop(build, f"no fused CPU graph: onnxruntime cannot run it ({type(exc).__name__})")
    if not report["passed"]:
        return _drop(build, f"no fused CPU graph: it differs from model.onnx by {report['max_abs_diff_heads']:.3g} "
                            f"(aggregates {report['max_abs_diff_aggregates']:.3g}), above {tolerance:g}; dropped")
    graph = dataclasses.replace(graph, checks=report)
    build.spec = build.spec.replace(fused={**build.spec.fused, graph.provider: graph})
    fusions = ", ".join(f"{op} {n}" for op, n in graph.method.get("fusions", {}).items())
    build.step(f"fused CPU graph {graph.file} ({fusions}): max |diff| from model.onnx "
               f"{report['max_abs_diff_heads']:.2e} on {report['sequences']} sequences")


def refresh_fused(build: BundleBuilder) -> None:
    """Check the bundle's fused graphs again after a step rewrote the portable one (normalisation)."""
    for graph in list(build.spec.fused.values()):
        check_fused(build, graph, float(graph.checks.get("tolerance", 1e-4)))


def add_cpu_graph(bundle_dir, *, tolerance: float = 1e-4, threads: int | None = None,
                  progress: Progress | None = None) -> EnsembleSpec:
    """Add (or write again) the fused CPU graph of an existing bundle, atomically (engines are dropped).

    (Not run by the doctests: it needs a bundle on disk.)

    >>> add_cpu_graph("bundles/rm").fused["CPUExecutionProvider"].file     # doctest: +SKIP
    'model.cpu.onnx'
    """
    with BundleBuilder.update(bundle_dir, drop=[FUSED_FILES[CPU]], threads=threads, progress=progress) as build:
        fuse_cpu_graph(build, tolerance=tolerance)
    return build.spec
