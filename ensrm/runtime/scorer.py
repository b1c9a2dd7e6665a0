"""``Scorer``: a bundle directory in, numpy scores out. Needs numpy, onnxruntime, tokenizers."""

from __future__ import annotations

import os
import threading

import numpy as np

from ensrm.bundle import read_spec, verify_files
from ensrm.errors import InputError
from ensrm.progress import CountProgress
from ensrm.runtime.backend import load_backend
from ensrm.runtime.config import ScorerConfig
from ensrm.runtime.inputs import check_inputs
from ensrm.runtime.onnxruntime_backend import FusedGraphWarning
from ensrm.runtime.scores import Scores
from ensrm.runtime.texts import TextEncoder, check_texts

__all__ = ["Scorer", "FusedGraphWarning"]


class Scorer:
    """Score (prompt, response) pairs with an exported reward ensemble.

    How to score is one :class:`~ensrm.runtime.config.ScorerConfig`; the keywords here are its
    fields (``Scorer.from_config(config)`` takes one whole). ``backend`` picks the runtime
    (``"auto"``, ``"onnxruntime"``, ``"openvino"``, ``"tensorrt"``): ``auto`` runs OpenVINO on the
    CPU when it is installed and compiles the graph (else onnxruntime, after one
    :class:`~ensrm.runtime.backend.BackendFallbackWarning` if the compile failed), and
    onnxruntime when execution providers are given (see
    :func:`~ensrm.runtime.backend.resolve_backend`). ``providers`` are onnxruntime execution
    providers (``"cpu"``, ``"cuda"``, ``"tensorrt"`` or full names), and one asked for but
    missing raises :class:`ProviderError`. ``precision`` picks ``fp32`` (``model.onnx``) or an
    accepted variant. ``verify`` checks the bundle's files against the manifest:
    ``"sha256"`` (default), ``"size"`` (fast) or ``"none"``. ``batch_size`` is the pairs per
    model call of :meth:`score_texts`; batches larger than ``max_batch_size`` are split.

    On the CPU provider an fp32 scorer runs the bundle's fused CPU graph (``model.cpu.onnx``,
    verified against ``model.onnx`` at export) when the bundle has one and ``fused`` is true;
    with another provider, or when that file is damaged or does not load, it runs ``model.onnx``
    and warns once (:class:`FusedGraphWarning`). ``model_path`` is the graph that was loaded and
    ``description`` says what runs.

    ``backend="tensorrt"`` runs the bundle's TensorRT engine for ``precision`` (built with
    ``ensrm build-engine`` on this GPU and TensorRT version). With
    ``providers=["tensorrt", ...]`` onnxruntime's TensorRT execution provider caches its
    engines under ``BUNDLE/engines/ort-<precision>``.

    A scorer may be shared by several threads: onnxruntime sessions are thread-safe and the
    OpenVINO backend gives each concurrent call its own infer request. ``hint="throughput"``
    compiles OpenVINO with several streams for a server with concurrent requests.
    (The examples are not run by the doctests: they need a bundle on disk.)

    >>> scorer = Scorer("bundles/minilm")                                   # doctest: +SKIP
    >>> scorer.score_texts(["How do I boil an egg?"], ["Simmer it for 8 minutes."]).uwo   # doctest: +SKIP
    array([0.73], dtype=float32)
    """

    def __init__(self, bundle_dir: str | os.PathLike, providers=None, threads: int | None = None,
                 precision: str = "fp32", verify: str = "sha256", max_batch_size: int = 256,
                 spinning: bool | None = None, backend: str = "auto", fused: bool = True, batch_size: int = 32,
                 hint: str = "latency"):
        self._open(ScorerConfig(bundle_dir, backend=backend, precision=precision, providers=providers,
                                threads=threads, batch_size=batch_size, max_batch_size=max_batch_size,
                                fused=fused, verify=verify, spinning=spinning, hint=hint))

    @classmethod
    def from_config(cls, config: ScorerConfig) -> Scorer:
        """The scorer ``config`` describes (the example is not run by the doctests: it needs a bundle).

        >>> scorer = Scorer.from_config(ScorerConfig("bundles/default", threads=2))   # doctest: +SKIP
        """
        scorer = cls.__new__(cls)
        scorer._open(config)
        return scorer

    def _open(self, config: ScorerConfig) -> None:
        self.config = config
        self.bundle_dir = config.bundle_dir
        self.spec = read_spec(self.bundle_dir)
        # A damaged fused graph only costs its speed: checked (and skipped) when it would be used.
        extra = {name for g in self.spec.fused.values() for name in (g.file, g.file + ".data")}
        verify_files(self.bundle_dir, self.spec, config.verify, only=set(self.spec.files) - extra)
        self.max_batch_size = config.max_batch_size
        self.batch_size = config.batch_size
        self.precision, load = config.precision, config
        if config.precision == "auto":  # ensrm tune's choice for this machine and batch regime, else fp32
            from ensrm.runtime.backend import BACKEND_MODULES
            from ensrm.runtime.openvino_backend import installed
            from ensrm.runtime.tune import tuned_choice

            runtimes = [name for name in BACKEND_MODULES if name != "openvino" or installed()]
            choice = tuned_choice(self.bundle_dir, self.spec, config.batch_size, config.backend, runtimes)
            self.precision = choice.precision if choice else "fp32"
            if choice and config.backend == "auto" and not config.providers:
                load = config.replace(backend=choice.backend)
        self.backend = load_backend(load, self.spec, self.precision)
        self.model_path = self.backend.model_path
        self._encoder: TextEncoder | None = None
        self._encoder_lock = threading.Lock()

    @property
    def description(self) -> str:
        """What runs: runtime, device, graph file and precision (reported by ``serve`` and ``bench``),
        and the graph's dtype when ``model.onnx`` is a half-precision export (``fp32 (bf16 weights)``)."""
        dtype = f" ({self.spec.dtype} weights)" if self.precision == "fp32" and self.spec.dtype != "fp32" else ""
        return f"{self.backend.description}, {self.precision}{dtype}"

    @property
    def concurrency(self) -> int:
        """How many :meth:`score` calls from different threads run side by side to good effect: OpenVINO's
        streams with ``hint="throughput"``, else 1 (the server runs this many batches at once)."""
        return self.backend.concurrency

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

        Not run by the doctests (it needs a bundle and token ids):

        >>> s = scorer.score(ids, mask)                       # doctest: +SKIP
        >>> s.heads.shape, s.uwo.shape                        # doctest: +SKIP
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

    def score_texts(self, prompts, responses, batch_size: int | None = None, truncation: bool = True,
                    progress: CountProgress | None = None) -> Scores:
        """Tokenise and score (prompt, response) pairs; results come back in input order.

        Pairs are grouped by token length into batches of ``batch_size`` (default: the
        scorer's ``batch_size``) to cut padding. ``progress(done, total)``, when given, is
        called after each batch with the pairs scored so far.
        With ``truncation`` (default) a pair longer than ``max_length`` loses tokens from its
        longer side (from the end for encoders, from the start for decoders, whose reward
        is read at the last token); without it such a pair raises :class:`InputError`.

        Not run by the doctests (it needs a bundle):

        >>> scorer.score_texts(["Hi"], ["Hello! How can I help?"]).mean     # doctest: +SKIP
        """
        prompts, responses = check_texts(prompts, responses)
        batch_size = self.batch_size if batch_size is None else batch_size
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        if not prompts:
            return Scores.empty(self.num_heads)
        encoder = self.text_encoder
        encodings = encoder.encode(prompts, responses, truncation=truncation)
        heads = np.empty((len(prompts), self.num_heads), dtype=np.float32)
        aggregates = {name: np.empty(len(prompts), dtype=np.float32) for name in ("mean", "std", "min", "uwo")}
        done = 0
        for rows, feeds in encoder.batches(encodings, min(batch_size, self.max_batch_size)):
            scores = Scores.from_outputs(self.backend.run(feeds))
            heads[rows] = scores.heads
            for name, values in aggregates.items():
                values[rows] = getattr(scores, name)
            done += len(rows)
            if progress is not None:
                progress(done, len(prompts))
        return Scores(heads=heads, **aggregates)

    def as_reward_function(self, objective: str = "uwo", batch_size: int = 32, prompt_messages: str = "last_user"):
        """A reward function for TRL's GRPO trainer: ``f(prompts, completions, **kwargs) -> list[float]``.

        Takes TRL's standard (strings) and conversational (message lists) formats and ignores
        the extra keywords TRL passes; see :mod:`ensrm.runtime.rewards` for how a
        conversation becomes text.

        Not run by the doctests (it needs a bundle and TRL):

        >>> trainer = GRPOTrainer(model=..., reward_funcs=scorer.as_reward_function("uwo"))  # doctest: +SKIP
        """
        from ensrm.runtime.rewards import GRPORewardFunction

        return GRPORewardFunction(self, objective, batch_size=batch_size, prompt_messages=prompt_messages)

    def as_token_reward_function(self, objective: str = "uwo"):
        """Token ids + mask in, one float32 reward per row out (for custom PPO loops).

        Not run by the doctests (it needs a bundle and token ids):

        >>> reward = scorer.as_token_reward_function("wco")                 # doctest: +SKIP
        >>> reward(input_ids, attention_mask).shape                          # doctest: +SKIP
        (16,)
        """
        from ensrm.runtime.rewards import TokenRewardFunction

        return TokenRewardFunction(self, objective)

