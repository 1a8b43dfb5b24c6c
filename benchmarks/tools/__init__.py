"""The ``python -m benchmarks.tools.<name>`` programs: ``parity`` (stage-by-stage against the reference
code's fixtures), ``speed`` (against detectron2 / mmseg timings, MAE's encoder speed-up), ``gpu_check``
(what only a GPU can show) and ``miniature`` (the CPU miniature of MAE Tables 4 / 5)."""
