"""The ``decoder`` suite: a real-shape decoder reward model on every accepted runtime x precision, against
PyTorch eager, and K = 1 against K = 8 heads on the same trunk.

A :class:`DecoderBench` is an :class:`ensrm.bench.Bench` with one more suite, ``decoder``, which needs no
bundle: it builds a random-weight Qwen2-0.5B-shaped sequence classifier (``tests/models.py``'s
``build_real_shape``: hidden 896, 14 heads, 2 KV heads, vocabulary 151,936, bf16 sharded safetensors;
``decoder_layers`` reduces the depth only), exports it (fp32, and bf16 weights with fp32 arithmetic),
adds the precision variants this ensrm can make (each judged by the ranking gate), and times every
accepted runtime x precision and PyTorch eager (fp32, bf16 autocast) on the same random token ids at
batch 1 and 8 x 512 tokens, in fresh processes interleaved over rounds. A variant that is not run is
listed with the reason (unknown to this ensrm, rejected by its gate, bf16 emulated on this CPU, ...).
Then the same trunk exported with 1 and with 8 heads, timed back to back in one process.

Everything built is cached under the bench cache (``decoder/``), keyed by what it is made of, so a
second run only times. Run it with ``python -m benchmarks --suite decoder [--layers 2]``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import ensrm
from benchmarks.targets import or_na
from ensrm.bench import Bench, BenchConfig, dir_size_mb, interleave, onnx_size_mb, pooled_shape, run_job
from ensrm.errors import EnsrmError

#: The worker module that runs this suite's export and variant jobs (and every job of ``ensrm.bench``).
WORKER = "benchmarks.worker"
#: Seconds an export or a variant job may take (a 24-layer fp32 export verifies for many minutes on 2 cores).
JOB_TIMEOUT = 4 * 3600.0
#: Variant requests: ``PRECISION`` or ``PRECISION:INT8_MODE``, added with :func:`ensrm.add_variants`.
DEFAULT_VARIANTS = ("bf16", "int8:openvino-weights", "int4")
#: What a variant of each precision is, for the table (the manifest's method says more).
VARIANT_LABELS = {"bf16": "bf16 hint on the fp32 graph", "int4": "INT4 weights", "int8": "INT8"}


@dataclass
class DecoderConfig(BenchConfig):
    """:class:`ensrm.bench.BenchConfig` with the decoder suite's settings."""

    decoder_shape: str = "qwen2-0.5b"  # a name of tests/models.py's REAL_SHAPES
    decoder_layers: int | None = None  # None: the shape's own depth (24 for Qwen2-0.5B)
    decoder_checkpoint: str | None = None  # a decoder classifier to bench instead of building the shape
    decoder_batches: tuple[int, ...] = (1, 8)
    decoder_length: int = 512
    decoder_heads: tuple[int, int] = (1, 8)  # the K = 1 vs K = 8 comparison; the larger is the timed model
    decoder_dtypes: tuple[str, ...] = ("fp32", "bf16")  # graph dtypes exported (bf16: weights, fp32 arithmetic)
    decoder_variants: tuple[str, ...] = DEFAULT_VARIANTS
    decoder_force_bf16: bool = False  # build and time OpenVINO's bf16 even where the CPU only emulates it
    decoder_rounds: int = 2
    decoder_repeats: int = 2  # timed calls per shape and round (after one warm-up call)
    decoder_paired_rounds: int = 4
    decoder_eval_prompts: int = 8  # x 16 candidates: the held-out best-of-16 pools every gate judges
    decoder_calibration_records: int = 64

    @classmethod
    def quick(cls, **overrides) -> DecoderConfig:
        """:meth:`ensrm.bench.BenchConfig.quick`, and one round of one timed call per shape for the decoder."""
        return super().quick(**{"decoder_rounds": 1, "decoder_repeats": 1, "decoder_paired_rounds": 2, **overrides})


