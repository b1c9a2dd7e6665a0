"""Serving benchmark: ``ensrm serve`` as a real process on loopback, driven by an async load generator.

Measures closed-loop throughput and latency at 1, 8, 32 and 128 concurrent clients sending
requests of 1 and 8 pairs (mixed lengths from the synthetic candidate generator), the mean
model batch size the server formed (from its /metrics), the ratio to in-process
``Scorer.score_texts`` at batch 32 on the same pairs (with dynamic batching, and with
``--max-batch 1``), the server's overhead on one pair against ``score_texts`` on one pair,
and checks every answer against the serial in-process score of its own pairs. Traffic goes
to 127.0.0.1 only; every run is bounded by a request count and a time limit.

The one-pair overhead is measured with a lean client (:func:`lean_single`: one persistent
``http.client`` connection, the body encoded once), whose own CPU time per request is
measured and reported, so that the figure is the server's and not the load generator's
(the async ``httpx`` client costs several ms a request by itself). :func:`profile_stages`
times the parts of the server's path in this process: JSON, tokenisation, the runtime call
and the hop from the event loop to the worker thread and back.

    python scripts/bench_serve.py -o artifacts/bench-serve                       # default MiniLM bundle
    python scripts/bench_serve.py --bundle bundles/default --requests 200 --seconds 20 --soak-seconds 300

Writes bench_serve.json, bench_serve.md and bench_serve.png into the output directory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: How far a served score may be from the serial in-process score of the same pair. onnxruntime
#: reproduces it to the bit; OpenVINO's kernels round by batch shape (up to ~1e-5 on heads of
#: magnitude ~10), so a pair scored inside a gathered batch differs in the last bits. 1e-4 is
#: the project's cross-runtime equality criterion.
MATCH_TOLERANCE = 1e-4
HOST = "127.0.0.1"  # loopback only, by design


# -- the server process ------------------------------------------------------------------------


class Server:
    """``ensrm serve`` on an ephemeral loopback port, stopped with SIGTERM."""

    def __init__(self, bundle: Path, *args: str, log: Path):
        self.log = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "ensrm.cli", "serve", str(bundle), "--host", HOST,
                                      "--port", "0", *args], stdout=subprocess.PIPE, stderr=self.log, text=True)
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(120)
        match = re.match(r"listening on (http://127\.0\.0\.1:\d+)", (line or [""])[0])
        if match is None:
            self.proc.kill()
            raise RuntimeError(f"the server did not start; see {log}")
        self.url = match.group(1)
        import httpx

        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"the server never became ready; see {log}")
            time.sleep(0.2)

    def batch_stats(self) -> tuple[float, float]:
        """(sum, count) of the server's model batch sizes so far."""
        import httpx
        from prometheus_client.parser import text_string_to_metric_families

        values = {}
        for family in text_string_to_metric_families(httpx.get(f"{self.url}/metrics", timeout=10).text):
            for sample in family.samples:
                values[sample.name] = sample.value
        return values["ensrm_batch_size_pairs_sum"], values["ensrm_batch_size_pairs_count"]

    def rss_mb(self) -> float:
        import psutil

        return psutil.Process(self.proc.pid).memory_info().rss / 2 ** 20

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()
        return self.proc.returncode


# -- the load generator ------------------------------------------------------------------------


