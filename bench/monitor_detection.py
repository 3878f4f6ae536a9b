"""Monitoring: does ``check_batch`` flag the batches the champion does worse on, and only those?

A fast_mlp is trained on real MNIST (the preprocess stage's split; cached under ``--cache``, so a
rerun skips training) and its :class:`~mnist_tasks.monitor.Reference` built from its validation
split. Then batches of 2,000 images are cut from the real MNIST **test** set and shifted:
geometric (rotation, shift, zoom, shear), photometric (contrast, brightness, inversion, gamma,
blur, noise) and others (thickening, erosion, occlusion, class-imbalanced batches, shifted
images mixed with clean ones). For each, the champion's true accuracy (the labels are known)
and the monitor's status.

Two disjoint sets of shift kinds and seeds: **TUNING** (the thresholds were chosen on it:
``--tune`` prints the rule's proposal) and **REPORT** (never looked at while tuning), each
with 20 clean batches of its own. Goals on the REPORT set with the shipped
``MonitorPolicy()``: every batch whose accuracy is >= 5 points below the benchmark is flagged
(WARN or ALARM); at most 1 of the 20 clean batches is. Last, the cost of monitoring a
10,000-image batch (the two-output forward pass plus ``check_batch``) against scoring alone
(``score.predict_images``, what the scoring stage calls), in this process; goal <= 1.5x.

    .venv/bin/python bench/monitor_detection.py --source ../shared/datasets/mnist
    .venv/bin/python bench/monitor_detection.py --tune      # also the tuning rule's proposal
    .venv/bin/python bench/monitor_detection.py --preset seed_mlp   # another champion
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from train import load_mnist  # noqa: E402  (bench/ is on sys.path when run)

from mnist_tasks import monitor, score  # noqa: E402
from mnist_tasks.config import train_config  # noqa: E402

BATCH = 2000
N_CLEAN = 20
DROP_POINTS = 5.0  # a batch this many accuracy points below the benchmark must be flagged
MAX_CLEAN_FLAGGED = 1  # of N_CLEAN clean batches
COST_IMAGES = 10_000
GOAL_COST_RATIO = 1.5
MARGIN = 1.5  # tuning rule: warn limit = MARGIN x the largest clean effect; alarm = 2 x warn

Shift = Callable[[np.ndarray, np.random.Generator], np.ndarray]


# --------------------------------------------------------------------------- shifts


def _affine(images: np.ndarray, mats: np.ndarray, offsets: np.ndarray | None = None
            ) -> np.ndarray:
    """Each image resampled (bilinear, background 0) through its own 2x2 matrix, which maps an
    output pixel's position (from the centre) to where it is read in the input."""
    from scipy import ndimage

    n, rows, cols = images.shape
    centre = np.array([(rows - 1) / 2, (cols - 1) / 2])
    rr, cc = np.meshgrid(np.arange(rows) - centre[0], np.arange(cols) - centre[1], indexing="ij")
    src = np.einsum("nij,jhw->nihw", mats, np.stack([rr, cc])) + centre[None, :, None, None]
    if offsets is not None:
        src -= offsets[:, :, None, None]
    coords = np.empty((3, n, rows, cols))
    coords[0] = np.arange(n)[:, None, None]
    coords[1:] = src.transpose(1, 0, 2, 3)
    out = ndimage.map_coordinates(images.astype(np.float32), coords, order=1, cval=0.0)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _signs(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.choice([-1.0, 1.0], size=n)


def rotate(degrees: float) -> Shift:
    def f(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        t = np.deg2rad(degrees) * _signs(len(x), rng)
        c, s = np.cos(t), np.sin(t)
        return _affine(x, np.stack([np.stack([c, s], -1), np.stack([-s, c], -1)], 1))
    return f


def translate(pixels: float) -> Shift:
    def f(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        phi = rng.uniform(0, 2 * np.pi, len(x))
        eye = np.broadcast_to(np.eye(2), (len(x), 2, 2))
        return _affine(x, eye, pixels * np.stack([np.sin(phi), np.cos(phi)], 1))
    return f


def zoom(factor: float) -> Shift:
    def f(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return _affine(x, np.broadcast_to(np.eye(2) / factor, (len(x), 2, 2)))
    return f


def shear(amount: float) -> Shift:
    def f(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        mats = np.tile(np.eye(2), (len(x), 1, 1))
        mats[:, 1, 0] = amount * _signs(len(x), rng)  # columns move with the row
        return _affine(x, mats)
    return f


def _pixels(fn: Callable[[np.ndarray], np.ndarray]) -> Shift:
    def f(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.clip(np.rint(fn(x.astype(np.float64))), 0, 255).astype(np.uint8)
    return f


def contrast(c: float) -> Shift:
    return _pixels(lambda x: x * c)


def brightness(b: float) -> Shift:
    return _pixels(lambda x: x + b)


def gamma(g: float) -> Shift:
    return _pixels(lambda x: 255.0 * (x / 255.0) ** g)


def invert() -> Shift:
    return _pixels(lambda x: 255.0 - x)


def blur(sigma: float) -> Shift:
    from scipy import ndimage

    return _pixels(lambda x: ndimage.gaussian_filter(x, sigma=(0, sigma, sigma)))


def gaussian_noise(sigma: float) -> Shift:
    def f(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        noisy = x + rng.normal(0.0, sigma * 255.0, x.shape)
        return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    return f


def salt_pepper(fraction: float) -> Shift:
    def f(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out = x.copy()
        hit = rng.random(x.shape) < fraction
        out[hit] = rng.choice(np.array([0, 255], np.uint8), size=int(hit.sum()))
        return out
    return f


def thicken(size: int) -> Shift:
    from scipy import ndimage

    return lambda x, rng: ndimage.grey_dilation(x, size=(1, size, size))


def erode(size: int) -> Shift:
    from scipy import ndimage

    return lambda x, rng: ndimage.grey_erosion(x, size=(1, size, size))


def occlude(size: int, value: int) -> Shift:
    """A size x size square of ``value`` at a random place over the digit's central area."""
    def f(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out = x.copy()
        top = rng.integers(4, 24 - size + 1, len(x))
        left = rng.integers(4, 24 - size + 1, len(x))
        for i, (t, left_i) in enumerate(zip(top, left, strict=True)):
            out[i, t:t + size, left_i:left_i + size] = value
        return out
    return f


def scratch(width: int) -> Shift:
    """A white line ``width`` pixels thick across the whole image, at a random height."""
    def f(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out = x.copy()
        for i, r in enumerate(rng.integers(6, 22 - width + 1, len(x))):
            out[i, r:r + width, :] = 255
        return out
    return f


def mixed(shift: Shift, fraction: float) -> Shift:
    """``fraction`` of the images shifted, the rest left clean."""
    def f(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out = x.copy()
        which = rng.random(len(x)) < fraction
        out[which] = shift(x[which], rng)
        return out
    return f


# --------------------------------------------------------------------------- batches


@dataclass(frozen=True)
class Spec:
    """One batch: a shift (None: clean) of images drawn from the test set, or a class prior."""

    kind: str
    severity: str
    seed: int
    shift: Shift | None = None
    digits: tuple[int, ...] = ()  # draw only these digits (label-prior shift)
    dirichlet: float = 0.0  # draw classes with Dirichlet(this) weights (label-prior shift)


def tuning_specs() -> list[Spec]:
    s = 100
    specs = [Spec("rotation", f"±{d}°", s + i, rotate(d)) for i, d in enumerate((10, 20, 30))]
    specs += [Spec("shift", f"{p} px", s + 10 + i, translate(p)) for i, p in enumerate((1, 2, 3))]
    specs += [Spec("contrast", f"x{c}", s + 20 + i, contrast(c)) for i, c in enumerate((0.5, 0.25))]
    specs += [Spec("blur", f"σ={g}", s + 30 + i, blur(g)) for i, g in enumerate((0.7, 1.0, 1.5))]
    specs += [Spec("gaussian noise", f"σ={g}", s + 40 + i, gaussian_noise(g))
              for i, g in enumerate((0.1, 0.2, 0.35))]
    specs += [Spec("thickening", f"{k}x{k} dilation", s + 50 + i, thicken(k))
              for i, k in enumerate((2, 3))]
    specs += [Spec("occlusion", f"black {k}x{k}", s + 60 + i, occlude(k, 0))
              for i, k in enumerate((6, 10))]
    specs += [Spec("label prior", "Dirichlet(0.5)", s + 70, dirichlet=0.5)]
    specs += [Spec("mixed", f"{int(f * 100)} % rotated ±30°", s + 80 + i, mixed(rotate(30), f))
              for i, f in enumerate((0.25, 0.5))]
    return specs


def report_specs() -> list[Spec]:
    s = 1000
    specs = [Spec("zoom", f"x{z}", s + i, zoom(z)) for i, z in enumerate((0.8, 0.7, 1.2, 1.35))]
    specs += [Spec("shear", f"±{a}", s + 10 + i, shear(a)) for i, a in enumerate((0.2, 0.4, 0.6))]
    specs += [Spec("brightness", f"+{b}", s + 20 + i, brightness(b))
              for i, b in enumerate((40, 80))]
    specs += [Spec("inversion", "all", s + 30, invert())]
    specs += [Spec("gamma", f"γ={g}", s + 40 + i, gamma(g)) for i, g in enumerate((0.5, 2.0, 3.0))]
    specs += [Spec("salt and pepper", f"{int(p * 100)} %", s + 50 + i, salt_pepper(p))
              for i, p in enumerate((0.02, 0.05, 0.1))]
    specs += [Spec("erosion", "2x2", s + 60, erode(2))]
    specs += [Spec("occlusion", f"white line {w} px", s + 70 + i, scratch(w))
              for i, w in enumerate((2, 4))]
    specs += [Spec("label prior", "digits 1, 7, 9 only", s + 80, digits=(1, 7, 9)),
              Spec("label prior", "digits 3, 5, 8 only", s + 81, digits=(3, 5, 8))]
    specs += [Spec("mixed", "10 % inverted", s + 90, mixed(invert(), 0.1)),
              Spec("mixed", "30 % sheared ±0.6", s + 91, mixed(shear(0.6), 0.3)),
              Spec("mixed", "50 % zoomed x0.7", s + 92, mixed(zoom(0.7), 0.5))]
    return specs


def clean_specs(first_seed: int) -> list[Spec]:
    return [Spec("clean", "-", first_seed + i) for i in range(N_CLEAN)]


def make_batch(spec: Spec, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(spec.seed)
    if spec.digits:
        pool = np.flatnonzero(np.isin(y, spec.digits))
        pick = rng.choice(pool, size=min(BATCH, len(pool)), replace=False)
    elif spec.dirichlet:
        weights = rng.dirichlet(np.full(10, spec.dirichlet))[y]
        pick = rng.choice(len(y), size=BATCH, replace=False, p=weights / weights.sum())
    else:
        pick = rng.choice(len(y), size=BATCH, replace=False)
    images = x[pick]
    if spec.shift is not None:
        images = spec.shift(images, rng)
    return images, y[pick]


# --------------------------------------------------------------------------- model


def champion(data: dict[str, np.ndarray], cache: Path, preset: str, epochs: int | None
             ) -> tuple[Any, np.ndarray, np.ndarray]:
    """The trained model (from the cache when there) and its validation split (uint8)."""
    import keras

    from mnist_tasks.artifacts import load_keras_model
    from mnist_tasks.preprocess import split_indices

    cfg = train_config(preset, epochs=epochs)
    train_idx, val_idx = split_indices(len(data["y_train"]), cfg.val_fraction, cfg.seed)
    key = hashlib.sha256(f"{cfg}|{keras.__version__}|{keras.backend.backend()}|"
                         f"{data['x_train'][:100].tobytes().hex()}".encode()).hexdigest()[:16]
    path = cache / f"{preset}-{key}.keras"
    if path.is_file():
        print(f"model: {path} (cached)")
        model = load_keras_model(path)
    else:
        from mnist_tasks.train import fit_arrays

        x = data["x_train"].astype(np.float32) / 255.0
        start = time.perf_counter()
        fit = fit_arrays(cfg, x[train_idx], data["y_train"][train_idx], x[val_idx],
                         data["y_train"][val_idx])
        print(f"model: {preset}, {cfg.epochs} epochs, trained in "
              f"{time.perf_counter() - start:.1f} s; cached as {path}")
        cache.mkdir(parents=True, exist_ok=True)
        fit.model.save(path)
        model = fit.model
    return model, data["x_train"][val_idx], data["y_train"][val_idx]


# --------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class Row:
    spec: Spec
    accuracy: float
    drop: float  # points below the benchmark
    health: monitor.BatchHealth


def evaluate(specs: Sequence[Spec], forward: monitor.Forward, ref: monitor.Reference,
             data: dict[str, np.ndarray], policy: monitor.MonitorPolicy,
             benchmark: float) -> list[Row]:
    rows = []
    for spec in specs:
        images, labels = make_batch(spec, data["x_test"], data["y_test"])
        probs, emb = forward(images)
        acc = float((probs.argmax(axis=1) == labels).mean())
        rows.append(Row(spec, acc, 100 * (benchmark - acc),
                        monitor.check_batch(ref, probs, emb, images, policy)))
    return rows


def table(rows: Sequence[Row]) -> str:
    lines = ["| shift | severity | true accuracy | drop (points) | status | tests fired |",
             "|---|---|---:|---:|---|---|"]
    for r in rows:
        fired = ", ".join(f"{c.name} ({c.effect}={c.effect_size:.3g})"
                          for c in r.health.checks if c.fired) or "–"
        lines.append(f"| {r.spec.kind} | {r.spec.severity} | {100 * r.accuracy:.2f} % | "
                     f"{r.drop:+.2f} | {r.health.status} | {fired} |")
    return "\n".join(lines)


def effects_table(rows: Sequence[Row]) -> str:
    """Each test's effect size (and Holm-corrected p-value) per batch, whatever its limits."""
    names = list(monitor.TESTS)
    lines = ["| shift | severity | drop | " + " | ".join(names) + " |",
             "|---|---|---:|" + "---:|" * len(names)]
    for r in rows:
        cells = [f"{r.health.check(n).effect_size:.3g} (p={r.health.check(n).p_corrected:.1g})"
                 for n in names]
        lines.append(f"| {r.spec.kind} | {r.spec.severity} | {r.drop:+.2f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def goals(name: str, shifted: Sequence[Row], clean: Sequence[Row]) -> bool:
    must = [r for r in shifted if r.drop >= DROP_POINTS]
    caught = [r for r in must if r.health.status != monitor.OK]
    false = [r for r in clean if r.health.status != monitor.OK]
    flagged_small = [r for r in shifted if r.drop < DROP_POINTS and r.health.status != monitor.OK]
    ok = len(caught) == len(must) and len(false) <= MAX_CLEAN_FLAGGED
    print(f"\n{name}: batches >= {DROP_POINTS:g} points below the benchmark flagged: "
          f"{len(caught)}/{len(must)} (goal: all); clean batches flagged: {len(false)}/"
          f"{len(clean)} (goal: <= {MAX_CLEAN_FLAGGED}); shifted batches under "
          f"{DROP_POINTS:g} points flagged anyway: {len(flagged_small)}/"
          f"{len(shifted) - len(must)}; goals {'met' if ok else 'NOT met'}")
    for r in must:
        if r.health.status == monitor.OK:
            print(f"  MISSED: {r.spec.kind} {r.spec.severity} (drop {r.drop:.2f} points)")
    return ok


def propose(clean: Sequence[Row]) -> monitor.MonitorPolicy:
    """The tuning rule, on clean tuning batches checked with every limit at 0 (so each check
    carries its effect size): a test's warn limit is MARGIN x the largest effect it showed on
    a clean batch (2 significant digits), its alarm limit twice that; the two ink tests share
    one warn limit and have no alarm limit."""
    def warn(*names: str) -> float:
        largest = max(r.health.check(n).effect_size for r in clean for n in names)
        return float(f"{MARGIN * max(largest, 1e-4):.2g}")

    conf, emb, rates = warn("confidence"), warn("embeddings"), warn("prediction_rates")
    return dataclasses.replace(
        monitor.MonitorPolicy(), ink_warn_ks=warn("mean_intensity", "stroke_area"),
        confidence_warn_ks=conf, confidence_alarm_ks=float(f"{2 * conf:.2g}"),
        embedding_warn_mmd=emb, embedding_alarm_mmd=float(f"{2 * emb:.2g}"),
        rates_warn_tvd=rates, rates_alarm_tvd=float(f"{2 * rates:.2g}"))


# --------------------------------------------------------------------------- cost


def cost(model: Any, forward: monitor.Forward, ref: monitor.Reference, x: np.ndarray,
         policy: monitor.MonitorPolicy, repeats: int) -> bool:
    """Scoring alone against scoring with monitoring, on 10,000 test images as they are (the
    MMD stops permuting early) and rotated ±20° (it runs all its permutations), interleaved."""
    from mnist_tasks.artifacts import predict_proba

    batches = {"clean": x[:COST_IMAGES],
               "rotated ±20°": rotate(20)(x[:COST_IMAGES], np.random.default_rng(7))}
    score.predict_images(model, batches["clean"])  # warm-up (tracing)
    forward(batches["clean"])
    times: dict[str, list[float]] = {"predict": [], "proba": [], "forward": []}
    times.update({f"check {b}": [] for b in batches})
    for _ in range(repeats):
        for name, batch in batches.items():
            t0 = time.perf_counter()
            if name == "clean":
                score.predict_images(model, batch)
                t1 = time.perf_counter()
                predict_proba(model, batch.astype(np.float32) / 255.0)
                t2 = time.perf_counter()
                times["predict"].append(t1 - t0)
                times["proba"].append(t2 - t1)
                t0 = time.perf_counter()
            probs, emb = forward(batch)
            t1 = time.perf_counter()
            monitor.check_batch(ref, probs, emb, batch, policy)
            t2 = time.perf_counter()
            if name == "clean":
                times["forward"].append(t1 - t0)
            times[f"check {name}"].append(t2 - t1)
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["predict"]
    print(f"\nCost on {COST_IMAGES:,} test images (median of {repeats}, interleaved):\n")
    print("| path | seconds | vs scoring alone |")
    print("|---|---:|---:|")
    print(f"| scoring alone: `score.predict_images` (model.predict) | {base:.3f} | 1.00x |")
    print(f"| (for comparison) `artifacts.predict_proba` (predict_on_batch) | {med['proba']:.3f} "
          f"| {med['proba'] / base:.2f}x |")
    print(f"| `Forward`: probabilities + embeddings, one pass | {med['forward']:.3f} | "
          f"{med['forward'] / base:.2f}x |")
    met = True
    for name in batches:
        check = med[f"check {name}"]
        total = med["forward"] + check
        met &= total / base <= GOAL_COST_RATIO
        print(f"| `check_batch`, {name} batch | {check:.3f} | {check / base:.2f}x |")
        print(f"| **monitored scoring, {name} batch** (Forward + check_batch) | {total:.3f} | "
              f"**{total / base:.2f}x** (goal <= {GOAL_COST_RATIO}x; "
              f"{total / med['proba']:.2f}x predict_on_batch) |")
    print(f"\ncost goal {'met' if met else 'NOT met'}")
    return met


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--source", type=Path, default=REPO.parent / "shared/datasets/mnist")
    parser.add_argument("--cache", type=Path,
                        default=Path(tempfile.gettempdir()) / "mnist-monitor-bench")
    parser.add_argument("--preset", default="fast_mlp",
                        help="the champion's preset (the defaults were tuned on fast_mlp)")
    parser.add_argument("--epochs", type=int, default=None, help="default: the preset's")
    parser.add_argument("--repeats", type=int, default=5, help="cost measurement repeats")
    parser.add_argument("--tune", action="store_true",
                        help="also print the tuning rule's proposal from the TUNING set")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    start = time.perf_counter()

    data = load_mnist(args.source)
    model, x_val, _ = champion(data, args.cache, args.preset, args.epochs)
    forward = monitor.Forward(model)
    probs, _ = forward(data["x_test"])
    benchmark = float((probs.argmax(axis=1) == data["y_test"]).mean())
    ref = monitor.Reference.build(*forward(x_val), x_val, benchmark_accuracy=benchmark)
    policy = monitor.MonitorPolicy()
    print(f"benchmark accuracy {100 * benchmark:.2f} %; reference from {ref.n_images:,} "
          f"validation images, {len(ref.to_bytes()):,} bytes; policy {policy.to_dict()}")

    if args.tune:
        zero: dict[str, Any] = {f.name: 0.0 for f in dataclasses.fields(policy)
                                if "_warn_" in f.name or "_alarm_" in f.name}
        permissive = dataclasses.replace(policy, **zero)
        raw_clean = evaluate(clean_specs(200), forward, ref, data, permissive, benchmark)
        raw_shift = evaluate(tuning_specs(), forward, ref, data, permissive, benchmark)
        print("\n### TUNING set: effect sizes (Holm-corrected p)\n")
        print(effects_table([*raw_shift, *raw_clean]))
        proposal = propose(raw_clean)
        limits = {k: v for k, v in proposal.to_dict().items() if "_warn_" in k or "_alarm_" in k}
        same = proposal == policy
        print(f"\nTuning rule's proposal (from the TUNING set only): {limits}; the shipped "
              f"defaults are {'the same' if same else 'DIFFERENT: ' + str(policy.to_dict())}")

    met = True
    for name, specs, first_clean in (("TUNING", tuning_specs(), 200),
                                     ("REPORT", report_specs(), 2000)):
        shifted = evaluate(specs, forward, ref, data, policy, benchmark)
        clean = evaluate(clean_specs(first_clean), forward, ref, data, policy, benchmark)
        print(f"\n### {name} set: {len(shifted)} shifted batches of {BATCH:,} test images\n")
        print(table(shifted))
        flagged = [f"seed {r.spec.seed}: {r.health.summary_line()}"
                   for r in clean if r.health.fired]
        print(f"\n{name} clean batches ({N_CLEAN}, seeds {first_clean}-"
              f"{first_clean + N_CLEAN - 1}): accuracy {100 * min(r.accuracy for r in clean):.2f}"
              f"-{100 * max(r.accuracy for r in clean):.2f} %; flagged: {flagged or 'none'}")
        ok = goals(name, shifted, clean)
        met &= ok or name == "TUNING"

    met &= cost(model, forward, ref, data["x_test"], policy, args.repeats)
    print(f"\nbench wall time {time.perf_counter() - start:.0f} s; REPORT and cost goals "
          f"{'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
