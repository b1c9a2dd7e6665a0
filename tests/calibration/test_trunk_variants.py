"""fp16 and INT8 variants of a partially shared trunk, judged by the same gates as any other bundle."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from ensrm import Scorer  # noqa: E402
from ensrm.bundle import load_spec  # noqa: E402
from ensrm.calibration.data import encoder_for, feed_batches, load_records  # noqa: E402
from ensrm.calibration.int8 import quantize_int8  # noqa: E402
from ensrm.export.exporter import export_bundle  # noqa: E402
from ensrm.models.trunk import PartialTrunk, save_trunk  # noqa: E402
from tests.calibration.conftest import GATES  # noqa: E402


@pytest.fixture(scope="module")
def trunk_bundle(spread_checkpoint, record_files, tmp_path_factory):
    """A 3-member trunk (1 shared layer, 1 layer per member) exported with gated fp16 and INT8 variants."""
    tmp_path = tmp_path_factory.mktemp("trunk")
    base = transformers.AutoModel.from_pretrained(str(spread_checkpoint), dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    trunk = PartialTrunk.from_base(base, members=3, member_layers=1, pooling="mean",
                                   weight=torch.randn(3, base.config.hidden_size, generator=generator),
                                   bias=torch.zeros(3))
    with torch.no_grad():
        for param in trunk.towers.parameters():
            param.mul_(1 + 0.2 * torch.randn(param.shape, generator=generator))
    save_trunk(trunk, transformers.AutoTokenizer.from_pretrained(str(spread_checkpoint)), tmp_path / "ckpt")
    export_bundle([tmp_path / "ckpt"], tmp_path / "rm", normalize_on=record_files["refs"], precisions="fp16,int8",
                  calibration=record_files["calib"], gates=GATES, progress=None)
    return tmp_path / "rm"


def test_trunk_gets_gated_fp16_and_int8_variants(trunk_bundle, record_files):
    spec = load_spec(trunk_bundle)
    assert spec.member_layers == 1
    for precision in ("fp16", "int8"):
        variant = spec.variants[precision]
        assert variant.gate is not None and "spearman" in str(variant.checks), precision  # judged, not assumed
    assert spec.variants["fp16"].accepted  # fp16 of a float graph ranks like fp32
    records = load_records(record_files["eval"], "eval")
    prompts, responses = [r["prompt"] for r in records], [r["response"] for r in records]
    reference = Scorer(trunk_bundle).score_texts(prompts, responses).heads
    for precision in set(spec.usable_precisions) - {"fp32"}:
        heads = Scorer(trunk_bundle, precision=precision).score_texts(prompts, responses).heads
        rho = [np.corrcoef(np.argsort(np.argsort(heads[:, k])), np.argsort(np.argsort(reference[:, k])))[0, 1]
               for k in range(3)]
        assert min(rho) >= GATES[precision].min_spearman - 1e-9, precision


def test_per_token_int8_keeps_every_members_last_layer_in_float(trunk_bundle, record_files, tmp_path):
    encoder = encoder_for(trunk_bundle, load_spec(trunk_bundle))
    batches = [feeds for _, feeds in feed_batches(encoder, load_records(record_files["calib"], "calib"), 16)]
    report = quantize_int8(trunk_bundle / "model.onnx", tmp_path / "int8.onnx", "per-token", batches,
                           float_products=("last",))
    layers = 1 + 3 * 1  # the shared layer, then each member's own
    per_layer = (report["quantized_matmuls"] + report["float_matmuls"]) // layers
    assert report["float_matmuls"] == 3 * per_layer and report["quantized_matmuls"] == per_layer
