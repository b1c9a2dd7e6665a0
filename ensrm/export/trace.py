"""The trace step: a loaded source in, a verified ``model.onnx`` and the bundle's spec out."""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

from ensrm._optional import require
from ensrm.builder import BundleBuilder
from ensrm.errors import ExportError
from ensrm.export.sources import LoadedSource
from ensrm.spec import MODEL_FILES, EnsembleSpec, Variant


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


def padding_side_for(source: LoadedSource, padding_side: str | None) -> str:
    """The padding the bundle is fed with: given, or right for encoders and left for decoders."""
    side = padding_side or ("left" if source.architecture == "decoder" else "right")
    if side == "left" and source.pooling == "cls":
        raise ExportError("first-token (cls) pooling needs right padding; left padding would pool a pad token")
    if side == "left" and source.architecture == "encoder":
        # Encoders number positions by column; left padding would shift every position.
        raise ExportError(f"{source.model_type} is an encoder: it needs right padding (`padding_side='right'`)")
    return side


def spec_for(source: LoadedSource, *, uwo_lambda: float, padding_side: str) -> EnsembleSpec:
    """The spec of a bundle of ``source`` before tracing (identity normalisation, no variants)."""
    import ensrm

    torch = require("torch", "export")
    transformers = require("transformers", "export")
    tokenizer = source.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return EnsembleSpec(
        num_heads=source.num_heads, architecture=source.architecture, model_type=source.model_type,
        pooling=source.pooling,
        inputs=("input_ids", "attention_mask") + (("token_type_ids",) if source.uses_token_type_ids else ()),
        max_length=source.max_length, vocab_size=source.vocab_size,
        pad_token_id=int(pad_id if pad_id is not None else 0), padding_side=padding_side,
        truncation_side="left" if source.architecture == "decoder" else "right",
        uwo_lambda=float(uwo_lambda), head_names=source.head_names, source_kind=source.kind,
        members=source.members, member_layers=source.member_layers, source_fingerprint=source.fingerprint,
        dtype=source.dtype, producer={"ensrm": ensrm.__version__, "torch": torch.__version__,
                  "transformers": transformers.__version__, "exporter": "torch.onnx dynamo"},
    )


def trace_to_onnx(module, spec: EnsembleSpec, path: Path) -> None:
    """Trace ``module`` with torch's dynamo exporter into ``path``, append the aggregation, and
    narrow the layers after the last attention to the pooled token (:mod:`ensrm.export.prune`)."""
    torch = require("torch", "export")
    onnx = require("onnx", "export")
    from ensrm.export.prune import prune_to_pooled_token
    from ensrm.models.graph import RAW_OUTPUT, append_aggregation

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
    if spec.dtype == "bf16":  # onnxruntime's CPU provider has no bf16 arithmetic: bf16 weights, fp32 products
        from ensrm.export.dtypes import upcast_compute

        upcast_compute(model)
    onnx.save(model, str(path))


def trace_and_verify(build: BundleBuilder, source: LoadedSource, spec: EnsembleSpec, *,
                     tolerance: float | None = 1e-4) -> None:
    """Trace ``source`` into the new bundle as ``spec`` describes it (:func:`spec_for`), check it
    against torch (in the source's dtype), save its tokenizer; set the builder's spec.

    The steps take turns in memory. Torch scores the verification inputs first
    (:func:`~ensrm.export.verify.score_with_torch`); then the graph is traced and torch's weights are
    released (``source.module`` cannot run afterwards, :func:`~ensrm.export.verify.release_weights`)
    before onnxruntime loads the graph and scores the same inputs in a lean session
    (:func:`~ensrm.export.verify.verification_session`). A dynamo trace leaves views of the weights
    alive in the process that ran it, so a source of at least
    :data:`~ensrm.export.memory.TRACE_CHILD_MIN_BYTES` is traced in a child process
    (:mod:`ensrm.export.trace_child`) after this process released its weights: torch's copy, the
    child's and onnxruntime's are then never in memory together. A smaller source is traced here
    (no seconds of spawning), and its torch weights stay beside the onnxruntime session; the estimate
    (:func:`~ensrm.export.memory.check_export_memory`) counts each case.

    Raises :class:`ExportError` (and nothing is written) when a head differs by more than ``tolerance``
    (``None``: the dtype's default, relative to the largest head, :data:`~ensrm.export.dtypes.RELATIVE_TOLERANCE`),
    or with the child's message when the trace failed there.
    """
    from ensrm.export import memory
    from ensrm.export.verify import (
        release_memory,
        release_weights,
        score_with_torch,
        verification_session,
        verify_graph,
    )

    model_path = build.path(MODEL_FILES["fp32"])
    weights = memory.weight_bytes_of(source.module)
    reference = score_with_torch(source.module, source.tokenizer, spec, memory.activation_budget(weights=weights))
    build.step(f"scored {len(reference.items)} verification sequences in torch ({spec.dtype})")
    # decided here, not in the child: the threshold is read when the export runs
    in_child = source.load_args is not None and weights >= memory.TRACE_CHILD_MIN_BYTES
    if in_child:
        from ensrm.export.trace_child import trace_in_child

        release_weights(source.module)  # nothing traced them here: they are freed before the child loads its copy
        trace_in_child(source.load_args, spec, model_path, weights=weights)
    else:
        trace_to_onnx(source.module, spec, model_path)
        release_weights(source.module)  # frees what the exporter did not keep
    build.step("traced the ensemble graph" + (" in a child process" if in_child else ""))
    session = verification_session(model_path, threads=build.threads)
    report = verify_graph(session, reference, spec, tolerance)
    del session
    release_memory()
    build.step(f"verified against torch ({spec.dtype}): max |diff| {report['max_abs_diff_heads']:.2e} "
               f"on {report['sequences']} sequences, padding {'+'.join(report['padding_sides'])}")
    if not report["passed"]:
        raise ExportError(
            f"the ONNX graph differs from the torch model by {report['max_abs_diff_heads']:.3g} "
            f"(aggregates {report['max_abs_diff_aggregates']:.3g}), above the tolerance {report['tolerance']:g}; "
            "no bundle was written"
        )
    source.tokenizer.save_pretrained(build.staging)
    build.spec = spec.with_variants(Variant("fp32", MODEL_FILES["fp32"], accepted=True, checks=report))
