"""Joint training: encoder and K heads fine-tuned together, resumable at epoch boundaries.

Each step runs the encoder once on the chosen and rejected responses of a batch together and
reads all K heads from that one pass, so K heads cost one encoder, not K.

The state in ``out_dir/.train_state/`` (model weights in safetensors, optimizer state through
``torch.save``/``torch.load(weights_only=True)``, the rest in JSON) is written after every epoch.
Shuffling and dropout are seeded per epoch, so an interrupted run resumed from its state gives
the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ensrm._optional import require
from ensrm.errors import TrainingError
from ensrm.train.losses import bradley_terry_loss
from ensrm.train.model import encode_pairs, uses_token_type_ids
from ensrm.train.progress import Progress

torch = require("torch", "export")
safetensors_torch = require("safetensors.torch", "export")

STATE_DIR = ".train_state"


@dataclass
class JointOutcome:
    start_epoch: int  # the epoch this call started from (> 0 when resumed)
    epochs: int
    steps: int  # optimizer steps taken in total, including those before a resume
    epoch_losses: list[float]  # mean BT loss per epoch, including those before a resume
    head_means: list[float]  # mean logit per head over the last epoch, for centring


def _save_state(state_dir: Path, model, optimizer, info: dict) -> None:
    """Write the state to a fresh folder and swap it in, so a crash never leaves half a state."""
    partial = state_dir.with_name(state_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    safetensors_torch.save_model(model, str(partial / "model.safetensors"))
    torch.save(optimizer.state_dict(), partial / "optimizer.pt")
    (partial / "state.json").write_text(json.dumps(info, indent=1), encoding="utf-8")
    old = state_dir.with_name(state_dir.name + ".old")
    if state_dir.exists():
        state_dir.rename(old)
    partial.rename(state_dir)
    shutil.rmtree(old, ignore_errors=True)


def _load_state(state_dir: Path, model, optimizer, run: dict) -> dict:
    info_path = state_dir / "state.json"
    if not info_path.is_file():
        raise TrainingError(f"resume requested but {state_dir} holds no training state; run without resume")
    info = json.loads(info_path.read_text(encoding="utf-8"))
    changed = sorted(key for key in run if key != "epochs" and info["run"].get(key) != run[key])
    if changed:
        raise TrainingError(
            f"cannot resume from {state_dir}: it was saved with different {', '.join(changed)} "
            f"(saved {[info['run'].get(k) for k in changed]}, now {[run[k] for k in changed]}); "
            "start afresh without resume or restore the original settings"
        )
    if info["epoch"] > run["epochs"]:
        raise TrainingError(f"{state_dir} already holds {info['epoch']} epochs, "
                            f"more than the {run['epochs']} asked for")
    safetensors_torch.load_model(model, str(state_dir / "model.safetensors"), strict=True)
    optimizer.load_state_dict(torch.load(state_dir / "optimizer.pt", weights_only=True))
    return info


def parameter_groups(model, head_name: str, lr: float, head_lr: float, trunk_lr: float | None = None) -> list[dict]:
    """AdamW groups: the heads at ``head_lr``, the rest at ``lr``; in a partial trunk the shared layers
    at ``trunk_lr`` (default ``lr``). A group at learning rate 0 is frozen (no gradients at all)."""
    if hasattr(model, "parameter_groups"):  # ensrm.models.trunk.PartialTrunk
        parts = model.parameter_groups()
        rates = {"trunk": lr if trunk_lr is None else trunk_lr, "members": lr, "heads": head_lr}
        groups = [{"params": parts[name], "lr": rates[name]} for name in ("trunk", "members", "heads")]
    else:
        head_params = list(model.get_submodule(head_name).parameters())
        head_ids = {id(p) for p in head_params}
        groups = [{"params": [p for p in model.parameters() if id(p) not in head_ids], "lr": lr},
                  {"params": head_params, "lr": head_lr}]
    for group in groups:
        if group["lr"] == 0:
            for param in group["params"]:
                param.requires_grad_(False)  # exactly fixed, and backward skips what only it needs
    groups = [g for g in groups if g["lr"] != 0 and g["params"]]
    if not groups:
        raise TrainingError("every learning rate is 0 (`lr`, `head_lr`, `trunk_lr`): nothing would train")
    return groups


def train_joint(model, groups: list[dict], tokenizer, train_pairs: list[dict], counts: np.ndarray, *, epochs: int,
                batch_size: int, max_length: int, seed: int, state_dir: Path, resume: bool, run: dict,
                progress: bool) -> JointOutcome:
    """Fine-tune ``model`` (already carrying seeded heads) on ``train_pairs`` for ``epochs`` epochs.

    ``groups`` are AdamW parameter groups (:func:`parameter_groups`); ``counts`` ``[pairs, K]``
    are per-head sample weights; ``run`` describes the run (data fingerprint, settings) and must
    match the saved state when ``resume`` is true.
    """
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    n = len(train_pairs)
    steps_per_epoch = math.ceil(n / batch_size)
    start_epoch, epoch_losses, head_means = 0, [], [0.0] * counts.shape[1]
    if resume:
        info = _load_state(state_dir, model, optimizer, run)
        start_epoch, epoch_losses, head_means = info["epoch"], info["epoch_losses"], info["head_means"]
    token_types = uses_token_type_ids(model)
    weights = torch.from_numpy(counts)  # [pairs, K]
    bar = Progress((epochs - start_epoch) * steps_per_epoch, "train (joint)", enabled=progress)
    for epoch in range(start_epoch, epochs):
        torch.manual_seed(seed * 1_000_003 + epoch)  # dropout masks depend only on (seed, epoch)
        order = np.random.default_rng([seed, 3, epoch]).permutation(n)
        model.train()
        loss_sum, logit_sum, seen = 0.0, torch.zeros(counts.shape[1], dtype=torch.float64), 0
        for step in range(steps_per_epoch):
            idx = order[step * batch_size:(step + 1) * batch_size]
            prompts = [train_pairs[i]["prompt"] for i in idx]
            batch = encode_pairs(tokenizer, prompts + prompts,
                                 [train_pairs[i]["chosen"] for i in idx] + [train_pairs[i]["rejected"] for i in idx],
                                 max_length, token_types)
            logits = model(**batch)
            logits = getattr(logits, "logits", logits)  # [2b, K]: one encoder pass for both sides and all heads
            r_chosen, r_rejected = logits[:len(idx)], logits[len(idx):]  # [b, K] each
            loss = bradley_terry_loss(r_chosen, r_rejected, weights[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            loss_sum += loss.item() * len(idx)
            logit_sum += logits.detach().double().sum(dim=0)
            seen += 2 * len(idx)
            bar.update(loss=loss_sum / (seen / 2), epoch=epoch + 1)
        epoch_losses.append(loss_sum / n)
        head_means = (logit_sum / seen).tolist()
        _save_state(state_dir, model, optimizer, {
            "epoch": epoch + 1, "step": (epoch + 1) * steps_per_epoch, "epoch_losses": epoch_losses,
            "head_means": head_means, "run": run,
        })
    bar.close()
    return JointOutcome(start_epoch, epochs, epochs * steps_per_epoch, epoch_losses, head_means)
