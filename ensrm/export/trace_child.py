"""Trace a large model in a child process, so that the export's peaks take turns instead of adding up.

After a dynamo trace, torch's exporter keeps views of the traced weights alive (no Python
referrer; ``torch._dynamo.reset()`` frees nothing), so a process that traced a model holds its
weights until it exits. The export therefore scores torch on the verification inputs first, frees
the torch weights (nothing traced them: they really go), and then traces in a child process that
loads the same source again from the same arguments, writes ``model.onnx`` into the staging
directory and exits, taking the exporter's copies with it. The parent then verifies the graph in
a lean onnxruntime session (:func:`ensrm.export.verify.verification_session`).

Spawning costs a few seconds of imports (torch, transformers), so only sources of at least
:data:`ensrm.export.memory.TRACE_CHILD_MIN_BYTES` of weights are traced this way
(:func:`ensrm.export.trace.trace_and_verify` decides, in the parent).

The child is ``python -m ensrm.export.trace_worker``: its request (the load arguments, the spec's
manifest form, the output path) comes as JSON on stdin from the parent; its answer is one JSON line on stdout
(``{"ok": true}``, or ``{"error": MESSAGE}`` for an :class:`~ensrm.errors.ExportError`), and
everything else it prints goes to stderr. The parent raises the child's error with the same text.

(Not run by the doctests: it loads and traces a checkpoint on disk.)

>>> trace_in_child(source.load_args, spec, staging / "model.onnx", weights=2 ** 30)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from ensrm.errors import ExportError


def child_command() -> list[str]:
    """The command that runs the child (a function, so a test can run another one)."""
    return [sys.executable, "-m", "ensrm.export.trace_worker"]


def _child_env() -> dict[str, str]:
    # The child imports the same ensrm as this process, even when it was put on sys.path by hand.
    import ensrm

    root = str(Path(ensrm.__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, path) if p)}


def trace_in_child(load_args: dict, spec, path: Path, *, weights: int) -> None:
    """Load the source from ``load_args`` (:func:`~ensrm.export.sources.load_source`'s keywords) in a
    child process, trace it into ``path`` as ``spec`` describes, and wait for it to exit.

    Raises :class:`ExportError`: the child's own message when it failed with one (a source that
    changed since the parent loaded it, a failed trace), or one naming the signal and the memory the
    trace was expected to take when the child was killed (the kernel's OOM killer sends SIGKILL).
    ``weights`` (bytes) sizes that estimate.
    """
    from ensrm.export.memory import available_bytes, gib, trace_child_estimate

    request = json.dumps({"load_args": load_args, "spec": spec.to_json(), "path": str(path)}).encode()
    proc = subprocess.run(child_command(), input=request, capture_output=True, env=_child_env(), check=False)
    reply = _reply(proc.stdout)
    if proc.returncode == 0 and reply.get("ok"):
        return
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        available = available_bytes()
        raise ExportError(
            f"the trace's child process was killed by {name} (the kernel's out-of-memory killer sends SIGKILL): "
            f"it loads {gib(weights)} of weights again and was expected to peak near "
            f"{gib(trace_child_estimate(weights))}; {gib(available) if available is not None else 'unknown'} "
            "is available now; no bundle was written")
    if "error" in reply:
        raise ExportError(reply["error"])
    lines = proc.stderr.decode(errors="replace").strip().splitlines()
    raise ExportError(f"the trace's child process failed (exit status {proc.returncode}): "
                      f"{lines[-1] if lines else 'no message'}; no bundle was written")


def _reply(stdout: bytes) -> dict:
    for line in reversed(stdout.decode(errors="replace").strip().splitlines()):
        try:
            reply = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(reply, dict):
            return reply
    return {}
