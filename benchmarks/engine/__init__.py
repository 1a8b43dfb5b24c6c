"""The training engine shared by every task: a step and hooks (``trainer``, ``hooks``), optimizers,
schedules, precision, checkpoints, logs, the resumable data stream, the one evaluation loop, and the
distributed helpers."""
