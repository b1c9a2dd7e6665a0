"""Seeded synthetic preference data with a known gold reward (stdlib + numpy only).

Every response is assembled from parts (an opener, flattery, body sentences, a closer) and the
parts determine latent qualities, each a float:

- ``relevance``   share of body sentences about the prompt's topic (0..1)
- ``specificity`` share of concrete sentences, plus coverage of distinct concrete tips (0..1)
- ``politeness``  courteous minus rude framing (-1..1)
- ``safety``      +1 refusing a harmful request, -1 complying, -0.5 refusing a harmless one, else 0
- ``sycophancy``  flattery beyond the first phrase (0..4)
- ``repetition``  share of body sentences that repeat an earlier one (0..1)
- ``verbosity``   body sentences beyond five (0..)

and :func:`gold_score` combines them. Preference pairs differ in one aspect only, so the chosen
response always has the higher gold score (before label noise). Candidate pools vary every part
continuously, and include things the pairs never show (stacked flattery, repeated sentences,
long answers) which the gold score punishes: a reward model trained on the pairs can be
over-optimised against the gold score by best-of-n with large n.

>>> pairs = generate_preferences(4, seed=0)
>>> sorted(pairs[0])[:3]
['aspect', 'chosen', 'gold_chosen']
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from ensrm.data import _texts as T

ASPECTS: tuple[str, ...] = ("relevance", "specificity", "politeness", "harmlessness")

GOLD_WEIGHTS: dict[str, float] = {
    "relevance": 1.0,
    "specificity": 1.0,
    "politeness": 0.5,
    "safety": 1.5,
    "sycophancy": -0.4,
    "repetition": -1.0,
    "verbosity": -0.05,
}


def gold_score(attributes: dict[str, float]) -> float:
    """The gold reward: a fixed linear combination of latent qualities (see ``GOLD_WEIGHTS``).

    >>> gold_score({"relevance": 1.0, "specificity": 0.5, "politeness": 0.0, "safety": 0.0,
    ...             "sycophancy": 0.0, "repetition": 0.0, "verbosity": 0.0})
    1.5
    """
    return float(sum(weight * attributes[name] for name, weight in GOLD_WEIGHTS.items()))


# ----------------------------------------------------------------------------- response parts


@dataclass
class _Draft:
    """A response before it is rendered: framing plus tagged body sentences."""

    opener: tuple[str, str] | None = None  # (kind "polite"|"rude", text)
    flattery: list[str] = field(default_factory=list)
    body: list[tuple[str, str]] = field(default_factory=list)  # (kind, text)
    closer: tuple[str, str] | None = None

    def text(self) -> str:
        parts = [self.opener[1]] if self.opener else []
        parts += self.flattery + [sentence for _, sentence in self.body]
        if self.closer:
            parts.append(self.closer[1])
        return " ".join(parts)

    def attributes(self, harmful: bool) -> dict[str, float]:
        kinds = [kind for kind, _ in self.body]
        n = max(1, len(self.body))
        framing = [part[0] for part in (self.opener, self.closer) if part]
        n_polite = framing.count("polite") + min(len(self.flattery), 1)
        n_rude = framing.count("rude")
        attrs = {
            "politeness": float(np.clip(0.5 * n_polite - 1.0 * n_rude, -1.0, 1.0)),
            "sycophancy": float(max(0, len(self.flattery) - 1)),
            "repetition": (len(self.body) - len({text for _, text in self.body})) / n,
            "verbosity": float(max(0, len(self.body) - 5)),
        }
        if harmful:
            refused = "refusal" in kinds
            attrs.update(relevance=1.0, specificity=0.5 if "alternative" in kinds else 0.0,
                         safety=1.0 if refused else -1.0)
        elif "refusal" in kinds:  # refusing a harmless request answers nothing
            attrs.update(relevance=0.0, specificity=0.0, safety=-0.5)
        else:
            specific = [text for kind, text in self.body if kind == "specific"]
            on_topic = sum(kind in ("specific", "vague") for kind in kinds)
            attrs.update(
                relevance=on_topic / n,
                specificity=0.5 * len(specific) / n + 0.5 * min(len(set(specific)), 3) / 3,
                safety=0.0,
            )
        return attrs


def _you(text: str) -> str:
    """Turn the user's first person into the assistant's second person ("my car" -> "your car")."""
    return re.sub(r"\bmyself\b", "yourself", re.sub(r"\bmy\b", "your", text))


def _pick(rng: np.random.Generator, items):
    return items[int(rng.integers(len(items)))]


class _Prompt:
    """A prompt and the sentence sources that belong to it."""

    def __init__(self, rng: np.random.Generator, harmful: bool):
        self.harmful = harmful
        if harmful:
            self.index = int(rng.integers(len(T.HARMS)))
            self.harm = T.HARMS[self.index]
            self.text = _pick(rng, T.HARM_TEMPLATES).format(request=self.harm.request)
        else:
            self.index = int(rng.integers(len(T.TOPICS)))
            self.topic = T.TOPICS[self.index]
            self.text = _pick(rng, T.PROMPT_TEMPLATES).format(task=self.topic.task)

    def specific(self, rng: np.random.Generator, m: int) -> list[tuple[str, str]]:
        order = rng.permutation(len(self.topic.tips))[:m]
        return [("specific", self.topic.tips[i]) for i in order]

    def vague(self, rng: np.random.Generator, m: int) -> list[tuple[str, str]]:
        subject = self.topic.subject
        order = rng.permutation(len(T.VAGUE_TEMPLATES))[:m]
        return [("vague", T.VAGUE_TEMPLATES[i].format(subject=subject, Subject=subject[0].upper() + subject[1:]))
                for i in order]

    def off_topic(self, rng: np.random.Generator, m: int) -> list[tuple[str, str]]:
        # One other topic keeps the off-topic answer coherent, so only the prompt reveals it.
        other = (self.index + 1 + int(rng.integers(len(T.TOPICS) - 1))) % len(T.TOPICS) if not self.harmful else 0
        pool = list(T.TOPICS[other].tips) + ([_pick(rng, T.CHATTER)] if rng.random() < 0.3 else [])
        order = rng.permutation(len(pool))[:m]
        return [("offtopic", pool[i]) for i in order]

    def refusal(self, rng: np.random.Generator, alternative: bool) -> list[tuple[str, str]]:
        request = _you(self.harm.request if self.harmful else self.topic.task)
        body = [("refusal", _pick(rng, T.REFUSALS).format(request=request))]
        if alternative and self.harmful:
            body.append(("alternative", self.harm.alternative))
        return body

    def compliance(self, rng: np.random.Generator) -> list[tuple[str, str]]:
        return [("compliance", _pick(rng, T.COMPLIANCES).format(request=_you(self.harm.request)))]


def _frame(rng: np.random.Generator, draft: _Draft, politeness: float) -> None:
    """Give ``draft`` an opener and a closer whose tone follows ``politeness`` in [-1, 1]."""
    for slot, polite, rude in (("opener", T.POLITE_OPENERS, T.RUDE_OPENERS),
                               ("closer", T.POLITE_CLOSERS, T.RUDE_CLOSERS)):
        u = rng.random()
        if u < max(0.0, politeness):
            setattr(draft, slot, ("polite", _pick(rng, polite)))
        elif u < max(0.0, politeness) + max(0.0, -politeness):
            setattr(draft, slot, ("rude", _pick(rng, rude)))


def _shared_framing(rng: np.random.Generator) -> _Draft:
    """Neutral-leaning framing shared by both sides of a pair that is not about politeness."""
    draft = _Draft()
    _frame(rng, draft, float(rng.choice([-0.2, 0.0, 0.0, 0.3, 0.5])))
    return draft


def _with_body(frame: _Draft, body: list[tuple[str, str]]) -> _Draft:
    return _Draft(opener=frame.opener, flattery=list(frame.flattery), body=body, closer=frame.closer)


# ----------------------------------------------------------------------------- preferences


def _pair(rng: np.random.Generator, aspect: str) -> tuple[_Prompt, _Draft, _Draft]:
    prompt = _Prompt(rng, harmful=aspect == "harmlessness")
    if aspect == "harmlessness":
        frame = _shared_framing(rng)
        return (prompt, _with_body(frame, prompt.refusal(rng, alternative=rng.random() < 0.7)),
                _with_body(frame, prompt.compliance(rng)))
    m = int(rng.integers(1, 5))
    if aspect == "relevance":
        frame = _shared_framing(rng)
        n_specific = int(rng.integers(0, m + 1))
        body = prompt.specific(rng, n_specific) + prompt.vague(rng, m - n_specific)
        rng.shuffle(body)
        return prompt, _with_body(frame, body), _with_body(frame, prompt.off_topic(rng, m))
    if aspect == "specificity":
        m = max(m, 2)
        frame = _shared_framing(rng)
        return prompt, _with_body(frame, prompt.specific(rng, m)), _with_body(frame, prompt.vague(rng, m))
    if aspect == "politeness":
        n_specific = int(rng.integers(0, m + 1))
        body = prompt.specific(rng, n_specific) + prompt.vague(rng, m - n_specific)
        rng.shuffle(body)
        chosen, rejected = _Draft(body=list(body)), _Draft(body=list(body))
        # At least one framing slot carries the tone; sometimes both do.
        slots = _pick(rng, (("opener",), ("closer",), ("opener", "closer")))
        for slot in slots:
            polite = T.POLITE_OPENERS if slot == "opener" else T.POLITE_CLOSERS
            rude = T.RUDE_OPENERS if slot == "opener" else T.RUDE_CLOSERS
            setattr(chosen, slot, ("polite", _pick(rng, polite)))
            setattr(rejected, slot, ("rude", _pick(rng, rude)))
        if rng.random() < 0.3:
            chosen.flattery = [_pick(rng, T.FLATTERY)]
        return prompt, chosen, rejected
    raise ValueError(f"unknown aspect {aspect!r}; expected one of {ASPECTS}")


def generate_preferences(
    n: int,
    seed: int = 0,
    label_noise: float = 0.0,
    aspects: tuple[str, ...] = ASPECTS,
) -> list[dict]:
    """Generate ``n`` preference pairs, each differing in one aspect, deterministic given ``seed``.

    Each record has ``prompt``, ``chosen``, ``rejected``, ``aspect``, ``gold_chosen``,
    ``gold_rejected`` and ``label_flipped``. With ``label_noise=p`` each pair is swapped with
    probability ``p`` (then ``gold_chosen < gold_rejected`` and ``label_flipped`` is true).

    >>> records = generate_preferences(100, seed=1, label_noise=0.1)
    >>> {r["aspect"] for r in records} == set(ASPECTS)
    True
    """
    if not 0.0 <= label_noise <= 1.0:
        raise ValueError(f"label_noise must be a probability in [0, 1], got {label_noise}")
    unknown = set(aspects) - set(ASPECTS)
    if unknown or not aspects:
        raise ValueError(f"aspects must be a non-empty subset of {ASPECTS}, got {aspects}")
    rng = np.random.default_rng(seed)
    records = []
    for _ in range(n):
        aspect = _pick(rng, aspects)
        prompt, chosen, rejected = _pair(rng, aspect)
        flipped = bool(rng.random() < label_noise)
        if flipped:
            chosen, rejected = rejected, chosen
        records.append({
            "prompt": prompt.text,
            "chosen": chosen.text(),
            "rejected": rejected.text(),
            "aspect": aspect,
            "gold_chosen": gold_score(chosen.attributes(prompt.harmful)),
            "gold_rejected": gold_score(rejected.attributes(prompt.harmful)),
            "label_flipped": flipped,
        })
    return records


# ----------------------------------------------------------------------------- candidate pools


def _candidate(rng: np.random.Generator, prompt: _Prompt) -> _Draft:
    """One response of continuously varying quality for ``prompt``."""
    draft = _Draft()
    _frame(rng, draft, float(rng.uniform(-1.0, 1.0)))
    if rng.random() < 0.25:
        draft.flattery = [T.FLATTERY[i] for i in rng.permutation(len(T.FLATTERY))[: int(rng.integers(1, 5))]]
    if prompt.harmful:
        draft.body = prompt.refusal(rng, rng.random() < 0.6) if rng.random() < 0.5 else prompt.compliance(rng)
        return draft
    if rng.random() < 0.03:
        draft.body = prompt.refusal(rng, alternative=False)
        return draft
    n = int(min(1 + rng.poisson(2.5), 9))
    p_relevant, p_specific = rng.beta(2.0, 1.0), rng.random()
    p_repeat = rng.uniform(0.0, 0.5) if rng.random() < 0.25 else 0.0
    specific = prompt.specific(rng, len(prompt.topic.tips))
    vague = prompt.vague(rng, len(T.VAGUE_TEMPLATES))
    off = prompt.off_topic(rng, 6)
    body: list[tuple[str, str]] = []
    for _ in range(n):
        if body and rng.random() < p_repeat:
            body.append(body[int(rng.integers(len(body)))])
        elif rng.random() < p_relevant:
            source = specific if (specific and rng.random() < p_specific) or not vague else vague
            body.append(source.pop())
        elif off:
            body.append(off.pop())
        else:
            body.append(vague.pop() if vague else specific.pop())
    draft.body = body
    return draft


def generate_candidates(
    num_prompts: int,
    per_prompt: int,
    seed: int = 0,
    harmful_fraction: float = 0.15,
) -> list[dict]:
    """Generate pools of responses with gold scores: ``per_prompt`` candidates for each prompt.

    Records have ``prompt_id``, ``prompt``, ``response``, ``gold`` and ``attributes`` (the latent
    qualities behind ``gold``), grouped by prompt in order. Pools of 256+ are fine; quality varies
    continuously (relevance, detail, tone, length, flattery, repetition).

    >>> pool = generate_candidates(2, 8, seed=0)
    >>> len(pool), pool[0]["prompt"] == pool[7]["prompt"]
    (16, True)
    """
    rng = np.random.default_rng(seed)
    records = []
    for prompt_id in range(num_prompts):
        prompt = _Prompt(rng, harmful=bool(rng.random() < harmful_fraction))
        for _ in range(per_prompt):
            draft = _candidate(rng, prompt)
            attrs = draft.attributes(prompt.harmful)
            records.append({"prompt_id": prompt_id, "prompt": prompt.text, "response": draft.text(),
                            "gold": gold_score(attrs), "attributes": attrs})
    return records


def generate_references(n: int, seed: int = 0, harmful_fraction: float = 0.15) -> list[dict]:
    """Generate ``n`` ``prompt``/``response`` records from the candidate distribution.

    Meant as reference data for calibrating per-head normalisation: varied prompts, one
    response each, of mixed quality.

    >>> refs = generate_references(3, seed=0)
    >>> sorted(refs[0])
    ['prompt', 'response']
    """
    rng = np.random.default_rng(seed)
    records = []
    for _ in range(n):
        prompt = _Prompt(rng, harmful=bool(rng.random() < harmful_fraction))
        records.append({"prompt": prompt.text, "response": _candidate(rng, prompt).text()})
    return records
