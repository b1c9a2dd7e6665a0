"""Synthetic preference data (stdlib + numpy): pairs, candidate pools and reference records."""

from ensrm.data.synthetic import ASPECTS, generate_candidates, generate_preferences, generate_references, gold_score

__all__ = ["ASPECTS", "generate_candidates", "generate_preferences", "generate_references", "gold_score"]
