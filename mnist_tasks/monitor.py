"""Production monitoring: does a scored batch still look like what the model was validated on?

A :class:`Reference` summarises one model version on its validation split: per-image ink
statistics, the model's top probability, a sample of penultimate-layer embeddings and the
predicted-class rates. :func:`check_batch` compares a scored batch with it (five two-sample
tests, Holm-corrected) and says OK, WARN or ALARM::

    forward = Forward(model)                        # once per loaded model
    ref = Reference.build(*forward(x_val), x_val, model_version=3, benchmark_accuracy=0.978)
    blob = ref.to_bytes()                           # stored beside the model version
    probs, emb = forward(batch)                     # the scoring pass itself
    health = check_batch(Reference.from_bytes(blob), probs, emb, batch, MonitorPolicy())
    log.info(health.summary_line())

The tests, the rules and the measured error rates: ``docs/monitoring.md``.
"""

from __future__ import annotations

import io
import json
import logging
import math
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from mnist_tasks.artifacts import full_batches
from mnist_tasks.config import MONITOR_LIMIT_FIELDS, MonitorPolicy
from mnist_tasks.drift import (
    TwoSample,
    chi2_homogeneity,
    holm,
    ink_features,
    ks_test,
    median_bandwidth,
    mmd_test,
)

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

__all__ = [
    "ALARM",
    "OK",
    "WARN",
    "BatchHealth",
    "DriftCheck",
    "Forward",
    "MonitorPolicy",
    "Reference",
    "check_batch",
    "check_scored",
]

Status = Literal["OK", "WARN", "ALARM"]
OK: Status = "OK"
WARN: Status = "WARN"
ALARM: Status = "ALARM"
_RANK = {OK: 0, WARN: 1, ALARM: 2}

SCHEMA = 1
REFERENCE_FILE = "monitor_reference.npz"  # its name among a registered version's files
MAX_REFERENCE_BYTES = 16 << 20  # from_bytes refuses more: a reference is well under 1 MB
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed entry times: the same reference, the same bytes
_ARRAYS = ("class_counts", "embeddings", "mean_intensity", "stroke_area", "top_probability")


# --------------------------------------------------------------------------- inputs


def _as_uint8(images: np.ndarray, what: str) -> np.ndarray:
    """uint8 images as they are; float images in [0, 1] (preprocess's scale) back to 0..255."""
    arr = np.asarray(images)
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind != "f":
        raise ValueError(f"{what}: images must be uint8 (0..255) or float in [0, 1]; got "
                         f"{arr.dtype}")
    if arr.size and (not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1):
        raise ValueError(f"{what}: float images must be in [0, 1]")
    return np.rint(arr * 255.0).astype(np.uint8)


def _as_model_input(images: np.ndarray) -> np.ndarray:
    """Float32 in [0, 1], scaled exactly as preprocess and the scoring stage scale uint8."""
    arr = np.asarray(images)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) * np.float32(1.0 / 255.0)
    return arr.astype(np.float32, copy=False)


