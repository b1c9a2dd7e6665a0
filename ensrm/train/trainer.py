"""``train_reward_model``: preference pairs in, a K-head sequence-classification checkpoint out."""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ensrm._optional import require
from ensrm.errors import TrainingError
from ensrm.spec import POOLINGS
from ensrm.train import model as M
from ensrm.train.feature_cache import FeatureCache, model_fingerprint
from ensrm.train.frozen import fit_heads
from ensrm.train.joint import STATE_DIR, train_joint
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

    def summary(self) -> str:
        lines = [f"trained {self.heads} heads ({self.mode}) on {self.n_train} pairs in {self.seconds:.1f}s; "
                 f"final train loss {self.train_loss:.4f}; saved to {self.out_dir}"]
        lines.append(format_metrics(self.metrics) if self.metrics else "no held-out pairs (eval_fraction=0)")
        return "\n".join(lines)


def _check_settings(heads, mode, epochs, batch_size, max_length, label_noise, resume, feature_cache, pooling):
    if not isinstance(heads, int) or heads < 1:
        raise TrainingError(f"heads must be a positive integer, got {heads!r}")
    if mode not in MODES:
        raise TrainingError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if epochs < 1 or batch_size < 1:
        raise TrainingError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    if max_length < 8:
        raise TrainingError(f"max_length must be at least 8 tokens, got {max_length}")
    if not 0.0 <= label_noise <= 1.0:
        raise TrainingError(f"label_noise must be a probability in [0, 1], got {label_noise}")
    if mode == "frozen" and (resume or epochs != 1):
        # Silently ignoring them would let a user believe a frozen fit ran for N epochs or resumed.
        raise TrainingError(f"epochs={epochs} and resume={resume} apply to joint mode only; frozen mode fits "
                            "the heads to convergence in one go (tune max_iter/l2), or use mode='joint'")
    if pooling is not None and pooling not in POOLINGS:
        raise TrainingError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    if pooling is not None and mode != "frozen":
        raise TrainingError("pooling applies to frozen mode; joint mode trains the classifier's own pooling")
    if mode == "joint" and feature_cache is not None:
        raise TrainingError("feature_cache applies to frozen mode only: in joint mode the encoder changes")


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
            logits = model(**batch).logits.float()  # [2b, K]
            chosen.append(logits[:len(part)])
            rejected.append(logits[len(part):])
    return torch.cat(chosen).numpy(), torch.cat(rejected).numpy()


def _train_frozen(model, head, tokenizer, train, evals, counts, *, l2, max_iter, max_length, batch_size, progress,
                  cache):
    prompts = [p["prompt"] for p in train] * 2 + [p["prompt"] for p in evals] * 2
    responses = ([p["chosen"] for p in train] + [p["rejected"] for p in train]
                 + [p["chosen"] for p in evals] + [p["rejected"] for p in evals])

    def compute(prompts, responses):
        bar = Progress(len(responses), "features (frozen encoder)", enabled=progress, unit="text")
        out = M.pooled_features(model, head, tokenizer, prompts, responses, max_length=max_length,
                                batch_size=batch_size, progress=bar)  # [n, hidden]
        bar.close()
        return out

    if cache is None:
        features = compute(prompts, responses)  # [2 * (n_train + n_eval), hidden]
    else:
        features = torch.from_numpy(cache.features(prompts, responses, lambda p, r: compute(p, r).numpy()))
    n, m = len(train), len(evals)
    fitted = fit_heads(features[:n], features[n:2 * n], torch.from_numpy(counts), head.weight.detach(),
                       l2=l2, max_iter=max_iter)
    with torch.no_grad():
        head.weight.copy_(fitted.weight)
        if head.bias is not None:  # decoder score layers have no bias: their offsets stay uncentred
            head.bias.copy_(fitted.bias)
        eval_rewards = head(features[2 * n:]).numpy()  # [2m, K], exactly what the saved classifier outputs
    return fitted.loss, eval_rewards[:m], eval_rewards[m:]


