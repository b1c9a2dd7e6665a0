"""``Scorer``: a bundle directory in, numpy scores out. Needs numpy, onnxruntime, tokenizers."""

from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path

import numpy as np

from ensrm.bundle import bundle_file, read_spec, verify_files
from ensrm.errors import BundleError, EnsrmError, InputError
from ensrm.runtime.inputs import check_inputs
from ensrm.runtime.scores import Scores
from ensrm.runtime.texts import TextEncoder, check_texts
from ensrm.spec import MODEL_FILES, FusedGraph


class FusedGraphWarning(RuntimeWarning):
    """The bundle's fused CPU graph is there but cannot be used here; the portable graph runs instead."""


class Scorer:
    """Score (prompt, response) pairs with an exported reward ensemble.

    ``providers`` are onnxruntime execution providers (``"cpu"``, ``"cuda"``, ``"tensorrt"`` or
    full names); a provider that is asked for but missing raises :class:`ProviderError`.
    ``precision`` picks ``fp32`` (``model.onnx``) or an accepted ``fp16``/``int8`` variant.
    ``verify`` checks the bundle's files against the manifest: ``"sha256"`` (default),
    ``"size"`` (fast) or ``"none"``. Batches larger than ``max_batch_size`` are split.

    On the CPU provider an fp32 scorer runs the bundle's fused CPU graph (``model.cpu.onnx``,
    verified against ``model.onnx`` at export) when the bundle has one and ``fused`` is true;
    with another provider, or when that file is damaged or does not load, it runs ``model.onnx``
    and warns once (:class:`FusedGraphWarning`). ``model_path`` is the graph that was loaded.

    ``backend="tensorrt"`` runs the bundle's TensorRT engine for ``precision`` (built with
    ``ensrm build-engine`` on this GPU and TensorRT version) instead of onnxruntime. With
    ``providers=["tensorrt", ...]`` onnxruntime's TensorRT execution provider caches its
    engines under ``BUNDLE/engines/ort-<precision>`` unless options are given.

    A scorer may be shared by several threads; onnxruntime sessions are thread-safe.

    >>> scorer = Scorer("bundles/minilm")                                   # doctest: +SKIP
    >>> scorer.score_texts(["How do I boil an egg?"], ["Simmer it for 8 minutes."]).uwo
    array([0.73], dtype=float32)
    """

    def __init__(self, bundle_dir: str | os.PathLike, providers=None, threads: int | None = None,
                 precision: str = "fp32", verify: str = "sha256", max_batch_size: int = 256,
                 spinning: bool | None = None, backend: str = "onnxruntime", fused: bool = True):
        from ensrm.runtime.onnxruntime_backend import with_tensorrt_cache

        self.bundle_dir = Path(bundle_dir)
        self.spec = read_spec(self.bundle_dir)
        # A damaged fused graph only costs its speed: checked (and skipped) when it would be used.
        extra = {name for g in self.spec.fused.values() for name in (g.file, g.file + ".data")}
        verify_files(self.bundle_dir, self.spec, verify, only=set(self.spec.files) - extra)
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.max_batch_size = max_batch_size
        self.precision = precision
        model_path = self._model_path(precision)
        if backend == "tensorrt":
            from ensrm.runtime.tensorrt_backend import TensorRTBackend, engine_path

            self.backend = TensorRTBackend(engine_path(self.bundle_dir, self.dtype))
        elif backend == "onnxruntime":
            providers = with_tensorrt_cache(providers, self.bundle_dir / "engines" / f"ort-{precision}")
            fused_graph = self._fused_graph(precision, providers, verify) if fused else None
            self.backend, model_path = self._load(fused_graph, model_path, providers, threads, spinning)
        else:
            raise ValueError(f"backend must be onnxruntime or tensorrt, got {backend!r}")
        self.model_path = model_path
        self._encoder: TextEncoder | None = None
        self._encoder_lock = threading.Lock()

    @property
    def dtype(self) -> str:
        """The dtype of the graph being run: the bundle's graph dtype for ``model.onnx``, else the variant's."""
        return self.spec.dtype if self.precision == "fp32" else self.precision

    @property
    def description(self) -> str:
        """What runs: the backend, its file, and the graph's dtype (``onnxruntime CPUExecutionProvider
        (model.onnx), bf16 weights``)."""
        return f"{self.backend.description}, {self.dtype} weights"

    def _model_path(self, precision: str) -> Path:
        if precision not in MODEL_FILES:
            raise ValueError(f"precision must be one of {', '.join(MODEL_FILES)}, got {precision!r}")
        variant = self.spec.variants.get(precision)
        if variant is None:
            have = ", ".join(sorted(self.spec.variants)) or "none"
            raise BundleError(f"bundle {self.bundle_dir} has no {precision} variant (has: {have})")
        if not variant.usable:
            raise BundleError(f"the {precision} variant of {self.bundle_dir} failed its accuracy gate at "
                              "export and is marked rejected")
        return bundle_file(self.bundle_dir, variant.file)

    def _load(self, fused_graph: Path | None, model_path: Path, providers, threads, spinning):
        """An onnxruntime backend on ``fused_graph`` if it loads (else with a warning), or on ``model_path``."""
        from ensrm.runtime.onnxruntime_backend import OnnxRuntimeBackend

        if fused_graph is not None:
            try:
                return OnnxRuntimeBackend(fused_graph, providers, threads, spinning), fused_graph
            except Exception as exc:  # noqa: BLE001 - any failure to load it leaves the portable graph
                _warn(f"onnxruntime cannot load {fused_graph.name} of {self.bundle_dir} ({type(exc).__name__}: "
                      f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); running {model_path.name}")
        try:
            return OnnxRuntimeBackend(model_path, providers, threads, spinning), model_path
        except EnsrmError:
            raise
        except Exception as exc:  # noqa: BLE001 - onnxruntime's errors share no base class but Exception
            raise BundleError(f"onnxruntime cannot load {model_path.name} of {self.bundle_dir}: "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                              file=model_path.name) from None

    def _fused_graph(self, precision: str, providers, verify: str) -> Path | None:
        """The fused graph to run instead of ``precision``'s file, if the bundle has one that fits."""
        from ensrm.runtime.onnxruntime_backend import resolve_providers

        graph: FusedGraph | None = self.spec.fused.get("CPUExecutionProvider")
        if graph is None or graph.base != precision:
            return None
        first = resolve_providers(providers)[0]
        first = first[0] if isinstance(first, tuple) else first
        if first != graph.provider:
            _warn(f"{graph.file} of {self.bundle_dir} needs the {graph.provider}'s kernels; running "
                  f"{MODEL_FILES[precision]} on {first}")
            return None
        try:
            verify_files(self.bundle_dir, self.spec, verify, only={graph.file, graph.file + ".data"})
            return bundle_file(self.bundle_dir, graph.file)
        except BundleError as exc:
            _warn(f"{exc}; running {MODEL_FILES[precision]}")
            return None

    @property
    def num_heads(self) -> int:
        return self.spec.num_heads

    def score(self, input_ids, attention_mask, token_type_ids=None) -> Scores:
        """Score pre-tokenised batches: ``[batch, seq]`` integer arrays in, :class:`Scores` out.

        Encoders need right padding; decoders accept left, right or mixed padding. Lists go
        through ``np.asarray``; an empty batch gives empty results (``heads`` ``(0, K)``).
        Sequences with more than ``spec.max_length`` real tokens are refused, never silently
        cut (columns that are padding in every row are dropped). Batches larger than
        ``max_batch_size`` run in slices with identical results. See
        :mod:`ensrm.runtime.inputs` for every rule; a violation raises :class:`InputError`.

        >>> s = scorer.score(ids, mask)                       # doctest: +SKIP
        >>> s.heads.shape, s.uwo.shape
        ((4, 8), (4,))
        """
        feeds = check_inputs(self.spec, input_ids, attention_mask, token_type_ids)
        batch = feeds["input_ids"].shape[0]
        if batch == 0:
            return Scores.empty(self.num_heads)
        parts = [
            Scores.from_outputs(self.backend.run({k: v[start:start + self.max_batch_size] for k, v in feeds.items()}))
            for start in range(0, batch, self.max_batch_size)
        ]
        return parts[0] if len(parts) == 1 else Scores.concatenate(parts, self.num_heads)

    @property
    def text_encoder(self) -> TextEncoder:
        with self._encoder_lock:
            if self._encoder is None:
                self._encoder = TextEncoder(self.bundle_dir, self.spec)
            return self._encoder

    def score_texts(self, prompts, responses, batch_size: int = 32, truncation: bool = True) -> Scores:
        """Tokenise and score (prompt, response) pairs; results come back in input order.

        Pairs are grouped by token length into batches of ``batch_size`` to cut padding.
        With ``truncation`` (default) a pair longer than ``max_length`` loses tokens from its
        longer side (from the end for encoders, from the start for decoders, whose reward
        is read at the last token); without it such a pair raises :class:`InputError`.

        >>> scorer.score_texts(["Hi"], ["Hello! How can I help?"]).mean     # doctest: +SKIP
        """
        prompts, responses = check_texts(prompts, responses)
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        if not prompts:
            return Scores.empty(self.num_heads)
        encoder = self.text_encoder
        encodings = encoder.encode(prompts, responses, truncation=truncation)
        heads = np.empty((len(prompts), self.num_heads), dtype=np.float32)
        aggregates = {name: np.empty(len(prompts), dtype=np.float32) for name in ("mean", "std", "min", "uwo")}
        for rows, feeds in encoder.batches(encodings, min(batch_size, self.max_batch_size)):
            scores = Scores.from_outputs(self.backend.run(feeds))
            heads[rows] = scores.heads
            for name, values in aggregates.items():
                values[rows] = getattr(scores, name)
        return Scores(heads=heads, **aggregates)

    def as_reward_function(self, objective: str = "uwo", batch_size: int = 32, prompt_messages: str = "last_user"):
        """A reward function for TRL's GRPO trainer: ``f(prompts, completions, **kwargs) -> list[float]``.

        Takes TRL's standard (strings) and conversational (message lists) formats and ignores
        the extra keywords TRL passes; see :mod:`ensrm.runtime.rewards` for how a
        conversation becomes text.

        >>> trainer = GRPOTrainer(model=..., reward_funcs=scorer.as_reward_function("uwo"))  # doctest: +SKIP
        """
        from ensrm.runtime.rewards import GRPORewardFunction

        return GRPORewardFunction(self, objective, batch_size=batch_size, prompt_messages=prompt_messages)

    def as_token_reward_function(self, objective: str = "uwo"):
        """Token ids + mask in, one float32 reward per row out (for custom PPO loops).

        >>> reward = scorer.as_token_reward_function("wco")                 # doctest: +SKIP
        >>> reward(input_ids, attention_mask).shape
        (16,)
        """
        from ensrm.runtime.rewards import TokenRewardFunction

        return TokenRewardFunction(self, objective)


def _warn(message: str) -> None:
    warnings.warn(message, FusedGraphWarning, stacklevel=4)  # at the caller of Scorer(...)
