"""Sweeps: the Optuna study around a baseline, its trial processes, its view and its report."""
