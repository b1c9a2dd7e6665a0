"""``train_reward_model``: preference pairs in, a K-head sequence-classification checkpoint out."""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from ensrm._optional import require
from ensrm.errors import TrainingError
from ensrm.models.trunk import TRUNK_FILE
from ensrm.spec import POOLINGS
from ensrm.train import model as M
from ensrm.train.feature_cache import FeatureCache, model_fingerprint
from ensrm.train.frozen import fit_heads
from ensrm.train.joint import STATE_DIR, parameter_groups, train_joint
from ensrm.train.metrics import format_metrics, pairwise_metrics
from ensrm.train.pairs import add_label_noise, bootstrap_counts, fingerprint, load_preferences, split_pairs
from ensrm.train.progress import Progress

torch = require("torch", "export")

MODES = ("frozen", "joint")
REPORT_FILE = "ensrm_training.json"


@dataclass
class TrainResult:
    """What a training run produced; ``metrics`` is :func:`ensrm.train.metrics.pairwise_metrics`."""

    out_dir: Path
    mode: str
    heads: int
    n_train: int
    n_eval: int
    train_loss: float
    metrics: dict | None  # None when nothing was held out
    eval_pairs: list[dict] = field(repr=False)
    eval_rewards_chosen: np.ndarray | None = field(repr=False)  # [n_eval, K] logits of the saved model
    eval_rewards_rejected: np.ndarray | None = field(repr=False)  # [n_eval, K]
    steps: int = 0  # optimizer steps (joint) or L-BFGS fits (frozen: 1)
    start_epoch: int = 0  # > 0 when a joint run resumed from a saved state
    seconds: float = 0.0
    pooling: str | None = None  # set when the heads read a pooling of the base model (heads.safetensors)

    def export_args(self) -> str:
        """The ens-export arguments that take this checkpoint as it was trained, quoted for a shell."""
        args = [str(self.out_dir)]
        if self.pooling is not None:
            args += ["--heads", str(self.out_dir / M.HEADS_FILE), "--pooling", self.pooling]
        return shlex.join(args)

    def headline(self) -> str:
        """One line: what was written, the held-out accuracy, and how to export it."""
        accuracy = "" if self.metrics is None else \
            " (held-out accuracy: mean {mean:.3f}, wco {wco:.3f}, uwo {uwo:.3f})".format(**self.metrics["accuracy"])
        return (f"checkpoint {self.out_dir}: {self.heads} heads, {self.mode}{accuracy}; "
                f"export with: ens-export {self.export_args()} -o BUNDLE")

    def summary(self) -> str:
        lines = [f"trained {self.heads} heads ({self.mode}) on {self.n_train} pairs in {self.seconds:.1f}s; "
                 f"final train loss {self.train_loss:.4f}; saved to {self.out_dir}"]
        lines.append(format_metrics(self.metrics) if self.metrics else "no held-out pairs (eval_fraction=0)")
        return "\n".join(lines)


