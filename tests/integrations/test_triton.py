"""The Triton model repository: configs against Triton's own schema, the graph, and the scores.

No Triton server runs here. What Triton would do is checked piece by piece: every
``config.pbtxt`` parses with ``ModelConfig`` from tritonclient (text format, unknown fields
refused); names, dtypes and dims agree with the copied graph as onnxruntime reads it; the
ensemble's steps connect tensors that exist; and the tokenize model's ``model.py``, run with a
stand-in for ``triton_python_backend_utils`` that follows its documented API, feeds the copied
graph tensors that score exactly as :meth:`Scorer.score_texts`.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import types

import numpy as np
import pytest
from click.testing import CliRunner

from ensrm import Scorer
from ensrm.bundle import file_entries, read_spec, sha256_file, write_manifest
from ensrm.cli import main
from ensrm.errors import BundleError
from ensrm.integrations.triton import PAD_PARAMETER, write_triton_repository
from ensrm.spec import Variant

pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
from google.protobuf import json_format, text_format  # noqa: E402 - installed with tritonclient[grpc]

ort = pytest.importorskip("onnxruntime")

PROMPTS = ["How do I boil an egg?", "Summarise the French revolution.", "Hi", "Why is the sky blue?"]
RESPONSES = ["Simmer it for eight minutes, then cool it in cold water.", "It ended a monarchy. " * 40,
             "Hello!", "Blue light scatters most in air."]
ORT_TYPES = {"tensor(int64)": pb2.TYPE_INT64, "tensor(float)": pb2.TYPE_FP32}


def read_config(path) -> pb2.ModelConfig:
    return text_format.Parse(path.read_text(encoding="utf-8"), pb2.ModelConfig())


def configs(repo) -> dict[str, pb2.ModelConfig]:
    return {name: read_config(repo.path / name / "config.pbtxt") for name in (repo.ensemble, repo.tokenize, repo.onnx)}


def graph_file(repo):
    version = repo.path / repo.onnx / "1" / "model.onnx"
    return version / "model.onnx" if version.is_dir() else version


@pytest.fixture(scope="module")
def bert(bundles):
    return bundles("bert")  # token_type_ids, right padding, weights in model.onnx.data


@pytest.fixture(scope="module")
def repo(bert, tmp_path_factory):
    return write_triton_repository(bert, tmp_path_factory.mktemp("triton") / "repo", max_batch=16, pad_to_multiple=8)


# -- a stand-in for triton_python_backend_utils (the names model.py uses) ----------------------

class _Tensor:
    def __init__(self, name, array):
        self._name, self._array = name, np.asarray(array)

    def name(self):
        return self._name

    def as_numpy(self):
        return self._array


class _Request:
    def __init__(self, prompts, responses):
        # TYPE_STRING with dims [1] under max_batch_size > 0 arrives as [batch, 1] bytes objects
        self.inputs = {name: _Tensor(name, np.array([[t.encode() if isinstance(t, str) else t] for t in texts],
                                                    dtype=object))
                       for name, texts in (("prompt", prompts), ("response", responses))}


class _TritonError(Exception):
    INTERNAL, INVALID_ARG = "INTERNAL", "INVALID_ARG"

    def __init__(self, message, code=INTERNAL):
        super().__init__(message)
        self._message, self._code = message, code

    def message(self):
        return self._message

    def code(self):
        return self._code


class _Response:
    def __init__(self, output_tensors, error=None):
        self._outputs, self._error = output_tensors, error

    def output_tensors(self):
        return self._outputs

    def has_error(self):
        return self._error is not None

    def error(self):
        return self._error


@pytest.fixture
def tokenize_model(monkeypatch):
    """``load(repo)`` -> the repository's tokenize ``TritonPythonModel``, initialised as Triton would."""
    stub = types.ModuleType("triton_python_backend_utils")
    stub.Tensor, stub.InferenceResponse, stub.TritonError = _Tensor, _Response, _TritonError
    stub.get_input_tensor_by_name = lambda request, name: request.inputs.get(name)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", stub)

    def load(repo):
        model_dir = repo.path / repo.tokenize
        spec = importlib.util.spec_from_file_location("ensrm_triton_model_under_test", model_dir / "1" / "model.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        model = module.TritonPythonModel()
        config = read_config(model_dir / "config.pbtxt")
        model.initialize({"model_config": json_format.MessageToJson(config, preserving_proto_field_name=True),
                          "model_repository": str(model_dir), "model_version": "1", "model_name": repo.tokenize,
                          "model_instance_kind": "CPU", "model_instance_device_id": "0"})
        return model

    return load


def run_graph(repo, response: _Response) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(graph_file(repo)), providers=["CPUExecutionProvider"])
    feeds = {t.name(): t.as_numpy() for t in response.output_tensors()}
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def assert_scores_equal(outputs, scores):
    # Equal to float32 rounding (1e-6 relative, a few ulps at rewards of ~10): the graph sees the
    # request's rows in their order and padded to a multiple, Scorer sorts them by length first.
    for output, attr in (("heads", "heads"), ("ens_mean", "mean"), ("ens_std", "std"), ("ens_min", "min"),
                         ("ens_uwo", "uwo")):
        np.testing.assert_allclose(outputs[output], getattr(scores, attr), rtol=1e-6, atol=1e-6, err_msg=output)


