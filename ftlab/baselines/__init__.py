"""Baselines: the settings and results of a published fine-tune, read from the model card Trainer wrote."""

from ftlab.baselines.card import CardBaseline, load_card, parse_card
from ftlab.baselines.registry import builtin_baselines, load_builtin, resolve_baseline

__all__ = ["CardBaseline", "builtin_baselines", "load_builtin", "load_card", "parse_card", "resolve_baseline"]