def parse_variant(request: str) -> tuple[str, str | None]:
    """``"int8:openvino-weights"`` -> ``("int8", "openvino-weights")``; ``"bf16"`` -> ``("bf16", None)``.

    >>> parse_variant("int8:dynamic"), parse_variant(" bf16 ")
    (('int8', 'dynamic'), ('bf16', None))
    """
    precision, _, mode = request.strip().partition(":")
    return precision.strip().lower(), (mode.strip() or None)


def variant_unavailable(precision: str, mode: str | None, native_bf16: bool | None, force_bf16: bool) -> str | None:
    """Why this ensrm, on this CPU, does not make the variant (``None``: it is made and judged).

    >>> variant_unavailable("fp8", None, True, False).split(" (")[0]
    "this ensrm has no 'fp8' precision"
    >>> variant_unavailable("bf16", None, False, False).split(":")[0]
    'skipped'
    >>> variant_unavailable("bf16", None, False, True) is None
    True
    """
    from ensrm.calibration.variants import parse_precisions
    from ensrm.spec import INT8_MODES

    try:
        parse_precisions(precision)
    except ValueError as exc:
        return f"this ensrm has no {precision!r} precision ({exc})"
    if mode is not None and precision == "int8" and mode not in INT8_MODES:
        return f"this ensrm has no INT8 mode {mode!r} (modes: {', '.join(INT8_MODES)})"
    if precision == "bf16" and native_bf16 is None:
        return "OpenVINO is not installed (pip install 'ensrm[openvino]'): bf16 runs on OpenVINO only"
    if precision == "bf16" and not native_bf16 and not force_bf16:
        return ("skipped: this CPU has no bf16 instructions (AVX512_BF16/AMX), so OpenVINO emulates bf16, about "
                "20x slower than fp32; not built or timed (--force-bf16 runs it anyway)")
    return None


def variant_groups(requests: list[tuple[str, str | None]]) -> list[list[tuple[str, str | None]]]:
    """Requests split into bundles that can hold them together: one variant per precision in a bundle.

    >>> variant_groups([("bf16", None), ("int8", "dynamic"), ("int8", "openvino"), ("int4", None)])
    [[('bf16', None), ('int8', 'dynamic'), ('int4', None)], [('int8', 'openvino')]]
    """
    groups: list[list[tuple[str, str | None]]] = []
    for request in requests:
        group = next((g for g in groups if request[0] not in {p for p, _ in g}), None)
        if group is None:
            groups.append(group := [])
        group.append(request)
    return groups


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _code_id(package: str) -> str:
    """Changes whenever ``ensrm.<package>``'s code does, so a cached bundle is never an older export's."""
    sources = sorted((Path(ensrm.__file__).parent / package).glob("*.py"))
    return hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()[:12]


def _checkpoint_id(checkpoint: Path) -> str:
    files = sorted(p.name for p in checkpoint.iterdir())
    return _key(str(checkpoint.resolve()), (checkpoint / "config.json").read_text(), files)


