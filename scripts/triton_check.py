"""Serve a repository written by ``ensrm triton-repo`` with a real Triton server and check its scores.

What runs: the ``tritonserver`` binary and python backend that the ``nvidia-pytriton`` wheel ships
(Triton 2.51 for that wheel's 0.7.0), on the CPU, bound to 127.0.0.1 on free ports. The ensemble and
the tokenize model are served exactly as written. That build has no onnxruntime backend, so the
``<name>_onnx`` model runs under a python-backend stand-in: the same ``config.pbtxt`` with
``backend: "python"`` and a ``model.py`` that runs the copied ``model.onnx`` with onnxruntime. So this
checks Triton's acceptance of the configs, the ensemble's wiring, the tokenize step in the real
python backend, and the scores a gRPC client gets; not the onnxruntime backend itself.

The python backend's stub of that build needs numpy 1.x, so the check makes a side environment once
(``--env``, ~300 MB): numpy<2, onnxruntime, tokenizers and click, this checkout of ensrm (editable,
which is the ``pip install ensrm`` a real deployment needs), and nvidia-pytriton for its binaries
(its own dependencies are not installed). The client side (this process) needs ``ensrm[triton]``.

    python scripts/triton_check.py bundles/default                  # after `make demo`; ~1 min once set up
    python scripts/triton_check.py BUNDLE --env /tmp/triton-env --precision fp16

Exits 0 when every check passes, else 1 with the failing check named.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]

PROMPTS = ["How do I boil an egg?", "Summarise the French revolution.", "Hi", "Why is the sky blue?",
           "Write a haiku about autumn.", "What is a tuple in Python?"]
RESPONSES = ["Simmer it for eight minutes, then cool it in cold water.", "It ended a monarchy. " * 60, "Hello!",
             "Blue light scatters most in air.", "Red leaves drift and fall / the river carries them off / "
             "cold wind, quiet hills", "An ordered, immutable sequence."]
OUTPUTS = {"heads": "heads", "ens_mean": "mean", "ens_std": "std", "ens_min": "min", "ens_uwo": "uwo"}

STANDIN_MODEL = '''"""Stand-in for the onnxruntime backend (scripts/triton_check.py): the same graph, by onnxruntime."""
import json
import os

import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        path = os.path.join(path, "model.onnx") if os.path.isdir(path) else path  # a graph with external weights
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        config = json.loads(args["model_config"])
        self.inputs = [i["name"] for i in config["input"]]
        # what the onnxruntime backend does with `reshape: { shape: [ ] }`: [batch] -> [batch, 1]
        self.shapes = {o["name"]: o.get("reshape") is not None for o in config["output"]}

    def execute(self, requests):
        responses = []
        for request in requests:
            feeds = {n: pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in self.inputs}
            names = [o.name for o in self.session.get_outputs()]
            outs = self.session.run(None, feeds)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(n, o.reshape(-1, 1) if self.shapes[n] else o) for n, o in zip(names, outs)]))
        return responses
'''


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def side_env(env: Path) -> Path:
    """The python backend's environment; returns the Triton directory of its nvidia-pytriton."""
    python = env / "bin" / "python"
    if not python.exists():
        run([sys.executable, "-m", "venv", str(env)])
        run([str(python), "-m", "pip", "install", "--quiet", "numpy<2", "onnxruntime", "tokenizers", "click"])
        run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "nvidia-pytriton", "-e", str(ROOT)])
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    triton = Path(site) / "pytriton" / "tritonserver"
    stub = triton / "backends" / "python" / "triton_python_backend_stub"
    if not stub.exists():  # the wheel keeps one stub per Python version; the backend wants it here
        shutil.copy2(triton / "python_backend_stubs" / f"{sys.version_info[0]}.{sys.version_info[1]}" / stub.name,
                     stub)
    for binary in (triton / "bin" / "tritonserver", stub):
        binary.chmod(0o755)
    return triton


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def infer(port: int, model: str, prompts, responses):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    inputs = []
    for name, texts in (("prompt", prompts), ("response", responses)):
        tensor = grpcclient.InferInput(name, [len(texts), 1], "BYTES")  # dims [1] per pair, batch first
        tensor.set_data_from_numpy(np.array([[t if isinstance(t, bytes) else t.encode()] for t in texts],
                                            dtype=object))
        inputs.append(tensor)
    result = client.infer(model, inputs, outputs=[grpcclient.InferRequestedOutput(n) for n in OUTPUTS])
    return {name: result.as_numpy(name) for name in OUTPUTS}


