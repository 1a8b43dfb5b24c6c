"""Finding, verifying and safely reading checkpoint files.

A ``.pth`` from the internet is a pickle, i.e. a program. Files are read with
``torch.load(weights_only=True)`` (tensors, containers and primitives only; ``argparse.Namespace``
is allow-listed because the reference codebases' own ``save_model`` stores ``args``) or with
safetensors. detectron2's model-zoo ``.pkl`` files (numpy arrays in plain dicts) go through an
unpickler that builds numpy arrays, dtypes and plain containers only. Anything else is refused
before a single object of it is built.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import importlib
import pickle
import shutil
import urllib.error
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as load_safetensors

from .registry import BackboneSpec

SAFE_GLOBALS = [argparse.Namespace]


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used as it is; the message names the file and the fix."""


def cache_dir() -> Path:
    """Where downloaded weights live: torch.hub's cache, ``$TORCH_HOME/hub/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def file_digest(path: str | Path, algo: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_checksum(path: Path, expected: str) -> str:
    """Check ``path`` against ``"<algo>:<hex or hex prefix>"``; returns the digest, raises on mismatch."""
    algo, _, want = expected.partition(":")
    got = file_digest(path, algo)
    if not got.startswith(want.lower()):
        raise CheckpointError(
            f"checksum mismatch for {path}: {algo} is {got}, expected {want}... "
            "The file is corrupt, truncated or not the official one: delete it and download it again."
        )
    return got


def offline_message(spec, target: Path, reason: str, option: str = "--weights") -> str:
    checksum = spec.checksum or "none published"
    return (
        f"could not download {spec.name} ({reason}).\n"
        f"  URL:       {spec.url}\n"
        f"  file name: {spec.file}\n"
        f"  checksum:  {checksum}\n"
        f"Download it where you have network and put it at\n  {target}\n"
        f"or pass {option} /path/to/{spec.file}."
    )


@contextmanager
def file_lock(path: Path):
    """An exclusive lock beside ``path`` (``.<name>.lock``): one download or verification of a cached file at a
    time, across the processes (and nodes, on a shared cache folder) that want it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def verified_digest(path: Path, published: str | None) -> str:
    """``path``'s sha256, checked against the full sha256 recorded at its first verified download
    (``<file>.sha256`` beside it), else against the published checksum (often a 6-hex md5 prefix), which is
    then recorded: later runs check all 64 hex digits. Raises on a mismatch."""
    sha256 = file_digest(path)
    record = path.with_name(path.name + ".sha256")
    if record.exists():
        if sha256 != record.read_text().strip():
            raise CheckpointError(
                f"checksum mismatch for {path}: sha256 is {sha256}, but its first verified "
                f"download recorded {record.read_text().strip()} ({record})"
            )
    elif published:
        verify_checksum(path, published)
        record.write_text(sha256 + "\n")
    return sha256


def fetch_weights(spec, progress: bool = True, option: str = "--weights") -> tuple[Path, str]:
    """The official file of ``spec`` (a backbone or a released model) from the cache, downloaded once and
    verified under a file lock; returns (path, sha256). ``option`` is what the user passes instead."""
    if spec.url is None:
        raise CheckpointError(f"{spec.name} has no public weights ({spec.provenance}); pass {option} PATH")
    target = cache_dir() / spec.file
    with file_lock(target):
        if not target.exists():
            try:
                # Writes to a temp file and renames, so a broken download never looks like a cached file.
                torch.hub.download_url_to_file(spec.url, str(target), progress=progress)
            except (urllib.error.URLError, OSError, ValueError) as err:
                raise CheckpointError(offline_message(spec, target, f"{type(err).__name__}: {err}", option)) from err
        try:
            return target, verified_digest(target, spec.checksum)
        except CheckpointError as err:
            bad = target.with_name(target.name + ".bad")
            shutil.move(target, bad)
            target.with_name(target.name + ".sha256").unlink(missing_ok=True)
            raise CheckpointError(
                f"{err}. The download of {spec.name} from {spec.url} (published checksum "
                f"{spec.checksum}) was moved to {bad}: download it again or pass {option}."
            ) from None


