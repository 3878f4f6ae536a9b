"""mnist_tasks.monitor on tiny synthetic data (its tests themselves: test_drift.py).

A synthetic "model output" stands in for a real model: images with a seeded ink level,
probabilities with a seeded confidence and class mix, Gaussian embeddings. Each test of
check_batch is made to move on its own, and only it must fire. One tiny Keras model checks
that Forward returns model.predict's probabilities.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import pytest

from mnist_tasks import drift, monitor
from mnist_tasks.config import ConfigError
from mnist_tasks.monitor import ALARM, OK, WARN, MonitorPolicy, Reference, check_batch

CLASSES, DIM = 10, 16


def synthetic(n: int, seed: int, *, ink: float = 0.15, confidence: float = 0.95,
              classes: np.ndarray | None = None, emb_shift: float = 0.0
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probs, embeddings, images) of n images: ``ink`` the share of 255 pixels, the top
    probability around ``confidence``, the predicted classes uniform (or drawn from
    ``classes``), the embeddings N(emb_shift, 1)."""
    rng = np.random.default_rng(seed)
    images = np.where(rng.random((n, 28, 28)) < ink, 255, 0).astype(np.uint8)
    top = np.clip(rng.normal(confidence, 0.03, n), 0.11, 0.999)
    pred = rng.choice(classes if classes is not None else CLASSES, size=n)
    probs = np.repeat(((1 - top) / (CLASSES - 1))[:, None], CLASSES, axis=1)
    probs[np.arange(n), pred] = top
    emb = rng.normal(emb_shift, 1.0, (n, DIM)).astype(np.float32)
    return probs.astype(np.float32), emb, images


@pytest.fixture(scope="module")
def reference() -> Reference:
    probs, emb, images = synthetic(3000, seed=1)
    return Reference.build(probs, emb, images, model_version=7, benchmark_accuracy=0.98,
                           sample_size=1000, embedding_sample=300, seed=3)


POLICY = MonitorPolicy(permutations=499, alpha=0.02)  # fewer permutations: a fast test


# --------------------------------------------------------------------------- reference


def test_reference_keeps_seeded_samples_and_all_class_counts(reference: Reference) -> None:
    assert reference.n_images == 3000
    assert reference.mean_intensity.shape == reference.top_probability.shape == (1000,)
    assert reference.embeddings.shape == (300, DIM)
    assert reference.class_counts.sum() == 3000 and len(reference.class_counts) == CLASSES
    assert reference.bandwidth > 0
    assert reference.mean_confidence == pytest.approx(0.95, abs=0.01)


def test_reference_round_trips_through_deterministic_bytes(reference: Reference) -> None:
    blob = reference.to_bytes()
    assert blob == reference.to_bytes()  # the same reference, the same bytes
    assert len(blob) < 1 << 20
    back = Reference.from_bytes(blob)
    for f in dataclasses.fields(Reference):
        a, b = getattr(reference, f.name), getattr(back, f.name)
        if isinstance(a, np.ndarray):
            assert a.dtype == b.dtype and np.array_equal(a, b), f.name
        else:
            assert a == b, f.name
    assert back.to_bytes() == blob


def test_reference_bytes_are_the_same_for_the_same_inputs() -> None:
    one = Reference.build(*synthetic(500, seed=2), seed=5).to_bytes()
    two = Reference.build(*synthetic(500, seed=2), seed=5).to_bytes()
    assert one == two


def test_reference_reads_back_with_numpy(reference: Reference) -> None:
    import io

    with np.load(io.BytesIO(reference.to_bytes()), allow_pickle=False) as npz:
        assert np.array_equal(npz["embeddings"], reference.embeddings)