async def closed_loop(url: str, pairs: list[tuple[str, str]], reference: np.ndarray, clients: int,
                      pairs_per_request: int, max_requests: int, max_seconds: float, warmup: int = 2,
                      load_client: str = "aiohttp") -> dict:
    """``clients`` concurrent clients, each sending its next request when the last is answered,
    until ``max_requests`` were sent or ``max_seconds`` passed. Request ``i`` carries pairs
    ``i*k .. i*k+k-1`` (mod the pool), so each answer can be checked against its own pairs.

    ``load_client`` is ``aiohttp`` (the HTTP library of OpenRLHF's reward client, and the lighter
    load: about a third of ``httpx``'s CPU per request, which on a small machine is CPU the
    server does not get) or ``httpx``."""
    n = len(pairs)
    counter = iter(range(10 ** 9))
    latencies, errors, worst = [], {}, 0.0
    mismatched = 0
    async with _session(load_client, url, clients) as post:
        async def one(i: int) -> None:
            nonlocal worst, mismatched
            rows = [(i * pairs_per_request + j) % n for j in range(pairs_per_request)]
            body = json.dumps({"prompts": [pairs[r][0] for r in rows], "responses": [pairs[r][1] for r in rows]})
            start = time.perf_counter()
            try:
                status, data = await post("/v1/score", body.encode())
            except ConnectionError as exc:  # the client library's transport error, by name
                errors[str(exc)] = errors.get(str(exc), 0) + 1
                return
            seconds = time.perf_counter() - start
            if status != 200:
                errors[status] = errors.get(status, 0) + 1
                return
            got = np.asarray(json.loads(data)["heads"], dtype=np.float64)  # [k, K]
            diff = float(np.max(np.abs(got - reference[rows]))) if got.shape == reference[rows].shape else np.inf
            worst = max(worst, diff)
            mismatched += diff > MATCH_TOLERANCE
            latencies.append(seconds)

        for i in range(warmup):  # connections and the first batch shapes, untimed
            await one(i)
        latencies.clear()
        deadline = time.perf_counter() + max_seconds
        start = time.perf_counter()
        sent = 0

        async def worker() -> None:
            nonlocal sent
            while time.perf_counter() < deadline:
                i = next(counter)
                if i >= max_requests:
                    return
                sent += 1
                await one(i)

        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - start
    lat = np.asarray(latencies) * 1000
    done = len(latencies)
    return {"clients": clients, "pairs_per_request": pairs_per_request, "requests": sent, "answered": done,
            "errors": errors, "seconds": wall, "pairs_per_s": done * pairs_per_request / wall,
            "p50_ms": float(np.percentile(lat, 50)) if done else None,
            "p95_ms": float(np.percentile(lat, 95)) if done else None,
            "p99_ms": float(np.percentile(lat, 99)) if done else None,
            "max_abs_diff": worst, "mismatched": int(mismatched), "lost": sent - done - sum(errors.values())}


@contextlib.asynccontextmanager
async def _session(load_client: str, url: str, clients: int):
    """``post(path, body) -> (status, body bytes)`` over ``clients`` keep-alive connections; a transport
    failure raises :class:`ConnectionError` carrying the library's exception name."""
    headers = {"Content-Type": "application/json"}
    if load_client == "aiohttp":
        import aiohttp

        connector = aiohttp.TCPConnector(limit=clients)
        async with aiohttp.ClientSession(url, connector=connector, timeout=aiohttp.ClientTimeout(300)) as session:
            async def post(path: str, body: bytes):
                try:
                    async with session.post(path, data=body, headers=headers) as answer:
                        return answer.status, await answer.read()
                except aiohttp.ClientError as exc:
                    raise ConnectionError(type(exc).__name__) from exc

            yield post
    else:
        import httpx

        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=300) as client:
            async def post(path: str, body: bytes):
                try:
                    answer = await client.post(path, content=body, headers=headers)
                except httpx.TransportError as exc:
                    raise ConnectionError(type(exc).__name__) from exc
                return answer.status_code, answer.content

            yield post


def run_load(server: Server, *args, **kwargs) -> dict:
    """One closed-loop load level; also the CPU seconds the server process and this client spent on it."""
    import psutil

    proc = psutil.Process(server.proc.pid)
    before = server.batch_stats()
    server_cpu, client_cpu = sum(proc.cpu_times()[:2]), time.process_time()
    result = asyncio.run(closed_loop(server.url, *args, **kwargs))
    result["server_cpu_s"] = sum(proc.cpu_times()[:2]) - server_cpu
    result["client_cpu_s"] = time.process_time() - client_cpu
    after = server.batch_stats()
    batches = after[1] - before[1]
    result["mean_batch"] = (after[0] - before[0]) / batches if batches else None
    return result


# -- in-process baselines ----------------------------------------------------------------------