def train_reward_model(
    base_model: str | os.PathLike,
    prefs: str | os.PathLike | Iterable[dict],
    out_dir: str | os.PathLike,
    *,
    heads: int = 8,
    mode: str = "frozen",
    seed: int = 0,
    bootstrap: bool = False,
    label_noise: float = 0.0,
    epochs: int = 1,
    lr: float = 2e-5,
    head_lr: float = 1e-3,
    batch_size: int = 16,
    l2: float = 1e-3,
    max_iter: int = 200,
    eval_fraction: float = 0.1,
    max_length: int = 256,
    uwo_lambda: float = 0.5,
    progress: bool = True,
    resume: bool = False,
    feature_cache: str | os.PathLike | None = None,
    pooling: str | None = None,
) -> TrainResult:
    """Train ``heads`` Bradley–Terry reward heads on one encoder and save a sequence classifier.

    ``base_model`` is a local checkpoint directory: a bare encoder/decoder or an existing
    ``AutoModelForSequenceClassification``. ``prefs`` is a JSONL path or a list of dicts with
    ``prompt``/``chosen``/``rejected``. ``out_dir`` receives an ordinary
    ``AutoModelForSequenceClassification`` checkpoint with ``num_labels = heads`` (safetensors,
    config with ``id2label`` ``head_k``, tokenizer files) and ``ensrm_training.json``
    (settings and held-out metrics).

    - ``mode="frozen"``: pooled features are computed once with the encoder fixed and the K heads
      are fitted by L-BFGS (``l2``, ``max_iter``); ``epochs``/``resume`` are refused and
      ``lr``/``head_lr`` unused. ``feature_cache`` (a directory) keeps the pooled features of every
      (prompt, response) seen, per base model and ``max_length``, so further fits on the same
      texts (other seeds, head counts, bootstrap resamples: an ensemble) skip the encoder.
    - ``mode="joint"``: encoder and heads train together with AdamW (``lr`` for the encoder,
      ``head_lr`` for the heads) for ``epochs``; state is saved in ``out_dir/.train_state/``
      after every epoch and ``resume=True`` continues from it.

    ``pooling`` (``"cls"``, ``"mean"`` or ``"last"``, frozen mode) fits the heads on that pooling of
    the base model's last hidden states instead of the classifier's own pooled feature (BERT's
    pooler, for one, is not what sentence encoders such as all-MiniLM-L6-v2 were trained to
    produce). ``out_dir`` then holds the base checkpoint plus ``heads.safetensors``, exported with
    ``ens-export OUT --heads OUT/heads.safetensors --pooling POOLING``.

    Head k starts from seed ``seed + k``; ``bootstrap=True`` gives each head its own resample of
    the training pairs; ``label_noise=p`` swaps each training pair with probability ``p`` (the
    held-out ``eval_fraction`` of pairs is never swapped). Head biases are set so each head's
    mean reward on the training responses is about 0 (the loss leaves them free); layers without a
    bias (decoder ``score`` layers) keep their offsets.

    >>> result = train_reward_model("minilm/", "prefs.jsonl", "rm/", heads=8)   # doctest: +SKIP
    >>> result.metrics["accuracy"]["wco"]                                       # doctest: +SKIP
    0.87
    """
    started = time.perf_counter()
    _check_settings(heads, mode, epochs, batch_size, max_length, label_noise, resume, feature_cache, pooling)
    records = load_preferences(prefs)  # malformed data fails before the slow model load
    try:
        split = split_pairs(records, eval_fraction, seed)
    except ValueError as exc:
        raise TrainingError(str(exc)) from exc
    train = add_label_noise(split.train, label_noise, seed)
    counts = bootstrap_counts(len(train), heads, seed, bootstrap)  # [n_train, K]
    out_dir = Path(out_dir)

    tokenizer = M.load_tokenizer(base_model)
    if tokenizer.model_max_length < 1_000_000:  # unset limits are reported as a huge sentinel
        max_length = min(max_length, tokenizer.model_max_length)
    if pooling is None:
        model = M.load_classifier(base_model, heads, tokenizer, seed)
    else:
        model = M.load_pooled_heads(base_model, heads, pooling)
    head_name, head = M.final_linear(model, heads)
    config = model.base.config if pooling else model.config
    M.init_heads(head, seed, float(getattr(config, "initializer_range", 0.02) or 0.02))

    start_epoch, steps, epoch_losses = 0, 1, []
    if mode == "frozen":
        cache = None
        if feature_cache is not None:
            cache = FeatureCache(feature_cache, model_fingerprint(model, head_name),
                                 max_length)
        train_loss, eval_c, eval_r = _train_frozen(
            model, head, tokenizer, train, split.eval, counts, l2=l2, max_iter=max_iter,
            max_length=max_length, batch_size=max(batch_size, 32), progress=progress, cache=cache)
    else:
        run = {"data": fingerprint(train), "base_model": str(Path(base_model).resolve()), "heads": heads,
               "seed": seed, "bootstrap": bootstrap, "label_noise": label_noise, "lr": lr, "head_lr": head_lr,
               "batch_size": batch_size, "max_length": max_length, "epochs": epochs}
        outcome = train_joint(model, head_name, tokenizer, train, counts, epochs=epochs, lr=lr, head_lr=head_lr,
                              batch_size=batch_size, max_length=max_length, seed=seed,
                              state_dir=out_dir / STATE_DIR, resume=resume, run=run, progress=progress)
        if head.bias is not None:  # decoder score layers have no bias to centre with
            with torch.no_grad():
                head.bias -= torch.tensor(outcome.head_means, dtype=head.bias.dtype)  # each head's mean near 0
        start_epoch, steps, epoch_losses = outcome.start_epoch, outcome.steps, outcome.epoch_losses
        train_loss = epoch_losses[-1] if epoch_losses else float("nan")
        eval_c = eval_r = None
        if split.eval:
            eval_c, eval_r = _score_pairs(model, tokenizer, split.eval, max_length, max(batch_size, 32))

    metrics = pairwise_metrics(eval_c, eval_r, uwo_lambda) if split.eval else None
    M.save_checkpoint(model, tokenizer, out_dir)
    seconds = time.perf_counter() - started
    report = {
        "format_version": 1,
        "base_model": str(base_model),
        "architecture": type(model.base if pooling else model).__name__,
        "head_layer": head_name,
        "pooling": pooling,
        "heads_file": M.HEADS_FILE if pooling else None,
        "text_encoding": "tokenizer(prompt, response)",
        "mode": mode,
        "heads": heads,
        "seed": seed,
        "bootstrap": bootstrap,
        "label_noise": label_noise,
        "settings": {"epochs": epochs, "lr": lr, "head_lr": head_lr, "batch_size": batch_size, "l2": l2,
                     "max_iter": max_iter, "eval_fraction": eval_fraction, "max_length": max_length,
                     "feature_cache": None if feature_cache is None else str(feature_cache)},
        "n_train": len(train),
        "n_eval": len(split.eval),
        "train_loss": train_loss,
        "epoch_losses": epoch_losses,
        "metrics": metrics,
        "seconds": round(seconds, 2),
    }
    (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=1), encoding="utf-8")
    result = TrainResult(out_dir, mode, heads, len(train), len(split.eval), train_loss, metrics, split.eval,
                         eval_c, eval_r, steps, start_epoch, seconds, pooling)
    if progress:
        print(result.summary(), file=sys.stderr)
    return result
