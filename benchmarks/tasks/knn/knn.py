"""Weighted k-nearest-neighbour classification on frozen features (DINO's ``eval_knn.py``, Caron et al. 2104.14294;
Wu et al. 2018): each test image's k most cosine-similar training images vote for their class with weight
exp(similarity / T); the class with the most weight wins. Features are L2-normalised, so the similarity is
a dot product."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def knn_votes(
    test: torch.Tensor,
    train: torch.Tensor,
    train_labels: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 256,
) -> torch.Tensor:
    """test: [M, D], train: [N, D] (both L2-normalised), train_labels: [N] -> class votes [M, num_classes].

    Test rows go in chunks so that the [chunk, N] similarity matrix, not [M, N], is held at once."""
    k = min(k, train.shape[0])
    votes = []
    for start in range(0, test.shape[0], chunk):
        similarity = test[start : start + chunk] @ train.T  # [B, N]
        top, index = similarity.topk(k, dim=1)  # [B, k]
        weights = (top / temperature).exp()
        neighbours = train_labels[index]  # [B, k]
        out = torch.zeros(top.shape[0], num_classes, device=test.device, dtype=weights.dtype)
        votes.append(out.scatter_add_(1, neighbours, weights))
    return torch.cat(votes)


def knn_accuracy(votes: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> list[float]:
    """Top-k accuracy in percent of the votes [M, C] against labels [M]."""
    top = votes.topk(min(max(ks), votes.shape[1]), dim=1).indices
    hit = top == labels[:, None]
    return [100.0 * int(hit[:, :k].any(dim=1).sum()) / len(labels) for k in ks]


def normalized(features: torch.Tensor) -> torch.Tensor:
    return F.normalize(features.float(), dim=1)
