"""``BundleBuilder``: a bundle being written, which the steps of every bundle-making command share.

Exporting, calibrating and adding precision variants are one flow: open a staging directory
beside the target (empty for a new bundle, or holding a copy of an existing bundle's files),
run steps that each write some files and update the spec, write the manifest, and rename the
directory into place (:func:`ensrm.bundle.staged_bundle`). Nothing appears at the target
unless every step succeeded.

The steps live with the code that does their work and take the builder as their first
argument:

- :func:`ensrm.export.trace.trace_and_verify` — trace a loaded source, verify it against torch;
- :func:`ensrm.calibration.normalize.normalize_staged` — measure and bake in the normalisation;
- :func:`ensrm.calibration.variants.build_variants` and
  :func:`~ensrm.calibration.variants.regate_variants` — write and gate the precision variants;
- :func:`ensrm.export.tensorrt_engine.build_engines` — TensorRT engines, beside a finished bundle.

This module imports neither torch nor onnx.

(Not run by the doctests: it needs a bundle and reference records on disk.)

>>> from ensrm.calibration.normalize import normalize_staged            # doctest: +SKIP
>>> with BundleBuilder.update("bundles/rm") as build:                   # doctest: +SKIP
...     normalize_staged(build, "refs.jsonl")
>>> build.spec.normalization.calibrated                                 # doctest: +SKIP
True
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from ensrm.bundle import bundle_file, load_spec, staged_bundle, write_manifest
from ensrm.errors import BundleError
from ensrm.progress import Progress
from ensrm.runtime.tensorrt_backend import ENGINE_DIR
from ensrm.spec import MANIFEST_NAME, EnsembleSpec


class BundleBuilder:
    """The staging directory of a bundle being written, its spec so far, and what steps share.

    Make one with :meth:`new` (an empty staging directory) or :meth:`update` (a copy of an
    existing bundle); both are context managers that write the manifest and move the bundle
    into place when the block succeeds. ``spec`` is ``None`` in a new bundle until the trace
    step sets it. ``references`` are the records the normalisation was measured on, which the
    variant gates fall back to.
    """

    def __init__(self, target: Path, staging: Path, spec: EnsembleSpec | None, *, threads: int | None = None,
                 progress: Progress | None = None, steps: int = 0):
        self.target, self.staging, self.spec = target, staging, spec
        self.threads = threads
        self.references: list[dict] | None = None
        self.is_new = spec is None
        self._progress, self._steps, self._done = progress, steps, 0
        self._started = time.perf_counter()

    @classmethod
    @contextlib.contextmanager
    def new(cls, target: str | os.PathLike, *, overwrite: bool = False, threads: int | None = None,
            progress: Progress | None = None, steps: int = 0) -> Iterator[BundleBuilder]:
        """Write a new bundle at ``target``; ``steps`` (the number of :meth:`step` calls) numbers them."""
        with staged_bundle(target, overwrite=overwrite) as staging:
            build = cls(Path(target), staging, None, threads=threads, progress=progress, steps=steps)
            yield build
            build._write_manifest()

    @classmethod
    @contextlib.contextmanager
    def update(cls, bundle_dir: str | os.PathLike, *, drop: Iterable[str] = (), threads: int | None = None,
               progress: Progress | None = None) -> Iterator[BundleBuilder]:
        """Rewrite the bundle at ``bundle_dir``: its files except ``drop`` (and engines) start in staging.

        The bundle is checked against its manifest first (sha256), so a damaged bundle is
        reported instead of copied.
        """
        spec = load_spec(bundle_dir, verify="sha256")
        with staged_bundle(bundle_dir, overwrite=True) as staging:
            copy_files(bundle_dir, staging, [name for name in spec.files if _kept(name, set(drop))])
            build = cls(Path(bundle_dir), staging, spec, threads=threads, progress=progress)
            yield build
            build._write_manifest()

    def path(self, name: str) -> Path:
        """A file of the bundle being written."""
        return self.staging / name

    def step(self, message: str) -> None:
        """Report a finished step: ``[n/total] message (elapsed)`` when the total is known."""
        self._done += 1
        if self._progress and self._steps:
            self._progress(f"[{self._done}/{self._steps}] {message} ({time.perf_counter() - self._started:.1f}s)")
        elif self._progress:
            self._progress(message)

    def note(self, message: str) -> None:
        """Report details within a step (a gate's numbers), unnumbered."""
        if self._progress:
            self._progress(message)

    def _write_manifest(self) -> None:
        if self.spec is None:
            raise BundleError(f"no step described the bundle at {self.target}; nothing was written")
        self.spec = write_manifest(self.staging, self.spec)


def _kept(name: str, drop: set[str]) -> bool:
    # Engines are built from the graphs being rewritten: they would be stale.
    return name.split("/")[0] != ENGINE_DIR and name not in drop and name.removesuffix(".data") not in drop


def copy_files(source_dir: str | os.PathLike, target_dir: Path, names: Iterable[str]) -> None:
    """Copy bundle files (manifest names) into a staging directory.

    Copies, not hard links: onnx refuses external weight files with several links (its guard
    against hard-link attacks), and a copy can never alter the bundle being replaced.
    """
    for name in names:
        if name == MANIFEST_NAME:
            continue
        target = target_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(bundle_file(source_dir, name), target)
