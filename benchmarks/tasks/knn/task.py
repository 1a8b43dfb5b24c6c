"""The ``knn`` task: weighted k-NN top-1 / top-5 on the frozen features of a pretrained ViT (DINO's protocol:
20 neighbours, T = 0.07, cosine on L2-normalised features), on ImageNet or any dataset of ``image_sets.py``
(``data.image_set``). Nothing trains: the backbone is loaded as for fine-tuning and evaluated as it is,
a cheap signal to track pretraining (VISSL and solo-learn report it too)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from ...common.classification import collate_classification, eval_transform, normalize
from ...common.classification_task import ClassificationTask
from ...engine.evaluation import Evaluator
from ...interface import Metric
from .knn import knn_accuracy, knn_votes, normalized

log = logging.getLogger("bench")


class FrozenFeatures(nn.Module):
    """The encoder's image feature [N, D]: the cls token (``pool='cls'``) or the mean of the patch tokens,
    both after the pretrained final norm."""

    def __init__(self, encoder, pool: str):
        super().__init__()
        if pool not in ("cls", "avg"):
            raise ValueError(f"knn.feature must be cls or avg, got {pool!r}")
        self.encoder, self.pool = encoder, pool
        encoder.requires_grad_(False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.encoder(x)  # [N, prefix + L, D]
        return tokens[:, 0] if self.pool == "cls" else tokens[:, self.encoder.num_prefix_tokens :].mean(dim=1)


class KNNEvaluator(Evaluator):
    """Features of the training split, then of the test split, in one pass; rank 0 votes."""

    collate = staticmethod(collate_classification)

    def __init__(self, cfg, train_set, test_set):
        self.num_train, self.num_classes = len(train_set), len(train_set.classes)
        self.dataset = torch.utils.data.ConcatDataset([train_set, test_set])
        self.batch_size, self.knn = cfg.test.images_per_batch, cfg.knn
        self.features: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []

    def process(self, model, images, labels) -> None:
        device = next(model.parameters()).device
        self.features.append(normalized(model.features(normalize(images.to(device)))).cpu())
        self.labels.append(labels)

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat(self.features), torch.cat(self.labels)

    def summarize(self, results: list[tuple[torch.Tensor, torch.Tensor]], out_dir: Path) -> dict:
        features, labels = in_dataset_order(results)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        train, test = features[: self.num_train].to(device), features[self.num_train :].to(device)
        votes = knn_votes(
            test, train, labels[: self.num_train].to(device), self.num_classes, self.knn.k, self.knn.temperature
        )
        top1, top5 = knn_accuracy(votes, labels[self.num_train :].to(device))
        log.info("k-NN (k=%d, T=%g): top-1 %.3f  top-5 %.3f", self.knn.k, self.knn.temperature, top1, top5)
        return {"knn_top1": top1, "knn_top5": top5}


def in_dataset_order(results: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank r of W evaluated items r, r + W, r + 2W, ... (the evaluation loop's shards): interleave them back."""
    world = len(results)
    total = sum(len(f) for f, _ in results)
    features = torch.empty(total, results[0][0].shape[1])
    labels = torch.empty(total, dtype=torch.int64)
    for rank, (f, y) in enumerate(results):
        features[rank::world], labels[rank::world] = f, y
    return features, labels


class KNNClassification(ClassificationTask):
    name = "knn"
    default_protocol = "knn"
    description = "weighted k-NN (k 20, T 0.07) on frozen features, ImageNet or a transfer dataset, top-1 / top-5"
    pool = "cls"
    trains = False
    metrics = (Metric("knn_top1", "k-NN top-1"), Metric("knn_top5", "k-NN top-5", headline=False))

    def build_model(self, cfg, encoder, root=None) -> FrozenFeatures:
        return FrozenFeatures(encoder, cfg.knn.feature)

    def evaluator(self, cfg, root: Path) -> KNNEvaluator:
        images, view = self.image_set(cfg), eval_transform(cfg.data.input_size)
        train = images.dataset(root, cfg.data.train_split, view)
        return KNNEvaluator(cfg, train, images.dataset(root, cfg.data.test_split, view, train.classes))

    def settings(self, cfg) -> dict:
        return {"image_set": cfg.data.image_set}
