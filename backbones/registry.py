"""The backbone zoo: registered names -> architecture, pretraining tag, official file, converter.

The entries live in ``configs/backbones.yaml``; this module only reads them and builds encoders.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from .errors import UnknownBackbone
from .vit import VisionTransformer

# configs/ is a package of its own, shipped as data in the wheel: found through the import system,
# so an installed copy finds its files as a source checkout does.
CONFIG_DIR = Path(str(files("configs")))
ZOO_FILE = CONFIG_DIR / "backbones.yaml"

# The one size vocabulary: architecture name -> the letter config files (``*_vit_b.yaml``) and the papers'
# tables (ViT-B) use.
SIZE_LETTERS = {"vit_tiny": "t", "vit_small": "s", "vit_base": "b", "vit_large": "l", "vit_huge": "h"}

# The pretraining tags, in the order of the papers' table rows (scratch first, MAE last).
PRETRAIN_TAGS = (
    "random",
    "supervised_in1k",
    "supervised_in21k",
    "supervised_synthetic",
    "mocov3",
    "beit",
    "beit_in22k",
    "mae",
)


@dataclass(frozen=True)
class BackboneSpec:
    """One registered backbone.

    Attributes:
        arch_kwargs: the architecture's size (embed_dim, depth, num_heads, patch_size).
        checkpoint_arch: encoder options the official file's structure requires (layer scale,
            no cls slot, no abs pos-embed); they win over a protocol's choices.
        checksum: ``"<algo>:<hex or prefix>"`` as published, or None when none is published.
        provenance: "paper", "random init", or "stand-in: <why>".
    """

    name: str
    arch: str
    arch_kwargs: dict[str, Any]
    pretrain: str
    converter: str | None
    url: str | None = None
    file: str | None = None
    checksum: str | None = None
    checkpoint_arch: dict[str, Any] = field(default_factory=dict)
    provenance: str = "paper"

    @property
    def is_stand_in(self) -> bool:
        return self.provenance.startswith("stand-in")

    @property
    def size(self) -> str:
        """Short size letter used in config names: vit_base -> "b"."""
        return size_letter(self.arch)


def size_letter(arch: str) -> str:
    """vit_base -> "b"."""
    return SIZE_LETTERS[arch]


def short_name(arch: str) -> str:
    """vit_base -> "vit_b" (the papers' tables and ``paper_results.csv``)."""
    return f"vit_{SIZE_LETTERS[arch]}"


def arch_of_size(letter: str) -> str:
    """ "b" -> vit_base."""
    return {v: k for k, v in SIZE_LETTERS.items()}[letter]


@functools.cache
def zoo(path: Path = ZOO_FILE) -> dict[str, BackboneSpec]:
    """Every registered backbone, read once from ``configs/backbones.yaml``."""
    data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    archs = data["architectures"]
    specs = {}
    for name, entry in data["backbones"].items():
        if entry["arch"] not in archs:
            raise ValueError(f"{path}: backbone {name} names unknown arch {entry['arch']!r}; known: {sorted(archs)}")
        if entry["pretrain"] not in PRETRAIN_TAGS:
            raise ValueError(f"{path}: backbone {name} has pretrain tag {entry['pretrain']!r}; known: {PRETRAIN_TAGS}")
        specs[name] = BackboneSpec(name=name, arch_kwargs=dict(archs[entry["arch"]]), **entry)
    return specs


@functools.cache
def architectures(path: Path = ZOO_FILE) -> dict[str, dict[str, int]]:
    """The ViT sizes: name -> embed_dim, depth, num_heads, patch_size."""
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)["architectures"]


def get_spec(name: str) -> BackboneSpec:
    """The registered backbone ``name``; an unknown name lists the valid ones."""
    specs = zoo()
    if name not in specs:
        raise UnknownBackbone(f"unknown backbone {name!r}; registered: {', '.join(sorted(specs))}")
    return specs[name]


def encoder_kwargs(spec: BackboneSpec, protocol: dict[str, Any] | None = None) -> dict[str, Any]:
    """Encoder options: the architecture, then the protocol's, then what the checkpoint requires."""
    return {**spec.arch_kwargs, **(protocol or {}), **spec.checkpoint_arch}


def build_encoder(spec: BackboneSpec, protocol: dict[str, Any] | None = None) -> VisionTransformer:
    """A randomly initialised encoder for ``spec`` under a protocol's backbone options."""
    return VisionTransformer(**encoder_kwargs(spec, protocol))
