"""The child process of :mod:`ensrm.export.trace_child`: read the request from stdin, load the
source again, trace it, answer one JSON line on stdout.

A module of its own so that the parent's side (imported by :mod:`ensrm.export.trace`) does not
import the tracer it runs in the child.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ensrm.errors import ExportError


def main() -> int:
    """The child: read the request, load, trace, answer; an :class:`ExportError` becomes the answer."""
    answer = os.fdopen(os.dup(1), "w")  # the answer's channel; anything else printed goes to stderr
    os.dup2(2, 1)
    request = json.loads(sys.stdin.buffer.read())
    from ensrm.export.sources import load_source
    from ensrm.export.trace import trace_to_onnx
    from ensrm.spec import EnsembleSpec

    spec = EnsembleSpec.from_json(request["spec"])
    reply: dict = {"ok": True}
    try:
        source = load_source(**request["load_args"])
        if source.fingerprint != spec.source_fingerprint:
            raise ExportError(f"the source {', '.join(map(str, request['load_args']['sources']))} changed during "
                              "the export (its files no longer match what was loaded and checked); no bundle "
                              "was written")
        trace_to_onnx(source.module, spec, Path(request["path"]))
    except ExportError as exc:
        reply = {"error": str(exc)}
    with answer:
        answer.write(json.dumps(reply) + "\n")
    return 0 if "ok" in reply else 1


if __name__ == "__main__":
    sys.exit(main())