# -- the repository --------------------------------------------------------------------------

def test_repository_layout_and_every_config_parses_with_tritons_schema(repo, bert):
    assert sorted(p.name for p in repo.path.iterdir()) == sorted([repo.ensemble, repo.tokenize, repo.onnx])
    found = configs(repo)
    assert {name: config.name for name, config in found.items()} == {name: name for name in found}
    assert found[repo.onnx].backend == "onnxruntime"
    assert found[repo.tokenize].backend == "python"
    assert found[repo.ensemble].platform == "ensemble"
    assert (repo.path / repo.ensemble / "1").is_dir()  # Triton needs a version directory for an ensemble too
    # the bundle keeps its weights beside the graph: Triton wants such a model as a directory
    assert (repo.path / repo.onnx / "1" / "model.onnx" / "model.onnx.data").is_file()
    assert sha256_file(graph_file(repo)) == sha256_file(bert / "model.onnx")
    tokenize_dir = repo.path / repo.tokenize / "1"
    assert sha256_file(tokenize_dir / "tokenizer.json") == sha256_file(bert / "tokenizer.json")
    assert found[repo.tokenize].parameters[PAD_PARAMETER].string_value == "8"


def test_onnx_config_has_the_graphs_names_dtypes_and_dims(repo, bert):
    config = configs(repo)[repo.onnx]
    session = ort.InferenceSession(str(graph_file(repo)), providers=["CPUExecutionProvider"])
    spec = read_spec(bert)
    assert [i.name for i in config.input] == list(spec.inputs)
    for side, graph_side in ((config.input, session.get_inputs()), (config.output, session.get_outputs())):
        graph = {arg.name: arg for arg in graph_side}
        assert {t.name for t in side} == set(graph)
        for tensor in side:
            arg = graph[tensor.name]
            assert tensor.data_type == ORT_TYPES[arg.type], tensor.name
            assert not isinstance(arg.shape[0], int)  # Triton's batch axis is the graph's dynamic first axis
            per_pair = [d if isinstance(d, int) else -1 for d in arg.shape[1:]]
            if per_pair:
                assert list(tensor.dims) == per_pair and not tensor.HasField("reshape"), tensor.name
            else:  # a [batch] output is [batch, 1] to Triton's API, reshaped to the graph's [batch]
                assert list(tensor.dims) == [1] and tensor.HasField("reshape") and not tensor.reshape.shape
    assert list(next(t for t in config.output if t.name == "heads").dims) == [spec.num_heads]
    assert config.max_batch_size == 16
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 16]
    assert config.dynamic_batching.max_queue_delay_microseconds == 5000
    assert [(g.kind, g.count) for g in config.instance_group] == [(pb2.ModelInstanceGroup.KIND_CPU, 1)]


def test_ensemble_steps_connect_tensors_that_exist(repo):
    found = configs(repo)
    ensemble = found[repo.ensemble]
    assert [(t.name, t.data_type, list(t.dims)) for t in ensemble.input] == \
        [("prompt", pb2.TYPE_STRING, [1]), ("response", pb2.TYPE_STRING, [1])]
    available = {t.name: t for t in ensemble.input}
    steps = list(ensemble.ensemble_scheduling.step)
    assert [s.model_name for s in steps] == [repo.tokenize, repo.onnx]
    for step in steps:
        model = found[step.model_name]
        inputs, outputs = {t.name: t for t in model.input}, {t.name: t for t in model.output}
        assert set(step.input_map) == set(inputs), step.model_name  # every input fed, none invented
        for key, value in step.input_map.items():
            assert value in available, f"{step.model_name}.{key} reads {value}, which nothing produces"
            assert available[value].data_type == inputs[key].data_type
        assert set(step.output_map) <= set(outputs)
        available.update({value: outputs[key] for key, value in step.output_map.items()})
    for tensor in ensemble.output:
        assert tensor.name in available
        produced = available[tensor.name]
        # Triton infers an ensemble tensor's shape from the step model's API dims (its reshape is
        # the backend's business): the ensemble output must repeat those dims without a reshape
        assert (tensor.data_type, list(tensor.dims)) == (produced.data_type, list(produced.dims))
        assert not tensor.HasField("reshape"), tensor.name
    assert [t.name for t in ensemble.output] == ["heads", "ens_mean", "ens_std", "ens_min", "ens_uwo"]
    assert all(c.max_batch_size == 16 for c in found.values())


