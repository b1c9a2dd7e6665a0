"""A Triton Inference Server model repository for a bundle: text in, ensemble scores out.

:func:`write_triton_repository` writes three models that Triton serves side by side:

- ``<name>_onnx``: the bundle's graph on Triton's onnxruntime backend, with dynamic batching.
- ``<name>_tokenize``: a python-backend model that turns (prompt, response) strings into the
  graph's token tensors with the bundle's own tokenizer and ensrm's pair rules
  (:class:`~ensrm.runtime.texts.TextEncoder`, through :class:`PairTokenizer`). Its ``model.py``
  is a thin adapter that imports ensrm, so the python backend's environment needs
  ``pip install ensrm``.
- ``<name>``: an ensemble wiring ``prompt``/``response`` -> tokenize -> onnx -> ``heads``,
  ``ens_mean``, ``ens_std``, ``ens_min``, ``ens_uwo``.

Batching: every model declares ``max_batch_size > 0``, so Triton owns the first axis and the
configs list the per-pair dims (``[-1]`` for the sequence axis, ``[K]`` for ``heads``, ``[1]``
reshaped to the graph's ``[batch]`` for the aggregates). ``max_batch_size: 0`` with full dims
would turn Triton's dynamic batcher off, and gathering concurrent requests is the point of
serving. Triton batches two requests only when their non-batch dims agree, so the tokenize
step pads each request's sequence axis up to a multiple of ``pad_to_multiple``: requests of
similar length then share a shape and are batched together.

The configs are built as Triton's own ``ModelConfig`` protobuf messages (from ``tritonclient``,
``pip install 'ensrm[triton]'``) and written in protobuf text format, so Triton reads them with
the schema they were built with. Nothing here imports torch, onnx or the exporter.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import ensrm
from ensrm._optional import require
from ensrm.bundle import bundle_file, load_spec, read_spec, staged_bundle, variant_file
from ensrm.errors import BundleError, InputError
from ensrm.runtime.config import ScorerConfig
from ensrm.runtime.texts import TextEncoder, as_texts, check_texts
from ensrm.spec import HINTED_PRECISIONS, MANIFEST_NAME, OUTPUT_NAMES, EnsembleSpec

#: The ensemble's text inputs (TYPE_STRING, one string per pair).
TEXT_INPUTS = ("prompt", "response")
KINDS = ("cpu", "gpu")
#: Model-config parameter of the tokenize step.
PAD_PARAMETER = "pad_to_multiple"

_ORT_TYPES = {"tensor(int64)": "TYPE_INT64", "tensor(int32)": "TYPE_INT32",
              "tensor(float)": "TYPE_FP32", "tensor(float16)": "TYPE_FP16"}
_MODEL_PY = Path(__file__).with_name("_triton_model.py")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class TritonRepository:
    """What :func:`write_triton_repository` wrote: the directory and its three model names."""

    path: Path
    ensemble: str
    tokenize: str
    onnx: str
    precision: str


class PairTokenizer:
    """The tokenize step: (prompt, response) strings -> the graph's int64 ``[batch, seq]`` tensors.

    Encodes, truncates and pads exactly as :meth:`Scorer.score_texts` does (the same
    :class:`TextEncoder`), then pads the sequence axis up to a multiple of ``pad_to_multiple``
    (never past ``max_length``) so that Triton's dynamic batcher can merge requests.
    ``model_dir`` holds the bundle's ``ensemble.json`` and tokenizer file.

    (The example needs a bundle: not run by the doctests.)

    >>> tok = PairTokenizer("repo/rm_tokenize/1", pad_to_multiple=32)        # doctest: +SKIP
    >>> tok([b"How do I boil an egg?"], [b"Simmer it."])["input_ids"].shape  # doctest: +SKIP
    (1, 32)
    """

    def __init__(self, model_dir: str | os.PathLike, pad_to_multiple: int = 1):
        if pad_to_multiple < 1:
            raise ValueError(f"pad_to_multiple must be >= 1, got {pad_to_multiple}")
        self.spec = read_spec(model_dir)
        self.encoder = TextEncoder(model_dir, self.spec)
        self.pad_to_multiple = pad_to_multiple

    @classmethod
    def from_triton_args(cls, args: dict[str, str]) -> PairTokenizer:
        """Build from the ``args`` Triton's python backend passes to ``initialize``.

        The version directory holds the tokenizer files; ``pad_to_multiple`` is a parameter
        of the model's ``config.pbtxt`` (which Triton hands over as JSON).
        """
        parameters = json.loads(args["model_config"]).get("parameters", {})
        pad = int(parameters.get(PAD_PARAMETER, {}).get("string_value", "1"))
        return cls(os.path.join(args["model_repository"], args["model_version"]), pad_to_multiple=pad)

    def __call__(self, prompts, responses) -> dict[str, np.ndarray]:
        prompts, responses = check_texts(_strings("prompt", prompts), _strings("response", responses))
        if not prompts:
            raise InputError("the request has no pairs", field="prompt", expected="at least 1 pair", actual="0")
        encodings = self.encoder.encode(prompts, responses, truncation=True)
        # One batch of every pair: rows come back sorted by length; put them in request order.
        rows, feeds = next(self.encoder.batches(encodings, len(encodings)))
        order = np.argsort(rows)
        seq = feeds["input_ids"].shape[1]
        target = min(-(-seq // self.pad_to_multiple) * self.pad_to_multiple, max(self.spec.max_length, seq))
        extra = (0, target - seq) if self.spec.padding_side == "right" else (target - seq, 0)
        out = {}
        for name, array in feeds.items():  # [batch, seq] -> [batch, target]
            fill = self.spec.pad_token_id if name == "input_ids" else 0
            out[name] = np.pad(array[order], ((0, 0), extra), constant_values=fill)
        return out


def _strings(field: str, values) -> list[str]:
    """Triton hands TYPE_STRING tensors over as object arrays of bytes, ``[batch, 1]``."""
    return as_texts(np.asarray(values, dtype=object).reshape(-1), field, decode=True)


def write_triton_repository(bundle: str | os.PathLike | ScorerConfig, out: str | os.PathLike, *,
                            precision: str | None = None,
                            max_batch: int = 64, instances: int = 1, kind: str = "cpu",
                            max_queue_delay_us: int = 5000, pad_to_multiple: int = 32, name: str | None = None,
                            overwrite: bool = False) -> TritonRepository:
    """Write a Triton model repository serving ``bundle`` at ``precision`` into ``out``.

    ``bundle`` is a bundle path or a :class:`~ensrm.runtime.config.ScorerConfig` (its precision
    is used; ``precision`` overrides it). Triton runs the graph with its onnxruntime backend.

    ``max_batch`` is every model's ``max_batch_size``; the onnx model's dynamic batcher
    prefers powers of two up to it and waits at most ``max_queue_delay_us`` for a batch to
    fill. ``instances`` copies of the onnx and tokenize models run (``kind`` ``"gpu"`` puts
    the onnx copies on each GPU; the tokenizer always runs on CPU). ``name`` (default: the
    bundle directory's name) prefixes the model names. The repository appears complete or
    not at all; an existing ``out`` is replaced only with ``overwrite``.

    (The example needs a bundle: not run by the doctests.)

    >>> repo = write_triton_repository("bundles/rm", "triton-repo", precision="fp16")  # doctest: +SKIP
    >>> repo.ensemble, repo.onnx  # doctest: +SKIP
    ('rm', 'rm_onnx')
    """
    config = ScorerConfig.of(bundle, precision=precision)
    precision = "fp32" if config.precision == "auto" else config.precision
    pb2 = require("tritonclient.grpc.model_config_pb2", "triton")
    text_format = require("google.protobuf.text_format", "triton")
    bundle = config.bundle_dir
    name = bundle.resolve().name if name is None else name
    _check_options(config, name, kind, max_batch=max_batch, instances=instances, pad_to_multiple=pad_to_multiple,
                   max_queue_delay_us=max_queue_delay_us)
    spec = load_spec(bundle)  # every file checked against its sha256 before it is copied
    model_file = _onnx_file(bundle, spec, precision)
    if not spec.tokenizer_file:
        raise BundleError(f"bundle {bundle} has no tokenizer file, which the tokenize step needs")
    repo = TritonRepository(Path(out), ensemble=name, tokenize=f"{name}_tokenize", onnx=f"{name}_onnx",
                            precision=precision)

    with staged_bundle(out, overwrite=overwrite) as staging:
        onnx_dir = staging / repo.onnx / "1"
        graph = _copy_graph(bundle, spec, model_file, onnx_dir)
        inputs, outputs = _graph_io(graph, spec)

        tokenize_dir = staging / repo.tokenize / "1"
        tokenize_dir.mkdir(parents=True)
        shutil.copyfile(_MODEL_PY, tokenize_dir / "model.py")
        shutil.copyfile(bundle_file(bundle, spec.tokenizer_file), tokenize_dir / spec.tokenizer_file)
        shutil.copyfile(bundle_file(bundle, MANIFEST_NAME), tokenize_dir / MANIFEST_NAME)
        (staging / repo.ensemble / "1").mkdir(parents=True)  # Triton wants a version directory, even empty

        configs = _configs(pb2, repo, spec, inputs, outputs, max_batch=max_batch, instances=instances, kind=kind,
                           max_queue_delay_us=max_queue_delay_us, pad_to_multiple=pad_to_multiple)
        header = f"# Written by ensrm {ensrm.__version__} (triton-repo) from {bundle.resolve().name}, {precision}\n"
        for model, config in configs.items():
            (staging / model / "config.pbtxt").write_text(header + text_format.MessageToString(config),
                                                          encoding="utf-8")
    return repo


def _onnx_file(bundle: Path, spec: EnsembleSpec, precision: str) -> str:
    """The ``precision`` variant's graph file, refused when it is OpenVINO's alone (a bf16 hint, an IR):
    Triton's onnxruntime backend runs ONNX files of their own."""
    def onnx(p: str) -> bool:
        file = spec.variants[p].file
        return p not in HINTED_PRECISIONS and bool(file and file.endswith(".onnx"))

    model_file = variant_file(bundle, spec, precision).name
    if not onnx(precision):
        what = "an OpenVINO compile hint on model.onnx" if precision in HINTED_PRECISIONS else \
            f"an OpenVINO IR ({model_file})"
        raise ValueError(f"the {precision} variant is {what}, which Triton's onnxruntime backend cannot run; "
                         f"write the repository at {', '.join(p for p in spec.usable_precisions if onnx(p))}")
    return model_file


def _check_options(config: ScorerConfig, name: str, kind: str, **counts: int) -> None:
    if config.backend not in ("auto", "onnxruntime"):
        raise ValueError(f"a Triton repository runs the ONNX graph on Triton's onnxruntime backend; "
                         f"backend {config.backend!r} is not supported here (use backend auto or onnxruntime)")
    if not _NAME.fullmatch(name):
        raise ValueError(f"model name {name!r} must be letters, digits, '_', '.' or '-', starting with a letter "
                         "or digit")
    for label, value in counts.items():
        low = 0 if label == "max_queue_delay_us" else 1
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{label} must be an integer >= {low}, got {value!r}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")


def _copy_graph(bundle: Path, spec: EnsembleSpec, model_file: str, version_dir: Path) -> Path:
    """Copy the graph as Triton's ``model.onnx`` (a directory when its weights are a separate file).

    The external data file keeps its name, which the graph records and onnxruntime resolves
    beside the graph file; Triton wants such a multi-file model as ``1/model.onnx/``.
    """
    data = model_file + ".data"
    if data in spec.files:
        target_dir = version_dir / "model.onnx"
        target_dir.mkdir(parents=True)
        shutil.copyfile(bundle_file(bundle, data), target_dir / Path(data).name)
        target = target_dir / "model.onnx"
    else:
        version_dir.mkdir(parents=True)
        target = version_dir / "model.onnx"
    shutil.copyfile(bundle_file(bundle, model_file), target)
    return target


def _graph_io(graph: Path, spec: EnsembleSpec) -> tuple[list, list]:
    """``(name, Triton dtype, per-pair dims)`` of the copied graph's inputs and outputs, checked.

    Loading the copy with onnxruntime also proves that its external weights resolve where
    they were put. Per-pair dims drop the batch axis; a dynamic axis is ``-1``.
    """
    ort = require("onnxruntime", "core")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime's errors share no base class but Exception
        raise BundleError(f"onnxruntime cannot load the copied graph {graph}: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    return (_check_io("input", session.get_inputs(), spec.inputs, "TYPE_INT64", spec),
            _check_io("output", session.get_outputs(), OUTPUT_NAMES, "TYPE_FP32", spec))


def _check_io(side: str, args, want: Sequence[str], dtype: str, spec: EnsembleSpec) -> list:
    found = {arg.name: arg for arg in args}
    if set(found) != set(want):
        raise BundleError(f"the graph's {side}s are {sorted(found)}, the manifest says {sorted(want)}")
    entries = []
    for tensor in want:
        arg = found[tensor]
        if _ORT_TYPES.get(arg.type) != dtype:
            raise BundleError(f"graph {side} {tensor} is {arg.type}, expected {dtype.removeprefix('TYPE_')}")
        rank = 1 if side == "output" and tensor != "heads" else 2  # [batch] aggregates, else [batch, seq | K]
        if len(arg.shape) != rank or isinstance(arg.shape[0], int):
            raise BundleError(f"graph {side} {tensor} has shape {arg.shape}; expected rank {rank} "
                              "with a dynamic batch axis first")
        dims = [d if isinstance(d, int) else -1 for d in arg.shape[1:]]
        if side == "input" and dims != [-1]:  # the tokenize step's outputs vary in length
            raise BundleError(f"graph input {tensor} has shape {arg.shape}; its sequence axis must be dynamic")
        if tensor == "heads" and dims != [spec.num_heads]:
            raise BundleError(f"graph output heads has shape {arg.shape}, the manifest says {spec.num_heads} heads")
        entries.append((tensor, dtype, dims))
    return entries


def preferred_batch_sizes(max_batch: int) -> list[int]:
    """Powers of two from 8 up to ``max_batch``, and ``max_batch`` itself.

    >>> preferred_batch_sizes(64), preferred_batch_sizes(48), preferred_batch_sizes(4)
    ([8, 16, 32, 64], [8, 16, 32, 48], [4])
    """
    sizes = [s for s in (2 ** k for k in range(3, 16)) if s < max_batch]
    return sizes + [max_batch]


def _configs(pb2, repo: TritonRepository, spec: EnsembleSpec, inputs, outputs, *, max_batch: int, instances: int,
             kind: str, max_queue_delay_us: int, pad_to_multiple: int) -> dict:
    """The three ``ModelConfig`` messages, by model name."""
    types = pb2.DataType

    def tensors(message, entries, reshape: bool = True):
        for tensor, dtype, dims in entries:
            item = message.add(name=tensor, data_type=types.Value(dtype), dims=dims or [1])
            if not dims and reshape:  # the graph's [batch] is [batch, 1] to Triton's API (every tensor needs a dim)
                item.reshape.SetInParent()

    def group(config, group_kind: str):
        config.instance_group.add(kind=pb2.ModelInstanceGroup.Kind.Value(f"KIND_{group_kind.upper()}"),
                                  count=instances)

    text = [(tensor, "TYPE_STRING", [1]) for tensor in TEXT_INPUTS]

    onnx = pb2.ModelConfig(name=repo.onnx, backend="onnxruntime", max_batch_size=max_batch)
    tensors(onnx.input, inputs)
    tensors(onnx.output, outputs)
    onnx.dynamic_batching.preferred_batch_size.extend(preferred_batch_sizes(max_batch))
    onnx.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    group(onnx, kind)

    tokenize = pb2.ModelConfig(name=repo.tokenize, backend="python", max_batch_size=max_batch)
    tensors(tokenize.input, text)
    tensors(tokenize.output, inputs)
    group(tokenize, "cpu")
    tokenize.parameters[PAD_PARAMETER].string_value = str(pad_to_multiple)
    tokenize.parameters["ensrm_version"].string_value = ensrm.__version__

    ensemble = pb2.ModelConfig(name=repo.ensemble, platform="ensemble", max_batch_size=max_batch)
    tensors(ensemble.input, text)
    tensors(ensemble.output, outputs, reshape=False)  # an ensemble tensor has the step's API shape, [batch, 1]
    for model, step_inputs, step_outputs in ((repo.tokenize, TEXT_INPUTS, [t for t, _, _ in inputs]),
                                             (repo.onnx, [t for t, _, _ in inputs], [t for t, _, _ in outputs])):
        step = ensemble.ensemble_scheduling.step.add(model_name=model, model_version=-1)
        # key: the step model's tensor; value: the ensemble's tensor of the same name
        step.input_map.update({t: t for t in step_inputs})
        step.output_map.update({t: t for t in step_outputs})
    return {repo.onnx: onnx, repo.tokenize: tokenize, repo.ensemble: ensemble}
