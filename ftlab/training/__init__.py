"""Training: the loop, its metrics, optimizer and schedule, checkpoints. Imports neither Optuna nor MLflow."""
