"""Joint training of a partially shared trunk: what one step touches, one pass per batch, resuming."""

import json
import math

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

from click.testing import CliRunner  # noqa: E402

from ensrm.bundle import load_spec  # noqa: E402
from ensrm.cli import main  # noqa: E402
from ensrm.data import generate_preferences  # noqa: E402
from ensrm.errors import TrainingError  # noqa: E402
from ensrm.jsonl import write_records  # noqa: E402
from ensrm.models.trunk import TRUNK_FILE, load_trunk  # noqa: E402
from ensrm.train import train_reward_model  # noqa: E402

SETTINGS = dict(heads=3, mode="joint", member_layers=1, seed=2, bootstrap=True, batch_size=16, lr=1e-3,
                head_lr=1e-2, max_length=48, eval_fraction=0.0, progress=False)


@pytest.fixture(scope="module")
def prefs():
    return generate_preferences(40, seed=11, aspects=("politeness", "specificity"))


def _parameters(model) -> dict:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def _changed(before: dict, after: dict) -> set[str]:
    return {name for name in before if not torch.equal(before[name], after[name])}


def _trunk_names(state: dict) -> set[str]:
    """Embeddings and layer 0 of the 2-layer tiny BERT: what the members share when m = 1."""
    return {n for n in state if n.startswith(("base.embeddings.", "base.encoder.layer.0."))}


def test_one_step_with_trunk_lr_0_moves_only_members_and_heads(tiny_bert_dir, prefs, tmp_path):
    trunk = load_trunk_from(tiny_bert_dir)
    before = _parameters(trunk)
    train_reward_model(tiny_bert_dir, prefs[:16], tmp_path / "rm", epochs=1, trunk_lr=0.0, **SETTINGS)
    after = _parameters(load_trunk(tmp_path / "rm"))
    changed = _changed(before, after)
    shared = _trunk_names(before)
    assert not changed & shared  # the shared layers stay exactly as they were
    assert any(n.startswith("base.encoder.layer.1.") for n in changed)  # member 0's own layer
    assert {n.split(".")[1] for n in changed if n.startswith("towers.")} == {"0", "1"}  # members 1 and 2
    assert {"heads.weight", "heads.bias"} <= changed


def test_one_step_with_a_trunk_lr_moves_the_shared_layers_too(tiny_bert_dir, prefs, tmp_path):
    trunk = load_trunk_from(tiny_bert_dir)
    before = _parameters(trunk)
    train_reward_model(tiny_bert_dir, prefs[:16], tmp_path / "rm", epochs=1, trunk_lr=1e-3, **SETTINGS)
    changed = _changed(before, _parameters(load_trunk(tmp_path / "rm")))
    assert any(n.startswith("base.encoder.layer.0.") for n in changed)


def load_trunk_from(base_dir):
    """The trunk training starts from: every member's layer 1 a copy of the base's (heads still zero)."""
    from ensrm.train.model import load_trunk_model

    return load_trunk_model(base_dir, SETTINGS["heads"], SETTINGS["member_layers"], None)


def test_shared_layers_run_once_per_batch_and_each_member_layer_once(tiny_bert_dir, prefs, tmp_path, monkeypatch):
    calls = []
    original = transformers.models.bert.modeling_bert.BertLayer.forward

    def counting(self, *args, **kwargs):
        calls.append(id(self))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(transformers.models.bert.modeling_bert.BertLayer, "forward", counting)
    result = train_reward_model(tiny_bert_dir, prefs, tmp_path / "rm", epochs=1, **SETTINGS)
    steps = math.ceil(40 / 16)
    assert result.steps == steps
    # per step: shared layer 0 once, member 0's layer 1 once, members 1 and 2 their copies once each
    assert len(calls) == steps * (2 + 2)
    assert len(set(calls)) == 4


def test_resumed_run_equals_an_uninterrupted_one(tiny_bert_dir, prefs, tmp_path):
    settings = {**SETTINGS, "trunk_lr": 5e-4}
    straight = train_reward_model(tiny_bert_dir, prefs, tmp_path / "straight", epochs=2, **settings)
    train_reward_model(tiny_bert_dir, prefs, tmp_path / "resumed", epochs=1, **settings)
    resumed = train_reward_model(tiny_bert_dir, prefs, tmp_path / "resumed", epochs=2, resume=True, **settings)
    assert resumed.start_epoch == 1 and resumed.steps == straight.steps
    for file in ("model.safetensors", "members.safetensors"):
        a = safetensors_torch.load_file(str(tmp_path / "straight" / file))
        b = safetensors_torch.load_file(str(tmp_path / "resumed" / file))
        assert a.keys() == b.keys()
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=f"{file}: {name}")


def test_resume_refuses_other_member_layers(tiny_bert_dir, prefs, tmp_path):
    train_reward_model(tiny_bert_dir, prefs, tmp_path / "rm", epochs=1, **SETTINGS)
    with pytest.raises(TrainingError, match="member_layers"):
        train_reward_model(tiny_bert_dir, prefs, tmp_path / "rm", epochs=2, resume=True,
                           **{**SETTINGS, "member_layers": 2})


def test_trunk_settings_without_member_layers_and_too_many_member_layers_are_refused(tiny_bert_dir, prefs, tmp_path):
    with pytest.raises(TrainingError, match="`trunk_lr` in joint mode applies to a partially shared trunk"):
        train_reward_model(tiny_bert_dir, prefs, tmp_path / "rm", mode="joint", trunk_lr=0.0, progress=False)
    with pytest.raises(TrainingError, match="between 0 and the model's 2 layers, got 3"):
        train_reward_model(tiny_bert_dir, prefs, tmp_path / "rm", **{**SETTINGS, "member_layers": 3})
    with pytest.raises(TrainingError, match="`member_layers` only applies to `mode='joint'`"):
        train_reward_model(tiny_bert_dir, prefs, tmp_path / "rm", member_layers=1, progress=False)
    assert not (tmp_path / "rm").exists()


def test_cli_trains_a_trunk_that_ens_export_takes_as_it_is(tiny_gpt2_dir, prefs, tmp_path):
    write_records(tmp_path / "prefs.jsonl", prefs)
    runner = CliRunner()
    done = runner.invoke(main, ["train", str(tiny_gpt2_dir), str(tmp_path / "prefs.jsonl"), "-o", str(tmp_path / "rm"),
                                "--heads", "2", "--mode", "joint", "--member-layers", "1", "--trunk-lr", "0",
                                "--max-length", "48", "--eval-fraction", "0.25", "--quiet"])
    assert done.exit_code == 0, done.output
    assert f"export with: ens-export {tmp_path / 'rm'} -o BUNDLE" in done.output
    config = json.loads((tmp_path / "rm" / TRUNK_FILE).read_text())
    assert (config["members"], config["member_layers"], config["pooling"], config["final_norm"]) == \
        (2, 1, "last", "ln_f")
    report = json.loads((tmp_path / "rm" / "ensrm_training.json").read_text())
    assert report["member_layers"] == 1 and report["settings"]["trunk_lr"] == 0.0
    exported = runner.invoke(main, ["export", str(tmp_path / "rm"), "-o", str(tmp_path / "bundle")])
    assert exported.exit_code == 0, exported.output
    spec = load_spec(tmp_path / "bundle")
    assert (spec.source_kind, spec.member_layers, spec.num_heads) == ("partial-trunk", 1, 2)