@pytest.mark.parametrize("data, problem", [
    (b"not a zip", "not a readable reference"),
    (b"", "not a readable reference"),
])
def test_reference_from_bad_bytes_names_the_problem(data: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Reference.from_bytes(data)


def test_reference_of_another_schema_is_refused(reference: Reference) -> None:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(reference.to_bytes())) as src, \
            zipfile.ZipFile(buf, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "meta.json":
                data = json.dumps({**json.loads(data), "schema": 99}).encode()
            dst.writestr(item, data)
    with pytest.raises(ValueError, match="schema 99"):
        Reference.from_bytes(buf.getvalue())


def test_reference_build_refuses_mismatched_arrays() -> None:
    probs, emb, images = synthetic(100, seed=2)
    with pytest.raises(ValueError, match="as many rows"):
        Reference.build(probs[:50], emb, images)
    with pytest.raises(ValueError, match="float images must be in"):
        Reference.build(probs, emb, images.astype(np.float32))  # 0..255, not 0..1


# --------------------------------------------------------------------------- check_batch


def test_a_batch_from_the_same_distribution_is_ok(reference: Reference) -> None:
    health = check_batch(reference, *synthetic(2000, seed=11), POLICY)
    assert health.status == OK, health.summary_line()
    assert health.fired == ()
    assert health.model_version == 7
    assert [c.name for c in health.checks] == list(monitor.TESTS)


@pytest.mark.parametrize("shift, fired, status", [
    ({"ink": 0.25}, {"mean_intensity", "stroke_area"}, WARN),  # input only: WARN at most
    ({"confidence": 0.75}, {"confidence"}, ALARM),
    ({"emb_shift": 0.5}, {"embeddings"}, ALARM),
    ({"classes": np.array([0, 1, 2])}, {"prediction_rates"}, ALARM),
])
def test_a_shifted_batch_fires_the_right_tests(reference: Reference, shift: dict[str, Any],
                                               fired: set[str], status: str) -> None:
    health = check_batch(reference, *synthetic(2000, seed=12, **shift), POLICY)
    assert set(health.fired) == fired, health.summary_line()
    assert health.status == status
    for check in health.checks:
        assert (check.p_corrected < POLICY.alpha) or not check.fired


def test_a_small_shifted_batch_is_not_flagged_on_effect_size_alone(reference: Reference) -> None:
    # Ten images carry too little evidence: the p-value, not the effect size, decides.
    health = check_batch(reference, *synthetic(10, seed=13, confidence=0.94), POLICY)
    confidence = health.check("confidence")
    assert confidence.effect_size > POLICY.confidence_warn_ks
    assert confidence.p_corrected >= POLICY.alpha and health.status == OK


def test_check_corrects_the_p_values_with_holm(reference: Reference) -> None:
    health = check_batch(reference, *synthetic(300, seed=14, confidence=0.93), POLICY)
    raw = [c.p_value for c in health.checks]
    assert [c.p_corrected for c in health.checks] == pytest.approx(drift.holm(raw).tolist())
    assert all(c.p_corrected >= c.p_value for c in health.checks)


def test_check_is_deterministic_and_takes_float_images(reference: Reference) -> None:
    probs, emb, images = synthetic(800, seed=15, emb_shift=0.1)
    one = check_batch(reference, probs, emb, images, POLICY)
    two = check_batch(reference, probs, emb, images.astype(np.float32) / 255, POLICY)
    assert one == two


def test_health_report_is_strict_json(reference: Reference) -> None:
    health = check_batch(reference, *synthetic(500, seed=16, ink=0.3), POLICY)
    report = json.loads(json.dumps(health.to_dict(), allow_nan=False))
    assert report["status"] == health.status
    assert report["fired"] == list(health.fired)
    assert {c["name"] for c in report["checks"]} == set(monitor.TESTS)
    assert report["checks"][0]["alarm_limit"] is None  # the input tests never ALARM
    assert health.summary_line().startswith(f"{health.status}: 500 images; fired: ")


@pytest.mark.parametrize("cut, problem", [
    ({"probs": slice(0, 5)}, "as many rows"),
    ({"embeddings": slice(0, 5)}, "as many rows"),
    ({"images": slice(0, 0), "probs": slice(0, 0), "embeddings": slice(0, 0)}, ">= 1 image"),
])
def test_check_refuses_mismatched_arrays(reference: Reference, cut: dict[str, slice],
                                         problem: str) -> None:
    arrays = dict(zip(("probs", "embeddings", "images"), synthetic(20, seed=17), strict=True))
    arrays = {k: v[cut.get(k, slice(None))] for k, v in arrays.items()}
    with pytest.raises(ValueError, match=problem):
        check_batch(reference, arrays["probs"], arrays["embeddings"], arrays["images"], POLICY)


def test_check_refuses_another_models_outputs(reference: Reference) -> None:
    probs, emb, images = synthetic(20, seed=18)
    with pytest.raises(ValueError, match="another model"):
        check_batch(reference, probs, np.zeros((20, DIM + 1), np.float32), images, POLICY)
    with pytest.raises(ValueError, match="classes"):
        check_batch(reference, probs[:, :5], emb, images, POLICY)


def test_check_scored_agrees_with_check_batch(reference: Reference) -> None:
    probs, emb, images = synthetic(900, seed=19, emb_shift=0.2)
    full = check_batch(reference, probs, emb, images, POLICY)
    assert monitor.check_scored(reference, probs.max(axis=1), probs.argmax(axis=1), emb, images,
                                POLICY) == full
    # A sharded run keeps only some embedding rows: the other tests are unchanged.
    part = monitor.check_scored(reference, probs.max(axis=1), probs.argmax(axis=1), emb[::3],
                                images, POLICY)
    assert part.check("confidence") == full.check("confidence")
    assert part.check("embeddings").details["batch_rows"] == 300
    with pytest.raises(ValueError, match=r"predicted classes must be in 0\.\.9"):
        monitor.check_scored(reference, probs.max(axis=1), probs.argmax(axis=1) + 5, emb, images,
                             POLICY)


# --------------------------------------------------------------------------- policy


@pytest.mark.parametrize("override, param", [
    ({"alpha": 0.0}, "alpha"),
    ({"alpha": 0.9}, "alpha"),
    ({"alpha": float("nan")}, "alpha"),
    ({"alpha": "0.01"}, "alpha"),
    ({"ink_warn_ks": 1.5}, "ink_warn_ks"),
    ({"confidence_warn_ks": 0.3, "confidence_alarm_ks": 0.2}, "confidence_warn_ks"),
    ({"embedding_alarm_mmd": -0.1}, "embedding_alarm_mmd"),
    ({"rates_warn_tvd": True}, "rates_warn_tvd"),
    ({"embedding_sample": 2.5}, "embedding_sample"),
    ({"permutations": 99}, "permutations"),  # 5 / 100 >= alpha 0.01: MMD could never fire
    ({"permutation_stop": 0}, "permutation_stop"),
    ({"seed": -1}, "seed"),
])
def test_policy_names_the_bad_parameter(override: dict[str, Any], param: str) -> None:
    with pytest.raises(ConfigError, match=f"parameter '{param}'"):
        MonitorPolicy(**override)


def test_policy_limits_and_defaults() -> None:
    policy = MonitorPolicy()
    assert policy.limits("stroke_area") == (policy.ink_warn_ks, None)
    assert policy.limits("embeddings") == (policy.embedding_warn_mmd, policy.embedding_alarm_mmd)
    assert MonitorPolicy(permutations=499, alpha=0.02).permutations == 499


# --------------------------------------------------------------------------- Forward


def _tiny_model() -> Any:
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input(shape=(28, 28)),
        keras.layers.Flatten(),
        keras.layers.Dense(12, activation="relu"),
        keras.layers.Dense(CLASSES, activation="softmax", name="probabilities"),
    ])


