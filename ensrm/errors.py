"""The exceptions ensrm raises: one base class, one subclass per kind of problem.

Every message names what is wrong, what was expected and what was found, so that the
host process (a training loop, a filter service) can log it and carry on.
"""

from __future__ import annotations


class EnsrmError(Exception):
    """Base class of every error ensrm raises on purpose."""


def _rebuild(cls, args, kwargs):
    return cls(*args, **kwargs)


class MissingDependencyError(EnsrmError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class InputError(EnsrmError, ValueError):
    """Arrays or texts given to the scorer are not what the bundle accepts.

    ``field`` names the argument (``"input_ids"``, ``"attention_mask"``, ``"prompts[3]"``),
    ``expected`` and ``actual`` say what was wanted and found, so a host can log them apart;
    all three are ``None`` when the message alone describes the problem.

    >>> err = InputError("input_ids must be 2-D [batch, seq], got shape (3,)",
    ...                  field="input_ids", expected="2-D [batch, seq]", actual="shape (3,)")
    >>> err.field, isinstance(err, ValueError)
    ('input_ids', True)
    """

    def __init__(self, message: str, *, field: str | None = None, expected: object = None,
                 actual: object = None):
        super().__init__(message)
        self.field = field
        self.expected = expected
        self.actual = actual

    def __reduce__(self):
        # keep the class and every field across pickling (Ray hands a worker's error to the driver)
        return _rebuild, (type(self), self.args, {"field": self.field, "expected": self.expected,
                                                  "actual": self.actual})


class InputFileError(EnsrmError, ValueError):
    """A JSONL input file has a malformed line; carries the path and 1-based line number."""

    def __init__(self, path: str, line: int, problem: str):
        self.path = str(path)
        self.line = line
        self.problem = problem
        super().__init__(f"{self.path}:{line}: {problem}")

    def __reduce__(self):
        return type(self), (self.path, self.line, self.problem)


class OutputError(EnsrmError, OSError):
    """A file could not be written (disk full, permission, quota); names the file. Nothing was left
    half-written under the final name: the temporary file or staging directory was removed.

    >>> import errno
    >>> err = OutputError("out.jsonl", OSError(errno.ENOSPC, "No space left on device"))
    >>> str(err), err.errno == errno.ENOSPC
    ('cannot write out.jsonl: No space left on device; nothing was written under that name', True)
    """

    def __init__(self, path, cause: OSError):
        self.path = str(path)
        super().__init__(cause.errno, f"cannot write {self.path}: {cause.strerror or cause}; "
                                      "nothing was written under that name")

    def __str__(self) -> str:
        return self.strerror

    def __reduce__(self):
        return _rebuild_output_error, (self.path, self.errno, self.strerror)


def _rebuild_output_error(path, errno_, message):
    err = OutputError.__new__(OutputError)
    OSError.__init__(err, errno_, message)
    err.path = path
    return err


class JobError(EnsrmError):
    """A distributed scoring job failed for a reason outside its data: workers died more often than
    the retry settings allow, a node was lost. Nothing was written under the output's name."""


class BundleError(EnsrmError):
    """A bundle directory is missing, damaged, or from an unsupported format version.

    ``file`` is the bundle file at fault (as the manifest names it) when there is one.
    """

    def __init__(self, message: str, *, file: str | None = None):
        super().__init__(message)
        self.file = file


class ExportError(EnsrmError):
    """A source model could not be exported, or the exported graph failed verification."""


class ProviderError(EnsrmError):
    """An execution provider was requested that this onnxruntime build does not have."""


class TrainingError(EnsrmError):
    """A reward model could not be trained: unsupported base model, bad settings, or a stale resume state."""