@dataclass(frozen=True)
class FrozenSettings:
    """``mode="frozen"``: the encoder stays fixed and the heads are fitted by L-BFGS on its features.

    ``pooling`` (``"cls"``, ``"mean"`` or ``"last"``) fits the heads on that pooling of the base
    model's last hidden states instead of the classifier's own pooled feature (BERT's pooler, for
    one, is not what sentence encoders such as all-MiniLM-L6-v2 were trained to produce). The
    output then holds the base checkpoint plus ``heads.safetensors``, exported with
    ``ens-export OUT --heads OUT/heads.safetensors --pooling POOLING``.
    """

    l2: float = 1e-3
    max_iter: int = 200
    feature_cache: str | os.PathLike | None = None  # directory keeping pooled features between runs
    pooling: str | None = None  # fit on this pooling of the base model's states (writes heads.safetensors)

    def __post_init__(self):
        if self.pooling is not None and self.pooling not in POOLINGS:
            raise TrainingError(f"`pooling` must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if not self.max_iter >= 1:
            raise TrainingError(f"`max_iter` must be >= 1, got {self.max_iter}")


@dataclass(frozen=True)
class JointSettings:
    """``mode="joint"``: encoder and heads are fine-tuned together with AdamW.

    ``member_layers`` (m, 0 included) trains a partially shared trunk (:mod:`ensrm.models.trunk`)
    instead of the classifier: K members share the embeddings and the first L − m layers, each
    owns a copy of the last m layers and one head on ``pooling`` (default mean for encoders, last
    for decoders) of its last hidden states. ``trunk_lr`` (default ``lr``) is the shared layers'
    learning rate; 0 keeps them fixed.
    """

    epochs: int = 1
    lr: float = 2e-5
    head_lr: float = 1e-3
    resume: bool = False
    member_layers: int | None = None
    trunk_lr: float | None = None
    pooling: str | None = None

    def __post_init__(self):
        if not self.epochs >= 1:
            raise TrainingError(f"`epochs` must be >= 1, got {self.epochs}")
        if self.member_layers is None and (self.trunk_lr is not None or self.pooling is not None):
            given = "`trunk_lr`" if self.trunk_lr is not None else "`pooling`"
            raise TrainingError(f"{given} in joint mode applies to a partially shared trunk: give `member_layers` "
                                "(0 for K heads on one shared encoder)")
        if self.member_layers is not None and self.member_layers < 0:
            raise TrainingError(f"`member_layers` must be >= 0, got {self.member_layers}")
        if self.trunk_lr is not None and self.trunk_lr < 0:
            raise TrainingError(f"`trunk_lr` must be >= 0, got {self.trunk_lr}")
        if self.pooling is not None and self.pooling not in POOLINGS:
            raise TrainingError(f"`pooling` must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")


_MODE_SETTINGS = {"frozen": FrozenSettings, "joint": JointSettings}
_WHY_NOT = {"frozen": "frozen mode fits the heads to convergence in one go (tune `max_iter` and `l2`)",
            "joint": "joint mode changes the encoder's features and trains the classifier's own pooling"}


@dataclass(frozen=True)
class TrainSettings:
    """Everything a training run is told; ``method`` holds the settings of its mode.

    >>> TrainSettings.create(heads=4, mode="joint", epochs=2).method
    JointSettings(epochs=2, lr=2e-05, head_lr=0.001, resume=False, member_layers=None, trunk_lr=None, pooling=None)
    """

    heads: int = 8
    seed: int = 0
    bootstrap: bool = False
    label_noise: float = 0.0
    batch_size: int = 16
    eval_fraction: float = 0.1
    max_length: int = 256
    uwo_lambda: float = 0.5
    progress: bool = True
    method: FrozenSettings | JointSettings = field(default_factory=FrozenSettings)

    def __post_init__(self):
        if not isinstance(self.heads, int) or self.heads < 1:
            raise TrainingError(f"`heads` must be a positive integer, got {self.heads!r}")
        if not self.batch_size >= 1:
            raise TrainingError(f"`batch_size` must be >= 1, got {self.batch_size}")
        if self.max_length < 8:
            raise TrainingError(f"`max_length` must be at least 8 tokens, got {self.max_length}")
        if not 0.0 <= self.label_noise <= 1.0:
            raise TrainingError(f"`label_noise` must be a probability in [0, 1], got {self.label_noise}")

    @property
    def mode(self) -> str:
        return "frozen" if isinstance(self.method, FrozenSettings) else "joint"

    @classmethod
    def create(cls, *, mode: str = "frozen", **options) -> TrainSettings:
        """Settings from :func:`train_reward_model`'s keywords; a mode's own keywords left at ``None``
        take its defaults, and those of the other mode are refused (given, they would do nothing)."""
        if mode not in MODES:
            raise TrainingError(f"`mode` must be one of {', '.join(MODES)}, got {mode!r}")
        other = MODES[1 - MODES.index(mode)]
        own_names = {f.name for f in fields(_MODE_SETTINGS[mode])}
        other_names = {f.name for f in fields(_MODE_SETTINGS[other])} - own_names
        wrong = {k: v for k, v in options.items() if k in other_names and v is not None and v is not False}
        if wrong:
            given = ", ".join(f"`{k}={v!r}`" if isinstance(v, str) else f"`{k}={v}`" for k, v in wrong.items())
            raise TrainingError(
                f"{', '.join(f'`{k}`' for k in wrong)} only {'applies' if len(wrong) == 1 else 'apply'} to "
                f"`mode='{other}'` (got {given}; this run is `mode='{mode}'`): settings that apply to {other} "
                f"mode only are refused, as {_WHY_NOT[mode]}")
        method = _MODE_SETTINGS[mode](**{k: v for k, v in options.items() if k in own_names and v is not None})
        common = {k: v for k, v in options.items() if k not in own_names | other_names}
        return cls(method=method, **common)


def _score_pairs(model, tokenizer, pairs, max_length, batch_size):
    """``([n, K], [n, K])`` logits of chosen and rejected, one encoder pass per batch of pairs."""
    token_types = M.uses_token_type_ids(model)
    chosen, rejected = [], []
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(pairs), batch_size):
            part = pairs[start:start + batch_size]
            prompts = [p["prompt"] for p in part]
            batch = M.encode_pairs(tokenizer, prompts + prompts,
                                   [p["chosen"] for p in part] + [p["rejected"] for p in part], max_length, token_types)
            logits = model(**batch)
            logits = getattr(logits, "logits", logits).float()  # [2b, K]
            chosen.append(logits[:len(part)])
            rejected.append(logits[len(part):])
    return torch.cat(chosen).numpy(), torch.cat(rejected).numpy()