class DecoderModels:
    """The decoder suite's checkpoints and bundles under ``root``, built once and reused by later runs."""

    def __init__(self, root: Path, config: DecoderConfig, say=None):
        self.root, self.config, self.say = Path(root), config, say or (lambda message: None)
        self.root.mkdir(parents=True, exist_ok=True)

    def _publish(self, out: Path, build) -> Path:
        """Build into ``out.partial`` and rename: a killed run leaves nothing a later one would trust."""
        work = out.with_name(out.name + ".partial")
        shutil.rmtree(work, ignore_errors=True)
        build(work)
        work.rename(out)
        return out

    def source(self) -> Path:
        """The given checkpoint, else the real shape with the larger head count (bf16, sharded)."""
        c = self.config
        if c.decoder_checkpoint:
            return Path(c.decoder_checkpoint)
        # tests/models.py holds the real-shape fixtures (run from the repository root, as benchmarks is)
        from tests.models import REAL_SHAPES, build_real_shape

        heads = max(c.decoder_heads)
        out = self.root / f"ckpt-{c.decoder_shape}-l{c.decoder_layers}-{_key(REAL_SHAPES[c.decoder_shape], heads)}"
        if (out / "config.json").is_file():
            return out
        self.say(f"decoder: building the random {c.decoder_shape} checkpoint ({c.decoder_layers or 'all'} layers, "
                 f"K = {heads}, bf16)")
        return self._publish(out, lambda work: build_real_shape(c.decoder_shape, work, layers=c.decoder_layers,
                                                                num_labels=heads))

    def with_heads(self, source: Path, heads: int, seed: int = 0) -> Path:
        """``source``'s trunk (its stored dtype, unchanged) with ``heads`` seeded random heads; ``source``
        itself when it already has that many."""
        config = json.loads((source / "config.json").read_text())  # num_labels is saved as id2label's size
        if len(config.get("id2label") or {}) == heads:
            return source
        out = self.root / f"ckpt-k{heads}-{_key(_checkpoint_id(source), heads, seed)}"
        if (out / "config.json").is_file():
            return out
        self.say(f"decoder: {source.name} with {heads} head(s) (same trunk)")
        return self._publish(out, lambda work: _save_with_heads(source, work, heads, seed))

    def bundle(self, checkpoint: Path, dtype: str, heads: int) -> tuple[Path, dict]:
        """``checkpoint`` exported (and verified) with graph ``dtype`` at the suite's length, in a process of its
        own, and that export's time and peak RSS (recorded beside the bundle, so cached runs report them too)."""
        c = self.config
        key = _key(_checkpoint_id(checkpoint), c.decoder_length, dtype, _code_id("export"), _code_id("models"))
        out = self.root / f"bundle-k{heads}-{dtype}-{key}"
        facts_file = out.with_name(out.name + ".export.json")
        if (out / "ensemble.json").is_file():
            return out, json.loads(facts_file.read_text()) if facts_file.is_file() else {}
        self.say(f"decoder: exporting K = {heads}, dtype {dtype}, max length {c.decoder_length} (own process)")
        facts = {}

        def export(work: Path) -> None:
            result = run_job({"kind": "decoder_export", "checkpoint": str(checkpoint), "output": str(work),
                              "dtype": dtype, "max_length": c.decoder_length, "threads": c.threads},
                             timeout=JOB_TIMEOUT, worker=WORKER)
            if "error" in result:
                raise EnsrmError(f"the export failed: {result['error']}")
            facts.update(export_s=result["export_s"], export_rss_peak_mb=result["rss_peak_mb"])

        self._publish(out, export)
        facts_file.write_text(json.dumps(facts))
        return out, facts

    def variants(self, base: Path, group: list[tuple[str, str | None]]) -> tuple[Path, dict[str, str]]:
        """A copy of ``base`` with ``group``'s variants added and gated, and the error of each request that
        raised (by precision; a rejected variant is no error: the manifest records it)."""
        c = self.config
        manifest = (base / "ensemble.json").read_text()
        key = _key(manifest, group, c.decoder_eval_prompts, c.decoder_calibration_records, _code_id("calibration"))
        out = self.root / f"variants-{key}"
        errors_file = out.with_name(out.name + ".errors.json")
        if (out / "ensemble.json").is_file() and errors_file.is_file():
            return out, json.loads(errors_file.read_text())
        errors: dict[str, str] = {}

        def build(work: Path) -> None:
            shutil.copytree(base, work)
            with tempfile.TemporaryDirectory() as tmp:
                calibration, evaluation = self._records(Path(tmp))
                for precision, mode in group:
                    self.say(f"decoder: adding the {precision}{f' ({mode})' if mode else ''} variant (gated, own "
                             "process)")
                    result = run_job({"kind": "decoder_variant", "bundle": str(work), "precision": precision,
                                      "int8_mode": mode, "calibration": str(calibration), "eval_on": str(evaluation),
                                      "threads": c.threads}, timeout=JOB_TIMEOUT, worker=WORKER)
                    if "error" in result:  # the bundle is as before this request: add_variants is atomic
                        errors[precision] = result["error"]

        self._publish(out, build)
        errors_file.write_text(json.dumps(errors))
        return out, errors

    def _records(self, directory: Path) -> tuple[Path, Path]:
        """Calibration references and held-out best-of-16 pools (synthetic text) as JSONL files."""
        from ensrm.data.synthetic import generate_candidates, generate_references
        from ensrm.jsonl import write_records

        c = self.config
        calibration, evaluation = directory / "calibration.jsonl", directory / "eval.jsonl"
        write_records(calibration, generate_references(c.decoder_calibration_records, seed=12))
        write_records(evaluation, [{"prompt": r["prompt"], "response": r["response"]}
                                   for r in generate_candidates(c.decoder_eval_prompts, 16, seed=13)])
        return calibration, evaluation


