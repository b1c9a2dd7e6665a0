"""Keep Hugging Face's own chatter out of ensrm's output, which reports its own steps."""

from __future__ import annotations

import contextlib

from ensrm._optional import require


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' warnings and progress bars for the duration of the block.

    "Some weights were newly initialised" is the point when fresh heads are added, and
    transformers 5 draws a progress bar per checkpoint load.

    (Not run by the doctests: it loads transformers and a checkpoint.)

    >>> with quiet_transformers():                                   # doctest: +SKIP
    ...     model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=8)
    """
    logging = require("transformers", "export").utils.logging
    verbosity = logging.get_verbosity()
    bars = logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()