class Forward:
    """Class probabilities and penultimate-layer embeddings of a model, in one forward pass.

    Built once per loaded model: a Keras functional model with two outputs, the input of the
    model's last layer (the classifier head) and the model's output. Keras 3 APIs only, so it
    runs on any backend.

    Raises:
        ValueError: for a model without symbolic inputs (a Sequential model built without
            ``keras.Input`` and never called) or with more than one output.
    """

    def __init__(self, model: keras.Model) -> None:
        import keras

        try:
            inputs, outputs = model.inputs, model.outputs
            penultimate = model.layers[-1].input
        except (AttributeError, ValueError, IndexError) as exc:
            raise ValueError(f"model {model.name!r}: no symbolic graph to take embeddings "
                             f"from (build it with keras.Input): {exc}") from exc
        if not inputs or len(outputs) != 1:
            raise ValueError(f"model {model.name!r}: needs one input and one output; has "
                             f"{len(inputs or [])} and {len(outputs or [])}")
        self.model = model
        self.n_classes = int(outputs[0].shape[-1])
        self.embedding_dim = math.prod(int(d) for d in penultimate.shape[1:])
        self._both = keras.Model(inputs=inputs, outputs=[penultimate, outputs[0]],
                                 name=f"{model.name}_monitor")

    def __call__(self, images: np.ndarray, batch_size: int = 1024
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities (float32, (N, classes)) and embeddings (float32, (N, D)) of ``images``:
        uint8 (scaled by 1/255 as scoring does) or float32 in [0, 1]."""
        x = _as_model_input(images)
        if not len(x):
            return (np.zeros((0, self.n_classes), np.float32),
                    np.zeros((0, self.embedding_dim), np.float32))
        embs, probs = [], []
        for batch, n in full_batches(x, batch_size):  # as artifacts.predict_proba does
            emb, prob = self._both.predict_on_batch(batch)
            embs.append(np.asarray(emb, np.float32)[:n].reshape(n, -1))
            probs.append(np.asarray(prob, np.float32)[:n])
        return np.concatenate(probs), np.concatenate(embs)


# --------------------------------------------------------------------------- reference


def _sample_index(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    if n <= size:
        return np.arange(n)
    return np.sort(rng.choice(n, size=size, replace=False))


@dataclass(frozen=True, eq=False)
class Reference:
    """What a model version's batches are compared with, from its validation split.

    Samples are seeded subsets of the validation images; ``class_counts`` and ``n_images``
    cover all of them. A few hundred KB serialised (:meth:`to_bytes`).
    """

    mean_intensity: np.ndarray  # float64 (s,): ink_features of a sample of s images
    stroke_area: np.ndarray  # float64 (s,): fraction of pixels >= 128, same images
    top_probability: np.ndarray  # float32 (s,): the model's top class probability, same images
    embeddings: np.ndarray  # float32 (e, D): penultimate-layer outputs of e images
    class_counts: np.ndarray  # int64 (classes,): predicted classes of all n_images
    bandwidth: float  # RBF kernel width for the embeddings: their median pairwise distance
    n_images: int  # validation images the reference was built from
    model_version: int | None = None
    benchmark_accuracy: float | None = None  # the version's accuracy on the benchmark

    @classmethod
    def build(cls, probs: np.ndarray, embeddings: np.ndarray, images: np.ndarray, *,
              model_version: int | None = None, benchmark_accuracy: float | None = None,
              sample_size: int = 2000, embedding_sample: int = 500, seed: int = 0
              ) -> Reference:
        """Summarise a model's outputs on its validation images.

        Args:
            probs: class probabilities, (N, classes), e.g. from :class:`Forward`.
            embeddings: penultimate-layer outputs, (N, D), of the same images.
            images: the images, (N, 28, 28), uint8 or float in [0, 1].
            model_version: the registry version the reference belongs to.
            benchmark_accuracy: the version's accuracy on the benchmark, for the report.
            sample_size: images whose ink statistics and top probability are kept.
            embedding_sample: images whose embeddings are kept (the MMD's reference side).
            seed: seed of both samples.

        Raises:
            ValueError: for fewer than two images, arrays that differ in length, or a bad size.
        """
        n = len(images)
        if n < 2 or len(probs) != n or len(embeddings) != n or np.ndim(probs) != 2:
            raise ValueError(f"reference: needs >= 2 images and as many rows of (N, classes) "
                             f"probabilities and embeddings; got {n} images, probabilities "
                             f"{np.shape(probs)}, embeddings {np.shape(embeddings)}")
        pixels = _as_uint8(images, "reference")
        p = np.asarray(probs, dtype=np.float32)
        e = np.asarray(embeddings, dtype=np.float32).reshape(n, -1)
        if sample_size < 2 or embedding_sample < 2:
            raise ValueError(f"reference: sample sizes must be >= 2; got {sample_size} and "
                             f"{embedding_sample}")
        rng = np.random.default_rng(seed)
        pick = _sample_index(n, sample_size, rng)
        mean, area = ink_features(pixels[pick])
        emb = np.ascontiguousarray(e[_sample_index(n, embedding_sample, rng)])
        return cls(
            mean_intensity=mean.astype(np.float64),
            stroke_area=area.astype(np.float64),
            top_probability=p[pick].max(axis=1),
            embeddings=emb,
            class_counts=np.bincount(p.argmax(axis=1), minlength=p.shape[1]).astype(np.int64),
            bandwidth=median_bandwidth(emb),
            n_images=n,
            model_version=model_version,
            benchmark_accuracy=benchmark_accuracy,
        )

    @property
    def mean_confidence(self) -> float:
        """The mean top probability on the validation sample."""
        return float(self.top_probability.mean())

    def to_bytes(self) -> bytes:
        """The reference as a zip of ``.npy`` arrays and ``meta.json`` (np.load reads it);
        deterministic: the same reference always gives the same bytes."""
        meta = {"schema": SCHEMA, "bandwidth": self.bandwidth, "n_images": self.n_images,
                "model_version": self.model_version,
                "benchmark_accuracy": self.benchmark_accuracy}
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name in _ARRAYS:
                npy = io.BytesIO()
                np.lib.format.write_array(npy, np.ascontiguousarray(getattr(self, name)),
                                          allow_pickle=False)
                zf.writestr(_entry(f"{name}.npy"), npy.getvalue())
            zf.writestr(_entry("meta.json"), json.dumps(meta, sort_keys=True).encode())
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Reference:
        """Read what :meth:`to_bytes` wrote.

        Raises:
            ValueError: naming the problem, for anything that is not a well-formed reference
                of this schema (not a zip, an entry missing, inconsistent shapes, too large).
        """
        if len(data) > MAX_REFERENCE_BYTES:
            raise ValueError(f"reference: {len(data):,} bytes, over the {MAX_REFERENCE_BYTES:,} "
                             "limit")
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                if sum(i.file_size for i in zf.infolist()) > MAX_REFERENCE_BYTES:
                    raise ValueError("reference: the entries are too large once decompressed")
                meta = json.loads(zf.read("meta.json"))
                arrays = {name: np.lib.format.read_array(io.BytesIO(zf.read(f"{name}.npy")),
                                                         allow_pickle=False)
                          for name in _ARRAYS}
        except (zipfile.BadZipFile, KeyError, OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"reference: not a readable reference: {exc}") from exc
        schema = meta.get("schema") if isinstance(meta, dict) else None
        if schema != SCHEMA:
            raise ValueError(f"reference: schema {schema!r} is not {SCHEMA}")
        ref = cls(
            mean_intensity=arrays["mean_intensity"].astype(np.float64, copy=False),
            stroke_area=arrays["stroke_area"].astype(np.float64, copy=False),
            top_probability=arrays["top_probability"].astype(np.float32, copy=False),
            embeddings=arrays["embeddings"].astype(np.float32, copy=False),
            class_counts=arrays["class_counts"].astype(np.int64, copy=False),
            bandwidth=float(meta["bandwidth"]),
            n_images=int(meta["n_images"]),
            model_version=meta.get("model_version"),
            benchmark_accuracy=meta.get("benchmark_accuracy"),
        )
        s = len(ref.mean_intensity)
        if (s < 2 or ref.stroke_area.shape != (s,) or ref.top_probability.shape != (s,)
                or ref.embeddings.ndim != 2 or len(ref.embeddings) < 2
                or ref.class_counts.ndim != 1 or not ref.bandwidth > 0):
            raise ValueError("reference: inconsistent arrays (shapes "
                             + ", ".join(f"{k} {arrays[k].shape}" for k in _ARRAYS) + ")")
        return ref


def _entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    return info


# --------------------------------------------------------------------------- policy


# The five tests, in report order: name -> (what is compared, test, effect-size name).
TESTS: dict[str, tuple[str, str, str]] = {
    "mean_intensity": ("input: per-image mean intensity", "ks", "ks_d"),
    "stroke_area": ("input: per-image stroke area (pixels >= 128)", "ks", "ks_d"),
    "confidence": ("model: top class probability", "ks", "ks_d"),
    "embeddings": ("model: penultimate-layer embeddings", "mmd_rbf_permutation", "mmd2"),
    "prediction_rates": ("model: predicted-class rates", "chi2_homogeneity", "tvd"),
}


# MonitorPolicy (the thresholds) and its limit fields live with the other configs.
assert set(MONITOR_LIMIT_FIELDS) == set(TESTS)


# --------------------------------------------------------------------------- the check


@dataclass(frozen=True)
class DriftCheck:
    """One test of a batch against the reference.

    ``level`` is this test's verdict: OK, or WARN / ALARM when ``p_corrected < alpha`` and
    ``effect_size`` reaches ``warn_limit`` / ``alarm_limit`` (None: no ALARM level).
    """

    name: str  # a key of TESTS
    compares: str
    test: str
    statistic: float
    p_value: float
    p_corrected: float  # Holm-corrected over the tests of the batch
    effect: str
    effect_size: float
    warn_limit: float
    alarm_limit: float | None  # None: this test can WARN, not ALARM
    level: Status
    details: Mapping[str, float] = field(default_factory=dict)

    @property
    def fired(self) -> bool:
        return self.level != OK

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (dict(getattr(self, f.name)) if f.name == "details"
                         else getattr(self, f.name)) for f in fields(self)}


@dataclass(frozen=True)
class BatchHealth:
    """The verdict on one batch: the worst level of its tests, and each test's figures."""

    status: Status
    n_images: int
    checks: tuple[DriftCheck, ...]
    alpha: float
    model_version: int | None = None
    mean_confidence: float = math.nan  # the batch's mean top probability
    reference_confidence: float = math.nan  # the same on the reference sample

    @property
    def fired(self) -> tuple[str, ...]:
        """The names of the tests that fired (WARN or ALARM), in report order."""
        return tuple(c.name for c in self.checks if c.fired)

    def check(self, name: str) -> DriftCheck:
        """The check named ``name``; KeyError if there is none."""
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able report (for a manifest or the log)."""
        return {"status": self.status, "n_images": self.n_images, "alpha": self.alpha,
                "model_version": self.model_version, "fired": list(self.fired),
                "mean_confidence": self.mean_confidence,
                "reference_confidence": self.reference_confidence,
                "checks": [c.to_dict() for c in self.checks]}

    def summary_line(self) -> str:
        """One log line, e.g. ``ALARM: 2000 images; fired: confidence (ks_d=0.31, p=0.001),
        embeddings (mmd2=0.12, p=0.005); mean confidence 0.81 (reference 0.97)``."""
        fired = [f"{c.name} ({c.effect}={c.effect_size:.3g}, p={c.p_corrected:.2g})"
                 for c in self.checks if c.fired]
        return (f"{self.status}: {self.n_images} images; fired: "
                f"{', '.join(fired) if fired else 'none'}; mean confidence "
                f"{self.mean_confidence:.3f} (reference {self.reference_confidence:.3f})")


def check_batch(reference: Reference, probs: np.ndarray, embeddings: np.ndarray,
                images: np.ndarray, policy: MonitorPolicy | None = None) -> BatchHealth:
    """Compare one scored batch with the model's reference.

    Five two-sample tests (``TESTS``): the images' mean intensity and stroke area (KS), the
    top probability (KS), the embeddings (MMD, on at most ``policy.embedding_sample`` rows)
    and the predicted-class rates (chi-square). Their p-values are Holm-corrected together;
    each test's level is set by the policy's limits, and the batch's status is the worst.

    Args:
        reference: the model version's :class:`Reference`.
        probs: the batch's class probabilities, (N, classes), from the scoring pass.
        embeddings: the batch's penultimate-layer outputs, (N, D), same pass.
        images: the batch, (N, 28, 28), uint8 or float in [0, 1].
        policy: the thresholds; ``MonitorPolicy()`` if None.

    Returns:
        A :class:`BatchHealth`. Deterministic for a given policy seed.

    Raises:
        ValueError: for an empty batch, arrays of different lengths, or widths that differ
            from the reference's.
    """
    n = len(images)
    if n == 0 or len(probs) != n or len(embeddings) != n:
        raise ValueError(f"batch: needs >= 1 image and as many rows of probabilities and "
                         f"embeddings; got {n} images, {len(probs)} and {len(embeddings)} rows")
    p = np.asarray(probs, dtype=np.float32)
    if p.ndim != 2 or p.shape[1] != len(reference.class_counts):
        raise ValueError(f"batch: probabilities of shape {p.shape}; the reference has "
                         f"{len(reference.class_counts)} classes")
    return check_scored(reference, p.max(axis=1), p.argmax(axis=1), embeddings, images, policy)


def check_scored(reference: Reference, top_probability: np.ndarray, predicted: np.ndarray,
                 embeddings: np.ndarray, images: np.ndarray,
                 policy: MonitorPolicy | None = None) -> BatchHealth:
    """:func:`check_batch` from what a sharded scoring run keeps: each image's top probability
    and predicted class, and the embeddings of any rows of the batch (at most
    ``policy.embedding_sample`` of them are used, a seeded subsample; a shard can keep its
    share). Same tests, same result as :func:`check_batch` given all N embeddings.

    Raises:
        ValueError: for an empty batch, per-image arrays of different lengths, no embeddings,
            a class outside the reference's, or embeddings of another width.
    """
    policy = policy or MonitorPolicy()
    n = len(images)
    if n == 0 or len(top_probability) != n or len(predicted) != n or len(embeddings) == 0:
        raise ValueError(f"batch: needs >= 1 image, as many top probabilities and predicted "
                         f"classes, and >= 1 embedding; got {n} images, "
                         f"{len(top_probability)}, {len(predicted)} and {len(embeddings)}")
    pixels = _as_uint8(images, "batch")
    top = np.asarray(top_probability, dtype=np.float32).ravel()
    classes = len(reference.class_counts)
    pred = np.asarray(predicted).astype(np.int64).ravel()
    if pred.min() < 0 or pred.max() >= classes:
        raise ValueError(f"batch: predicted classes must be in 0..{classes - 1}, the "
                         "reference's classes")
    e = np.asarray(embeddings, dtype=np.float32).reshape(len(embeddings), -1)
    if e.shape[1] != reference.embeddings.shape[1]:
        raise ValueError(f"batch: embeddings of width {e.shape[1]}; the reference's are "
                         f"{reference.embeddings.shape[1]} wide (another model?)")

    rng = np.random.default_rng(policy.seed)
    mean, area = ink_features(pixels)
    rows = _sample_index(len(e), policy.embedding_sample, rng)
    raw: dict[str, TwoSample] = {
        "mean_intensity": ks_test(mean, reference.mean_intensity),
        "stroke_area": ks_test(area, reference.stroke_area),
        "confidence": ks_test(top, reference.top_probability),
        "embeddings": mmd_test(e[rows], reference.embeddings, bandwidth=reference.bandwidth,
                               permutations=policy.permutations, rng=rng,
                               stop_after=policy.permutation_stop),
        "prediction_rates": chi2_homogeneity(np.bincount(pred, minlength=classes),
                                             reference.class_counts),
    }
    corrected = holm([r.p_value for r in raw.values()])
    checks = []
    for (name, r), p_corr in zip(raw.items(), corrected, strict=True):
        warn, alarm = policy.limits(name)
        significant = p_corr < policy.alpha
        level = (ALARM if significant and alarm is not None and r.effect_size >= alarm
                 else WARN if significant and r.effect_size >= warn else OK)
        compares, test, effect = TESTS[name]
        checks.append(DriftCheck(name=name, compares=compares, test=test,
                                 statistic=r.statistic, p_value=r.p_value,
                                 p_corrected=float(p_corr), effect=effect,
                                 effect_size=r.effect_size, warn_limit=warn, alarm_limit=alarm,
                                 level=level, details=dict(r.details)))
    status = max((c.level for c in checks), key=_RANK.__getitem__)
    health = BatchHealth(status=status, n_images=n, checks=tuple(checks), alpha=policy.alpha,
                         model_version=reference.model_version,
                         mean_confidence=float(top.mean()),
                         reference_confidence=reference.mean_confidence)
    log.debug("monitor: %s", health.summary_line())
    return health
