"""Bundle directories on disk: read and verify the manifest, write a new bundle atomically.

A bundle is only ever seen complete: the exporter writes into a hidden staging directory
beside the target and renames it into place at the end (:func:`staged_bundle`). Loading
checks every file the manifest lists, so a truncated or altered file is reported by name.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ensrm.errors import BundleError, EnsrmError, OutputError
from ensrm.spec import MANIFEST_NAME, MODEL_FILES, EnsembleSpec, FileEntry

VERIFY_MODES = ("sha256", "size", "none")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def bundle_file(bundle_dir: str | os.PathLike, name: str) -> Path:
    """Resolve a file name from a manifest, refusing anything that leaves the bundle directory.

    ``../x``, absolute names and symlinks whose target lies outside the bundle are refused,
    so a manifest can never make the runtime read (or hash) a file elsewhere.

    (Not run by the doctests: it needs a bundle on disk.)

    >>> bundle_file("bundles/rm", "../secrets.txt")             # doctest: +SKIP
    Traceback (most recent call last):
    ensrm.errors.BundleError: bundle file name '../secrets.txt' escapes the bundle directory ...
    """
    root = Path(bundle_dir).resolve()
    if not isinstance(name, str) or not name or os.path.isabs(name) or Path(name).drive:
        raise BundleError(f"bundle file name {name!r} is absolute or empty; names must be relative", file=str(name))
    candidate = (root / name).resolve()  # follows symlinks, so a link out of the bundle is caught here
    if candidate == root or root not in candidate.parents:
        link = " (through a symlink)" if ".." not in Path(name).parts else ""
        raise BundleError(f"bundle file name {name!r} escapes the bundle directory {root}{link}", file=name)
    return candidate


def variant_file(bundle_dir: str | os.PathLike, spec: EnsembleSpec, precision: str) -> Path:
    """The graph file of the bundle's accepted ``precision`` variant; refuses a missing or rejected one.

    (Not run by the doctests: it needs a bundle on disk.)

    >>> variant_file("bundles/default", read_spec("bundles/default"), "fp32").name   # doctest: +SKIP
    'model.onnx'
    """
    if precision not in MODEL_FILES:
        raise ValueError(f"precision must be one of {', '.join(MODEL_FILES)}, got {precision!r}")
    variant = spec.variants.get(precision)
    accepted = ", ".join(spec.usable_precisions) or "none"
    if variant is not None and not variant.accepted:  # a rejected variant keeps no file
        raise BundleError(f"the {precision} variant of {bundle_dir} failed its accuracy gate and is marked rejected; "
                          f"use an accepted precision ({accepted})")
    if variant is None or variant.file is None:
        raise BundleError(f"bundle {bundle_dir} has no {precision} variant, so no {precision} model file "
                          f"(accepted precisions: {accepted}); "
                          f"make one with: ensrm quantize {bundle_dir} --precision {precision}")
    return bundle_file(bundle_dir, variant.file)


def read_spec(bundle_dir: str | os.PathLike) -> EnsembleSpec:
    """Read ``ensemble.json`` without checking the other files."""
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise BundleError(f"bundle directory not found: {bundle_dir}")
    manifest = bundle_dir / MANIFEST_NAME
    if not manifest.is_file():
        raise BundleError(f"{bundle_dir} is not a bundle: {MANIFEST_NAME} is missing", file=MANIFEST_NAME)
    manifest = bundle_file(bundle_dir, MANIFEST_NAME)  # not a symlink out of the bundle
    try:
        return EnsembleSpec.from_json(manifest.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise BundleError(f"{manifest} is not UTF-8 text ({exc.reason}); the manifest is damaged",
                          file=MANIFEST_NAME) from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        # KeyError's str() is just the quoted key; say it is a missing field.
        problem = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
        raise BundleError(f"{manifest}: {problem}", file=MANIFEST_NAME) from None


def verify_files(bundle_dir: str | os.PathLike, spec: EnsembleSpec, mode: str = "sha256",
                 only: set[str] | None = None) -> None:
    """Check the listed files exist with the recorded size (and sha256 unless ``mode='size'``)."""
    if mode not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {VERIFY_MODES}, got {mode!r}")
    if mode == "none":
        return
    # Every file the runtime will open must be one the manifest vouches for.
    # (a variant rejected by its accuracy gate has no file: "file": null)
    used = [v.file for v in spec.variants.values() if v.file] + [g.file for g in spec.fused.values()] + \
        ([spec.tokenizer_file] if spec.tokenizer_file else [])
    for name in used:
        if name not in spec.files:
            raise BundleError(f"{bundle_dir}: {name!r} is used by the manifest but not listed in its files "
                              "with a sha256; the manifest is damaged", file=name)
    for name, entry in spec.files.items():
        if only is not None and name not in only:
            continue
        path = bundle_file(bundle_dir, name)
        if not path.is_file():
            raise BundleError(f"bundle file {name} is missing from {bundle_dir}", file=name)
        size = path.stat().st_size
        if size != entry.size:
            raise BundleError(f"bundle file {name} has {size} bytes, the manifest says {entry.size} "
                              "(truncated or replaced)", file=name)
        if mode == "sha256" and sha256_file(path) != entry.sha256:
            raise BundleError(f"bundle file {name} does not match its sha256 in the manifest (altered)", file=name)


def load_spec(bundle_dir: str | os.PathLike, verify: str = "sha256") -> EnsembleSpec:
    """Read the manifest and check the bundle's files.

    ``verify="sha256"`` (default) hashes every listed file: about 1 s per GB. ``"size"`` only
    compares sizes (catches truncation and missing files, not same-size edits) for fast
    start-up of a bundle already checked once; ``"none"`` skips the files entirely.

    (Not run by the doctests: it needs a bundle on disk.)

    >>> spec = load_spec("bundles/minilm", verify="size")   # doctest: +SKIP
    """
    spec = read_spec(bundle_dir)
    verify_files(bundle_dir, spec, verify)
    return spec


def file_entries(bundle_dir: str | os.PathLike) -> dict[str, FileEntry]:
    """Size and sha256 of every file in the bundle except the manifest (recursively)."""
    root = Path(bundle_dir)
    entries = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        name = path.relative_to(root).as_posix()
        if name != MANIFEST_NAME:
            entries[name] = FileEntry(size=path.stat().st_size, sha256=sha256_file(path))
    return entries


def write_manifest(bundle_dir: str | os.PathLike, spec: EnsembleSpec) -> EnsembleSpec:
    """Record every file's hash in ``spec`` and write ``ensemble.json`` (via a temporary file)."""
    spec = spec.replace(files=file_entries(bundle_dir))
    target = Path(bundle_dir) / MANIFEST_NAME
    tmp = target.with_name(f".{MANIFEST_NAME}.tmp")
    tmp.write_text(spec.to_json(), encoding="utf-8")
    os.replace(tmp, target)
    return spec