def _save_with_heads(source: Path, out: Path, heads: int, seed: int) -> None:
    """Load ``source`` in its stored dtype, replace its score layer by ``heads`` seeded random rows, save."""
    import torch
    import transformers

    from benchmarks.trunk import _quiet_transformers

    with _quiet_transformers():  # no progress bars for loading and writing shards
        model = transformers.AutoModelForSequenceClassification.from_pretrained(source, dtype="auto").eval()
    dtype = model.score.weight.dtype
    generator = torch.Generator().manual_seed(seed)
    model.score = torch.nn.Linear(model.config.hidden_size, heads, bias=False, dtype=dtype)
    with torch.no_grad():
        model.score.weight.copy_(torch.randn(heads, model.config.hidden_size, generator=generator).to(dtype))
    model.config.num_labels = heads
    with _quiet_transformers():
        model.save_pretrained(out, max_shard_size="500MB")
        transformers.AutoTokenizer.from_pretrained(source).save_pretrained(out)


class DecoderBench(Bench):
    """:class:`ensrm.bench.Bench` with the ``decoder`` suite (not in the default run; needs no bundle)."""

    SUITES = Bench.SUITES + ("decoder",)
    BUNDLE_FREE_SUITES = ("decoder",)

    def suite_decoder(self) -> None:
        """A real-shape decoder on every accepted runtime x precision against PyTorch eager, and K = 1 vs K = 8.

        Rows: each exported graph dtype's fp32 scorer on onnxruntime and OpenVINO, each accepted variant on
        the runtime its gate judged it on, PyTorch eager in fp32 and with bf16 autocast; all on the same
        unpadded random token ids, ``decoder_batches`` x ``decoder_length``, ``threads`` threads, one warm-up
        call then ``decoder_repeats`` timed calls per shape, in fresh processes interleaved over
        ``decoder_rounds`` rounds; p50 and tokens/s of the pooled calls. Then K = 1 and K = 8 exports of the
        same trunk in one process, calls alternated (median of the per-round time ratios).
        """
        c = self.config
        models = DecoderModels(self.models.root / "decoder", c, self.say)
        lo, hi = sorted(c.decoder_heads)
        source = models.source()
        checkpoints = {k: models.with_heads(source, k) for k in (lo, hi)}
        not_run: list[dict] = []
        bundles: dict[str, Path] = {}
        exports: dict[str, dict] = {}
        for name, checkpoint, dtype, k in [(f"k{hi}/{d}", checkpoints[hi], d, hi) for d in c.decoder_dtypes] \
                + [(f"k{lo}/fp32", checkpoints[lo], "fp32", lo)]:
            try:
                bundles[name], exports[name] = models.bundle(checkpoint, dtype, k)
            except EnsrmError as exc:  # one export must not lose the rest
                not_run.append({"name": f"export {name}", "status": "error", "reason": str(exc)})
        configs = self._decoder_configs(models, bundles, hi, not_run)
        shapes = [[b, c.decoder_length] for b in c.decoder_batches]
        jobs = {name: self.job_spec(kind, shapes=shapes, repeats=c.decoder_repeats, warmup=1, **fields)
                for name, (kind, fields, _) in configs.items()}
        for name in ("torch/eager-fp32", "torch/eager-bf16-autocast"):
            jobs[name] = self.job_spec("torch", checkpoint=str(checkpoints[hi]), shapes=shapes, warmup=1,
                                       repeats=c.decoder_repeats, autocast="bf16" if "bf16" in name else None)
        self.say(f"decoder: timing {len(jobs)} configurations x {c.decoder_rounds} rounds, batches "
                 f"{', '.join(map(str, c.decoder_batches))} x {c.decoder_length} tokens")
        raw = interleave(jobs, c.decoder_rounds, progress=self.say)
        rows = [self._decoder_row(name, raw[name], configs.get(name)) for name in jobs]
        _add_eager_ratios(rows)
        self.results["decoder"] = {
            **_model_facts(checkpoints[hi]), "checkpoint": str(checkpoints[hi]), "shape": None if c.decoder_checkpoint
            else c.decoder_shape, "heads": hi, "length": c.decoder_length, "batches": list(c.decoder_batches),
            "threads": c.threads, "rounds": c.decoder_rounds, "repeats": c.decoder_repeats,
            "bundles": {name: {"path": str(b), "mb": dir_size_mb([b]), "onnx_mb": onnx_size_mb(b, "model.onnx"),
                               **exports[name]} for name, b in bundles.items()},
            "rows": rows, "not_run": not_run, "k_heads": self._decoder_heads(bundles, lo, hi),
            "note": "random weights (Qwen2-0.5B's published config where the shape is built) and random heads: "
                    "trained values cost the same; unpadded random token ids, the same in every row"}

    def model_info(self) -> dict:
        """A run of the decoder suite alone describes the decoder it built (not the unused default checkpoint)."""
        decoder = self.results.get("decoder")
        if self.spec is not None or not decoder:
            return super().model_info()
        return {"bundle": None, "checkpoint": decoder["checkpoint"], "model_type": decoder.get("model_type"),
                "hidden_size": decoder.get("hidden_size"), "layers": decoder.get("num_hidden_layers"),
                "intermediate_size": decoder.get("intermediate_size"), "num_heads": decoder["heads"],
                "precisions": []}

    def _decoder_configs(self, models: DecoderModels, bundles: dict[str, Path], heads: int,
                         not_run: list[dict]) -> dict[str, tuple[str, dict, dict]]:
        """``name -> (job kind, job fields, row facts)`` for every runtime x precision to time; what is not
        run goes to ``not_run`` with its reason."""
        from ensrm.bundle import load_spec
        from ensrm.calibration.variants import variant_runtime
        from ensrm.runtime.openvino_backend import installed

        c = self.config
        runtimes = ["onnxruntime"] + (["openvino"] if installed() else [])
        if not installed():
            not_run.append({"name": "openvino/*", "status": "unavailable",
                            "reason": "OpenVINO is not installed (pip install 'ensrm[openvino]')"})
        configs = {}
        for dtype in c.decoder_dtypes:
            bundle = bundles.get(f"k{heads}/{dtype}")
            for runtime in runtimes if bundle else []:
                name = f"{runtime}/fp32" + ("" if dtype == "fp32" else f" ({dtype} weights)")
                configs[name] = ("ort", {"mode": "scorer", "bundle": str(bundle), "precision": "fp32",
                                         "backend": runtime}, {"runtime": runtime, "precision": "fp32",
                                                               "graph": f"{dtype} export", "bundle": str(bundle)})
        base = bundles.get(f"k{heads}/fp32")
        if base is None:
            return configs
        native = _native_bf16() if installed() else None
        requests = []
        for precision, mode in map(parse_variant, c.decoder_variants):
            reason = variant_unavailable(precision, mode, native, c.decoder_force_bf16)
            label = precision + (f" ({mode})" if mode else "")
            if reason:
                not_run.append({"name": label, "status": "skipped" if reason.startswith("skipped") else "unavailable",
                                "reason": reason.removeprefix("skipped: ")})
            else:
                requests.append((precision, mode))
        for group in variant_groups(requests):
            bundle, errors = models.variants(base, group)
            spec = load_spec(bundle, verify="size")
            for precision, mode in group:
                label = precision + (f" ({mode})" if mode else "")
                variant = spec.variants.get(precision)
                if precision in errors or variant is None:
                    not_run.append({"name": label, "status": "error",
                                    "reason": errors.get(precision, "add_variants recorded no variant")})
                elif not variant.usable:
                    reasons = "; ".join(variant.checks.get("reasons", [])) or "see the manifest"
                    not_run.append({"name": label, "status": "rejected",
                                    "reason": f"rejected by its accuracy gate: {reasons}"})
                else:
                    runtime = variant_runtime(precision, variant.method)
                    configs[f"{runtime}/{label}"] = (
                        "ort", {"mode": "scorer", "bundle": str(bundle), "precision": precision, "backend": runtime},
                        {"runtime": runtime, "precision": precision, "bundle": str(bundle), "method": variant.method,
                         "graph": VARIANT_LABELS.get(precision, precision) + (f", {mode}" if mode else "")})
        return configs

    def _decoder_row(self, name: str, results: list[dict], config) -> dict:
        """One configuration's pooled calls per shape, memory, and what ran."""
        runtime, precision = name.split("/", 1)
        facts = config[2] if config else {"runtime": "torch", "precision": precision.removeprefix("eager-"),
                                          "graph": "PyTorch eager"}
        ok = [r for r in results if "error" not in r]
        if not ok:
            return {"name": name, **facts, "error": results[0].get("error", "no result") if results else "no result"}
        shapes = [pooled_shape(results, i) for i in range(len(ok[0]["shapes"]))]
        first = shapes[0]
        described = ok[0].get("runtime") or (f"torch {ok[0].get('torch')}, {ok[0].get('torch_threads')} threads, "
                                             f"attention {ok[0].get('attn_implementation')}")
        return {"name": name, **facts, "description": described,
                "shapes": [{k: s[k] for k in ("batch", "length", "p50_s", "median_s", "p99_s", "min_s", "samples",
                                              "seq_per_s", "tokens_per_s")} for s in shapes],
                **{k: first[k] for k in ("rss_peak_mb", "rss_model_mb", "load_s", "rounds")}}

    def _decoder_heads(self, bundles: dict[str, Path], lo: int, hi: int) -> dict:
        """K = lo against K = hi on the same trunk: per batch, calls alternated in one process."""
        c = self.config
        pair = [bundles.get(f"k{lo}/fp32"), bundles.get(f"k{hi}/fp32")]
        if None in pair:
            return {"heads": [lo, hi], "error": "an export failed (see not_run)"}
        out = {"heads": [lo, hi], "rounds": c.decoder_paired_rounds, "backend": c.backend,
               "onnx_mb": [onnx_size_mb(b, "model.onnx") for b in pair], "shapes": []}
        for batch in c.decoder_batches:
            self.say(f"decoder: K = {lo} vs K = {hi}, {batch} x {c.decoder_length}, calls alternated in one process")
            result = run_job(self.job_spec("paired", bundles=[str(b) for b in pair], shape=[batch, c.decoder_length],
                                           rounds=c.decoder_paired_rounds))
            if "error" in result:
                out["shapes"].append({"batch": batch, "length": c.decoder_length, "error": result["error"]})
                continue
            out["shapes"].append({"batch": batch, "length": c.decoder_length, "median_s": result["median_s"],
                                  "ratio": result["paired_ratio"][1]})
        return out


