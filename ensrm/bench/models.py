"""The models a benchmark run compares, built once and cached by what they are made of.

From one sequence-classifier checkpoint (the default model or any BERT-family encoder)
this builds: the same encoder with K random heads (for the K sweep), full-ensemble members
(the encoder with independently perturbed weights and one head each), the one-graph full
ensemble, and the plain ``torch.onnx.export`` of the classifier with no ensrm tail. Random
heads cost exactly what trained ones do, so speeds carry over to trained models.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from ensrm._hf import quiet_transformers
from ensrm._optional import require


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _exporter_id(package: str = "export") -> str:
    """Changes whenever the code of ``ensrm.<package>`` does, so a cached bundle is never an older graph."""
    sources = sorted((Path(__file__).resolve().parents[1] / package).glob("*.py"))
    return hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()[:12]


def _checkpoint_id(checkpoint: Path) -> str:
    config = (Path(checkpoint) / "config.json").read_bytes()
    return hashlib.sha256(config + str(Path(checkpoint).resolve()).encode()).hexdigest()[:12]


class ModelCache:
    """Builds bench checkpoints and bundles under ``root``, reusing what an earlier run built."""

    def __init__(self, checkpoint: str | Path, root: str | Path, max_length: int = 128,
                 progress: Callable[[str], None] | None = None):
        self.checkpoint = Path(checkpoint)
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_length = max_length
        self.progress = progress
        self.base = _checkpoint_id(self.checkpoint)

    def _say(self, message: str) -> None:
        if self.progress:
            self.progress(message)

    def checkpoint_with(self, num_labels: int, seed: int = 0, perturb: float = 0.0) -> Path:
        """The base encoder with ``num_labels`` fresh random heads; ``perturb`` adds weight noise.

        Full-ensemble members get ``perturb > 0`` so each holds weights of its own (separately
        trained members share nothing, and identical weights could be shared by a runtime).
        """
        out = self.root / f"ckpt-{_key(self.base, num_labels, seed, perturb)}"
        if (out / "config.json").is_file():
            return out
        torch = require("torch", "export")
        transformers = require("transformers", "export")
        torch.manual_seed(seed)
        with quiet_transformers():  # "newly initialised" heads are the point
            model = transformers.AutoModelForSequenceClassification.from_pretrained(
                self.checkpoint, num_labels=num_labels, ignore_mismatched_sizes=True, dtype=torch.float32)
        with torch.no_grad():
            head = model.classifier if hasattr(model, "classifier") else model.score
            head = getattr(head, "out_proj", head)
            head.weight.normal_(0.0, 0.05)
            if perturb:
                for name, param in model.named_parameters():
                    if "classifier" not in name:
                        param.add_(torch.randn_like(param) * perturb)
        tmp = out.with_name(out.name + ".tmp")
        model.save_pretrained(tmp)
        transformers.AutoTokenizer.from_pretrained(self.checkpoint).save_pretrained(tmp)
        tmp.rename(out)
        return out

    def bundle(self, checkpoints: list[Path], name: str) -> Path:
        """An ensrm bundle exported (and verified) from ``checkpoints``; cached."""
        from ensrm.export.exporter import export_bundle

        # Keyed by what it is made of, not by its role: member 0 and the K=1 model are one bundle.
        out = self.root / f"bundle-{_key([str(c) for c in checkpoints], self.max_length, _exporter_id())}"
        if (out / "ensemble.json").is_file():
            return out
        self._say(f"exporting {name} ({len(checkpoints)} checkpoint(s))")
        export_bundle(checkpoints, out, max_length=self.max_length, progress=None, overwrite=True)
        return out

    def multi_head(self, num_heads: int) -> Path:
        return self.bundle([self.checkpoint_with(num_heads)], f"multihead-k{num_heads}")

    def members(self, count: int) -> list[Path]:
        """Single-head member checkpoints; member 0 is the base encoder itself."""
        return [self.checkpoint_with(1, seed=i, perturb=0.0 if i == 0 else 1e-3) for i in range(count)]

    def member_bundles(self, count: int) -> list[Path]:
        return [self.bundle([c], f"member{i}") for i, c in enumerate(self.members(count))]

    def full_ensemble(self, count: int) -> Path:
        return self.bundle(self.members(count), f"full-k{count}")

    def plain(self, num_labels: int) -> Path:
        """``torch.onnx.export`` of the classifier's logits as a generic tool does it: no ensrm tail."""
        out = self.root / f"plain-{_key(self.base, num_labels, self.max_length)}.onnx"
        if out.is_file():
            return out
        torch = require("torch", "export")
        transformers = require("transformers", "export")
        self._say(f"exporting the plain classifier (num_labels={num_labels})")
        model = transformers.AutoModelForSequenceClassification.from_pretrained(
            self.checkpoint_with(num_labels), dtype=torch.float32).eval()
        from ensrm.models.modules import EncoderClassifier

        uses_types = getattr(model.config, "type_vocab_size", 0) > 1
        names = ["input_ids", "attention_mask"] + (["token_type_ids"] if uses_types else [])
        ids = torch.ones((2, 8), dtype=torch.long)
        dims = {0: torch.export.Dim("batch", min=1), 1: torch.export.Dim("seq", min=1, max=self.max_length)}
        tmp = out.with_name(out.stem + ".tmp.onnx")
        torch.onnx.export(EncoderClassifier(model, uses_types).eval(), tuple(ids.clone() for _ in names), str(tmp),
                          dynamo=True, input_names=names, output_names=["logits"],
                          dynamic_shapes={n: dims for n in names}, opset_version=18, external_data=False)
        tmp.rename(out)
        return out