class InProcess:
    """``Scorer.score_texts`` in this process, the baseline each server figure is compared with."""

    def __init__(self, bundle: Path, threads: int | None, backend: str = "auto"):
        import ensrm

        # The server's own scorer settings (no spinning), so the comparison isolates the server.
        self.scorer = ensrm.Scorer(bundle, threads=threads, spinning=False, backend=backend)
        self.scorer.score_texts(["warm"] * 32, ["up"] * 32)

    def reference(self, pairs) -> np.ndarray:
        """Every pair scored alone, so no batch shape or padding enters it: ``[n, K]``."""
        return np.stack([self.scorer.score_texts([p], [r]).heads[0] for p, r in pairs]).astype(np.float64)

    def throughput(self, pairs, batch_size: int = 32) -> tuple[float, float]:
        """``(pairs per second, CPU seconds per pair)`` of ``score_texts`` on ``pairs``."""
        start, cpu = time.perf_counter(), time.process_time()
        self.scorer.score_texts([p for p, _ in pairs], [r for _, r in pairs], batch_size=batch_size)
        return len(pairs) / (time.perf_counter() - start), (time.process_time() - cpu) / len(pairs)



def lean_single(local: InProcess, server: Server, pairs, reference: np.ndarray, n: int) -> dict:
    """``n`` one-pair ``/v1/score`` calls on one keep-alive ``http.client`` connection, each
    right after ``score_texts`` on the same pair in this process (interleaved call by call, so
    a shared machine's changing load hits both alike).

    Besides wall-clock times it records CPU time, which a busy machine's scheduling delays do
    not inflate: this client's own per call (``time.thread_time``: building the request,
    writing it, parsing the answer), the in-process ``score_texts`` per call (process CPU, its
    runtime threads included), and the server process's per call (``psutil``, before and after).
    """
    import http.client
    from urllib.parse import urlsplit

    import psutil

    parts = urlsplit(server.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    bodies = [json.dumps({"prompts": [p], "responses": [r]}).encode() for p, r in pairs[:n]]
    headers = {"Content-Type": "application/json"}
    proc = psutil.Process(server.proc.pid)
    wall, cpu, local_wall, local_cpu, worst = [], [], [], [], 0.0
    server_cpu = 0.0
    # Untimed: opens the connection, and gives the server each one-pair shape once, as the
    # in-process scorer saw them in ``reference`` (OpenVINO pays ~14 ms of CPU on a shape's first call).
    for body in bodies:
        conn.request("POST", "/v1/score", body, headers)
        conn.getresponse().read()
    for i, body in enumerate(bodies):
        p, r = pairs[i]
        start, start_cpu = time.perf_counter(), time.process_time()
        local.scorer.score_texts([p], [r])
        local_wall.append((time.perf_counter() - start) * 1000)
        local_cpu.append((time.process_time() - start_cpu) * 1000)
        before = sum(proc.cpu_times()[:2])
        start, start_cpu = time.perf_counter(), time.thread_time()
        conn.request("POST", "/v1/score", body, headers)
        answer = conn.getresponse()
        data = answer.read()
        seconds, cpu_seconds = time.perf_counter() - start, time.thread_time() - start_cpu
        server_cpu += sum(proc.cpu_times()[:2]) - before
        if answer.status != 200:
            raise RuntimeError(f"one-pair call answered {answer.status}: {data[:200]!r}")
        wall.append(seconds * 1000)
        cpu.append(cpu_seconds * 1000)
        got = np.asarray(json.loads(data)["heads"][0])
        worst = max(worst, float(np.max(np.abs(got - reference[i]))))
    conn.close()
    return {"wall_ms": wall, "client_cpu_ms": cpu, "local_wall_ms": local_wall, "local_cpu_ms": local_cpu,
            "server_cpu_ms_per_call": server_cpu * 1000 / n, "max_abs_diff": worst}


def profile_stages(local: InProcess, pairs, n: int = 200) -> dict:
    """Median milliseconds of each part of the server's one-pair path, timed in this process."""
    import asyncio
    import concurrent.futures

    scorer = local.scorer
    encoder = scorer.text_encoder
    p, r = pairs[0]
    body = json.dumps({"prompts": [p], "responses": [r]}).encode()
    out = {}

    def median(fn) -> float:
        times = []
        for _ in range(n):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1000)
        return float(np.median(times))

    encodings = encoder.encode([p], [r])
    _, feeds = next(encoder.batches(encodings, 1))
    scores = scorer.score(**feeds)
    answer = {"heads": [scores.heads[0].tolist()], "mean": scores.mean.tolist(), "std": scores.std.tolist(),
              "min": scores.min.tolist(), "uwo": scores.uwo.tolist(), "score": scores.uwo.tolist()}
    out["json_parse_and_dump_ms"] = median(lambda: (json.loads(body), json.dumps(answer)))
    out["tokenise_ms"] = median(lambda: next(encoder.batches(encoder.encode([p], [r]), 1)))
    out["runtime_call_ms"] = median(lambda: scorer.score(**feeds))
    out["score_texts_ms"] = median(lambda: scorer.score_texts([p], [r]))

    async def hops() -> float:
        loop = asyncio.get_running_loop()
        pool = concurrent.futures.ThreadPoolExecutor(1)
        times = []
        for _ in range(n):
            start = time.perf_counter()
            await loop.run_in_executor(pool, int)
            times.append((time.perf_counter() - start) * 1000)
        pool.shutdown()
        return float(np.median(times))

    out["thread_hop_ms"] = asyncio.run(hops())
    return out