def _native_bf16() -> bool:
    from ensrm.runtime.openvino_backend import cpu_has_bf16

    return cpu_has_bf16()


def _model_facts(checkpoint: Path) -> dict:
    config = json.loads((checkpoint / "config.json").read_text())
    keys = ("model_type", "num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
            "num_key_value_heads", "vocab_size", "torch_dtype", "dtype")
    facts = {k: config[k] for k in keys if k in config}
    index = checkpoint / "model.safetensors.index.json"
    if index.is_file():
        total = json.loads(index.read_text()).get("metadata", {}).get("total_size")
        facts["checkpoint_mb"] = total / (1 << 20) if total else None
    return facts


def _add_eager_ratios(rows: list[dict]) -> None:
    """Each row's speed against eager fp32 and bf16 at the same batch: eager's p50 over the row's (> 1: faster)."""
    eager = {name: {s["batch"]: s["p50_s"] for s in row.get("shapes", [])}
             for row in rows for name in ("torch/eager-fp32", "torch/eager-bf16-autocast") if row["name"] == name}
    for row in rows:
        for shape in row.get("shapes", []):
            for name, key in (("torch/eager-fp32", "vs_eager_fp32"), ("torch/eager-bf16-autocast", "vs_eager_bf16")):
                base = eager.get(name, {}).get(shape["batch"])
                shape[key] = base / shape["p50_s"] if base else None