def check(name: str, ok: bool, detail: str = "") -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}", flush=True)
    if not ok:
        raise SystemExit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--env", type=Path, default=Path(tempfile.gettempdir()) / "ensrm-triton-env")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--timeout", type=float, default=180.0, help="Seconds to wait for the server.")
    args = parser.parse_args()

    import tritonclient.grpc as grpcclient

    from ensrm import Scorer
    from ensrm.integrations.triton import write_triton_repository

    triton = side_env(args.env)
    work = Path(tempfile.mkdtemp(prefix="ensrm-triton-check-"))
    repo = write_triton_repository(args.bundle, work / "repo", precision=args.precision, max_batch=8,
                                   pad_to_multiple=16, name="rm")
    config = repo.path / repo.onnx / "config.pbtxt"
    config.write_text(config.read_text().replace('backend: "onnxruntime"', 'backend: "python"'))
    (repo.path / repo.onnx / "1" / "model.py").write_text(STANDIN_MODEL)

    grpc_port, http_port = free_port(), free_port()
    env = dict(os.environ)
    # The stub finds its Python like an interpreter does: the first `python3` on PATH (the side venv),
    # whose libpython must be the one it loads.
    env["PATH"] = f"{args.env / 'bin'}:{env['PATH']}"
    libdir = subprocess.run([str(args.env / "bin" / "python"), "-c",
                             "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
                            check=True, capture_output=True, text=True).stdout.strip()
    env["LD_LIBRARY_PATH"] = ":".join(p for p in (libdir, env.get("LD_LIBRARY_PATH")) if p)
    log = (work / "tritonserver.log").open("w")
    server = subprocess.Popen(
        [str(triton / "bin" / "tritonserver"), "--model-repository", str(repo.path),
         "--backend-directory", str(triton / "backends"), "--grpc-address", "127.0.0.1",
         "--grpc-port", str(grpc_port), "--http-address", "127.0.0.1", "--http-port", str(http_port),
         "--allow-metrics", "false", "--exit-timeout-secs", "10"],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    print(f"tritonserver pid {server.pid}, log {log.name}", flush=True)
    passed = False
    try:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        deadline = time.monotonic() + args.timeout
        ready = False
        while time.monotonic() < deadline and server.poll() is None and not ready:
            time.sleep(1)
            try:
                ready = client.is_server_ready()
            except Exception:  # noqa: BLE001 - not listening yet
                ready = False
        for model in (repo.ensemble, repo.tokenize, repo.onnx):
            check(f"{model} loaded and READY", ready and client.is_model_ready(model),
                  "" if ready else f"server not ready; see {log.name}")
        version = client.get_server_metadata().version

        scorer = Scorer(args.bundle, precision=args.precision)
        got = infer(grpc_port, repo.ensemble, PROMPTS, RESPONSES)
        want = scorer.score_texts(PROMPTS, RESPONSES)
        worst = max(float(np.abs(got[o].reshape(getattr(want, a).shape) - getattr(want, a)).max())
                    for o, a in OUTPUTS.items())
        shapes = {o: got[o].shape for o in OUTPUTS}
        check("ensemble scores over gRPC equal Scorer.score_texts",
              all(np.allclose(got[o].reshape(getattr(want, a).shape), getattr(want, a), rtol=1e-6, atol=1e-6)
                  for o, a in OUTPUTS.items()), f"max abs difference {worst:.2e}; shapes {shapes}")

        pairs = [(PROMPTS[i % 6:i % 6 + 1 + i % 3], RESPONSES[i % 6:i % 6 + 1 + i % 3]) for i in range(24)]
        with ThreadPoolExecutor(8) as pool:  # concurrent requests: each answer must be its own pairs' scores
            answers = list(pool.map(lambda pr: infer(grpc_port, repo.ensemble, *pr), pairs))
        check("24 concurrent requests each get their own pairs' scores",
              all(np.allclose(a["ens_uwo"].reshape(-1), scorer.score_texts(*pr).uwo, rtol=1e-6, atol=1e-6)
                  for a, pr in zip(answers, pairs)))

        try:
            infer(grpc_port, repo.ensemble, ["Hi"], [b"\xff\xfe not UTF-8"])
            check("a request with invalid UTF-8 is refused", False, "it was scored")
        except Exception as exc:  # noqa: BLE001 - tritonclient's InferenceServerException
            text = str(exc)
            check("a request with invalid UTF-8 is refused as INVALID_ARGUMENT naming the field",
                  "INVALID_ARGUMENT" in text and "response[0]" in text, text.splitlines()[0])
        print(f"all checks passed on Triton {version} ({args.precision})")
        passed = True
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
    if passed:  # a failed run keeps the repository and the server log for a look
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
