"""Measure the fused-CPU-graph leads of issue 15 against a bundle's portable ``model.onnx``.

Writes each lead's graph into ``--work``, prints which operators it holds after onnxruntime's
own fusions (the graph the session actually runs), its largest difference from the portable
graph on padded batches, and its CPU time (``process_time``) relative to the portable graph,
interleaved A/B in one process (the machine these notes came from is shared and noisy).

    python scripts/fusion_leads.py --bundle bundles/default --checkpoint checkpoints/default

Leads: ``ortopt`` (``onnxruntime.transformers.optimizer`` on the portable graph), ``sdpa23``
(the dynamo export with ``attn_implementation="sdpa"`` at opset 23, where torch emits ONNX's
``Attention`` operator), ``sdpa23_ortopt`` (the optimizer on that graph; list it after ``sdpa23``).
"""

from __future__ import annotations

import argparse
import collections
import logging
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from ensrm.bundle import load_spec
from ensrm.runtime.onnxruntime_backend import session_options


def session(path: Path, threads: int, optimized: Path | None = None):
    options = session_options(threads)
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def op_counts(path: Path) -> dict[str, int]:
    graph = onnx.load(str(path), load_external_data=False).graph
    return dict(collections.Counter(n.op_type for n in graph.node).most_common())


def feeds(spec, batch: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random ids with the second half of the rows padded to a third of the length."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, spec.vocab_size, (batch, length), dtype=np.int64)
    mask = np.ones((batch, length), dtype=np.int64)
    mask[batch // 2:, length // 3:] = 0
    ids[mask == 0] = spec.pad_token_id
    out = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    return {name: out[name] for name in spec.inputs}


def ortopt(portable: Path, target: Path, num_heads: int, hidden: int) -> Path:
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    # why a fusion did not match ("fuse_attention: failed to match mask path") is logged at debug
    logging.getLogger("fusion_attention").setLevel(logging.DEBUG)
    logging.basicConfig(level=logging.WARNING, format="  %(name)s: %(message)s")
    options = FusionOptions("bert")
    model = optimize_model(str(portable), model_type="bert", num_heads=num_heads, hidden_size=hidden,
                           optimization_options=options, opt_level=0)
    print("  fused operators:", {k: v for k, v in model.get_fused_operator_statistics().items() if v})
    model.save_model_to_file(str(target), use_external_data_format=True)
    return target


def sdpa23(checkpoint: Path, bundle: Path, work: Path) -> Path:
    """The bundle's own trace, with sdpa attention and opset 23 instead of eager and 18."""
    import torch

    from ensrm.export.prune import prune_to_pooled_token
    from ensrm.export.sources import load_source
    from ensrm.models.graph import RAW_OUTPUT, append_aggregation

    spec = load_spec(bundle, verify="size")
    source = load_source([checkpoint], max_length=spec.max_length, attn_implementation="sdpa")
    batch, seq = 2, 8
    ids = torch.full((batch, seq), max(spec.pad_token_id, 0), dtype=torch.long)
    args = tuple(torch.ones_like(ids) if name == "attention_mask" else ids.clone() for name in spec.inputs)
    dims = {0: torch.export.Dim("batch", min=1), 1: torch.export.Dim("seq", min=1, max=spec.max_length)}
    target = work / "sdpa23.onnx"
    torch.onnx.export(source.module, args, str(target), dynamo=True, input_names=list(spec.inputs),
                      output_names=[RAW_OUTPUT], dynamic_shapes={n: dims for n in spec.inputs}, opset_version=23,
                      external_data=True, verbose=False)
    model = onnx.load(str(target), load_external_data=False)
    append_aggregation(model, spec.num_heads, spec.normalization.mu, spec.normalization.sigma, spec.uwo_lambda)
    prune_to_pooled_token(model.graph)
    onnx.save(model, str(target))
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("bundles/default"))
    parser.add_argument("--checkpoint", type=Path, default=Path("checkpoints/default"))
    parser.add_argument("--work", type=Path, default=Path("artifacts/fusion_leads"))
    parser.add_argument("--leads", default="ortopt,sdpa23,sdpa23_ortopt")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    import transformers

    config = transformers.AutoConfig.from_pretrained(args.checkpoint)
    spec = load_spec(args.bundle, verify="size")
    portable = args.bundle / "model.onnx"
    graphs = {"portable": portable}
    for lead in args.leads.split(","):
        print(f"lead {lead}:")
        if lead == "sdpa23":
            graphs[lead] = sdpa23(args.checkpoint, args.bundle, args.work)
        else:  # ortopt: the optimizer on the portable graph; sdpa23_ortopt: on the sdpa23 graph
            start = graphs["sdpa23"] if lead == "sdpa23_ortopt" else portable
            graphs[lead] = ortopt(start, args.work / f"{lead}.onnx", config.num_attention_heads, config.hidden_size)
        print("  ops in the saved graph:", op_counts(graphs[lead]))
    sessions = {}
    for name, path in graphs.items():
        optimized = args.work / f"{name}.session.onnx"
        sessions[name] = session(path, args.threads, optimized)
        print(f"{name}: ops after onnxruntime's fusions:", op_counts(optimized))
    check = feeds(spec, 4, 64)
    reference = sessions["portable"].run(["heads"], check)[0]  # [batch, K]
    for name, sess in sessions.items():
        diff = np.abs(sess.run(["heads"], check)[0] - reference).max()
        print(f"{name}: max |heads - portable| {diff:.2e} (padded batch 4 x 64)")
    timed = feeds(spec, args.batch, min(args.length, spec.max_length), seed=1)
    for sess in sessions.values():
        sess.run(None, timed)
    cpu = {name: [] for name in sessions}
    for r in range(args.rounds):
        names = list(sessions)
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.process_time()
            sessions[name].run(None, timed)
            cpu[name].append(time.process_time() - start)
    base = np.array(cpu["portable"])
    for name, values in cpu.items():
        ratio = np.median(np.array(values) / base)
        print(f"{name}: CPU time median {np.median(values):.3f} s, per-round ratio to portable {ratio:.3f}")


if __name__ == "__main__":
    main()
