"""Training: the loop and its state, metrics, optimizer and schedule, checkpoints, the out-of-memory retry and the
tests' fault injection. Imports neither Optuna nor MLflow."""
