"""Names of the user attributes ftlab stores on Optuna studies and trials (shared by the runner, reaper and readers)."""

BASELINE_ATTR = "baseline"  # trial: the enqueued baseline recipe
RUN_ID_ATTR = "mlflow_run_id"  # trial: its MLflow child run
PARENT_RUN_ATTR = "mlflow_parent_run_id"  # study: the sweep's MLflow parent run
FAIL_REASON_ATTR = "fail_reason"  # trial: why it failed
PRUNE_REASON_ATTR = "prune_reason"  # trial: why it was pruned
REPORTED_ATTR = "reported_finished_trials"  # study: finished trials when the last report was written
