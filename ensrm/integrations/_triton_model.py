"""Triton python-backend model of the tokenize step: (prompt, response) strings -> token tensors.

``ensrm triton-repo`` copies this file as ``<name>_tokenize/1/model.py``. It runs only inside
Triton's python backend (which provides ``triton_python_backend_utils``) and is a thin adapter:
the encoding, truncation and padding are ensrm's own (:class:`ensrm.integrations.triton.PairTokenizer`),
so the python backend's environment needs ``pip install ensrm`` (the version that wrote the
repository, recorded in the ``ensrm_version`` parameter of ``config.pbtxt``).
"""

import triton_python_backend_utils as pb_utils

try:
    from ensrm.errors import EnsrmError
    from ensrm.integrations.triton import TEXT_INPUTS, PairTokenizer
except ImportError as exc:  # the usual set-up mistake: say what to install, where
    raise ImportError(f"the ensrm tokenize model needs ensrm in the Triton python backend's environment "
                      f"(pip install ensrm): {exc}") from exc


class TritonPythonModel:
    def initialize(self, args):
        self.tokenizer = PairTokenizer.from_triton_args(args)

    def execute(self, requests):
        # One response per request, in order; a bad request gets its own error, the others their tensors.
        responses = []
        for request in requests:
            try:
                texts = [pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in TEXT_INPUTS]
                feeds = self.tokenizer(*texts)  # {name: [batch, seq] int64}
            except EnsrmError as exc:
                error = pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                continue
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(name, array) for name, array in feeds.items()]))
        return responses
