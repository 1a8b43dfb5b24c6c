"""ViT backbones: the encoder, the zoo of pretrained weights, converters and the load report."""

from .checkpoint_io import CheckpointError, read_checkpoint, resolve_weights
from .converters import CONVERTERS
from .errors import BackboneConfigError, UnknownBackbone
from .layer_decay import WD_POLICIES, layer_decay_param_groups
from .loading import LoadReport, load_pretrained
from .registry import BackboneSpec, build_encoder, encoder_kwargs, get_spec, zoo
from .vit import VisionTransformer

__all__ = [
    "CONVERTERS",
    "WD_POLICIES",
    "BackboneConfigError",
    "BackboneSpec",
    "CheckpointError",
    "LoadReport",
    "UnknownBackbone",
    "VisionTransformer",
    "build_encoder",
    "encoder_kwargs",
    "get_spec",
    "layer_decay_param_groups",
    "load_pretrained",
    "read_checkpoint",
    "resolve_weights",
    "zoo",
]