def resolve_weights(spec: BackboneSpec, weights: str | Path | None) -> tuple[Path, dict[str, Any]]:
    """The backbone file a run loads, hashed once: the official one from the cache (``weights`` None) or
    ``--weights``. Returns (path, integrity info for the load report).

    A user-supplied file carrying the official file name claims to be that file and is checked
    against the published checksum; any other file (a fine-tuned or self-pretrained model) is the
    user's own and only has its sha256 recorded.
    """
    if weights is None:
        path, sha256 = fetch_weights(spec)
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise CheckpointError(f"--weights {path}: no such file")
        sha256 = None
    if path.suffix not in (".safetensors", ".npz"):
        checkpoint_kind(path)  # before any run folder exists
    info: dict[str, Any] = {
        "path": str(path.resolve()),
        "sha256": sha256 or file_digest(path),
        "expected": spec.checksum,
    }
    if spec.checksum and path.name == spec.file:
        if weights is not None:
            verify_checksum(path, spec.checksum)
        info["verified"] = True
    elif spec.checksum:
        info["verified"] = False
        info["why_unverified"] = f"not the official file name {spec.file}: treated as the user's own weights"
    else:
        info["verified"] = False
        info["why_unverified"] = "the publisher gives no checksum for this file"
    return path, info


# What a numpy-array pickle may name, under numpy 1.x and 2.x module paths; nothing else is built.
# numpy 2 moved numpy.core to numpy._core (numpy 1.26 has a _core stub without the modules).
_CORE = "numpy._core" if int(np.__version__.split(".")[0]) >= 2 else "numpy.core"
_multiarray = importlib.import_module(f"{_CORE}.multiarray")
_numeric = importlib.import_module(f"{_CORE}.numeric")
NUMPY_GLOBALS = {
    (f"{package}.{module}", name): obj
    for package in ("numpy.core", "numpy._core")
    for module, name, obj in (
        ("multiarray", "_reconstruct", _multiarray._reconstruct),
        ("multiarray", "scalar", _multiarray.scalar),
        ("numeric", "_frombuffer", _numeric._frombuffer),  # pickle protocol 5 (out-of-band buffers)
    )
} | {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("collections", "OrderedDict"): dict}


def latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """How protocol-2 pickles spell ``bytes`` (``_codecs.encode(text, 'latin1')``), and nothing else."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin1")


NUMPY_GLOBALS[("_codecs", "encode")] = latin1_bytes


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle asked for a global outside NUMPY_GLOBALS (its ``module.name`` is the message)."""


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, dtypes, numbers, strings and containers; refuses every other global."""

    def find_class(self, module: str, name: str):
        if (module, name) in NUMPY_GLOBALS:
            return NUMPY_GLOBALS[(module, name)]
        raise RefusedGlobal(f"{module}.{name}")


def object_arrays(obj: Any, prefix: str = "") -> list[str]:
    """Where ``obj`` (nested dicts / lists) holds numpy arrays of Python objects instead of numbers."""
    if isinstance(obj, np.ndarray):
        return [prefix or "(top level)"] if obj.dtype.kind == "O" else []
    if isinstance(obj, dict):
        return [hit for k, v in obj.items() for hit in object_arrays(v, f"{prefix}/{k}" if prefix else str(k))]
    if isinstance(obj, list | tuple):
        return [hit for i, v in enumerate(obj) for hit in object_arrays(v, f"{prefix}[{i}]")]
    return []


def read_numpy_pickle(path: Path) -> Any:
    """A detectron2 model-zoo ``.pkl`` (``{'model': {name: ndarray}, ...}``), read without running code."""
    try:
        with open(path, "rb") as f:
            obj = NumpyOnlyUnpickler(f, encoding="latin1").load()
    except RefusedGlobal as err:
        raise CheckpointError(
            f"{path}: refused. It asks for the global {err}, which a checkpoint of numpy arrays never needs "
            "(only numpy arrays, dtypes and plain containers are admitted); nothing in it was executed. "
            "Get the file from its official URL."
        ) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        why = f"{type(err).__name__}: {err}"
        raise CheckpointError(f"{path}: not a readable pickle ({why}); download it again") from err
    found = object_arrays(obj)
    if found:
        raise CheckpointError(
            f"{path}: holds arrays of Python objects, not numbers, at {', '.join(found[:3])}"
            f"{' …' if len(found) > 3 else ''}: a model checkpoint holds numeric arrays only; get the file from "
            "its official URL"
        )
    return obj


# What the first bytes of a file say it is. A checkpoint is a zip (torch >= 1.6), a bare pickle
# (older torch, detectron2 .pkl) or safetensors (an 8-byte header length, then JSON).
SIGNATURES = [
    (b"PK\x03\x04", "zip"),
    (b"\x80", "pickle"),
    (b"\x1f\x8b", "a gzip archive (unpack it first)"),
    (b"\x93NUMPY", "a numpy .npy array, not a checkpoint"),
    (b"BZh", "a bzip2 archive (unpack it first)"),
    (b"\xfd7zXZ", "an xz archive (unpack it first)"),
]


def file_kind(path: Path) -> str:
    """What ``path`` holds, from its first bytes: zip, pickle, safetensors, or a description of what it is."""
    size = path.stat().st_size
    if size == 0:
        return "an empty file (0 bytes): the download did not happen"
    with open(path, "rb") as f:
        head = f.read(512)
    for magic, kind in SIGNATURES:
        if head.startswith(magic):
            return kind
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head")):
        return "an HTML page (a saved error or login page, not the file: download it again)"
    if text.startswith((b"{", b"[")):
        return "a JSON text file, not a checkpoint"
    if len(head) >= 8 and 0 < int.from_bytes(head[:8], "little") < size and head[8:9] == b"{":
        return "safetensors"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return f"a text file, not a checkpoint (it starts {head[:40].decode(errors='replace')!r})"
    return f"not a known checkpoint format ({size} bytes starting {head[:8].hex(' ')})"


def checkpoint_kind(path: Path, allowed: tuple[str, ...] = ("zip", "pickle")) -> str:
    """``file_kind(path)`` when it is one of ``allowed``; else an error saying what the file is."""
    kind = file_kind(path)
    if kind not in allowed:
        raise CheckpointError(f"{path}: not a checkpoint: it is {kind}")
    return kind


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The object stored in a checkpoint, read without executing anything.

    ``.safetensors`` -> flat tensor dict; ``.pkl`` -> numpy arrays (detectron2's model zoo);
    anything else -> ``torch.load(weights_only=True)``.
    """
    path = Path(path)
    if path.suffix == ".pkl":
        checkpoint_kind(path, ("pickle",))
        return read_numpy_pickle(path)
    if path.suffix == ".npz":
        raise CheckpointError(
            f"{path}: JAX .npz checkpoints are not read by this suite; use the timm hub .safetensors file "
            "of the same model (see `run_bench.py --list-backbones`)"
        )
    if path.suffix == ".safetensors":
        try:
            return load_safetensors(str(path), device="cpu")
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{path}: not a readable safetensors file ({err}); download it again") from err
    kind = checkpoint_kind(path)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(unsafe_pickle_message(path, err)) from None
    except Exception as err:  # truncated or corrupt: torch raises many types here; say what the file is
        first = str(err).splitlines()[0] if str(err) else ""
        raise CheckpointError(
            f"{path}: a {kind} file that torch cannot read ({type(err).__name__}{': ' + first if first else ''}). "
            "It is probably truncated or corrupt: download it again."
        ) from None


def unsafe_pickle_message(path: Path, err: Exception) -> str:
    """Why a pickle was refused, naming what it asks for; torch's own advice (weights_only=False) is not relayed."""
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # the scan is best effort: the refusal stands either way
        found = []
    asks = f"it asks for {', '.join(found)}" if found else "it holds objects that are not tensors or plain containers"
    return (
        f"{path}: refused: {asks}. Building those would run code from the file, so nothing in it was executed. "
        "Official checkpoints hold only tensors and plain containers: get the file from its official URL, or "
        "re-save its state_dict with tensors only where you trust it."
    )
