"""Starting workers on a cluster scheduler (SLURM) and reading back what became of them.

- :mod:`ftlab.launch.slurm`: the job script (from ``docs/slurm/ftlab-workers.sbatch``) and ``sbatch``.
- :mod:`ftlab.launch.slurm_tasks`: the tasks' states (``scontrol``, else ``sacct``) beside the study's trials.
- :mod:`ftlab.sweep.cluster_task` (below the sweep, which records it): which task a worker runs in, on each trial.
"""