def test_forward_gives_model_predict_probabilities_and_the_hidden_layer() -> None:
    model = _tiny_model()
    images = synthetic(70, seed=20)[2]
    x = images.astype(np.float32) / 255
    forward = monitor.Forward(model)
    probs, emb = forward(images, batch_size=32)  # three batches, the last one partial
    expected = model.predict(x, batch_size=32, verbose=0)
    np.testing.assert_allclose(probs, expected, rtol=1e-6, atol=1e-6)  # jax: ~4e-7 apart
    kernel, bias = model.layers[1].get_weights()
    np.testing.assert_allclose(emb, np.maximum(x.reshape(70, -1) @ kernel + bias, 0),
                               rtol=1e-5, atol=1e-5)
    assert emb.shape == (70, 12) and forward.embedding_dim == 12
    assert forward(images[:0])[0].shape == (0, CLASSES)


def test_forward_feeds_a_reference_and_a_check() -> None:
    model = _tiny_model()
    forward = monitor.Forward(model)
    images = synthetic(300, seed=21)[2]
    ref = Reference.build(*forward(images[:200]), images[:200], embedding_sample=100)
    health = check_batch(ref, *forward(images[200:]), images[200:], POLICY)
    assert health.n_images == 100 and health.status in (OK, WARN, ALARM)


def test_forward_needs_a_model_with_a_graph() -> None:
    import keras

    unbuilt = keras.Sequential([keras.layers.Dense(3)])
    with pytest.raises(ValueError, match=r"keras\.Input"):
        monitor.Forward(unbuilt)