@dataclass
class _Run:
    """What both modes work on: the loaded model, its head layer and the split pairs."""

    model: object  # a transformers model (or PooledHeads), float32
    head_name: str
    head: object  # torch.nn.Linear [K, hidden]
    tokenizer: object
    train: list[dict]
    evals: list[dict]
    counts: np.ndarray  # [n_train, K] bootstrap weights
    max_length: int


@dataclass
class _Fit:
    """What a mode's training produced."""

    train_loss: float
    eval_chosen: np.ndarray | None  # [n_eval, K]
    eval_rejected: np.ndarray | None  # [n_eval, K]
    steps: int = 1
    start_epoch: int = 0
    epoch_losses: list[float] = field(default_factory=list)


def _train_frozen(run: _Run, settings: TrainSettings) -> _Fit:
    """Pooled features once with the encoder fixed (or from the cache), then the K heads by L-BFGS."""
    method, train, evals, head = settings.method, run.train, run.evals, run.head
    prompts = [p["prompt"] for p in train] * 2 + [p["prompt"] for p in evals] * 2
    responses = ([p["chosen"] for p in train] + [p["rejected"] for p in train]
                 + [p["chosen"] for p in evals] + [p["rejected"] for p in evals])

    def compute(prompts, responses):
        bar = Progress(len(responses), "features (frozen encoder)", enabled=settings.progress, unit="text")
        out = M.pooled_features(run.model, head, run.tokenizer, prompts, responses, max_length=run.max_length,
                                batch_size=max(settings.batch_size, 32), progress=bar)  # [n, hidden]
        bar.close()
        return out

    if method.feature_cache is None:
        features = compute(prompts, responses)  # [2 * (n_train + n_eval), hidden]
    else:
        cache = FeatureCache(method.feature_cache, model_fingerprint(run.model, run.head_name), run.max_length)
        features = torch.from_numpy(cache.features(prompts, responses, lambda p, r: compute(p, r).numpy()))
    n, m = len(train), len(evals)
    fitted = fit_heads(features[:n], features[n:2 * n], torch.from_numpy(run.counts), head.weight.detach(),
                       l2=method.l2, max_iter=method.max_iter)
    with torch.no_grad():
        head.weight.copy_(fitted.weight)
        if head.bias is not None:  # decoder score layers have no bias: their offsets stay uncentred
            head.bias.copy_(fitted.bias)
        eval_rewards = head(features[2 * n:]).numpy()  # [2m, K], exactly what the saved classifier outputs
    return _Fit(fitted.loss, eval_rewards[:m], eval_rewards[m:])


def _train_joint(run: _Run, settings: TrainSettings, base_model, out_dir: Path) -> _Fit:
    """Encoder and heads fine-tuned together, resumable from ``out_dir/.train_state``."""
    method = settings.method
    batch_size, head = settings.batch_size, run.head
    identity = {"data": fingerprint(run.train), "base_model": str(Path(base_model).resolve()),
                "heads": settings.heads, "seed": settings.seed, "bootstrap": settings.bootstrap,
                "label_noise": settings.label_noise, "lr": method.lr, "head_lr": method.head_lr,
                "batch_size": batch_size, "max_length": run.max_length, "epochs": method.epochs,
                "member_layers": method.member_layers, "trunk_lr": method.trunk_lr, "pooling": method.pooling}
    groups = parameter_groups(run.model, run.head_name, method.lr, method.head_lr, method.trunk_lr)
    outcome = train_joint(run.model, groups, run.tokenizer, run.train, run.counts, epochs=method.epochs,
                          batch_size=batch_size, max_length=run.max_length, seed=settings.seed,
                          state_dir=out_dir / STATE_DIR, resume=method.resume, run=identity,
                          progress=settings.progress)
    if head.bias is not None:  # decoder score layers have no bias to centre with
        with torch.no_grad():
            head.bias -= torch.tensor(outcome.head_means, dtype=head.bias.dtype)  # each head's mean near 0
    losses = outcome.epoch_losses
    eval_c = eval_r = None
    if run.evals:
        eval_c, eval_r = _score_pairs(run.model, run.tokenizer, run.evals, run.max_length, max(batch_size, 32))
    return _Fit(losses[-1] if losses else float("nan"), eval_c, eval_r, outcome.steps, outcome.start_epoch, losses)


