"""Demo data from the real MNIST: a source laid out as a base plus increments, and more
increments (IDX, PNG folders, or drifted digits) landed the way an uploader would, marker last.

    make_demo(Path("../shared/datasets/mnist"), Path("/tmp/mnist-demo"), increments=1)
    add_increment(Path("../shared/datasets/mnist"), Path("/tmp/mnist-demo"), "2026-11-27")

The command line is ``python -m mnist_tasks data make-demo | add-increment``
(:mod:`mnist_tasks.datasets_cli`).
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import io
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from mnist_tasks import idx
from mnist_tasks.config import MNIST_FILES, ConfigError
from mnist_tasks.increment_files import (
    ID_PATTERN,
    IMAGES_FILE,
    INCREMENTS_PREFIX,
    LABELS_FILE,
    MARKER,
)

log = logging.getLogger(__name__)

MNIST_TRAIN_COUNT = 60_000


def _is_inside_repo(path: Path) -> Path | None:
    """The checkout of this project containing ``path``, if any (never write data there)."""
    for folder in (path, *path.parents):
        pyproject = folder / "pyproject.toml"
        try:
            if pyproject.is_file() and 'name = "mnist-tasks"' in pyproject.read_text():
                return folder
        except OSError:
            continue
    return None


def _check_out(out: Path) -> Path:
    out = out.expanduser().absolute()
    repo = _is_inside_repo(out.resolve() if out.exists() else out)
    if repo is not None:
        raise ConfigError(f"parameter 'out' = {str(out)!r} is inside the project checkout "
                          f"{repo}; data files never go into the repository, use e.g. /tmp/src")
    return out


def _load_mnist(mnist: Path, split: str) -> tuple[np.ndarray, np.ndarray, dict[str, bytes]]:
    prefix = "train" if split == "train" else "t10k"
    payloads: dict[str, bytes] = {}
    arrays: list[np.ndarray] = []
    for kind, ndim in (("images-idx3", 3), ("labels-idx1", 1)):
        name = f"{prefix}-{kind}-ubyte.gz"
        path = mnist / name
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"parameter 'mnist': cannot read {path} ({exc.strerror or exc})") \
                from None
        payloads[name] = idx.decompress(data, source=str(path))
        arrays.append(idx.parse_idx(payloads[name], source=str(path), ndim=ndim,
                                    dtype=np.dtype("u1")))
    return arrays[0], arrays[1], payloads


def _gz(payload: bytes) -> bytes:
    return gzip.compress(payload, compresslevel=6, mtime=0)  # mtime 0: reproducible bytes


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex}"
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def thicken(images: np.ndarray) -> np.ndarray:
    """Thicker strokes: a 2x2 grey-level dilation (each pixel the max of itself and its upper,
    left and upper-left neighbours)."""
    out = images.copy()
    out[:, 1:, :] = np.maximum(out[:, 1:, :], images[:, :-1, :])
    out[:, :, 1:] = np.maximum(out[:, :, 1:], images[:, :, :-1])
    out[:, 1:, 1:] = np.maximum(out[:, 1:, 1:], images[:, :-1, :-1])
    return out


def invert(images: np.ndarray) -> np.ndarray:
    """White digits become black on white (255 - pixel)."""
    return (255 - images).astype(np.uint8)


def shift(images: np.ndarray, *, seed: int = 0, max_shift: int = 4) -> np.ndarray:
    """Each digit moved by a seeded random offset of up to ``max_shift`` pixels per axis,
    filling with background (0). Ink statistics barely change: see docs/data.md."""
    rng = np.random.default_rng(seed)
    out = np.zeros_like(images)
    offsets = rng.integers(-max_shift, max_shift + 1, size=(len(images), 2))
    for i, (dy, dx) in enumerate(offsets):
        src = images[i, max(0, -dy):images.shape[1] - max(0, dy),
                     max(0, -dx):images.shape[2] - max(0, dx)]
        out[i, max(0, dy):max(0, dy) + src.shape[0], max(0, dx):max(0, dx) + src.shape[1]] = src
    return out


DRIFTS = {"thick": thicken, "invert": invert}


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _check_increment_id(inc_id: object) -> None:
    """Refuse an id that is not one folder name (before anything touches the file system)."""
    if not isinstance(inc_id, str) or not ID_PATTERN.fullmatch(inc_id):
        raise ConfigError(f"invalid increment id {inc_id!r}: use letters, digits and ._- "
                          "(starting with a letter or digit, at most 64 characters)")


def write_increment(out: Path, inc_id: str, images: np.ndarray, labels: np.ndarray, *,
                    fmt: str = "idx") -> Path:
    """Land one increment under ``out/increments/<inc_id>/``, the ``_SUCCESS`` marker last.

    Raises:
        ConfigError: for a bad id, an unknown format, or an increment that already exists
            (never overwritten).
    """
    _check_increment_id(inc_id)
    if fmt not in ("idx", "png"):
        raise ConfigError(f"parameter 'format' = {fmt!r} is invalid: 'idx' or 'png'")
    folder = out / INCREMENTS_PREFIX / inc_id
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir()  # claims the id: fails if it exists, so nothing is overwritten
    except FileExistsError:
        raise ConfigError(f"increment {inc_id!r} already exists at {folder}; increments are "
                          "never overwritten, choose another --id") from None
    if fmt == "idx":
        _atomic_write(folder / IMAGES_FILE, _gz(idx.encode_idx(images)))
        _atomic_write(folder / LABELS_FILE, _gz(idx.encode_idx(labels)))
    else:
        for digit in range(10):
            (folder / str(digit)).mkdir()
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            _atomic_write(folder / str(int(label)) / f"{i:05d}.png", _png(image))
    marker = {"images": len(images), "format": fmt,
              "written_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    _atomic_write(folder / MARKER, (json.dumps(marker) + "\n").encode())
    return folder


def _drifted(images: np.ndarray, drift: str, seed: int) -> np.ndarray:
    if drift not in ("thick", "invert", "shift"):
        raise ConfigError(f"parameter 'drift' = {drift!r} is invalid: thick, invert or shift")
    return shift(images, seed=seed) if drift == "shift" else DRIFTS[drift](images)


def make_demo(mnist: Path, out: Path, *, base: int = 50_000, increments: int = 1,
              size: int = 5_000, drifted: int = 0, drift: str = "thick",
              seed: int = 0) -> dict[str, Any]:
    """Lay out a demo source: the base (first ``base`` training images, the test files
    unchanged, ``payload-sha256.json``) and ``increments`` IDX increments ``demo-01``... of
    ``size`` consecutive held-back training images each; with ``drifted`` > 0, also
    ``demo-drifted``: the next ``drifted`` held-back images transformed by ``drift``
    (``thick``, ``invert`` or ``shift``, the latter seeded by ``seed``).

    Returns:
        ``{"source": str, "base": int, "increments": [ids], "payload_sha256": {...}}``.

    Raises:
        ConfigError: for counts that do not fit in the training set, an ``out`` folder inside
            the project checkout or that is not empty, or unreadable MNIST files.
        IdxFormatError: if an MNIST file is malformed.
    """
    out = _check_out(Path(out))
    for name, value, lo in (("base", base, 1), ("increments", increments, 0), ("size", size, 1),
                            ("drifted", drifted, 0)):
        if not isinstance(value, int) or value < lo:
            raise ConfigError(f"parameter {name!r} = {value!r} is invalid: must be an integer "
                              f">= {lo}")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"parameter 'out' = {str(out)!r} is not empty; make-demo writes a new "
                          "source (use add-increment to add to one)")
    _drifted(np.zeros((0, 28, 28), np.uint8), drift, seed)  # validates drift first
    x, y, _ = _load_mnist(Path(mnist), "train")
    if base + increments * size + drifted > len(x):
        raise ConfigError(f"base {base:,} + {increments} x {size:,} + {drifted:,} drifted images "
                          f"is more than the {len(x):,} training images in {mnist}")
    out.mkdir(parents=True, exist_ok=True)
    train_payloads = {MNIST_FILES["train_images"]: idx.encode_idx(np.ascontiguousarray(x[:base])),
                      MNIST_FILES["train_labels"]: idx.encode_idx(np.ascontiguousarray(y[:base]))}
    sha = {name: hashlib.sha256(p).hexdigest() for name, p in train_payloads.items()}
    for name, payload in train_payloads.items():
        _atomic_write(out / name, _gz(payload))
    for role in ("test_images", "test_labels"):
        name = MNIST_FILES[role]
        src = Path(mnist) / name
        shutil.copyfile(src, out / name)  # unchanged bytes
        sha[name] = hashlib.sha256(idx.decompress(src.read_bytes(), source=str(src))).hexdigest()
    ids = []
    for i in range(increments):
        inc_id = f"demo-{i + 1:02d}"
        lo = base + i * size
        write_increment(out, inc_id, x[lo:lo + size], y[lo:lo + size])
        ids.append(inc_id)
    if drifted:
        lo = base + increments * size
        write_increment(out, "demo-drifted", _drifted(np.array(x[lo:lo + drifted]), drift, seed),
                        y[lo:lo + drifted])
        ids.append("demo-drifted")
    # Written last: a source is usable once its checksum file is there.
    _atomic_write(out / "payload-sha256.json", (json.dumps(sha, indent=2, sort_keys=True)
                                                + "\n").encode())
    return {"source": str(out), "base": base, "increments": ids, "payload_sha256": sha}


def add_increment(mnist: Path, out: Path, inc_id: str, *, kind: str = "idx",
                  offset: int | None = None, size: int = 5_000, split: str = "train",
                  drift: str = "thick", seed: int = 0) -> dict[str, Any]:
    """Land one increment of MNIST digits ``[offset, offset + size)`` of ``split``.

    ``kind``: ``idx`` (an IDX pair), ``png`` (one folder per digit) or ``drifted`` (an IDX pair
    of transformed digits: ``drift`` is ``thick`` (2x2 dilation), ``invert`` or ``shift``).
    ``offset`` defaults to the last ``size`` images of the split (held back by make-demo's
    default of one increment). ``split="test"`` lands test images (to watch leakage being
    quarantined).

    Returns:
        ``{"id", "path", "images", "kind", "offset"}``.

    Raises:
        ConfigError: for a bad parameter, an ``out`` inside the project checkout, a range
            outside the split, or an id that exists.
    """
    _check_increment_id(inc_id)  # first: an empty id would name the increments folder itself
    out = _check_out(Path(out))
    if kind not in ("idx", "png", "drifted"):
        raise ConfigError(f"parameter 'kind' = {kind!r} is invalid: idx, png or drifted")
    _drifted(np.zeros((0, 28, 28), np.uint8), drift, seed)  # validates drift
    if split not in ("train", "test"):
        raise ConfigError(f"parameter 'split' = {split!r} is invalid: train or test")
    if not isinstance(size, int) or size < 1:
        raise ConfigError(f"parameter 'size' = {size!r} is invalid: must be an integer >= 1")
    if (out / INCREMENTS_PREFIX / inc_id).exists():
        raise ConfigError(f"increment {inc_id!r} already exists at "
                          f"{out / INCREMENTS_PREFIX / inc_id}; increments are never "
                          "overwritten, choose another --id")
    x, y, _ = _load_mnist(Path(mnist), split)
    start = len(x) - size if offset is None else offset
    if not isinstance(start, int) or start < 0 or start + size > len(x):
        raise ConfigError(f"parameter 'offset' = {start!r} is invalid: [offset, offset + "
                          f"{size:,}) must lie within the {len(x):,} {split} images")
    images, labels = np.array(x[start:start + size]), np.array(y[start:start + size])
    if kind == "drifted":
        images = _drifted(images, drift, seed)
    folder = write_increment(out, inc_id, images, labels, fmt="png" if kind == "png" else "idx")
    return {"id": inc_id, "path": str(folder), "images": size, "kind": kind, "offset": start,
            "split": split, **({"drift": drift} if kind == "drifted" else {})}


