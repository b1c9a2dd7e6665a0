"""``ensrm score``: streaming batch scoring, bad lines in both modes, best-of-n, filter, atomic output."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import ensrm
from ensrm.cli import main
from ensrm.errors import InputError, InputFileError
from ensrm.runtime.batch import default_rejects_path, score_file
from ensrm.runtime.filter import ResponseFilter

Q1 = "How do I bake bread at home without a stand mixer?"
Q2 = "Explain the difference between a list and a tuple in Python."
Q3 = "What should I pack for a hiking trip in the mountains in autumn?"
ANSWERS = ["Mix flour, water, salt and yeast, knead by hand, let it rise and bake it hot.",
           "A list is mutable and a tuple is not; both keep their order.",
           "Layers, a rain shell, a warm hat, a map, a headlamp and enough food.",
           "I cannot help with that request because it could hurt someone."]


def records():
    """Three prompts with 4, 3 and 2 candidates, consecutive, with an extra field each."""
    out = []
    for prompt, n in ((Q1, 4), (Q2, 3), (Q3, 2)):
        for j in range(n):
            out.append({"id": len(out), "prompt": prompt, "response": ANSWERS[j], "meta": {"model": "m", "j": j}})
    return out


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def bundle(bundles):
    return bundles("bert", num_labels=4)


@pytest.fixture(scope="module")
def scorer(bundle):
    return ensrm.Scorer(bundle)


def run(*args):
    return CliRunner().invoke(main, ["score", *map(str, args)])


def test_scores_every_record_and_keeps_every_field(bundle, scorer, tmp_path):
    recs = records()
    src = write_lines(tmp_path / "in.jsonl", [json.dumps(r) for r in recs])
    out = tmp_path / "out.jsonl"
    result = run(bundle, src, "-o", out, "--objective", "wco", "--batch-size", "4")
    assert result.exit_code == 0, result.output
    assert "9 records scored" in result.output and "records/s" in result.output
    got = read_jsonl(out)
    assert [{k: v for k, v in g.items() if k != "ensrm"} for g in got] == recs
    direct = scorer.score_texts([r["prompt"] for r in recs], [r["response"] for r in recs])
    heads = np.array([g["ensrm"]["heads"] for g in got], dtype=np.float32)
    np.testing.assert_allclose(heads, direct.heads, rtol=1e-5, atol=1e-6)
    for i, g in enumerate(got):
        added = g["ensrm"]
        assert added["objective"] == "wco" and added["score"] == added["min"]
        assert added["min"] == pytest.approx(float(direct.min[i]), rel=1e-5, abs=1e-6)
        assert set(added) == {"heads", "mean", "std", "min", "uwo", "objective", "score"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]  # no temp files


def test_bad_line_stops_with_its_number_and_writes_nothing(bundle, tmp_path):
    lines = [json.dumps(r) for r in records()]
    lines.insert(2, '{"prompt": "unterminated')  # line 3
    src = write_lines(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out.jsonl"
    result = run(bundle, src, "-o", out, "--chunk-size", "1")
    assert result.exit_code == 1
    assert f"{src}:3: not valid JSON" in result.output
    error_lines = result.output.strip().split("\n")[-1:]  # after the \r-updated progress line
    assert error_lines[0].startswith("Error: ") and error_lines[0].count("\n") == 0
    assert result.output.count("Error") == 1
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_a_failed_run_leaves_an_existing_output_untouched(bundle, tmp_path):
    src = write_lines(tmp_path / "in.jsonl", [json.dumps(records()[0]), '{"prompt": "p"}'])
    out = tmp_path / "out.jsonl"
    out.write_text("previous results\n")
    result = run(bundle, src, "-o", out)
    assert result.exit_code == 1 and ":2: missing field 'response'" in result.output
    assert out.read_text() == "previous results\n"


def test_skip_bad_writes_rejects_with_line_numbers(bundle, tmp_path):
    good = [json.dumps(r) for r in records()]
    lines = [good[0], "not json", good[1], "", '{"prompt": 1, "response": "x"}', "[1, 2]", good[2],
             '{"prompt": "p", "response": "r", "ensrm": 5}', good[3]]
    src = tmp_path / "in.jsonl"
    src.write_bytes("\n".join(lines).encode() + b"\n" + b'{"prompt": "\xff\xfe", "response": "r"}\n')
    out = tmp_path / "out.jsonl"
    result = run(bundle, src, "-o", out, "--skip-bad", "--chunk-size", "2")
    assert result.exit_code == 0, result.output
    rejects = read_jsonl(default_rejects_path(out))
    assert default_rejects_path(out).name == "out.rejects.jsonl"
    assert [r["line"] for r in rejects] == [2, 5, 6, 8, 10]
    reasons = [r["reason"] for r in rejects]
    assert reasons[0].startswith("not valid JSON")
    assert reasons[1] == "field 'prompt' must be a string, found int"
    assert reasons[2] == "expected a JSON object, found list"
    assert "already has a field 'ensrm'" in reasons[3]
    assert reasons[4].startswith("not UTF-8")
    assert rejects[0]["text"] == "not json"
    assert [g["id"] for g in read_jsonl(out)] == [0, 1, 2, 3]
    # every non-blank input line is in exactly one of the two files
    assert len(read_jsonl(out)) + len(rejects) == sum(1 for line in lines if line.strip()) + 1
    assert "5 bad records" in result.output


def test_skip_bad_with_a_named_rejects_file_and_option_checks(bundle, tmp_path):
    src = write_lines(tmp_path / "in.jsonl", ["{}"])
    rejects = tmp_path / "bad" / "r.jsonl"
    result = run(bundle, src, "-o", tmp_path / "out.jsonl", "--skip-bad", "--rejects", rejects)
    assert result.exit_code == 0, result.output
    assert read_jsonl(rejects)[0]["line"] == 1
    assert read_jsonl(tmp_path / "out.jsonl") == []
    result = run(bundle, src, "-o", tmp_path / "o2.jsonl", "--rejects", rejects)
    assert result.exit_code == 2 and "--rejects goes with --skip-bad" in result.output
    result = run(bundle, src, "-o", tmp_path / "o3.jsonl", "--objective", "median")
    assert result.exit_code == 1 and "unknown objective" in result.output


@pytest.mark.parametrize("chunk_size", [1, 3, 1024])
def test_best_of_n_marks_one_chosen_per_consecutive_prompt(bundle, scorer, tmp_path, chunk_size):
    recs = records() + [dict(records()[0], id=99)]  # Q1 again later: a new group
    src = write_lines(tmp_path / "in.jsonl", [json.dumps(r) for r in recs])
    out = tmp_path / "out.jsonl"
    result = run(bundle, src, "-o", out, "--best-of-n", "--objective", "uwo", "--chunk-size", chunk_size)
    assert result.exit_code == 0, result.output
    assert "4 best-of-n groups" in result.output
    got = read_jsonl(out)
    assert [g["id"] for g in got] == [r["id"] for r in recs]
    groups = [g["ensrm"]["best_of_n"]["group"] for g in got]
    assert groups == [0, 0, 0, 0, 1, 1, 1, 2, 2, 3]
    for group in range(4):
        members = [g for g in got if g["ensrm"]["best_of_n"]["group"] == group]
        assert all(m["ensrm"]["best_of_n"]["group_size"] == len(members) for m in members)
        chosen = [i for i, m in enumerate(members) if m["ensrm"]["best_of_n"]["chosen"]]
        scores = [m["ensrm"]["uwo"] for m in members]
        assert chosen == [int(np.argmax(scores))]
        best = ensrm.best_of_n(scorer, members[0]["prompt"], [m["response"] for m in members], "uwo")
        assert chosen == [best.index]


def test_filter_adds_decision_and_reason(bundle, scorer, tmp_path):
    recs = records()
    flt = ResponseFilter(scorer, objective="wco", min_score=0.0, max_std=1.0)
    filter_path = flt.save(tmp_path / "filter.json")
    src = write_lines(tmp_path / "in.jsonl", [json.dumps(r) for r in recs])
    out = tmp_path / "out.jsonl"
    result = run(bundle, src, "-o", out, "--filter", filter_path)
    assert result.exit_code == 0, result.output
    got = read_jsonl(out)
    expected = flt.decide([r["prompt"] for r in recs], [r["response"] for r in recs])
    for g, d in zip(got, expected):
        assert g["ensrm"]["filter"]["accept"] == d.accept
        assert g["ensrm"]["filter"]["reason"] == d.reason
        assert g["ensrm"]["filter"]["min_score"] == 0.0 and g["ensrm"]["filter"]["objective"] == "wco"
    assert f"{sum(d.accept for d in expected)} accepted by the filter" in result.output


def test_filter_from_another_bundle_is_refused(bundle, bundles, tmp_path):
    other = ensrm.Scorer(bundles("bert", num_labels=4, seed=1))
    filter_path = ResponseFilter(other, min_score=0.0).save(tmp_path / "filter.json")
    src = write_lines(tmp_path / "in.jsonl", [json.dumps(records()[0])])
    result = run(bundle, src, "-o", tmp_path / "out.jsonl", "--filter", filter_path)
    assert result.exit_code == 1 and "different bundle" in result.output
    assert not (tmp_path / "out.jsonl").exists()


def test_output_appears_only_when_complete(scorer, tmp_path):
    recs = records()
    src = write_lines(tmp_path / "in.jsonl", [json.dumps(r) for r in recs])
    out = tmp_path / "out.jsonl"
    seen = []

    def progress(done, rejected, seconds):
        seen.append((done, out.exists()))

    summary = score_file(scorer, src, out, chunk_size=2, progress=progress)
    assert summary.records == 9 and summary.rejected == 0 and summary.groups is None
    assert [d for d, _ in seen] == [2, 4, 6, 8, 9, 9]
    assert [exists for _, exists in seen[:-1]] == [False] * 5  # chunks written, file not there yet
    assert seen[-1] == (9, True)


def test_progress_comes_every_few_batches_within_a_chunk(scorer, tmp_path):
    src = write_lines(tmp_path / "in.jsonl", [json.dumps(r) for r in records()] * 3)  # 27 records
    seen = []
    score_file(scorer, src, tmp_path / "out.jsonl", batch_size=1, chunk_size=1024,
               progress=lambda done, rejected, seconds: seen.append(done))
    assert seen == [8, 16, 24, 27, 27]  # every 8 batches, then the final count


class RefusingScorer:
    """Wraps a scorer; a pair whose response is 'BOOM' cannot be encoded (as an empty pair cannot)."""

    def __init__(self, scorer):
        self.inner = scorer
        self.num_heads = scorer.num_heads

    def score_texts(self, prompts, responses, batch_size=32):
        if "BOOM" in responses:
            raise InputError(f"pair {responses.index('BOOM')} encodes to no tokens")
        return self.inner.score_texts(prompts, responses, batch_size=batch_size)


def test_a_pair_that_cannot_be_scored_is_named_by_line(scorer, tmp_path):
    recs = records()[:4]
    recs[2]["response"] = "BOOM"
    src = write_lines(tmp_path / "in.jsonl", [json.dumps(r) for r in recs])
    with pytest.raises(InputFileError, match=r"in.jsonl:3: pair 0 encodes to no tokens"):
        score_file(RefusingScorer(scorer), src, tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()
    summary = score_file(RefusingScorer(scorer), src, tmp_path / "out.jsonl", skip_bad=True)
    assert (summary.records, summary.rejected) == (3, 1)
    assert [g["id"] for g in read_jsonl(tmp_path / "out.jsonl")] == [0, 1, 3]
    assert read_jsonl(tmp_path / "out.rejects.jsonl")[0]["line"] == 3


def test_refuses_to_overwrite_its_input(scorer, tmp_path):
    src = write_lines(tmp_path / "in.jsonl", [json.dumps(records()[0])])
    with pytest.raises(ValueError, match="is the input file"):
        score_file(scorer, src, src)


def test_score_cli_and_apis_run_with_torch_unavailable(bundle, tmp_path):
    """The scoring process of a user without torch: best-of-n, filter, reward function, ``ensrm score``."""
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    src = write_lines(tmp_path / "in.jsonl", [json.dumps(r) for r in records()[:4]])
    code = textwrap.dedent(f"""
        import importlib.abc, sys

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {{"torch", "transformers", "onnx", "onnxscript", "safetensors"}}:
                    raise ImportError(name + " is blocked in this test")

        sys.meta_path.insert(0, Block())
        import ensrm
        from ensrm.cli import main
        scorer = ensrm.Scorer({str(bundle)!r})
        assert ensrm.best_of_n(scorer, "q", ["a", "b"], "wco").index in (0, 1)
        flt = ensrm.ResponseFilter(scorer, min_score=0.0)
        flt.save({str(tmp_path / "f.json")!r})
        assert len(scorer.as_reward_function()(prompts=["q"], completions=["a"], trainer_state=None)) == 1
        main(["score", {str(bundle)!r}, {str(src)!r}, "-o", {str(tmp_path / "out.jsonl")!r},
              "--best-of-n", "--filter", {str(tmp_path / "f.json")!r}, "--quiet"])
    """)
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "4 records scored" in result.stdout
    assert len(read_jsonl(tmp_path / "out.jsonl")) == 4
