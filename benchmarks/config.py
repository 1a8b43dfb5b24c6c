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


# Config variants by pretraining (ViTDet Table 11, Li et al.): looked up before the size's default.
VARIANTS = {"supervised_in1k": "supervised", "supervised_in21k": "supervised", "random": "random", "mocov3": "mocov3"}


def protocol_config_path(task: str, protocol: str, size: str, variant: str | None = None) -> Path:
    """``configs/<task>/<protocol>_vit_<size>[_<variant>].yaml``: the one rule that names protocol configs."""
    return CONFIG_DIR / task / f"{protocol}_vit_{size}{'_' + variant if variant else ''}.yaml"


def default_config_path(task: str, protocol: str, spec: BackboneSpec) -> Path:
    """The protocol config for the backbone's size, the pretraining's variant where one exists."""
    variant = VARIANTS.get(spec.pretrain)
    if variant and protocol_config_path(task, protocol, spec.size, variant).is_file():
        return protocol_config_path(task, protocol, spec.size, variant)
    path = protocol_config_path(task, protocol, spec.size)
    if not path.is_file():
        raise ConfigError(
            f"no {protocol} config for a {spec.arch} backbone ({path}); "
            f"configs for {task}: {', '.join(available_configs(task)) or 'none'}"
        )
    return path


def apply_overrides(cfg: DictConfig, opts: list[str]) -> DictConfig:
    """``key=value`` overrides (``train.iterations=20``). Unknown keys and values of another type are errors.

    Values are parsed as YAML scalars/lists (never evaluated as code).
    """
    for opt in opts:
        key, sep, text = opt.partition("=")
        if not sep:
            raise ConfigError(f"--opts {opt!r}: expected key=value")
        if OmegaConf.select(cfg, key, default=_MISSING) is _MISSING:
            raise ConfigError(unknown_key_message(cfg, key))
        old = OmegaConf.select(cfg, key)
        new = OmegaConf.create({"v": yaml_value(text)}).v
        if not _same_kind(old, new):
            raise ConfigError(f"--opts {key}={text}: expected a {type(old).__name__} like {old!r}")
        OmegaConf.update(cfg, key, new, merge=False)
    return cfg


_MISSING = object()


def flatten(tree: dict, prefix: str = "") -> dict:
    """Nested dicts -> dotted keys: {"backbone": {"depth": 4}} -> {"backbone.depth": 4}."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= flatten(value, name + ".")
        else:
            out[name] = value
    return out


def unknown_key_message(cfg: DictConfig, key: str) -> str:
    """Where the path first leaves the config, the keys that exist there and the closest one."""
    import difflib

    node, path = cfg, []
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            break
        node, path = node[part], [*path, part]
    where = ".".join(path) or "the top level"
    known = sorted(node.keys()) if isinstance(node, DictConfig) else []
    wrong = key.split(".")[len(path)]
    close = difflib.get_close_matches(wrong, known, n=1)
    hint = f" did you mean {'.'.join([*path, close[0]])}?" if close else ""
    return f"--opts {key}: no key {wrong!r} at {where};{hint} keys there: {known}"


def yaml_value(text: str):
    return OmegaConf.create(f"v: {text}").v if text else ""


def _same_kind(old, new) -> bool:
    if old is None or new is None:
        return True
    if isinstance(old, bool) or isinstance(new, bool):
        return isinstance(old, bool) and isinstance(new, bool)
    if isinstance(old, int | float) and isinstance(new, int | float):
        return not (isinstance(old, int) and isinstance(new, float))
    if isinstance(old, DictConfig | dict):
        return isinstance(new, DictConfig | dict)
    if OmegaConf.is_list(old) or isinstance(old, list):
        return OmegaConf.is_list(new) or isinstance(new, list)
    return type(old) is type(new)


def preset_config_path(task: str, preset: str) -> Path:
    path = CONFIG_DIR / task / f"{preset}.yaml"
    if not path.is_file():
        raise ConfigError(f"no preset {preset!r} for {task} ({path}); configs: {', '.join(available_configs(task))}")
    return path


def resolve_choices(section: str, tables: dict[str, dict[str, object]], values) -> dict[str, object]:
    """Each key of a config section (``model.ops``, ``test``) resolved through its table of named choices.

    ``tables``: key -> {name: the class or function it stands for}. A key the tables do not know, or a name
    not in its table, is an error naming the key and the choices.
    """
    unknown = sorted(set(values) - set(tables))
    if unknown:
        raise ConfigError(f"{section} has no choice {', '.join(unknown)}; its choices: {', '.join(tables)}")
    resolved = {}
    for key, table in tables.items():
        name = values[key]
        if name not in table:
            raise ConfigError(f"{section}.{key} must be one of {', '.join(map(repr, table))}, got {name!r}")
        resolved[key] = table[name]
    return resolved