def _prepare(base_model, prefs, settings: TrainSettings) -> _Run:
    """Read and split the pairs (malformed data fails before the slow model load), then load the model."""
    records = load_preferences(prefs)
    try:
        split = split_pairs(records, settings.eval_fraction, settings.seed)
    except ValueError as exc:
        raise TrainingError(str(exc)) from exc
    train = add_label_noise(split.train, settings.label_noise, settings.seed)
    counts = bootstrap_counts(len(train), settings.heads, settings.seed, settings.bootstrap)  # [n_train, K]
    tokenizer = M.load_tokenizer(base_model)
    max_length = settings.max_length
    if tokenizer.model_max_length < 1_000_000:  # unset limits are reported as a huge sentinel
        max_length = min(max_length, tokenizer.model_max_length)
    pooling, member_layers = settings.method.pooling, getattr(settings.method, "member_layers", None)
    if member_layers is not None:
        model = M.load_trunk_model(base_model, settings.heads, member_layers, pooling)
    elif pooling is None:
        model = M.load_classifier(base_model, settings.heads, tokenizer, settings.seed)
    else:
        model = M.load_pooled_heads(base_model, settings.heads, pooling)
    head_name, head = M.final_linear(model, settings.heads)
    config = model.base.config if hasattr(model, "pooling") else model.config
    M.init_heads(head, settings.seed, float(getattr(config, "initializer_range", 0.02) or 0.02))
    return _Run(model, head_name, head, tokenizer, train, split.eval, counts, max_length)


def _report(base_model, settings: TrainSettings, run: _Run, fit: _Fit, metrics: dict | None,
            seconds: float) -> dict:
    """The contents of ``ensrm_training.json``; every mode's settings (the other mode's at their defaults)."""
    frozen = settings.method if isinstance(settings.method, FrozenSettings) else FrozenSettings()
    joint = settings.method if isinstance(settings.method, JointSettings) else JointSettings()
    pooling, trunk = frozen.pooling, joint.member_layers is not None
    return {
        "format_version": 1,
        "base_model": str(base_model),
        "architecture": type(run.model.base if hasattr(run.model, "pooling") else run.model).__name__,
        "head_layer": run.head_name,
        "pooling": run.model.pooling if trunk else pooling,
        "heads_file": M.HEADS_FILE if pooling else None,
        "member_layers": joint.member_layers,
        "trunk_file": TRUNK_FILE if trunk else None,
        "text_encoding": "tokenizer(prompt, response)",
        "mode": settings.mode,
        "heads": settings.heads,
        "seed": settings.seed,
        "bootstrap": settings.bootstrap,
        "label_noise": settings.label_noise,
        "settings": {"epochs": joint.epochs, "lr": joint.lr, "head_lr": joint.head_lr, "trunk_lr": joint.trunk_lr,
                     "batch_size": settings.batch_size, "l2": frozen.l2, "max_iter": frozen.max_iter,
                     "eval_fraction": settings.eval_fraction, "max_length": run.max_length,
                     "feature_cache": None if frozen.feature_cache is None else str(frozen.feature_cache)},
        "n_train": len(run.train),
        "n_eval": len(run.evals),
        "train_loss": fit.train_loss,
        "epoch_losses": fit.epoch_losses,
        "metrics": metrics,
        "seconds": round(seconds, 2),
    }