def paired_rounds(local: InProcess, server: Server, pairs, reference, rounds: int, seconds: float,
                  with_single: bool, requests: int = 256, load_client: str = "aiohttp") -> dict:
    """In-process and server measurements alternated round by round, so that a shared machine's
    changing load hits both alike; medians over the rounds. Each server round is ``requests``
    one-pair requests from 32 clients (at least 8 each, so that the first wave's ramp-up does not
    dominate), in-process the whole pool at batch 32."""
    local_rate, local_cpu, served, local_single, served_single = [], [], [], [], []
    for _ in range(rounds):
        rate, cpu = local.throughput(pairs)
        local_rate.append(rate)
        local_cpu.append(cpu)
        served.append(run_load(server, pairs, reference, 32, 1, max(requests, 8 * 32), seconds,
                               load_client=load_client))
        if with_single:
            served_single.append(lean_single(local, server, pairs, reference, 40))
    out = {"in_process_batch32_pairs_per_s": float(np.median(local_rate)), "in_process_runs": local_rate,
           "server_32x1_pairs_per_s": float(np.median([r["pairs_per_s"] for r in served])), "server_runs": served}
    out["ratio"] = out["server_32x1_pairs_per_s"] / out["in_process_batch32_pairs_per_s"]
    # The load generator shares the machine's cores with the server; in CPU time per pair the
    # server's cost is measured without the client's (which a real deployment runs elsewhere).
    answered = [r["answered"] * r["pairs_per_request"] for r in served]
    out["in_process_cpu_ms_per_pair"] = 1000 * float(np.median(local_cpu))
    out["server_cpu_ms_per_pair"] = 1000 * float(np.median([r["server_cpu_s"] / a for r, a in zip(served, answered)]))
    out["client_cpu_ms_per_pair"] = 1000 * float(np.median([r["client_cpu_s"] / a for r, a in zip(served, answered)]))
    out["cpu_ratio"] = out["in_process_cpu_ms_per_pair"] / out["server_cpu_ms_per_pair"]
    if with_single:
        wall = [x for r in served_single for x in r["wall_ms"]]
        cpu = [x for r in served_single for x in r["client_cpu_ms"]]
        local_single = [x for r in served_single for x in r["local_wall_ms"]]
        out["in_process_single_p50_ms"] = float(np.percentile(local_single, 50))
        out["in_process_single_p99_ms"] = float(np.percentile(local_single, 99))
        out["server_single_p50_ms"] = float(np.percentile(wall, 50))
        out["server_single_p99_ms"] = float(np.percentile(wall, 99))
        out["client_cpu_p50_ms"] = float(np.percentile(cpu, 50))
        out["overhead_p50_ms"] = out["server_single_p50_ms"] - out["in_process_single_p50_ms"]
        out["overhead_less_client_p50_ms"] = out["overhead_p50_ms"] - out["client_cpu_p50_ms"]
        out["in_process_cpu_ms_per_call"] = float(np.mean([x for r in served_single for x in r["local_cpu_ms"]]))
        out["server_cpu_ms_per_call"] = float(np.mean([r["server_cpu_ms_per_call"] for r in served_single]))
        out["server_cpu_overhead_ms"] = out["server_cpu_ms_per_call"] - out["in_process_cpu_ms_per_call"]
        out["single_max_abs_diff"] = max(r["max_abs_diff"] for r in served_single)
    return out


