"""Ray Data scoring: one local Ray (2 CPUs) for the module; scores equal Scorer.score_texts row for row."""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile

import numpy as np
import pytest
from click.testing import CliRunner

import ensrm
from ensrm.cli import main
from ensrm.errors import JobError
from ensrm.integrations.ray_data import (
    ERROR_COLUMN,
    SCORE_COLUMNS,
    BadRowError,
    ScoreBatches,
    _mark_group,
    ensrm_error,
    score_dataset,
    score_files,
)
from ensrm.runtime.batch import score_file
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
    out = score_dataset(ds, bundle, concurrency=2, rows_per_batch=4, batch_size=3, objective="wco").take_all()
    assert [r["id"] for r in out] == [r["id"] for r in rows]  # preserve_order keeps the input's order
    for got, given in zip(out, rows):
        assert {k: got[k] for k in given} == given  # every input column, unchanged
        assert set(got) == set(given) | set(SCORE_COLUMNS)
    assert_scores(out, scorer, "wco")


def test_each_actor_takes_the_cpus_ray_gives_it(bundle, local_ray):
    actor = ray.remote(num_cpus=2)(ScoreBatches).remote(bundle)
    threads, intra_op = ray.get(actor.__ray_call__.remote(
        lambda self: (self.threads, self.scorer.backend.session.get_session_options().intra_op_num_threads)))
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
    bad = r"row id='b': field 'response' must be a string, got NoneType \(and 2 more"
    with pytest.raises(Exception, match=bad) as caught:
        score_dataset(ds, bundle, key_column="id").take_all()
    # the worker's error itself, typed and with its fields, not rebuilt from the message
    assert isinstance(ensrm_error(caught.value), BadRowError)


def test_bad_rows_are_marked_and_kept(bundle, scorer, local_ray):
    out = {r["id"]: r for r in score_dataset(ray.data.from_arrow(bad_table()), bundle, on_bad_row="mark").take_all()}
    assert sorted(out) == ["a", "b", "c", "d", "e"]
    assert out["b"][ERROR_COLUMN] == "field 'response' must be a string, got NoneType"
    assert out["c"][ERROR_COLUMN] == "field 'prompt' must be a string, got NoneType"
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
    assert out[ERROR_COLUMN].tolist()[1] == "field 'response' must be a string, got int"
    assert out[ERROR_COLUMN].tolist()[2].startswith("field 'response' is not valid Unicode: lone surrogate '\\ud83d' "
                                                    "at position 14")
    with pytest.raises(BadRowError, match=r"row 1 of a batch of 3 \(prompt='q', response=5\)"):
        ScoreBatches(bundle)(batch)


def run(*args):
    return CliRunner().invoke(main, ["score", *map(str, args)])


def read_dir(path):
    files = sorted(path.iterdir())
    if path.suffix == ".parquet":
        return pa.concat_tables([pq.read_table(f) for f in files]).to_pylist()
    return [json.loads(line) for f in files for line in f.read_text(encoding="utf-8").splitlines()]


