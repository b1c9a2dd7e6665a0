"""The partially shared trunk: its checkpoint, its export, and the two ends of the dial (m = 0, m = L)."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import ensrm  # noqa: E402
from ensrm.errors import ExportError  # noqa: E402
from ensrm.export.exporter import export_bundle  # noqa: E402
from ensrm.models.trunk import MEMBERS_FILE, TRUNK_FILE, PartialTrunk, load_trunk, save_trunk  # noqa: E402

PROMPTS = ["How do I bake bread?", "What is a tuple?", "Plan a hike for me.", "Why is the sky blue?"] * 2
RESPONSES = ["Mix flour, water and yeast, knead and bake it hot.", "An ordered, immutable sequence.",
             "Layers, a map, food and a headlamp.", "Sunlight scatters off the air; blue scatters most.",
             "No.", "I cannot help with that request.", "Thank you so much, that was kind!", "Sure, here it is."]


def make_trunk(checkpoint, members: int, member_layers: int, pooling: str, seed: int = 0) -> PartialTrunk:
    """A trunk whose members really differ: each tower's weights are moved off the base's copy."""
    base = transformers.AutoModel.from_pretrained(str(checkpoint), dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    hidden = base.config.hidden_size
    trunk = PartialTrunk.from_base(base, members=members, member_layers=member_layers, pooling=pooling,
                                   weight=torch.randn(members, hidden, generator=generator),
                                   bias=torch.randn(members, generator=generator))
    with torch.no_grad():
        for param in trunk.towers.parameters():
            param.add_(0.2 * param.std().clamp(min=0.02) * torch.randn(param.shape, generator=generator))
    return trunk.eval()


def torch_heads(module, tokenizer, spec) -> np.ndarray:
    """``[n, K]`` rewards of the torch module on the test texts, encoded as the bundle encodes them."""
    tokenizer.padding_side = spec.padding_side
    batch = tokenizer(PROMPTS, RESPONSES, padding=True, truncation=True, max_length=spec.max_length,
                      return_tensors="pt")
    args = [batch[name] for name in spec.inputs]
    with torch.no_grad():
        return module(*args).numpy()


def test_first_token_pooling_narrows_every_members_last_layer(checkpoints, tmp_path):
    onnx = pytest.importorskip("onnx")
    checkpoint = checkpoints("bert", 1)
    trunk = make_trunk(checkpoint, 3, 1, "cls")  # every member's last layer reads the one shared hidden state
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(checkpoint))
    save_trunk(trunk, tokenizer, tmp_path / "ckpt")
    spec = export_bundle([tmp_path / "ckpt"], tmp_path / "bundle", progress=None)
    graph = onnx.load(str(tmp_path / "bundle" / "model.onnx"), load_external_data=False).graph
    selects = {n.name.split("/")[-2] for n in graph.node if n.op_type == "Slice" and n.name.endswith("/pooled_row")}
    assert len(selects) == 3
    scores = ensrm.Scorer(tmp_path / "bundle").score_texts(PROMPTS, RESPONSES).heads
    np.testing.assert_allclose(scores, torch_heads(trunk, tokenizer, spec), atol=1e-4, rtol=0)


@pytest.fixture(scope="module", params=["bert", "llama"])
def family(request, checkpoints):
    kind = request.param
    return kind, checkpoints(kind, 1), "last" if kind == "llama" else "mean"


@pytest.mark.parametrize("member_layers", [1, 2])
def test_export_equals_torch(family, member_layers, tmp_path):
    kind, checkpoint, pooling = family
    trunk = make_trunk(checkpoint, 3, member_layers, pooling)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(checkpoint))
    save_trunk(trunk, tokenizer, tmp_path / "ckpt")
    spec = export_bundle([tmp_path / "ckpt"], tmp_path / "bundle", progress=None)
    assert (spec.source_kind, spec.member_layers, spec.num_heads, spec.pooling) == \
        ("partial-trunk", member_layers, 3, pooling)
    assert spec.variants["fp32"].checks["max_abs_diff_heads"] <= 1e-4
    scores = ensrm.Scorer(tmp_path / "bundle").score_texts(PROMPTS, RESPONSES).heads
    expected = torch_heads(trunk, tokenizer, spec)
    assert np.abs(expected[:, 0] - expected[:, 1]).max() > 1e-3  # the members differ, so the check can fail
    np.testing.assert_allclose(scores, expected, atol=1e-4, rtol=0)


def test_checkpoint_round_trip_is_exact_and_readable_without_ensrm(checkpoints, tmp_path):
    from safetensors.torch import load_file

    trunk = make_trunk(checkpoints("bert", 1), 3, 1, "mean")
    save_trunk(trunk, None, tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / TRUNK_FILE).read_text())
    assert (config["members"], config["member_layers"], config["layers"], config["pooling"]) == \
        (3, 1, "encoder.layer", "mean")
    # member 0 is the base checkpoint itself; members 1, 2 own towers.{0,1}.layers.0 (layer 1 of 2)
    towers = load_file(str(tmp_path / "ckpt" / MEMBERS_FILE))
    assert {name.split(".")[1] for name in towers if name.startswith("towers.")} == {"0", "1"}
    assert towers["heads.weight"].shape == (3, 32)
    loaded = load_trunk(tmp_path / "ckpt")
    for (name, a), (_, b) in zip(trunk.state_dict().items(), loaded.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_no_member_layers_gives_the_multi_head_export_of_the_same_weights(checkpoints, tmp_path):
    from safetensors.torch import save_file

    checkpoint = checkpoints("bert", 1)
    trunk = make_trunk(checkpoint, 4, 0, "mean")
    save_trunk(trunk, transformers.AutoTokenizer.from_pretrained(str(checkpoint)), tmp_path / "trunk")
    save_file({"weight": trunk.heads.weight.detach().contiguous(), "bias": trunk.heads.bias.detach().contiguous()},
              str(tmp_path / "heads.safetensors"))
    export_bundle([tmp_path / "trunk"], tmp_path / "trunk-bundle", progress=None)
    export_bundle([tmp_path / "trunk"], tmp_path / "heads-bundle", heads=tmp_path / "heads.safetensors",
                  pooling="mean", progress=None)
    a = ensrm.Scorer(tmp_path / "trunk-bundle").score_texts(PROMPTS, RESPONSES)
    b = ensrm.Scorer(tmp_path / "heads-bundle").score_texts(PROMPTS, RESPONSES)
    for field in ("heads", "mean", "std", "min", "uwo"):
        np.testing.assert_allclose(getattr(a, field), getattr(b, field), atol=1e-6, rtol=0, err_msg=field)


def test_all_layers_per_member_gives_the_full_ensemble_export_of_the_same_members(family, tmp_path):
    kind, checkpoint, pooling = family
    trunk = make_trunk(checkpoint, 3, 2, pooling)  # the tiny models have 2 layers: m = L
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(checkpoint))
    save_trunk(trunk, tokenizer, tmp_path / "trunk")
    members = []
    for k in range(3):
        members.append(tmp_path / f"member-{k}")
        save_trunk(trunk.member(k), tokenizer, members[-1])
    export_bundle([tmp_path / "trunk"], tmp_path / "trunk-bundle", progress=None)
    spec = export_bundle(members, tmp_path / "full-bundle", progress=None)
    assert (spec.source_kind, spec.members, spec.pooling) == ("full-ensemble", 3, pooling)
    a = ensrm.Scorer(tmp_path / "trunk-bundle").score_texts(PROMPTS, RESPONSES).heads
    b = ensrm.Scorer(tmp_path / "full-bundle").score_texts(PROMPTS, RESPONSES).heads
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def test_member_layers_beyond_the_model_are_refused(checkpoints):
    base = transformers.AutoModel.from_pretrained(str(checkpoints("bert", 1)))
    with pytest.raises(ExportError, match="between 0 and the model's 2 layers, got 3"):
        PartialTrunk.from_base(base, members=2, member_layers=3, pooling="mean")


def test_a_members_file_that_does_not_match_the_config_is_refused(checkpoints, tmp_path):
    trunk = make_trunk(checkpoints("bert", 1), 3, 1, "mean")
    save_trunk(trunk, None, tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / TRUNK_FILE).read_text())
    (tmp_path / "ckpt" / TRUNK_FILE).write_text(json.dumps({**config, "members": 4}))
    with pytest.raises(ExportError, match="does not match ensrm_trunk.json .4 members, 1 member layers.: missing"):
        load_trunk(tmp_path / "ckpt")