# -- report ------------------------------------------------------------------------------------


def markdown(report: dict) -> str:
    m = report["machine"]
    d, b1, t = report["paired"], report["paired_max_batch_1"], report["targets"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores; load average at the start {m['load_before']}. "
             f"Bundle {report['bundle']} on {report.get('backend')}, {report['pool_pairs']} distinct pairs, server "
             f"--max-batch {report['settings']['max_batch']} --max-wait-ms {report['settings']['max_wait_ms']}.", "",
             "| clients | pairs/request | pairs/s | p50 ms | p95 ms | p99 ms | mean gathered batch | errors |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["load"]:
        lines.append(f"| {r['clients']} | {r['pairs_per_request']} | {r['pairs_per_s']:.1f} | {r['p50_ms']:.0f} | "
                     f"{r['p95_ms']:.0f} | {r['p99_ms']:.0f} | {r['mean_batch']:.1f} | {sum(r['errors'].values())} |")
    ok = t["mismatched"] == 0 and t["lost"] == 0
    lines += ["", "| target (in-process and server alternated, medians of rounds) | measured | goal | met |",
              "|---|---:|---:|:---:|",
              f"| 32 clients x 1 pair vs in-process `score_texts` batch 32, same pairs | {d['ratio']:.2f} "
              f"({d['server_32x1_pairs_per_s']:.1f} vs {d['in_process_batch32_pairs_per_s']:.1f} pairs/s) | >= 0.85 | "
              f"{'yes' if d['ratio'] >= 0.85 else 'no'} |",
              f"| the same with --max-batch 1 | {b1['ratio']:.2f} ({b1['server_32x1_pairs_per_s']:.1f} vs "
              f"{b1['in_process_batch32_pairs_per_s']:.1f} pairs/s) | (reported) | |",
              *([f"| the same with --hint throughput (OpenVINO streams, a batch per stream; in-process unchanged) | "
                 f"{h['ratio']:.2f} ({h['server_32x1_pairs_per_s']:.1f} vs {h['in_process_batch32_pairs_per_s']:.1f} "
                 f"pairs/s; CPU per pair {h['server_cpu_ms_per_pair']:.2f} ms) | (reported) | |"]
                if (h := report.get("paired_throughput_hint")) else []),
              f"| 32 clients x 1 pair in CPU time per pair: server process {d['server_cpu_ms_per_pair']:.2f} ms, "
              f"in-process {d['in_process_cpu_ms_per_pair']:.2f} ms (the load generator, on the same cores, spent "
              f"{d['client_cpu_ms_per_pair']:.2f} ms) | {d['cpu_ratio']:.2f} | (reported) | |",
              f"| one client x one pair (lean http.client, {d['client_cpu_p50_ms']:.2f} ms client CPU per call), "
              f"p50 (p99): server {d['server_single_p50_ms']:.2f} ({d['server_single_p99_ms']:.1f}) ms, in-process "
              f"{d['in_process_single_p50_ms']:.2f} ({d['in_process_single_p99_ms']:.1f}) ms | overhead "
              f"{d['overhead_p50_ms']:.2f} ms (less the client's CPU: {d['overhead_less_client_p50_ms']:.2f} ms) | "
              f"<= 2 ms less the client | {'yes' if d['overhead_less_client_p50_ms'] <= 2 else 'no'} |",
              f"| the same pairs, CPU time per one-pair call: server process {d['server_cpu_ms_per_call']:.2f} ms, "
              f"in-process score_texts {d['in_process_cpu_ms_per_call']:.2f} ms (scheduling delays excluded) | "
              f"server CPU overhead {d['server_cpu_overhead_ms']:.2f} ms | <= 2 ms | "
              f"{'yes' if d['server_cpu_overhead_ms'] <= 2 else 'no'} |",
              f"| every answer equals the serial in-process score of its own pairs (<= {MATCH_TOLERANCE:g}) | "
              f"{t['answers']} answers: "
              f"{t['mismatched']} mismatched, {t['lost']} lost, max diff {t['max_abs_diff']:.1e} | 0, 0 | "
              f"{'yes' if ok else 'no'} |"]
    st = report.get("stages")
    if st:
        lines += ["", "One-pair path, each part timed alone in the bench process (medians, ms):", "",
                  "| JSON parse + dump | tokenise + pad | runtime call | score_texts | event loop -> worker thread -> "
                  "back |", "|---:|---:|---:|---:|---:|",
                  f"| {st['json_parse_and_dump_ms']:.3f} | {st['tokenise_ms']:.3f} | {st['runtime_call_ms']:.3f} | "
                  f"{st['score_texts_ms']:.3f} | {st['thread_hop_ms']:.3f} |"]
    if report.get("soak"):
        s = report["soak"]
        lines.append(f"| RSS growth over a {s['seconds']:.0f} s soak, {s['clients']} clients x 1 pair, "
                     f"{s['answered']} answers | {s['growth_mb']:+.1f} MB | <= 64 MB | "
                     f"{'yes' if s['growth_mb'] <= 64 else 'no'} |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for k, marker, color in ((1, "o", "tab:blue"), (8, "s", "tab:orange")):
        rows = [r for r in report["load"] if r["pairs_per_request"] == k]
        clients = [r["clients"] for r in rows]
        left.plot(clients, [r["p50_ms"] for r in rows], marker=marker, color=color, label=f"{k} pair(s)/request, p50")
        left.plot(clients, [r["p99_ms"] for r in rows], marker=marker, color=color, linestyle="--", label=f"{k}, p99")
        right.plot(clients, [r["pairs_per_s"] for r in rows], marker=marker, color=color,
                   label=f"{k} pair(s)/request")
    right.axhline(report["paired"]["in_process_batch32_pairs_per_s"], color="gray", linestyle=":",
                  label="in-process score_texts, batch 32")
    for ax, label in ((left, "latency (ms)"), (right, "throughput (pairs/s)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    left.set_yscale("log")
    fig.suptitle(f"ensrm serve on {report['machine']['cpu']} ({report['machine']['cores']} cores), loopback")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="Bundle to serve (default: build bundles/default as ensrm demo).")
    parser.add_argument("-o", "--output", type=Path, default=Path("artifacts/bench-serve"))
    parser.add_argument("--clients", default="1,8,32,128", help="Concurrency levels.")
    parser.add_argument("--pairs", default="1,8", help="Pairs per request.")
    parser.add_argument("--requests", type=int, default=300, help="Requests per load level at most.")
    parser.add_argument("--seconds", type=float, default=20.0, help="Seconds per load level at most.")
    parser.add_argument("--pool", type=int, default=256, help="Distinct (prompt, response) pairs.")
    parser.add_argument("--threads", type=int, help="Runtime threads, server and in-process alike.")
    parser.add_argument("--backend", default="auto", help="Runtime, server and in-process alike.")
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--load-client", choices=["aiohttp", "httpx"], default="aiohttp",
                        help="HTTP library of the load generator (aiohttp: OpenRLHF's, and the lighter load).")
    parser.add_argument("--rounds", type=int, default=3, help="Alternated in-process / server rounds.")
    parser.add_argument("--soak-seconds", type=float, default=0.0, help="Also run an RSS soak this long (8 clients).")
    args = parser.parse_args(argv)
    # A bench stopped with SIGTERM still stops its servers (the finally blocks run).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    from ensrm.bench import machine_info
    from ensrm.data.synthetic import generate_candidates
    from ensrm.demo import ensure_default_bundle

    bundle = args.bundle or ensure_default_bundle()
    args.output.mkdir(parents=True, exist_ok=True)
    records = generate_candidates(max(1, args.pool // 8), 8, seed=11)[:args.pool]
    pairs = [(r["prompt"], r["response"]) for r in records]
    machine = {**machine_info(), "load_before": [round(x, 2) for x in os.getloadavg()]}
    threads = ["--threads", str(args.threads)] if args.threads else []
    print(f"in-process reference scores of {len(pairs)} pairs ...", flush=True)
    local = InProcess(bundle, args.threads, args.backend)
    reference = local.reference(pairs)
    clients = [int(x) for x in args.clients.split(",")]
    sizes = [int(x) for x in args.pairs.split(",")]
    common = ["--max-queue", "4096", "--backend", args.backend, *threads]

    server = Server(bundle, "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms), *common,
                    log=args.output / "server.log")
    load, soak = [], None
    try:
        paired = paired_rounds(local, server, pairs, reference, args.rounds, args.seconds, with_single=True,
                               requests=args.requests, load_client=args.load_client)
        print(json.dumps({k: v for k, v in paired.items() if not k.endswith("runs")}), flush=True)
        for k in sizes:
            for c in clients:
                result = run_load(server, pairs, reference, c, k, max(args.requests // k, 2 * c), args.seconds,
                                  load_client=args.load_client)
                print(json.dumps(result), flush=True)
                load.append(result)
        if args.soak_seconds > 0:
            print(f"soak for {args.soak_seconds:.0f} s ...", flush=True)
            start_rss = server.rss_mb()
            samples = []
            stop = threading.Event()

            def sample():
                while not stop.is_set():
                    samples.append(server.rss_mb())
                    stop.wait(5)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            result = run_load(server, pairs, reference, 8, 1, 10 ** 9, args.soak_seconds,
                              load_client=args.load_client)
            stop.set()
            sampler.join()
            load_soak = result
            soak = {"seconds": args.soak_seconds, "clients": 8, "start_mb": start_rss, "end_mb": server.rss_mb(),
                    "max_mb": max(samples), "answered": result["answered"], "mismatched": result["mismatched"]}
            soak["growth_mb"] = soak["end_mb"] - soak["start_mb"]
    finally:
        exit_code = server.stop()
    one = Server(bundle, "--max-batch", "1", *common, log=args.output / "server-batch1.log")
    try:
        paired_b1 = paired_rounds(local, one, pairs, reference, max(1, args.rounds - 1), args.seconds,
                                  with_single=False, requests=args.requests,
                                  load_client=args.load_client)
        print(json.dumps({k: v for k, v in paired_b1.items() if not k.endswith("runs")}), flush=True)
    finally:
        one.stop()
    paired_streams = None
    if local.scorer.description.startswith("OpenVINO"):  # streams: one batch per stream at a time
        streams = Server(bundle, "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms),
                         "--hint", "throughput", *common, log=args.output / "server-throughput.log")
        try:
            paired_streams = paired_rounds(local, streams, pairs, reference, args.rounds, args.seconds,
                                           with_single=False, requests=args.requests,
                                  load_client=args.load_client)
            print(json.dumps({k: v for k, v in paired_streams.items() if not k.endswith("runs")}), flush=True)
        finally:
            streams.stop()

    everything = load + paired["server_runs"] + paired_b1["server_runs"] + \
        (paired_streams["server_runs"] if paired_streams else [])
    if soak:
        everything.append(load_soak)
    stages = profile_stages(local, pairs)
    print(json.dumps({"stages": stages}), flush=True)
    report = {"bundle": str(bundle), "machine": machine, "stages": stages, "threads": args.threads,
              "backend": local.scorer.description,
              "pool_pairs": len(pairs),
              "settings": {"max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms, "requests": args.requests,
                           "seconds": args.seconds, "rounds": args.rounds},
              "paired": paired, "paired_max_batch_1": paired_b1, "paired_throughput_hint": paired_streams,
              "load": load, "soak": soak,
              "server_exit_code": exit_code,
              "targets": {"ratio_dynamic": paired["ratio"], "ratio_max_batch_1": paired_b1["ratio"],
                          "overhead_p50_ms": paired["overhead_p50_ms"],
                          "answers": sum(r["answered"] for r in everything),
                          "mismatched": sum(r["mismatched"] for r in everything),
                          "lost": sum(r["lost"] for r in everything),
                          "max_abs_diff": max([r["max_abs_diff"] for r in everything]
                                              + [paired["single_max_abs_diff"]])},
              "command": " ".join(["python scripts/bench_serve.py", *(argv if argv is not None else sys.argv[1:])])}
    (args.output / "bench_serve.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.output / "bench_serve.md").write_text(markdown(report))
    plot(report, args.output / "bench_serve.png")
    print(markdown(report))
    print(f"wrote {args.output}/bench_serve.json, bench_serve.md, bench_serve.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
