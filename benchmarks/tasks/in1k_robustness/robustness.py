"""MAE Table 13's robustness numbers of an IN-1K classifier: top-1 on ImageNet-A / -R / -Sketch, mCE on ImageNet-C.

* ImageNet-A and -R hold 200 of the 1000 classes: the prediction is the arg-max over those 200 logits
  only, as the datasets' own evaluation scripts do (``eval.py`` of hendrycks/natural-adv-examples and
  hendrycks/imagenet-r: ``output[:, indices_in_1k]``). Sketch is 1000-way.
* ImageNet-C: the corruption error of corruption c is its top-1 error summed over the 5 severities
  divided by AlexNet's, and mCE is the mean over the 15 corruptions, in percent (Hendrycks & Dietterich,
  ICLR 2019, Sec. 4). AlexNet's errors (mean over the severities) are in the config
  (``robustness.alexnet_errors``, the values of hendrycks/robustness ``ImageNet-C/test.py``); the paper
  does not say which normalisation MAE used: this is the one of the benchmark's authors.
"""

from __future__ import annotations

import torch


def masked_prediction(logits: torch.Tensor, indices: torch.Tensor | None) -> torch.Tensor:
    """logits: [N, 1000] -> the predicted IN-1K class [N], the arg-max over ``indices`` only (None: all)."""
    if indices is None:
        return logits.argmax(dim=1)
    return indices[logits[:, indices].argmax(dim=1)]


def corruption_errors(errors: dict[tuple[str, int], float], alexnet: dict[str, float]) -> dict[str, float]:
    """Top-1 errors in [0, 1] per (corruption, severity) -> CE per corruption in percent (AlexNet = 100).

    AlexNet's numbers are its error averaged over the severities, so sum_s E_s / sum_s E_s^AlexNet is
    mean_s E_s / alexnet[c]."""
    by_corruption: dict[str, list[float]] = {}
    for (corruption, _), error in errors.items():
        by_corruption.setdefault(corruption, []).append(error)
    return {c: 100.0 * sum(e) / len(e) / alexnet[c] for c, e in by_corruption.items()}


def mean_corruption_error(ce: dict[str, float]) -> float:
    return sum(ce.values()) / len(ce)
