"""``ensrm train`` through click's runner, and the checkpoint's round trip through ``ens-export``."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from ensrm.cli import export_command, main
from ensrm.errors import TrainingError
from ensrm.jsonl import write_records

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def prefs_file(easy_prefs, tmp_path_factory):
    path = tmp_path_factory.mktemp("prefs") / "prefs.jsonl"
    write_records(path, [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in easy_prefs[:96]])
    return path


@pytest.mark.parametrize("mode, extra", [("frozen", ["--bootstrap"]), ("joint", ["--epochs", "1", "--lr", "1e-4"])])
def test_train_command_writes_a_checkpoint_that_exports(tiny_bert_dir, prefs_file, tmp_path, mode, extra):
    ckpt = tmp_path / "rm"
    result = CliRunner().invoke(main, ["train", str(tiny_bert_dir), str(prefs_file), "-o", str(ckpt), "--heads", "3",
                                       "--mode", mode, "--max-length", "64", "--batch-size", "16", "--quiet", *extra])
    assert result.exit_code == 0, result.output
    assert f"checkpoint {ckpt}: 3 heads, {mode} (held-out accuracy: mean" in result.output
    report = json.loads((ckpt / "ensrm_training.json").read_text())
    assert report["mode"] == mode and report["heads"] == 3 and len(report["metrics"]["per_head_accuracy"]) == 3
    assert (ckpt / "tokenizer.json").is_file()  # ens-export refuses a checkpoint without tokenizer files
    # Frozen heads on a random tiny encoder have weights in the hundreds (its pooled features barely
    # vary), so float noise reaches 1e-3 in absolute terms; the default 1e-4 suits real encoders.
    exported = CliRunner().invoke(export_command, [str(ckpt), "-o", str(tmp_path / "bundle"), "--max-length", "64",
                                                   "--tolerance", "1e-2"])
    assert exported.exit_code == 0, exported.output
    assert "3 heads" in exported.output


def test_exported_heads_equal_the_trainers_eval_rewards(tiny_bert_dir, easy_prefs, tmp_path):
    import ensrm
    from ensrm.export.exporter import export_bundle
    from ensrm.train import train_reward_model

    run = train_reward_model(tiny_bert_dir, easy_prefs[:120], tmp_path / "rm", heads=4, seed=2, bootstrap=True,
                             eval_fraction=0.25, max_length=64, progress=False)
    export_bundle([tmp_path / "rm"], tmp_path / "bundle", max_length=64, tolerance=1e-2, progress=None)
    scorer = ensrm.Scorer(tmp_path / "bundle")
    prompts = [p["prompt"] for p in run.eval_pairs]
    for side, expected in (("chosen", run.eval_rewards_chosen), ("rejected", run.eval_rewards_rejected)):
        heads = scorer.score_texts(prompts, [p[side] for p in run.eval_pairs]).heads  # [n_eval, 4]
        # frozen heads have large weights on low-variance features: compare at the logits' own scale
        np.testing.assert_allclose(heads, expected, rtol=1e-3, atol=1e-3 * float(np.abs(expected).max()))


def test_options_of_the_other_mode_are_refused(tiny_bert_dir, prefs_file, tmp_path):
    args = ["train", str(tiny_bert_dir), str(prefs_file), "-o", str(tmp_path / "rm")]
    result = CliRunner().invoke(main, args + ["--resume"])
    assert result.exit_code == 2 and "--resume only applies to --mode joint" in result.output
    result = CliRunner().invoke(main, args + ["--mode", "joint", "--max-iter", "5"])
    assert result.exit_code == 2 and "--max-iter only applies to --mode frozen" in result.output
    assert not (tmp_path / "rm").exists()


def test_api_refuses_joint_settings_in_frozen_mode(tiny_bert_dir, easy_prefs, tmp_path):
    from ensrm.train import train_reward_model

    with pytest.raises(TrainingError, match="apply to joint mode only"):
        train_reward_model(tiny_bert_dir, easy_prefs[:10], tmp_path / "rm", resume=True, progress=False)
    with pytest.raises(TrainingError, match="epochs=3"):
        train_reward_model(tiny_bert_dir, easy_prefs[:10], tmp_path / "rm", epochs=3, progress=False)


def test_malformed_prefs_are_one_line_with_line_number(tiny_bert_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p", "chosen": 3, "rejected": "b"}\n')
    result = CliRunner().invoke(main, ["train", str(tiny_bert_dir), str(bad), "-o", str(tmp_path / "rm")])
    assert result.exit_code == 1
    assert result.output.startswith("Error:") and "bad.jsonl:2" in result.output and "chosen" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_pooled_heads_train_and_export_with_the_printed_command(tiny_bert_dir, prefs_file, tmp_path):
    import ensrm

    ckpt = tmp_path / "rm"
    result = CliRunner().invoke(main, ["train", str(tiny_bert_dir), str(prefs_file), "-o", str(ckpt), "--heads", "3",
                                       "--pooling", "mean", "--max-length", "64", "--quiet"])
    assert result.exit_code == 0, result.output
    command = result.output.split("export with: ens-export ")[1].split(" -o BUNDLE")[0].split()
    assert command == [str(ckpt), "--heads", str(ckpt / "heads.safetensors"), "--pooling", "mean"]
    report = json.loads((ckpt / "ensrm_training.json").read_text())
    assert report["pooling"] == "mean" and report["architecture"] == "BertModel"
    exported = CliRunner().invoke(export_command, command + ["-o", str(tmp_path / "bundle"), "--max-length", "64",
                                                             "--tolerance", "1e-2"])
    assert exported.exit_code == 0, exported.output

    assert ensrm.Scorer(tmp_path / "bundle").spec.pooling == "mean"


def test_pooled_heads_bundle_reproduces_the_trainers_eval_rewards(tiny_bert_dir, easy_prefs, tmp_path):
    import ensrm
    from ensrm.export.exporter import export_bundle
    from ensrm.train import train_reward_model

    # the heads were fitted on the features the exported graph computes
    run = train_reward_model(tiny_bert_dir, easy_prefs[:120], tmp_path / "rm", heads=3, pooling="mean",
                             eval_fraction=0.25, max_length=64, progress=False)
    export_bundle([run.out_dir], tmp_path / "bundle", heads=run.out_dir / "heads.safetensors", pooling="mean",
                  max_length=64, tolerance=1e-2, progress=None)
    scores = ensrm.Scorer(tmp_path / "bundle").score_texts([p["prompt"] for p in run.eval_pairs],
                                                          [p["chosen"] for p in run.eval_pairs])
    np.testing.assert_allclose(scores.heads, run.eval_rewards_chosen, rtol=1e-3,
                               atol=1e-3 * float(np.abs(run.eval_rewards_chosen).max()))


def test_pooling_is_refused_in_joint_mode_without_a_trunk_and_when_unknown(tiny_bert_dir, easy_prefs, tmp_path):
    from ensrm.train import train_reward_model

    with pytest.raises(TrainingError, match="`pooling` in joint mode applies to a partially shared trunk"):
        train_reward_model(tiny_bert_dir, easy_prefs[:10], tmp_path / "rm", mode="joint", pooling="mean",
                           progress=False)
    with pytest.raises(TrainingError, match="`pooling` must be one of cls, mean, last"):
        train_reward_model(tiny_bert_dir, easy_prefs[:10], tmp_path / "rm", pooling="max", progress=False)
    assert not (tmp_path / "rm").exists()