def train_with_settings(base_model: str | os.PathLike, prefs: str | os.PathLike | Iterable[dict],
                        out_dir: str | os.PathLike, settings: TrainSettings) -> TrainResult:
    """:func:`train_reward_model` with its keywords already checked into a :class:`TrainSettings`.

    (Not run by the doctests: it needs a checkpoint and preference data on disk.)

    >>> settings = TrainSettings.create(heads=8, mode="joint", epochs=2)          # doctest: +SKIP
    >>> train_with_settings("minilm/", "prefs.jsonl", "rm/", settings).steps     # doctest: +SKIP
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    run = _prepare(base_model, prefs, settings)
    fit = _train_frozen(run, settings) if settings.mode == "frozen" else \
        _train_joint(run, settings, base_model, out_dir)
    metrics = pairwise_metrics(fit.eval_chosen, fit.eval_rejected, settings.uwo_lambda) if run.evals else None
    M.save_checkpoint(run.model, run.tokenizer, out_dir)
    seconds = time.perf_counter() - started
    report = _report(base_model, settings, run, fit, metrics, seconds)
    (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=1), encoding="utf-8")
    result = TrainResult(out_dir=out_dir, mode=settings.mode, heads=settings.heads, n_train=len(run.train),
                         n_eval=len(run.evals), train_loss=fit.train_loss, metrics=metrics, eval_pairs=run.evals,
                         eval_rewards_chosen=fit.eval_chosen, eval_rewards_rejected=fit.eval_rejected,
                         steps=fit.steps, start_epoch=fit.start_epoch, seconds=seconds,
                         pooling=settings.method.pooling if settings.mode == "frozen" else None)
    if settings.progress:
        print(result.summary(), file=sys.stderr)
    return result


def train_reward_model(base_model: str | os.PathLike, prefs: str | os.PathLike | Iterable[dict],
                       out_dir: str | os.PathLike, settings: TrainSettings | None = None, **options) -> TrainResult:
    """Train ``heads`` Bradley–Terry reward heads on one encoder and save a sequence classifier.

    ``base_model`` is a local checkpoint directory: a bare encoder/decoder or an existing
    ``AutoModelForSequenceClassification``. ``prefs`` is a JSONL path or a list of dicts with
    ``prompt``/``chosen``/``rejected``. ``out_dir`` receives an ordinary classifier checkpoint with
    ``num_labels = heads`` (safetensors, ``id2label`` ``head_k``, tokenizer files) and
    ``ensrm_training.json`` (settings and held-out metrics).

    ``settings`` (:class:`TrainSettings`) says how; or give its keywords instead
    (:meth:`TrainSettings.create`'s: ``heads`` 8, ``mode`` ``"frozen"``, ``seed`` 0, ``bootstrap``,
    ``label_noise`` 0, ``batch_size`` 16, ``eval_fraction`` 0.1, ``max_length`` 256, ``uwo_lambda``
    0.5, ``progress`` True, and each mode's own, below).

    - ``mode="frozen"``: pooled features are computed once with the encoder fixed and the K heads
      are fitted by L-BFGS (``l2``, default 1e-3; ``max_iter``, default 200). ``feature_cache`` (a
      directory) keeps the pooled features of every (prompt, response) seen, per base model and
      ``max_length``, so further fits on the same texts (other seeds, head counts, bootstrap
      resamples: an ensemble) skip the encoder.
    - ``mode="joint"``: encoder and heads train together with AdamW (``lr`` for the encoder,
      default 2e-5; ``head_lr`` for the heads, default 1e-3) for ``epochs`` (default 1); state is
      saved in ``out_dir/.train_state/`` after every epoch and ``resume=True`` continues from it.
      ``member_layers``/``trunk_lr``: a partially shared trunk (:class:`JointSettings`).

    A keyword of the other mode is refused (it would do nothing). ``pooling`` (frozen) fits the heads
    on a pooling of the base model's states, written as ``heads.safetensors`` (:class:`FrozenSettings`).

    Head k starts from seed ``seed + k``; ``bootstrap=True`` gives each head its own resample of
    the training pairs; ``label_noise=p`` swaps each training pair with probability ``p`` (the
    held-out ``eval_fraction`` of pairs is never swapped). Head biases are set so each head's
    mean reward on the training responses is about 0 (the loss leaves them free); layers without a
    bias (decoder ``score`` layers) keep their offsets.

    (Not run by the doctests: the skipped lines need a checkpoint and preference data on disk.)

    >>> result = train_reward_model("minilm/", "prefs.jsonl", "rm/", heads=8)   # doctest: +SKIP
    >>> result.metrics["accuracy"]["wco"]                                       # doctest: +SKIP
    0.87
    >>> settings = TrainSettings.create(heads=4, mode="joint", epochs=2)
    >>> train_reward_model("minilm/", "prefs.jsonl", "rm/", settings)          # doctest: +SKIP
    """
    if settings is not None and options:
        raise TypeError(f"train_reward_model() takes settings or keywords, not both (got settings and "
                        f"{', '.join(sorted(options))})")
    return train_with_settings(base_model, prefs, out_dir, settings or TrainSettings.create(**options))