#: The default bundle's variants in the bench: per-token INT8 is the form that passes the
#: unchanged gate on the default model (static INT8 does not; ``benchmarks/NOTES.md``).
DEFAULT_VARIANTS = {"precisions": "fp16,int8", "int8_mode": "per-token"}


def precision_records() -> tuple[list[dict], list[dict]]:
    """``(calibration, evaluation)`` records for precision variants: 512 synthetic references, and
    48 prompts x 16 synthetic candidates (best-of-16 pools) held out for the gate."""
    from ensrm.data.synthetic import generate_candidates, generate_references

    evaluation = [{"prompt": c["prompt"], "response": c["response"]} for c in generate_candidates(48, 16, seed=13)]
    return generate_references(512, seed=12), evaluation


def bundle_with_variants(bundle: str | Path, root: str | Path, progress: Callable[[str], None] | None = None) -> Path:
    """A copy of ``bundle`` under ``root`` with gated fp16 and per-token INT8 variants; cached.

    Calibrated and gated on :func:`precision_records` (as ``scripts/bench_precision.py`` is); a
    rejected variant is recorded as such.
    """
    import shutil
    import tempfile

    from ensrm.calibration.variants import add_variants
    from ensrm.jsonl import write_records

    manifest = (Path(bundle) / "ensemble.json").read_text()
    out = Path(root) / f"variants-{_key(manifest, DEFAULT_VARIANTS, _exporter_id('calibration'))}"
    if (out / "ensemble.json").is_file():
        return out
    if progress:
        progress(f"adding gated fp16 and per-token INT8 variants to a copy of {bundle} (a few minutes, once)")
    work = out.with_name(out.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(bundle, work)
    with tempfile.TemporaryDirectory() as records:
        calib, evaluation = Path(records) / "calib.jsonl", Path(records) / "eval.jsonl"
        for path, rows in zip((calib, evaluation), precision_records()):
            write_records(path, rows)
        add_variants(work, DEFAULT_VARIANTS["precisions"], int8_mode=DEFAULT_VARIANTS["int8_mode"],
                     calibration=calib, eval_on=evaluation)
    work.rename(out)  # only a finished copy gets the name a later run looks for
    return out


def model_max_length(checkpoint: str | Path) -> int:
    """The longest input the checkpoint's position embeddings allow (from ``config.json``)."""
    config = json.loads((Path(checkpoint) / "config.json").read_text())
    limit = config.get("max_position_embeddings") or config.get("n_positions") or 512
    if config.get("model_type") in ("roberta", "xlm-roberta", "camembert"):
        limit -= (config.get("pad_token_id") or 0) + 1  # positions start after the padding index
    return int(limit)


def matrix_flops(config, length: int, num_heads: int = 1, members: int = 1,
                 pooled_token_only: bool = False) -> dict[str, float]:
    """Matrix-product FLOPs (2 per multiply-add) of one sequence of ``length`` tokens.

    Counts what a dense encoder layer multiplies: the Q, K, V and output projections, the two
    FFN matrices, and the attention scores and context; plus the pooler and the K-head layer.
    Embeddings, LayerNorm, softmax and GELU are not matrix products and are left out.
    ``pooled_token_only``: the graph runs the last layer's output projection and FFN for the
    pooled token alone (:mod:`ensrm.export.prune`), so the other rows are not counted.

    >>> from types import SimpleNamespace
    >>> cfg = SimpleNamespace(hidden_size=384, intermediate_size=1536, num_hidden_layers=6)
    >>> round(matrix_flops(cfg, 128)["total"] / 1e9, 3)
    2.869
    """
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    per_layer = {
        "qkv_projections": 2 * length * h * 3 * h,
        "output_projection": 2 * length * h * h,
        "ffn": 2 * length * h * i * 2,
        "attention_scores_context": 2 * length * length * h * 2,
    }
    parts = {name: float(value * layers * members) for name, value in per_layer.items()}
    if pooled_token_only:
        for name in ("output_projection", "ffn"):
            parts[name] -= per_layer[name] * members * (length - 1) / length
    parts["pooler_heads"] = float(members * (2 * h * h) + 2 * h * num_heads)
    parts["total"] = sum(parts.values())
    return parts
