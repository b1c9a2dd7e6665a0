"""fp16 and INT8 variants of a partially shared trunk, judged by the same gates as any other bundle."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from ensrm import Scorer  # noqa: E402
from ensrm.bundle import load_spec  # noqa: E402
from ensrm.calibration.data import load_records  # noqa: E402
from ensrm.export.exporter import export_bundle  # noqa: E402
from ensrm.trunk import PartialTrunk, save_trunk  # noqa: E402
from tests.calibration.conftest import GATES  # noqa: E402


def test_trunk_gets_gated_fp16_and_int8_variants(spread_checkpoint, record_files, tmp_path):
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
    spec = load_spec(tmp_path / "rm")
    assert spec.member_layers == 1
    for precision in ("fp16", "int8"):
        variant = spec.variants[precision]
        assert variant.gate is not None and "spearman" in str(variant.checks), precision  # judged, not assumed
    assert spec.variants["fp16"].accepted  # fp16 of a float graph ranks like fp32
    records = load_records(record_files["eval"], "eval")
    prompts, responses = [r["prompt"] for r in records], [r["response"] for r in records]
    reference = Scorer(tmp_path / "rm").score_texts(prompts, responses).heads
    for precision in set(spec.usable_precisions) - {"fp32"}:
        heads = Scorer(tmp_path / "rm", precision=precision).score_texts(prompts, responses).heads
        rho = [np.corrcoef(np.argsort(np.argsort(heads[:, k])), np.argsort(np.argsort(reference[:, k])))[0, 1]
               for k in range(3)]
        assert min(rho) >= GATES[precision].min_spearman - 1e-9, precision
