"""Profile ``ensrm serve``'s own cost on one pair: the whole server path with the model call taken out.

The server runs in a child process over the real bundle (tokenizer, batcher, worker thread,
JSON, uvicorn, metrics, access log) with one change: the runtime call returns precomputed
scores at once (``--null-model``), so what is left is the server's overhead over
``score_texts``. A lean client (one keep-alive ``http.client`` connection, bodies encoded once)
sends ``--calls`` one-pair requests; the report gives wall-clock p50/p99, this client's CPU per
call, the server process's CPU per call (``psutil``, over all calls, so the 10 ms tick of the
counters averages out), and, with ``--cprofile``, the hottest functions of the server's event
loop thread (HTTP, JSON, routing, metrics, logging; the worker thread's tokenisation is not in it).

    python scripts/profile_serve.py --bundle bundles/default --calls 1000 --cprofile

On a machine shared with other work the wall-clock figures carry scheduling delays (every
request wakes the event loop, the worker thread and the event loop again); the CPU figures
do not.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CHILD = r"""
import cProfile, pstats, signal, sys
import ensrm
from ensrm.runtime.scores import Scores
from ensrm.serve.server import run_server
from ensrm.serve.settings import ServeSettings

bundle, null, profile_to = sys.argv[1], sys.argv[2] == "1", sys.argv[3]
scorer = ensrm.Scorer(bundle, spinning=False)

class NullModel:
    '''The real scorer, but its runtime call returns fixed scores of the right shape at once.'''
    def __init__(self, scorer):
        self.scorer = scorer
        self.row = scorer.score_texts(["warm"], ["up"])
    def __getattr__(self, name):
        return getattr(self.scorer, name)
    def score(self, input_ids, attention_mask, token_type_ids=None):
        n = len(input_ids)
        return Scores(heads=self.row.heads.repeat(n, 0), mean=self.row.mean.repeat(n), std=self.row.std.repeat(n),
                      min=self.row.min.repeat(n), uwo=self.row.uwo.repeat(n))

profiler = cProfile.Profile() if profile_to else None
if profiler:
    profiler.enable()
try:
    run_server(NullModel(scorer) if null else scorer, ServeSettings(), port=0)
finally:
    if profiler:
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").dump_stats(profile_to)
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("bundles/default"))
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--real-model", action="store_true", help="Keep the runtime call (default: null model).")
    parser.add_argument("--cprofile", action="store_true", help="Also profile the server and print its top 25.")
    parser.add_argument("--client", choices=["http.client", "httpx-async"], default="http.client",
                        help="The lean client, or the async httpx client the old benchmark used (to see its cost).")
    parser.add_argument("-o", "--output", type=Path, help="Write the report as JSON here.")
    args = parser.parse_args(argv)
    import http.client

    import psutil

    from ensrm.bench.suites import machine_info
    from ensrm.data.synthetic import generate_candidates

    records = generate_candidates(8, 8, seed=11)
    pairs = [(r["prompt"], r["response"]) for r in records]
    stats_file = Path(f"/tmp/ensrm-profile-{os.getpid()}.pstats") if args.cprofile else None
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(args.bundle), "0" if args.real_model else "1",
                             str(stats_file or "")], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(120)
    match = re.match(r"listening on http://127\.0\.0\.1:(\d+)", (line or [""])[0])
    if match is None:
        proc.kill()
        raise SystemExit("the server did not start")
    conn = http.client.HTTPConnection("127.0.0.1", int(match.group(1)), timeout=60)
    deadline = time.monotonic() + 120
    while True:
        try:
            conn.request("GET", "/readyz")
            ready = conn.getresponse()
            ready.read()
            if ready.status == 200:
                break
        except OSError:
            conn.close()
        if time.monotonic() > deadline:
            raise SystemExit("the server never became ready")
        time.sleep(0.2)
    bodies = [json.dumps({"prompts": [p], "responses": [r]}).encode() for p, r in pairs]
    headers = {"Content-Type": "application/json"}
    server = psutil.Process(proc.pid)
    for body in bodies[:20]:  # warm
        conn.request("POST", "/v1/score", body, headers)
        conn.getresponse().read()
    wall, client_cpu = [], []
    server_before = sum(server.cpu_times()[:2])
    if args.client == "http.client":
        for i in range(args.calls):
            start, start_cpu = time.perf_counter(), time.thread_time()
            conn.request("POST", "/v1/score", bodies[i % len(bodies)], headers)
            answer = conn.getresponse()
            answer.read()
            wall.append((time.perf_counter() - start) * 1000)
            client_cpu.append((time.thread_time() - start_cpu) * 1000)
            assert answer.status == 200, answer.status
    else:
        import asyncio

        import httpx

        async def run() -> None:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{match.group(1)}", timeout=60) as client:
                await client.post("/v1/score", content=bodies[0], headers=headers)
                for i in range(args.calls):
                    p, r = pairs[i % len(pairs)]
                    start, start_cpu = time.perf_counter(), time.thread_time()
                    answer = await client.post("/v1/score", json={"prompts": [p], "responses": [r]})
                    answer.json()
                    wall.append((time.perf_counter() - start) * 1000)
                    client_cpu.append((time.thread_time() - start_cpu) * 1000)
                    assert answer.status_code == 200, answer.status_code

        server_before = sum(server.cpu_times()[:2])
        asyncio.run(run())
    server_cpu = (sum(server.cpu_times()[:2]) - server_before) * 1000 / args.calls
    conn.close()
    proc.terminate()
    proc.wait(60)
    report = {"machine": {**machine_info(), "load": [round(x, 2) for x in os.getloadavg()]},
              "model": "real" if args.real_model else "null", "client": args.client, "calls": args.calls,
              "wall_p50_ms": float(np.percentile(wall, 50)), "wall_p99_ms": float(np.percentile(wall, 99)),
              "client_cpu_p50_ms": float(np.percentile(client_cpu, 50)), "server_cpu_ms_per_call": server_cpu}
    print(json.dumps(report, indent=2))
    if args.output:
        args.output.write_text(json.dumps(report, indent=2) + "\n")
    if stats_file and stats_file.exists():
        import pstats

        stats = pstats.Stats(str(stats_file))
        stats.sort_stats("tottime").print_stats(25)
        stats_file.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
