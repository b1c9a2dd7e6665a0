"""``ensrm serve`` as a real uvicorn process on an ephemeral loopback port, and its click command."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from click.testing import CliRunner

from ensrm.cli import main
from tests.serve.conftest import PROMPTS, RESPONSES

httpx = pytest.importorskip("httpx")


def start_server(bundle, tmp_path, *args, headers=None):
    """Start ``ensrm serve BUNDLE --port 0``; return the process, its base URL and its stderr file."""
    stderr = open(tmp_path / "stderr.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "ensrm.cli", "serve", str(bundle), "--host", "127.0.0.1",
                             "--port", "0", "--threads", "1", *args],
                            stdout=subprocess.PIPE, stderr=stderr, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    lines = []
    reader = threading.Thread(target=lambda: lines.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(60)
    match = re.match(r"listening on (http://127\.0\.0\.1:\d+)$", (lines or [""])[0].strip())
    if match is None:
        proc.kill()
        stderr.seek(0)
        pytest.fail(f"no 'listening on' line; stdout {lines!r}, stderr:\n{stderr.read()}")
    url = match.group(1)
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=5, headers=headers).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            stderr.seek(0)
            pytest.fail(f"the server never became ready; stderr:\n{stderr.read()}")
        time.sleep(0.1)
    return proc, url, stderr


def queue_depth(url) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=5).text):
        for sample in family.samples:
            if sample.name == "ensrm_queue_depth_pairs":
                return sample.value
    raise KeyError("ensrm_queue_depth_pairs")


def test_sigterm_finishes_every_request_in_flight_then_exits_0(bundles, scorer, tmp_path):
    bundle = bundles("bert", num_labels=4)
    # A long gathering wait keeps the requests queued while SIGTERM arrives.
    proc, url, stderr = start_server(bundle, tmp_path, "--max-wait-ms", "1500")
    try:
        pairs = [(p, r + f" (variant {i})") for i in range(2) for p, r in zip(PROMPTS, RESPONSES)]  # 8 requests
        with ThreadPoolExecutor(len(pairs)) as pool:
            futures = [pool.submit(httpx.post, f"{url}/v1/score", json={"prompts": [p], "responses": [r]},
                                   timeout=60) for p, r in pairs]
            deadline = time.monotonic() + 30
            while queue_depth(url) < len(pairs):
                assert time.monotonic() < deadline, "the requests never queued"
            proc.send_signal(signal.SIGTERM)
            answers = [f.result(60) for f in futures]
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert [a.status_code for a in answers] == [200] * len(pairs)
    expected = scorer.score_texts([p for p, _ in pairs], [r for _, r in pairs]).uwo
    np.testing.assert_allclose([a.json()["score"][0] for a in answers], expected, rtol=0, atol=1e-6)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/healthz", timeout=5)
    stderr.seek(0)
    log = stderr.read()
    access = [json.loads(line.split("ensrm.serve.access: ", 1)[1]) for line in log.splitlines()
              if "ensrm.serve.access: " in line]
    assert sum(1 for a in access if a["path"] == "/v1/score" and a["status"] == 200 and a["pairs"] == 1) == 8
    assert "variant" not in log and PROMPTS[0] not in log  # no texts in the log


def test_api_key_file_in_a_real_process(bundles, tmp_path):
    key_file = tmp_path / "key.txt"
    key_file.write_text("proc-key-42\n")
    proc, url, stderr = start_server(bundles("bert", num_labels=4), tmp_path, "--api-key-file", str(key_file),
                                     headers={"Authorization": "Bearer proc-key-42"})
    try:
        body = {"query": ["Hi there. Hello!"], "prompts": ["Hi there. "], "labels": [""]}
        assert httpx.post(f"{url}/get_reward", json=body, timeout=30).status_code == 401
        good = httpx.post(f"{url}/get_reward", json=body, timeout=30,
                          headers={"Authorization": "Bearer proc-key-42"})
        assert good.status_code == 200 and len(good.json()["rewards"]) == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr.seek(0)
    assert "proc-key-42" not in stderr.read()


def test_serve_command_refuses_bad_options(bundles, tmp_path):
    bundle = str(bundles("bert", num_labels=4))
    runner = CliRunner()
    result = runner.invoke(main, ["serve", bundle, "--max-body-bytes", "lots"])
    assert result.exit_code == 1 and "size must be a number of bytes" in result.output
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    result = runner.invoke(main, ["serve", bundle, "--api-key-file", str(empty)])
    assert result.exit_code == 2 and "is empty" in result.output
    result = runner.invoke(main, ["serve", bundle, "--max-queue", "8", "--max-pairs-per-request", "16"])
    assert result.exit_code == 1 and "cannot exceed max_queue" in result.output
    result = runner.invoke(main, ["serve", bundle, "--objective", "best"])
    assert result.exit_code == 1 and "unknown objective" in result.output


def test_loopback_detection():
    from ensrm.serve.server import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("myhost")


def test_the_server_needs_no_torch_and_import_ensrm_serve_stays_light(bundles):
    from tests.runtime.test_without_torch import run_blocked

    result = run_blocked(f"""
        import json, sys
        import ensrm.serve
        light = not any(m.split(".")[0] in ("starlette", "uvicorn", "prometheus_client") for m in sys.modules)
        import ensrm
        from starlette.testclient import TestClient
        with TestClient(ensrm.serve.create_app(ensrm.Scorer({str(bundles("bert", num_labels=4))!r}))) as client:
            answer = client.post("/v1/score", json={{"prompts": ["Hi"], "responses": ["Hello"]}})
        print(json.dumps({{"light": light, "status": answer.status_code,
                          "export": any(m.startswith("ensrm.export") for m in sys.modules)}}))
    """)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == {"light": True, "status": 200, "export": False}


def test_accepted_connections_have_nagle_off():
    """Else every response written in two parts waits for the client's delayed ACK (40 ms)."""
    import asyncio
    import socket

    from ensrm.serve.server import bind

    async def check() -> int:
        accepted = asyncio.get_running_loop().create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport):
                sock = transport.get_extra_info("socket")
                accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        listener = bind("127.0.0.1", 0)
        server = await asyncio.get_running_loop().create_server(Probe, sock=listener)
        _, writer = await asyncio.open_connection("127.0.0.1", listener.getsockname()[1])
        try:
            return await asyncio.wait_for(accepted, 10)
        finally:
            writer.close()
            server.close()

    assert asyncio.run(check()) == 1
