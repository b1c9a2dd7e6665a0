"""Split an OpenRLHF ``/get_reward`` query (prompt and response in one text) into the pair to score.

OpenRLHF sends ``query[i]`` = the decoded prompt and response tokens, and ``prompts[i]`` = the
prompt as the dataset gave it. The two agree except in two ways a trainer produces:

- the trainer **truncated the prompt** to fit its length budget; both OpenRLHF client
  generations keep the prompt's *last* tokens (``prompt_token_ids[-max_prompt_length:]``), so
  the query starts with a suffix of the prompt;
- decoding with ``skip_special_tokens=False`` may put a few characters before the prompt (a
  BOS token's text such as ``<s>`` or ``<|begin_of_text|>``).

The rule (:func:`split_query`): find the longest suffix of the prompt — the whole prompt
first — that the query contains starting within its first :data:`LEAD` characters; the
prompt side is the query up to the end of that match, the response is the rest. A suffix
shorter than :data:`MIN_SUFFIX` characters (and shorter than the prompt) does not count, so
that a few common characters never pass for a prompt. When nothing matches, the whole query
is the response to an empty prompt (and the server counts it, see ``ensrm_unsplit_queries``).
"""

from __future__ import annotations

#: Characters a decoded query may carry before the prompt (special tokens' text).
LEAD = 64
#: Shortest prompt suffix accepted as the truncated prompt (unless the prompt itself is shorter).
MIN_SUFFIX = 16


def split_query(query: str, prompt: str) -> tuple[str, str] | None:
    """``(prompt_part, response)`` of ``query``, or ``None`` when the prompt is not found in it.

    >>> split_query("Hi there. Hello!", "Hi there. ")
    ('Hi there. ', 'Hello!')
    >>> split_query("<s>Hi there. Hello!", "Hi there. ")          # a BOS token's text first
    ('<s>Hi there. ', 'Hello!')
    >>> split_query("the third line of a long prompt. Answer: yes", "First line. Second line. "
    ...             "the third line of a long prompt. ")         # truncated from the left
    ('the third line of a long prompt. ', 'Answer: yes')
    >>> split_query("something else entirely", "a prompt that is not there") is None
    True
    """
    if not prompt:
        return None
    if query.startswith(prompt):  # the common case, in C
        return prompt, query[len(prompt):]
    at = query.find(prompt, 0, LEAD + len(prompt))
    if at >= 0:
        end = at + len(prompt)
        return query[:end], query[end:]
    best = None  # (suffix length, start in query)
    for start in range(min(LEAD, len(query)) + 1):
        head = query[start:start + MIN_SUFFIX]
        if len(head) < MIN_SUFFIX:
            break
        # earliest place the head occurs in the prompt = the longest candidate suffix
        i = prompt.find(head)
        while i >= 0:
            length = len(prompt) - i
            if best is not None and length <= best[0]:
                break
            if query.startswith(prompt[i:], start):
                best = (length, start)
                break
            i = prompt.find(head, i + 1)
    if best is None:
        return None
    end = best[1] + best[0]
    return query[:end], query[end:]