_STAGING, _OLD = "staging", "old"
#: the errors of a write that found no room: disk full, quota exceeded, file too large, read-only
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _stale(parent: Path, name: str, kind: str) -> list[Path]:
    """Hidden ``.NAME.KIND-PID-*`` directories beside the target whose process is gone."""
    stale = []
    for path in parent.glob(f".{name}.{kind}-*"):
        pid = path.name[len(f".{name}.{kind}-"):].split("-", 1)[0]
        if path.is_dir() and pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            stale.append(path)
    return stale


def clean_stale(target: str | os.PathLike) -> list[Path]:
    """Remove what a killed export left beside ``target``; restore a bundle it had moved aside.

    An export that is killed (SIGKILL, power loss) cannot clean up: it may leave a hidden
    ``.NAME.staging-PID-*`` directory, or — killed between the two renames that replace a
    bundle — the previous bundle inside ``.NAME.old-PID-*`` with nothing at ``NAME``. The
    directory names carry the exporting process id, so only those of dead processes are
    touched. Returns the paths removed or restored.
    """
    target = Path(target).absolute()
    done = []
    for old in _stale(target.parent, target.name, _OLD):
        kept = old / target.name
        if kept.is_dir() and not target.exists():
            os.replace(kept, target)
            done.append(target)
        shutil.rmtree(old, ignore_errors=True)
        done.append(old)
    for staging in _stale(target.parent, target.name, _STAGING):
        shutil.rmtree(staging, ignore_errors=True)
        done.append(staging)
    return done


def check_target(target: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse an existing target unless ``overwrite``; call early to fail before slow work.

    Cleans what a killed earlier export left first (:func:`clean_stale`).
    """
    target = Path(target).absolute()
    if target.parent.is_dir():
        clean_stale(target)
    if target.exists() and not overwrite:
        raise BundleError(f"{target} already exists; pass `overwrite=True` to replace it")
    if target.exists() and not target.is_dir():
        raise BundleError(f"{target} exists and is not a directory")
    return target


@contextlib.contextmanager
def staged_bundle(target: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging directory that becomes ``target`` only if the block succeeds.

    The staging directory sits beside the target (same filesystem, so the final rename is
    atomic) and is removed on any error or interruption. An existing target is replaced
    only with ``overwrite=True``, and is left untouched if the block fails. Leftovers of a
    killed earlier export are cleaned first (:func:`check_target`).

    (Not run by the doctests: it needs a bundle on disk.)

    >>> with staged_bundle("bundles/minilm") as tmp:      # doctest: +SKIP
    ...     (tmp / "ensemble.json").write_text("{}")
    """
    target = check_target(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}.{{}}-{os.getpid()}-"
    staging = Path(tempfile.mkdtemp(prefix=prefix.format(_STAGING), dir=target.parent))
    try:
        yield staging
        staging.chmod(0o755)  # mkdtemp makes it private; a bundle is shared like any directory
        if target.exists():
            # Two renames: a kill between them leaves the old bundle in `old`, which
            # clean_stale puts back on the next export.
            old = Path(tempfile.mkdtemp(prefix=prefix.format(_OLD), dir=target.parent))
            os.replace(target, old / target.name)
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    except OSError as exc:
        if exc.errno in _DISK_FULL and not isinstance(exc, EnsrmError):
            raise OutputError(target, exc) from exc  # names the bundle, not a file in the staging directory
        raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
