"""``export_bundle``: source checkpoint(s) in, verified bundle directory out."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from ensrm._optional import require
from ensrm.bundle import check_target, staged_bundle, write_manifest
from ensrm.errors import ExportError
from ensrm.spec import MODEL_FILES, EnsembleSpec

Progress = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class _Steps:
    """Numbered step messages with elapsed time, so a long export shows where it is."""

    def __init__(self, total: int, report: Progress | None):
        self.total, self.report, self.n, self.start = total, report, 0, time.perf_counter()

    def __call__(self, message: str) -> None:
        self.n += 1
        if self.report:
            self.report(f"[{self.n}/{self.total}] {message} ({time.perf_counter() - self.start:.1f}s)")


@contextlib.contextmanager
def _quiet_exporter():
    """Hide the exporter's own chatter (progress lines, dynamic-shape renames, deprecations):
    the export reports its steps itself, and none of it concerns the user's model."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (UserWarning, FutureWarning, DeprecationWarning))
            yield
    finally:
        logger.setLevel(level)


def trace_to_onnx(module, spec: EnsembleSpec, path: Path) -> None:
    """Trace ``module`` with torch's dynamo exporter into ``path``, append the aggregation, and
    narrow the layers after the last attention to the pooled token (:mod:`ensrm.export.prune`)."""
    torch = require("torch", "export")
    onnx = require("onnx", "export")
    from ensrm.export.graph import RAW_OUTPUT, append_aggregation
    from ensrm.export.prune import prune_to_pooled_token

    # Example sizes above 1: torch.export specialises dimensions of size 0 and 1.
    batch, seq = 2, min(8, spec.max_length)
    ids = torch.full((batch, seq), max(spec.pad_token_id, 0), dtype=torch.long)
    args = tuple(torch.ones_like(ids) if name == "attention_mask" else ids.clone() for name in spec.inputs)
    dims = {0: torch.export.Dim("batch", min=1), 1: torch.export.Dim("seq", min=1, max=spec.max_length)}
    try:
        with _quiet_exporter():
            torch.onnx.export(
                module, args, str(path), dynamo=True, input_names=list(spec.inputs), output_names=[RAW_OUTPUT],
                dynamic_shapes={name: dims for name in spec.inputs}, opset_version=18, external_data=True,
                verbose=False,
            )
    except Exception as exc:  # noqa: BLE001 - the exporter raises many types; report them as one
        raise ExportError(f"torch.onnx.export failed for {spec.model_type}: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
    model = onnx.load(str(path), load_external_data=False)
    append_aggregation(model, spec.num_heads, spec.normalization.mu, spec.normalization.sigma, spec.uwo_lambda)
    prune_to_pooled_token(model.graph)
    onnx.save(model, str(path))


def export_bundle(
    sources: Sequence[str | Path],
    output: str | Path,
    *,
    heads: str | Path | None = None,
    tokenizer: str | Path | None = None,
    pooling: str | None = None,
    uwo_lambda: float = 0.5,
    max_length: int | None = None,
    padding_side: str | None = None,
    tolerance: float = 1e-4,
    overwrite: bool = False,
    attn_implementation: str = "eager",
    trust_remote_code: bool = False,
    threads: int | None = None,
    normalize_on: str | Path | None = None,
    precisions=(),
    calibration: str | Path | None = None,
    eval_on: str | Path | None = None,
    int8_mode: str = "static",
    gates: dict | None = None,
    progress: Progress | None = _stderr,
) -> EnsembleSpec:
    """Export a reward model (or a full ensemble) into a verified bundle directory.

    The bundle appears at ``output`` only once it is complete and verified; on any error
    nothing is left behind and an existing bundle is untouched.

    ``tokenizer`` is a directory to take the tokenizer from when the source has none (often the
    base model the reward model was trained from); the tokenizer must fit the model
    (:mod:`ensrm.export.checks`).

    ``normalize_on`` (a JSONL file of prompt/response records) calibrates the per-head
    normalisation; ``precisions`` (``"fp16,int8"``) adds variants, each kept only if it passes
    its accuracy gate on held-out records (``eval_on``, else a quarter of ``calibration``).

    >>> spec = export_bundle(["checkpoints/rm"], "bundles/rm")     # doctest: +SKIP
    >>> spec.num_heads
    8
    """
    import ensrm
    from ensrm.export.checks import check_source
    from ensrm.export.sources import load_source
    from ensrm.export.verify import verify_against_torch
    from ensrm.runtime.onnxruntime_backend import create_session

    if uwo_lambda < 0:
        raise ExportError(f"--lambda must be >= 0, got {uwo_lambda}")
    check_target(output, overwrite)
    from ensrm.calibration.variants import build_variants, parse_precisions

    precisions = parse_precisions(precisions)
    step = _Steps(4 + (normalize_on is not None) + bool(precisions), progress)
    source = load_source(sources, heads=heads, tokenizer=tokenizer, pooling=pooling, max_length=max_length,
                         attn_implementation=attn_implementation, trust_remote_code=trust_remote_code)
    side = padding_side or ("left" if source.architecture == "decoder" else "right")
    if side == "left" and source.pooling == "cls":
        raise ExportError("first-token (cls) pooling needs right padding; left padding would pool a pad token")
    if side == "left" and source.architecture == "encoder":
        # Encoders number positions by column; left padding would shift every position.
        raise ExportError(f"{source.model_type} is an encoder: it needs right padding (--padding-side right)")
    step(f"loaded {source.kind} {source.model_type}: {source.num_heads} heads, {source.architecture}, "
         f"pooling {source.pooling}, max length {source.max_length}")
    tokenizer = source.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    torch = require("torch", "export")
    transformers = require("transformers", "export")
    spec = EnsembleSpec(
        num_heads=source.num_heads, architecture=source.architecture, model_type=source.model_type,
        pooling=source.pooling,
        inputs=("input_ids", "attention_mask") + (("token_type_ids",) if source.uses_token_type_ids else ()),
        max_length=source.max_length, vocab_size=source.vocab_size,
        pad_token_id=int(pad_id if pad_id is not None else 0), padding_side=side,
        truncation_side="left" if source.architecture == "decoder" else "right",
        uwo_lambda=float(uwo_lambda), head_names=source.head_names, source_kind=source.kind,
        members=source.members, source_fingerprint=source.fingerprint,
        producer={"ensrm": ensrm.__version__, "torch": torch.__version__,
                  "transformers": transformers.__version__, "exporter": "torch.onnx dynamo"},
    )
    for note in check_source(source.module, tokenizer, spec):  # before tracing: torch and ONNX agree on garbage too
        if progress:
            progress(note)
    with staged_bundle(output, overwrite=overwrite) as staging:
        model_path = staging / MODEL_FILES["fp32"]
        trace_to_onnx(source.module, spec, model_path)
        step("traced the ensemble graph")
        session = create_session(model_path, threads=threads)
        report = verify_against_torch(session, source.module, tokenizer, spec, tolerance)
        step(f"verified against torch: max |diff| {report['max_abs_diff_heads']:.2e} "
             f"on {report['sequences']} sequences, padding {'+'.join(report['padding_sides'])}")
        if not report["passed"]:
            raise ExportError(
                f"the ONNX graph differs from the torch model by {report['max_abs_diff_heads']:.3g} "
                f"(aggregates {report['max_abs_diff_aggregates']:.3g}), above the tolerance {tolerance:g}; "
                "no bundle was written"
            )
        del session
        tokenizer.save_pretrained(staging)
        spec = spec.replace(variants={"fp32": {"file": MODEL_FILES["fp32"], "accepted": True, "checks": report}})
        references = None
        if normalize_on is not None:
            from ensrm.calibration.normalize import normalize_staged

            spec, references = normalize_staged(staging, spec, normalize_on, threads)
            step(f"normalised {spec.num_heads} heads on {len(references)} reference records")
        if precisions:
            spec = build_variants(staging, spec, precisions, calibration=calibration, eval_on=eval_on,
                                  references=references, int8_mode=int8_mode, gates=gates, threads=threads,
                                  progress=progress)
            kept = [p for p in precisions if spec.variants[p]["accepted"]]
            step(f"precision variants: {', '.join(kept) or 'none'} accepted"
                 + (f", {', '.join(p for p in precisions if p not in kept)} rejected (not written)"
                    if len(kept) < len(precisions) else ""))
        spec = write_manifest(staging, spec)
        step(f"wrote bundle {Path(output)}")
    if spec.num_heads > 1 and not spec.normalization.calibrated and progress:
        progress(f"warning: {spec.num_heads} heads without calibrated normalisation: ens_min and ens_uwo "
                 "compare raw head offsets; calibrate with --normalize-on REFS.jsonl")
    return spec
