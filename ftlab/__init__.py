"""ftlab: hyperparameter sweeps for causal-LM fine-tuning around a documented baseline, tracked in MLflow."""

__version__ = "0.1.0"