# -- the tokenize model, run as Triton would run it ------------------------------------------

def test_tokenize_model_feeds_the_graph_tensors_that_score_like_scorer(repo, bert, tokenize_model):
    model = tokenize_model(repo)
    requests = [_Request(PROMPTS[:3], RESPONSES[:3]), _Request(PROMPTS[3:], RESPONSES[3:])]
    responses = model.execute(requests)
    assert len(responses) == 2 and not any(r.has_error() for r in responses)
    spec = read_spec(bert)
    for response, rows in zip(responses, (slice(0, 3), slice(3, 4))):
        tensors = {t.name(): t.as_numpy() for t in response.output_tensors()}
        assert sorted(tensors) == sorted(spec.inputs)
        ids = tensors["input_ids"]
        assert ids.dtype == np.int64 and ids.shape[0] == len(PROMPTS[rows])
        longest = int(tensors["attention_mask"].sum(axis=1).max())
        assert ids.shape[1] == min(-(-longest // 8) * 8, spec.max_length)  # padded so requests can share a batch
        assert (tensors["attention_mask"][:, 0] == 1).all()  # right padding: every row starts with its tokens
        expected = Scorer(bert).score_texts(PROMPTS[rows], RESPONSES[rows])
        assert_scores_equal(run_graph(repo, response), expected)
        if rows == slice(0, 3):  # the long response was cut to max_length, as score_texts cuts it
            assert longest == spec.max_length


def test_left_padded_decoder_bundle_scores_like_scorer(bundles, tmp_path, tokenize_model):
    bundle = bundles("gpt2")
    spec = read_spec(bundle)
    assert spec.padding_side == "left" and not spec.uses_token_type_ids
    repo = write_triton_repository(bundle, tmp_path / "repo", pad_to_multiple=16)
    response, = tokenize_model(repo).execute([_Request(PROMPTS, [r[:80] for r in RESPONSES])])
    mask = next(t for t in response.output_tensors() if t.name() == "attention_mask").as_numpy()
    assert mask.shape[1] % 16 == 0 and (mask[:, -1] == 1).all()  # padding on the left
    assert_scores_equal(run_graph(repo, response), Scorer(bundle).score_texts(PROMPTS, [r[:80] for r in RESPONSES]))


def test_a_bad_request_gets_its_own_error_and_the_others_their_tensors(repo, tokenize_model):
    model = tokenize_model(repo)
    responses = model.execute([_Request(["ok"], ["fine"]), _Request(["Hi", "Hi"], ["fine", b"\xff\xfe broken"]),
                               _Request(["ok", "ok"], ["fine", "good"])])
    assert [r.has_error() for r in responses] == [False, True, False]
    assert responses[1].error().code() == _TritonError.INVALID_ARG
    assert "response[1] is not UTF-8" in responses[1].error().message()
    assert [t.as_numpy().shape[0] for t in responses[2].output_tensors()] == [2] * len(responses[2].output_tensors())


# -- precisions and errors -------------------------------------------------------------------

@pytest.fixture(scope="module")
def variant_bundle(bert, tmp_path_factory):
    """``bert`` with an accepted fp16 variant and an int8 variant its gate rejected."""
    pytest.importorskip("onnx")
    from ensrm.calibration.fp16 import convert_fp16

    out = tmp_path_factory.mktemp("variants") / "rm"
    shutil.copytree(bert, out)
    convert_fp16(out / "model.onnx", out / "model.fp16.onnx")
    spec = read_spec(out)
    variants = {**spec.variants, "fp16": Variant("fp16", "model.fp16.onnx", accepted=True),
                "int8": Variant("int8", None, accepted=False)}
    write_manifest(out, spec.replace(variants=variants, files=file_entries(out)))
    return out


def test_fp16_variant_is_served_with_fp32_inputs_and_outputs(variant_bundle, tmp_path):
    repo = write_triton_repository(variant_bundle, tmp_path / "repo", precision="fp16")
    assert repo.precision == "fp16"
    assert sha256_file(graph_file(repo)) == sha256_file(variant_bundle / "model.fp16.onnx")
    config = configs(repo)[repo.onnx]
    assert {t.data_type for t in config.output} == {pb2.TYPE_FP32}
    assert {t.data_type for t in config.input} == {pb2.TYPE_INT64}


@pytest.mark.parametrize("precision, message", [("int8", "failed its accuracy gate"), ("fp8", "precision must be")])
def test_a_rejected_or_unknown_precision_is_refused_and_nothing_is_written(variant_bundle, tmp_path, precision,
                                                                          message):
    with pytest.raises((BundleError, ValueError), match=message):
        write_triton_repository(variant_bundle, tmp_path / "repo", precision=precision)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("precision, file, what", [("bf16", "model.onnx", "an OpenVINO compile hint on model.onnx"),
                                                   ("int4", "model.int4.xml", r"an OpenVINO IR \(model.int4.xml\)")])
def test_an_openvino_only_variant_is_refused_naming_what_triton_can_run(bert, tmp_path, precision, file, what):
    bundle = tmp_path / "rm"
    shutil.copytree(bert, bundle)
    if file.endswith(".xml"):  # stand-ins: the check reads the manifest, not the IR
        (bundle / file).write_text("<net/>")
        (bundle / "model.int4.bin").write_bytes(b"\0")
    spec = read_spec(bundle)
    variants = {**spec.variants, precision: Variant(precision, file, accepted=True)}
    write_manifest(bundle, spec.replace(variants=variants, files=file_entries(bundle)))
    with pytest.raises(ValueError, match=f"{what}, which Triton's onnxruntime backend cannot run; "
                                         "write the repository at fp32$"):
        write_triton_repository(bundle, tmp_path / "repo", precision=precision)
    assert not (tmp_path / "repo").exists()


def test_a_precision_the_bundle_lacks_names_the_command_that_makes_it(bert, tmp_path):
    with pytest.raises(BundleError, match=r"no int8 model file .*ensrm quantize"):
        write_triton_repository(bert, tmp_path / "repo", precision="int8")


def test_an_existing_repository_is_kept_unless_overwrite(bert, tmp_path):
    out = tmp_path / "repo"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(BundleError, match="already exists; pass `overwrite=True`"):
        write_triton_repository(bert, out)
    assert (out / "mine.txt").read_text() == "keep"
    repo = write_triton_repository(bert, out, overwrite=True)
    assert not (out / "mine.txt").exists() and (out / repo.ensemble / "config.pbtxt").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]  # no staging directory left beside it


def test_a_failure_while_writing_leaves_nothing(bert, tmp_path, monkeypatch):
    import ensrm.integrations.triton as triton

    def broken(*args, **kwargs):
        raise BundleError("the graph's outputs are wrong")

    monkeypatch.setattr(triton, "_check_io", broken)
    with pytest.raises(BundleError, match="outputs are wrong"):
        write_triton_repository(bert, tmp_path / "repo")
    assert list(tmp_path.iterdir()) == []


def test_a_bad_bundle_or_name_is_a_clear_error(tmp_path, bert):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="ensemble.json is missing"):
        write_triton_repository(tmp_path / "empty", tmp_path / "repo")
    with pytest.raises(ValueError, match="model name"):
        write_triton_repository(bert, tmp_path / "repo", name="../x")


# -- the command -----------------------------------------------------------------------------

def test_cli_writes_a_gpu_repository_and_refuses_an_existing_one(bert, tmp_path):
    out = tmp_path / "models"
    args = ["triton-repo", str(bert), "-o", str(out), "--max-batch", "8", "--instances", "2", "--kind", "gpu",
            "--max-wait-ms", "2", "--name", "rm"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "tritonserver --model-repository" in result.output
    onnx_config = read_config(out / "rm_onnx" / "config.pbtxt")
    assert [(g.kind, g.count) for g in onnx_config.instance_group] == [(pb2.ModelInstanceGroup.KIND_GPU, 2)]
    assert onnx_config.dynamic_batching.max_queue_delay_microseconds == 2000
    assert list(onnx_config.dynamic_batching.preferred_batch_size) == [8]
    tokenize_config = read_config(out / "rm_tokenize" / "config.pbtxt")
    assert [g.kind for g in tokenize_config.instance_group] == [pb2.ModelInstanceGroup.KIND_CPU]  # tokenizer on CPU
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 1 and "already exists; pass --overwrite" in again.output
