"""Record files for calibration tests: varied (prompt, response) pairs, built from fixed parts."""

from __future__ import annotations

import itertools

import pytest

from ensrm.calibration.gate import Gate
from ensrm.jsonl import write_records

PROMPTS = [
    "How do I bake bread at home?", "What is a tuple in Python?", "Plan a three-day hike for me.",
    "Can you help me write a polite email to my landlord?", "Why is the sky blue?",
    "Give me tips for a job interview.", "How do I fix a flat bicycle tyre?", "Summarise the French revolution.",
]
RESPONSES = [
    "Sure.", "I cannot help with that.", "Mix flour, water, salt and yeast, knead, let it rise, then bake it hot.",
    "A tuple is an ordered, immutable sequence: (1, 2) cannot be changed after it is made.",
    "Pack layers, a rain shell, a map, a headlamp and food for four days; tell someone your route.",
    "Dear landlord, the heating has not worked since Monday; could you send someone this week? Thank you.",
    "Sunlight scatters off air molecules, and blue light scatters most, so the sky looks blue.",
    "Research the company, prepare examples of your work, and ask them questions too. " * 6,
    "Remove the wheel, find the hole with soapy water, patch it, and pump the tyre back up.",
    "Great question!!! I love it. Great question!!!",
]


def make_records(n: int, offset: int = 0) -> list[dict]:
    pairs = list(itertools.product(PROMPTS, RESPONSES))
    return [{"prompt": p, "response": r} for p, r in (pairs[(offset + 7 * i) % len(pairs)] for i in range(n))]


@pytest.fixture(scope="session")
def record_files(tmp_path_factory):
    """Paths of reference (60), calibration (48) and evaluation (40) JSONL files."""
    root = tmp_path_factory.mktemp("records")
    files = {}
    for name, n, offset in (("refs", 60, 0), ("calib", 48, 3), ("eval", 40, 5)):
        files[name] = root / f"{name}.jsonl"
        write_records(files[name], make_records(n, offset))
    return files


@pytest.fixture(scope="session")
def spread_checkpoint(tmp_path_factory):
    """A tiny random BERT (4 heads) whose rewards spread out across records.

    With the usual 0.02 initialisation a tiny random encoder gives every record nearly the
    same reward (std ~1e-3), which no quantization can rank and no gate can judge; a 0.2
    initialisation spreads the rewards (std ~0.3) so int8 and fp16 rank like fp32.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig

    from tests.models import TINY, minilm_path

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    config = BertConfig(vocab_size=tokenizer.vocab_size, max_position_embeddings=128, initializer_range=0.2,
                        num_labels=4, **TINY)
    out = tmp_path_factory.mktemp("spread-bert")
    AutoModelForSequenceClassification.from_config(config).eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def spread_export(spread_checkpoint, tmp_path_factory):
    """``spread_checkpoint`` exported in fp32 with no normalisation: (bundle, progress messages)."""
    from ensrm.export.exporter import export_bundle

    out = tmp_path_factory.mktemp("spread-bundle") / "rm"
    messages = []
    export_bundle([spread_checkpoint], out, progress=messages.append)
    return out, messages


@pytest.fixture(scope="session")
def spread_bundle(spread_export):
    return spread_export[0]


#: Gates for 12-40 held-out records of a random tiny model: below the defaults, so the tests
#: check the mechanics; the default gates run on trained heads in scripts/bench_precision.py.
GATES = {"fp16": Gate(min_spearman=0.95), "int8": Gate(0.9, 0.6)}


@pytest.fixture(scope="session")
def variant_bundle(spread_checkpoint, record_files, tmp_path_factory):
    """Exported with --normalize-on refs, --precision fp16,int8 and calib: (bundle, messages)."""
    from ensrm.export.exporter import export_bundle

    out = tmp_path_factory.mktemp("variants") / "rm"
    messages = []
    export_bundle([spread_checkpoint], out, normalize_on=record_files["refs"], precisions="fp16,int8",
                  calibration=record_files["calib"], gates=GATES, progress=messages.append)
    return out, messages


