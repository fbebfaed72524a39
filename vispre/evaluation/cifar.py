"""CIFAR-10/100 in their standard on-disk format, read without trusting pickle.

The official "python version" archives hold pickled dicts (Python 2 pickles)::

    cifar-10-batches-py/data_batch_1 .. data_batch_5, test_batch   {data: uint8 [10000, 3072], labels: [...]}
    cifar-100-python/train, test                                    {data: ..., fine_labels: [...], coarse_labels}

``data`` rows are 1024 red, 1024 green, 1024 blue values of a 32x32 image. torchvision's reader
calls ``pickle.load``, which runs any callable a file names; ours refuses every global except the
few that rebuild numpy arrays (``RestrictedUnpickler``), so a tampered file cannot run code.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

LAYOUTS = {  # kind -> (folder, {split: files}, label key)
    "cifar10": ("cifar-10-batches-py", {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
                "labels"),
    "cifar100": ("cifar-100-python", {"train": ["train"], "test": ["test"]}, "fine_labels"),
}
NUM_CLASSES = {"cifar10": 10, "cifar100": 100}


def _allowed_globals() -> dict[tuple[str, str], object]:
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's _reconstruct, whatever module holds it now
    scalar = np.float64(0).__reduce__()[0]
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
               ("_codecs", "encode"): _latin1_encode}  # protocol-2 pickles spell bytes as _codecs.encode(s, enc)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):  # numpy 1 / numpy 2 names
        allowed[(module, "_reconstruct")] = reconstruct
        allowed[(module, "scalar")] = scalar
    return allowed


def _latin1_encode(text, encoding="latin1", errors="strict"):
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with {type(text).__name__}/{encoding!r} is not allowed")
    return text.encode("latin1", errors)


class RestrictedUnpickler(pickle.Unpickler):
    """Only numpy array reconstruction (and latin-1 bytes) may be named by the pickle."""

    ALLOWED = _allowed_globals()

    def __init__(self, file, where: str = "pickle"):
        super().__init__(file, encoding="latin1")  # Python 2 str -> str (numpy array buffers included)
        self.where = where

    def find_class(self, module: str, name: str):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"{self.where}: refusing to load global {module}.{name} (only numpy "
                                         "arrays are allowed in a CIFAR file)") from None


def restricted_load(path: str | Path):
    path = Path(path)
    with open(path, "rb") as f:
        return RestrictedUnpickler(io.BytesIO(f.read()), where=str(path)).load()


def cifar_dir(root: str | Path, kind: str) -> Path:
    """The ``cifar-10-batches-py`` / ``cifar-100-python`` folder under ``root`` (or ``root`` itself)."""
    if kind not in LAYOUTS:
        raise ValueError(f"CIFAR kind must be one of {sorted(LAYOUTS)}, got {kind!r}")
    root = Path(root)
    folder = LAYOUTS[kind][0]
    for candidate in (root / folder, root):
        if candidate.is_dir() and all((candidate / f).is_file() for f in LAYOUTS[kind][1]["test"]):
            return candidate
    raise FileNotFoundError(f"{root}: no {folder}/ with the standard {kind} files (download and extract the "
                            f"'python version' archive there)")


def split_files(root: str | Path, kind: str, split: str) -> list[Path]:
    files = LAYOUTS[kind][1]
    if split not in files:
        raise ValueError(f"{kind} split must be one of {sorted(files)}, got {split!r}")
    folder = cifar_dir(root, kind)
    paths = [folder / name for name in files[split]]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{kind} {split}: missing {', '.join(missing)}")
    return paths


def read_cifar(root: str | Path, kind: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, 32, 32, 3] (HWC) and labels int64 [N] of one split."""
    images, labels = [], []
    label_key = LAYOUTS[kind][2]
    for path in split_files(root, kind, split):
        entry = restricted_load(path)
        if not isinstance(entry, dict) or "data" not in entry or label_key not in entry:
            raise ValueError(f"{path}: not a {kind} batch (expected a dict with 'data' and {label_key!r})")
        data = np.asarray(entry["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(entry[label_key]) != len(data):
            raise ValueError(f"{path}: data {data.shape} / {len(entry[label_key])} labels is not N x 3072 / N")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(entry[label_key], dtype=np.int64))
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)