def decoder_markdown(decoder: dict | None) -> list[str]:
    """The decoder suite: one row per configuration and batch, what was not run and why, K = 1 vs K = 8."""
    if not decoder:
        return []
    lines = ["", f"Decoder reward model: {decoder.get('model_type')} {decoder.get('num_hidden_layers')} layers, hidden "
             f"{decoder.get('hidden_size')}, vocabulary {decoder.get('vocab_size')}, K = {decoder['heads']} heads "
             f"({decoder['note']}); {decoder['threads']} threads, one warm-up call then {decoder['repeats']} timed "
             f"call(s) per shape in each of {decoder['rounds']} round(s) of fresh processes, interleaved; "
             "x eager: PyTorch eager's p50 over this p50 (> 1: faster).", "",
             "| runtime / precision | graph | batch x tokens | p50 (ms) | tokens/s | x eager fp32 | x eager bf16 "
             "| model memory (MiB) | peak RSS (MiB) |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]

    for row in decoder["rows"]:
        if "error" in row:
            lines.append(f"| {row['name']} | {row.get('graph', '')} | error: {row['error']} | | | | | | |")
            continue
        for s in row["shapes"]:
            lines.append(f"| {row['name']} | {row.get('graph', '')} | {s['batch']} x {s['length']} | "
                         f"{s['p50_s'] * 1e3:.1f} | {s['tokens_per_s']:.0f} | {or_na(s.get('vs_eager_fp32'), '.2f')} | "
                         f"{or_na(s.get('vs_eager_bf16'), '.2f')} | {or_na(row.get('rss_model_mb'), '.0f')} | "
                         f"{or_na(row.get('rss_peak_mb'), '.0f')} |")
    exports = [f"{name}: bundle {b['mb']:.0f} MiB (model.onnx {or_na(b.get('onnx_mb'), '.0f')} MiB)"
               + (f", export {b['export_s']:.0f} s at {b['export_rss_peak_mb']:.0f} MiB peak RSS"
                  if b.get("export_s") is not None else "") for name, b in decoder["bundles"].items()]
    if exports:
        lines += ["", "Bundles (K / graph dtype; each export in a process of its own, timed when it was built): "
                  + "; ".join(exports) + "."]
    if decoder["not_run"]:
        lines += ["", "Not run:", ""] + [f"- {r['name']} ({r['status']}): {r['reason']}" for r in decoder["not_run"]]
    heads = decoder.get("k_heads") or {}
    if "error" in heads:
        lines += ["", f"K = {heads['heads'][0]} vs K = {heads['heads'][1]}: {heads['error']}"]
    elif heads.get("shapes"):
        lo, hi = heads["heads"]
        parts = [f"{s['batch']} x {s['length']}: " + (f"error: {s['error']}" if "error" in s else f"{s['ratio']:.3f}")
                 for s in heads["shapes"]]
        lines += ["", f"K = {hi} heads vs K = {lo} on the same trunk (fp32 graphs, backend {heads['backend']}), time "
                  f"ratio, median of {heads['rounds']} back-to-back rounds in one process: " + "; ".join(parts)]
    return lines