def jsonl_with_bad_records(path, n=24):
    """Best-of-n groups (runs of one prompt) with the bad records that used to break Ray's JSON reader:
    a number for `response`, a missing field, a line that is not JSON, a blank line."""
    rows = sorted(records(n), key=lambda r: r["prompt"])
    lines = [json.dumps(r) for r in rows]
    lines[3] = json.dumps(dict(rows[3], response=42))
    lines[7] = json.dumps({k: v for k, v in rows[7].items() if k != "response"})
    lines[11] = "{not json"
    lines.insert(15, "")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_ray_and_local_write_the_same_bytes_bad_records_included(bundle, scorer, tmp_path, local_ray):
    src = jsonl_with_bad_records(tmp_path / "in.jsonl")
    flt = ResponseFilter.fit(scorer, [r["prompt"] for r in records(24)], [r["response"] for r in records(24)])
    flt.save(tmp_path / "filter.json")
    options = ["--best-of-n", "--objective", "wco", "--filter", tmp_path / "filter.json", "--skip-bad",
               "--chunk-size", "5", "--batch-size", "3", "--quiet"]
    local = run(bundle, src, "-o", tmp_path / "local.jsonl", *options)
    assert local.exit_code == 0, local.output
    on_ray = run(bundle, src, "-o", tmp_path / "ray.jsonl", "--ray", "--concurrency", "2", *options)
    assert on_ray.exit_code == 0, on_ray.output
    assert "21 records scored on Ray" in on_ray.output and "3 bad records" in on_ray.output
    for name in ("", ".rejects"):
        assert (tmp_path / f"ray{name}.jsonl").read_bytes() == (tmp_path / f"local{name}.jsonl").read_bytes()
    rejects = [json.loads(line) for line in (tmp_path / "ray.rejects.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rejects] == [4, 8, 12]
    assert [r["reason"] for r in rejects][:2] == ["field 'response' must be a string, found int",
                                                   "missing field 'response' (has: id, j, meta, prompt)"]
    got = [json.loads(line) for line in (tmp_path / "ray.jsonl").read_text().splitlines()]
    assert all("response" in r and set(r) <= {"id", "prompt", "response", "j", "meta", "ensrm"} for r in got)
    assert [r["ensrm"]["best_of_n"]["group"] for r in got] == sorted(r["ensrm"]["best_of_n"]["group"] for r in got)
    # without --skip-bad both stop at the same first bad line, with the same message, writing nothing
    strict = [o for o in options if o != "--skip-bad"]
    messages = [run(bundle, src, "-o", tmp_path / f"strict{i}.jsonl", *extra, *strict)
                for i, extra in enumerate(([], ["--ray"]))]
    assert [m.exit_code for m in messages] == [1, 1]
    errors = [[line for line in m.output.splitlines() if line.startswith("Error: ")] for m in messages]
    assert errors[0] == errors[1] and len(errors[0]) == 1
    assert "in.jsonl:4: field 'response' must be a string, found int" in messages[1].output
    assert not list(tmp_path.glob("strict*")) and not list(tmp_path.glob(".*"))


def scoring_actor_pids():
    """The Ray Data actors running ScoreChunks, found in this driver's process tree (Linux /proc:
    Ray names each worker process by its actor, ``ray::MapWorker(MapBatches(ScoreChunks))``)."""
    if not os.path.isdir("/proc/self"):
        pytest.skip("finding the actors' processes needs Linux /proc")
    parents, titles = {}, {}
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read().decode(errors="replace")
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                titles[int(entry)] = handle.read().decode(errors="replace")
        except (OSError, ValueError):
            continue  # not a process, or it just ended
        parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    mine = {os.getpid()}
    for _ in range(8):  # driver -> raylet -> worker: a few generations down
        mine |= {pid for pid, parent in parents.items() if parent in mine}
    return sorted(pid for pid in mine if "ScoreChunks" in titles.get(pid, "") and pid != os.getpid())


def test_a_killed_actor_loses_no_row_and_doubles_none(bundle, tmp_path, local_ray):
    src = tmp_path / "in.jsonl"
    rows = records(600)
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    score_file(ensrm.Scorer(bundle), src, tmp_path / "undisturbed.jsonl", chunk_size=20)
    killed = []

    def kill_one(scored, rejected, seconds):
        pids = scoring_actor_pids()
        if not killed and pids and scored < len(rows):
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    summary = score_files(bundle, src, tmp_path / "out.jsonl", concurrency=2, chunk_size=20, progress=kill_one)
    assert killed and summary.records == len(rows)
    assert (tmp_path / "out.jsonl").read_bytes() == (tmp_path / "undisturbed.jsonl").read_bytes()

    # with no restarts allowed the job fails, naming the cause, and writes nothing
    killed.clear()
    with pytest.raises(JobError, match="Ray job failed"):
        score_files(bundle, src, tmp_path / "failed.jsonl", concurrency=2, chunk_size=20, progress=kill_one,
                    max_restarts=0, max_task_retries=0)
    assert killed and not list(tmp_path.glob("*failed*"))


def test_a_pool_that_would_starve_its_reads_is_refused_at_once(bundle, tmp_path, local_ray):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records(8)), encoding="utf-8")
    ds = ray.data.read_json(str(src))
    with pytest.raises(ValueError, match="leaving none for Ray Data to read"):
        score_dataset(ds, bundle, concurrency=2)
    with pytest.raises(ValueError, match="need 3 CPUs but the Ray cluster has 2"):
        score_dataset(ds, bundle, concurrency=3)
    assert len(score_dataset(ds.materialize(), bundle, concurrency=2).take_all()) == 8  # read first: completes


def test_cli_parquet_round_trip_in_order_with_bad_rows(bundle, scorer, tmp_path, local_ray):
    rows = records(10)
    rows[4]["response"] = None
    src = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist(rows), src)
    failed = run(bundle, src, "-o", tmp_path / "out.parquet", "--ray")
    assert failed.exit_code == 1 and "field 'response' must be a string, got NoneType" in failed.output
    assert not (tmp_path / "out.parquet").exists()

    result = run(bundle, src, "-o", tmp_path / "out.parquet", "--ray", "--skip-bad")
    assert result.exit_code == 0, result.output
    got = read_dir(tmp_path / "out.parquet")
    assert [r["id"] for r in got] == list(range(10))  # input order
    assert got[4]["ensrm"]["error"] == "field 'response' must be a string, got NoneType"
    assert got[4]["ensrm"]["heads"] is None
    good = [r for r in got if r["ensrm"]["error"] is None]
    assert_scores([dict(r, **{f"ens_{k}": r["ensrm"][k] for k in ("heads", "mean", "std", "min", "uwo", "score")})
                   for r in good], scorer)
    files = sorted((tmp_path / "out.parquet").iterdir())
    assert run(bundle, src, "-o", tmp_path / "out.parquet", "--ray", "--skip-bad").exit_code != 0  # never overwritten
    assert sorted((tmp_path / "out.parquet").iterdir()) == files
