"""Protocol configs: YAML files under ``configs/<task>/`` with mmseg-style ``_base_`` inheritance."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from backbones.registry import CONFIG_DIR, BackboneSpec


class ConfigError(ValueError):
    """A config that cannot be found or read; the message names the file and the valid choices."""


def load_config(path: str | Path) -> DictConfig:
    """Read ``path``, merging it over its ``_base_`` file(s) (paths relative to it), recursively."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config {path} does not exist")
    try:
        cfg = OmegaConf.load(path)
    except Exception as err:
        raise ConfigError(f"config {path} is not valid YAML: {err}") from err
    bases = cfg.pop("_base_", [])
    bases = [bases] if isinstance(bases, str) else list(bases)
    merged = OmegaConf.merge(*(load_config(path.parent / b) for b in bases), cfg) if bases else cfg
    return merged


def available_configs(task: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / task).glob("*.yaml"))


def default_config_path(task: str, protocol: str, spec: BackboneSpec) -> Path:
    """``configs/<task>/<protocol>_vit_<size>.yaml`` for the backbone's size."""
    path = CONFIG_DIR / task / f"{protocol}_vit_{spec.size}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"no {protocol} config for a {spec.arch} backbone ({path}); "
            f"configs for {task}: {', '.join(available_configs(task)) or 'none'}"
        )
    return path
