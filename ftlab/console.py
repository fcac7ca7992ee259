"""Keep the libraries' own chatter (progress bars, INFO logs) out of ftlab's output, which has its own view."""

from __future__ import annotations

import logging
import os


def quiet_libraries() -> None:
    """Silence transformers', datasets' and MLflow's progress bars and INFO logs; warnings still show."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    for name in ("mlflow", "alembic", "optuna"):
        logging.getLogger(name).setLevel(logging.WARNING)
