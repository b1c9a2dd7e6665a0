"""Ray Data scoring: one local Ray (2 CPUs) for the module; scores equal Scorer.score_texts row for row."""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import numpy as np
import pytest
from click.testing import CliRunner

import ensrm
from ensrm.cli import main
from ensrm.integrations.ray_data import (
    ERROR_COLUMN,
    SCORE_COLUMNS,
    BadRowError,
    ScoreBatches,
    _mark_group,
    score_dataset,
)
from ensrm.runtime.best_of_n import choose
from ensrm.runtime.filter import ResponseFilter

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
ray = pytest.importorskip("ray")

PROMPTS = ["How do I bake bread at home without a stand mixer?",
           "Explain the difference between a list and a tuple in Python.",
           "What should I pack for a hiking trip in the mountains in autumn?"]
ANSWERS = ["Mix flour, water, salt and yeast, knead by hand, let it rise and bake it hot.",
           "A list is mutable and a tuple is not; both keep their order.",
           "Layers, a rain shell, a warm hat, a map, a headlamp and enough food.",
           "I cannot help with that request because it could hurt someone.",
           "Thank you so much, that was really helpful and kind of you!"]


def records(n=30):
    """Prompts interleaved (not grouped), each with candidates numbered by "j", plus extra fields."""
    return [{"id": i, "prompt": PROMPTS[i % 3], "response": ANSWERS[(i * 7) % 5] + " " * (i % 4) + str(i),
             "j": i // 3, "meta": {"model": f"m{i % 2}", "temperature": 0.5 + i}} for i in range(n)]


@pytest.fixture(scope="module")
def bundle(bundles):
    return bundles("bert", num_labels=4)


@pytest.fixture(scope="module")
def scorer(bundle):
    return ensrm.Scorer(bundle)


@pytest.fixture(scope="module")
def local_ray(bundle):
    """One local Ray for the module; its job ships a copy of the bundle as working_dir/shipped."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    # a short temp dir of our own: Ray's socket paths must stay under the 107-byte limit
    temp = tempfile.mkdtemp(prefix="ensrm-ray-", dir="/tmp")
    working_dir = os.path.join(temp, "job")
    shutil.copytree(bundle, os.path.join(working_dir, "shipped"))
    ray.init(num_cpus=2, ignore_reinit_error=True, include_dashboard=False, log_to_driver=False,
             _temp_dir=os.path.join(temp, "ray"), runtime_env={"working_dir": working_dir})
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    try:
        yield context
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def preserve_order(local_ray):
    before = local_ray.execution_options.preserve_order
    local_ray.execution_options.preserve_order = True
    yield
    local_ray.execution_options.preserve_order = before


def assert_scores(rows, scorer, objective="uwo"):
    expected = scorer.score_texts([r["prompt"] for r in rows], [r["response"] for r in rows])
    got = {name: np.array([r[name] for r in rows], dtype=np.float32) for name in SCORE_COLUMNS}
    np.testing.assert_allclose(got["ens_heads"], expected.heads, atol=1e-6, rtol=0)
    for name in ("mean", "std", "min", "uwo"):
        np.testing.assert_allclose(got[f"ens_{name}"], getattr(expected, name), atol=1e-6, rtol=0)
    np.testing.assert_allclose(got["ens_score"], expected.objective(objective), atol=1e-6, rtol=0)


def test_two_actors_score_like_the_scorer_keeping_order_and_columns(bundle, scorer, preserve_order):
    rows = records()
    ds = ray.data.from_items(rows, override_num_blocks=4)
    out = score_dataset(ds, bundle, concurrency=2, batch_size=4, model_batch_size=3, objective="wco").take_all()
    assert [r["id"] for r in out] == [r["id"] for r in rows]  # preserve_order keeps the input's order
    for got, given in zip(out, rows):
        assert {k: got[k] for k in given} == given  # every input column, unchanged
        assert set(got) == set(given) | set(SCORE_COLUMNS)
    assert_scores(out, scorer, "wco")


def test_each_actor_takes_the_cpus_ray_gives_it(bundle, local_ray):
    actor = ray.remote(num_cpus=2)(ScoreBatches).remote(bundle)
    threads, intra_op = ray.get(actor.__ray_call__.remote(
        lambda self: (self.threads, self.scorer.backend.threads)))  # what the runtime (auto) runs on
    assert (threads, intra_op) == (2, 2)
    ray.kill(actor)


def test_bundle_shipped_in_the_working_dir(scorer, local_ray):
    rows = records(6)
    assert not os.path.exists("shipped")  # only the workers' working_dir has it
    out = score_dataset(ray.data.from_items(rows), "shipped").take_all()
    assert_scores(sorted(out, key=lambda r: r["id"]), scorer)


def test_best_of_n_marks_exactly_one_row_per_prompt(bundle, scorer, local_ray):
    rows = records(21)
    out = score_dataset(ray.data.from_items(rows), bundle, best_of_n=True, order_column="j").take_all()
    assert sorted(r["id"] for r in out) == list(range(21))
    for prompt in PROMPTS:
        group = sorted((r for r in out if r["prompt"] == prompt), key=lambda r: r["j"])
        assert sum(r["ens_chosen"] for r in group) == 1
        assert {r["ens_group_size"] for r in group} == {len(group)} and len({r["ens_group"] for r in group}) == 1
        expected = choose(scorer.score_texts([prompt] * len(group), [r["response"] for r in group]), "uwo").index
        assert group[expected]["ens_chosen"]
    assert len({r["ens_group"] for r in out}) == 3


def test_best_of_n_tie_rule_and_groups_without_a_choice():
    heads = pa.array([[1.0, 0.0]] * 4, type=pa.list_(pa.float32()))
    tied = {"prompt": ["q"] * 4, "j": [3, 1, 2, 0], "ens_heads": heads,
            **{f"ens_{n}": pa.array([0.5, 0.5, 0.2, 0.5], type=pa.float32()) for n in ("mean", "std", "min", "uwo")}}
    marked = _mark_group(pa.table(tied), "mean", "j", "prompt").to_pylist()
    assert [(r["j"], r["ens_chosen"]) for r in marked] == [(0, True), (1, False), (2, False), (3, False)]
    # a bad row (null scores) is never chosen; a group of NaN and bad rows has no choice, as in `ensrm score`
    nan = dict(tied, **{f"ens_{n}": pa.array([float("nan"), None, float("nan"), None], type=pa.float32())
                        for n in ("mean", "std", "min", "uwo")})
    assert not any(r["ens_chosen"] for r in _mark_group(pa.table(nan), "uwo", "j", "prompt").to_pylist())


def bad_table():
    return pa.table({"id": pa.array(["a", "b", "c", "d", "e"]),
                     "prompt": pa.array([PROMPTS[0].encode(), PROMPTS[1].encode(), None, b"\xff\xfe", b"ok"]),
                     "response": pa.array(["fine", None, "fine", "fine", "fine"])})


def test_bad_rows_fail_the_job_naming_the_row(bundle, local_ray):
    ds = ray.data.from_arrow(bad_table())
    with pytest.raises(Exception, match=r"row id='b': field 'response' is null \(and 2 more bad rows"):
        score_dataset(ds, bundle, key_column="id").take_all()


def test_bad_rows_are_marked_and_kept(bundle, scorer, local_ray):
    out = {r["id"]: r for r in score_dataset(ray.data.from_arrow(bad_table()), bundle, on_bad_row="mark").take_all()}
    assert sorted(out) == ["a", "b", "c", "d", "e"]
    assert out["b"][ERROR_COLUMN] == "field 'response' is null"
    assert out["c"][ERROR_COLUMN] == "field 'prompt' is null"
    assert out["d"][ERROR_COLUMN].startswith("field 'prompt' is not UTF-8")
    for key in "bcd":
        assert all(out[key][c] is None for c in SCORE_COLUMNS)
    good = [dict(out[k], prompt=out[k]["prompt"].decode()) for k in "ae"]
    assert all(r[ERROR_COLUMN] is None for r in good)
    assert_scores(good, scorer)


def test_types_ray_cannot_carry_are_named_too(bundle):
    # outside Ray: the same class on a pandas batch holding what Arrow would refuse to hold
    pd = pytest.importorskip("pandas")
    batch = pd.DataFrame({"prompt": ["q", "q", "q"], "response": ["fine", 5, "half an emoji \ud83d"]})
    out = ScoreBatches(bundle, on_bad_row="mark")(batch)
    assert out[ERROR_COLUMN].tolist()[1:] == ["field 'response' must be a string, found int",
                                              "field 'response' is not valid Unicode (lone surrogate '\\ud83d' "
                                              "at position 14)"]
    with pytest.raises(BadRowError, match=r"row 1 of a batch of 3 \(prompt='q', response=5\)"):
        ScoreBatches(bundle)(batch)


def run(*args):
    return CliRunner().invoke(main, ["score", *map(str, args)])


def read_dir(path):
    files = sorted(path.iterdir())
    if path.suffix == ".parquet":
        return pa.concat_tables([pq.read_table(f) for f in files]).to_pylist()
    return [json.loads(line) for f in files for line in f.read_text(encoding="utf-8").splitlines()]


def test_cli_jsonl_round_trip_matches_ensrm_score(bundle, scorer, tmp_path, local_ray):
    rows = sorted(records(12), key=lambda r: r["prompt"])  # grouped, as `ensrm score --best-of-n` needs
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    flt = ResponseFilter.fit(scorer, [r["prompt"] for r in rows], [r["response"] for r in rows], objective="wco")
    flt.save(tmp_path / "filter.json")
    options = ["--best-of-n", "--objective", "wco", "--filter", tmp_path / "filter.json"]
    assert run(bundle, src, "-o", tmp_path / "plain.jsonl", "--quiet", *options).exit_code == 0
    result = run(bundle, src, "-o", tmp_path / "out", "--ray", "--concurrency", "2", *options)
    assert result.exit_code == 0, result.output
    assert "12 records scored on Ray" in result.output
    expected = {r["id"]: r for r in map(json.loads, (tmp_path / "plain.jsonl").read_text().splitlines())}
    got = read_dir(tmp_path / "out")
    assert sorted(r["id"] for r in got) == sorted(expected)
    for record in got:
        want = expected[record["id"]]
        assert {k: v for k, v in record.items() if k != "ensrm"} == {k: v for k, v in want.items() if k != "ensrm"}
        mine, theirs = record["ensrm"], want["ensrm"]
        assert set(mine) == set(theirs)
        np.testing.assert_allclose(mine["heads"], theirs["heads"], atol=1e-6)
        for key in ("mean", "std", "min", "uwo", "score"):
            assert mine[key] == pytest.approx(theirs[key], abs=1e-6)
        assert mine["objective"] == "wco"
        assert mine["filter"]["accept"] == theirs["filter"]["accept"]
        assert mine["filter"]["reason"] == theirs["filter"]["reason"]
        assert mine["best_of_n"]["chosen"] == theirs["best_of_n"]["chosen"]
        assert mine["best_of_n"]["group_size"] == theirs["best_of_n"]["group_size"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp")]


def test_cli_parquet_round_trip_in_order_with_bad_rows(bundle, scorer, tmp_path, local_ray):
    rows = records(10)
    rows[4]["response"] = None
    src = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist(rows), src)
    failed = run(bundle, src, "-o", tmp_path / "out.parquet", "--ray")
    assert failed.exit_code == 1 and "field 'response' is null" in failed.output
    assert not (tmp_path / "out.parquet").exists()

    result = run(bundle, src, "-o", tmp_path / "out.parquet", "--ray", "--skip-bad")
    assert result.exit_code == 0, result.output
    got = read_dir(tmp_path / "out.parquet")
    assert [r["id"] for r in got] == list(range(10))  # input order
    assert got[4]["ensrm"]["error"] == "field 'response' is null" and got[4]["ensrm"]["heads"] is None
    good = [r for r in got if r["ensrm"]["error"] is None]
    assert_scores([dict(r, **{f"ens_{k}": r["ensrm"][k] for k in ("heads", "mean", "std", "min", "uwo", "score")})
                   for r in good], scorer)
    files = sorted((tmp_path / "out.parquet").iterdir())
    assert run(bundle, src, "-o", tmp_path / "out.parquet", "--ray", "--skip-bad").exit_code != 0  # never overwritten
    assert sorted((tmp_path / "out.parquet").iterdir()) == files
