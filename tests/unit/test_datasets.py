"""Dataset versions (stable id, manifest, cached arrays), the CLI, and the demo-data commands.

Synthetic digits and a tiny synthetic "MNIST" folder; the file store only (S3 is in
tests/integration/test_increments_s3.py).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from mnist_tasks import datasets as ds
from mnist_tasks import datasets_cli, demo_data, idx
from mnist_tasks.config import MNIST_FILES, ConfigError, IngestConfig
from mnist_tasks.datasets import (
    BaseInfo,
    DatasetError,
    list_versions,
    load_arrays,
    load_version,
    save_version,
    version_id,
)
from mnist_tasks.increment_files import (
    MARKER,
    RawIncrement,
    discover,
    payload_sha256,
    read_increment,
)
from mnist_tasks.increments import (
    ACCEPTED,
    QUARANTINED,
    CheckedIncrement,
    IncrementPolicy,
    Reference,
    check_all,
    validate_increment,
)
from mnist_tasks.storage import LocalStore
from tests.helpers import increment_reference, write_folder
from tests.helpers import sparse_digits as digits

BASE = BaseInfo({name: hashlib.sha256(name.encode()).hexdigest()
                 for name in MNIST_FILES.values()}, train_count=2000, test_count=300)


@pytest.fixture(scope="module")
def reference() -> Reference:
    return increment_reference()


def checked(inc_id: str, n: int, seed: int, reference: Reference,
            policy: IncrementPolicy | None = None) -> CheckedIncrement:
    x, y = digits(n, seed)
    raw = RawIncrement(inc_id, f"file:///src/increments/{inc_id}", "idx", x, y,
                       payload_sha256(x, y), ())
    return validate_increment(raw, reference=reference, policy=policy or IncrementPolicy())


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


# --------------------------------------------------------------------------- the id


def test_the_id_is_stable_and_ignores_quarantined_increments_and_provenance(
    store: LocalStore, reference: Reference
) -> None:
    a, b = checked("a", 100, 10, reference), checked("b", 50, 11, reference)
    bad = checked("c-tiny", 5, 12, reference)  # too few images
    assert bad.status == QUARANTINED
    v1 = save_version(store, BASE, [a, b], fresh_fraction=0.2, created_by="run-1")
    v2 = save_version(LocalStore(store.root.parent / "other"), BASE, [b, bad, a],
                      fresh_fraction=0.2, created_by="run-2", created_at="2030-01-01T00:00:00")
    assert v1.id == v2.id and len(v1.id) == 16
    assert [q.id for q in v2.quarantined] == ["c-tiny"] and v1.quarantined == ()
    assert v1.id == version_id(BASE, v1.increments, 0.2)
    # What does change it: another accepted increment, the fresh fraction, the base.
    v3 = save_version(store, BASE, [a], fresh_fraction=0.2)
    assert v3.id != v1.id
    a3 = checked("a", 100, 10, reference, IncrementPolicy(fresh_fraction=0.3))
    b3 = checked("b", 50, 11, reference, IncrementPolicy(fresh_fraction=0.3))
    assert save_version(store, BASE, [a3, b3], fresh_fraction=0.3).id != v1.id
    other_base = BaseInfo(BASE.payload_sha256, 1999, 300)
    assert version_id(other_base, v1.increments, 0.2) != v1.id


def test_the_id_hashes_exactly_the_documented_fields(store: LocalStore,
                                                     reference: Reference) -> None:
    v = save_version(store, BASE, [checked("a", 100, 10, reference)], fresh_fraction=0.2)
    e = v.increments[0]
    base = {"payload_sha256": dict(BASE.payload_sha256), "train": 2000, "test": 300}
    doc = {"schema": ds.SCHEMA, "base": base,
           "increments": [{"id": "a", "payload_sha256": e.payload_sha256,
                           "counts": dict(sorted(e.counts.items())), "train": 80, "fresh": 20}],
           "fresh_fraction": 0.2}
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    assert v.id == hashlib.sha256(canonical.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- the store


def test_save_is_idempotent_and_arrays_round_trip(store: LocalStore,
                                                  reference: Reference) -> None:
    a = checked("a", 100, 10, reference)
    v = save_version(store, BASE, [a], fresh_fraction=0.2, created_by="run-1")
    key = f"datasets/{v.id}/manifest.json"
    first = store.read_bytes(key)
    again = save_version(store, BASE, [a], fresh_fraction=0.2, created_by="run-2")
    assert store.read_bytes(key) == first and again.created_by == "run-1"  # first writer wins
    assert store.list("datasets/arrays") == [v.increments[0].arrays_key]
    arrays = load_arrays(store, v.increments[0])
    np.testing.assert_array_equal(arrays["x_train"], a.train_images)
    np.testing.assert_array_equal(arrays["y_fresh"], a.fresh_labels)
    assert load_version(store, v.id) == v


def test_a_later_quarantine_is_added_to_an_existing_manifest(store: LocalStore,
                                                             reference: Reference) -> None:
    a = checked("a", 100, 10, reference)
    v = save_version(store, BASE, [a], fresh_fraction=0.2)
    bad = checked("z-leak", 5, 12, reference)
    v2 = save_version(store, BASE, [bad], fresh_fraction=0.2, previous=v)
    assert v2.id == v.id and [q.id for q in v2.quarantined] == ["z-leak"]
    assert [q.id for q in load_version(store, v.id).quarantined] == ["z-leak"]


def test_previous_increments_are_carried_without_their_arrays(store: LocalStore,
                                                              reference: Reference) -> None:
    v1 = save_version(store, BASE, [checked("a", 100, 10, reference)], fresh_fraction=0.2)
    v2 = save_version(store, BASE, [checked("b", 60, 13, reference)], fresh_fraction=0.2,
                      previous=v1)
    assert v2.increment_ids == ("a", "b") and v2.increments[0] == v1.increments[0]
    images = ds.accepted_images(store, v2)
    assert [len(i) for i in images] == [100, 60]
    ref = Reference.build(*digits(2000, seed=1), digits(300, seed=2)[0], accepted_images=images)
    assert checked("b", 60, 13, ref).counts["duplicates_accepted"] == 60  # already accepted
    bad = checked("z", 5, 14, reference)
    v3 = save_version(store, BASE, [bad], fresh_fraction=0.2, previous=v2)
    assert v3.id == v2.id and v3.known_ids == {"a", "b", "z"}
    # 60 images = 6 per digit; round(6 * 0.2) = 1 fresh per digit.
    assert v2.train_images == 2000 + 80 + 50 and v2.fresh_images == 20 + 10
    changed = checked("a", 100, 99, reference)  # other digits under the same id
    with pytest.raises(DatasetError, match=r"increment 'a' changed: payload SHA-256"):
        save_version(store, BASE, [changed], fresh_fraction=0.2, previous=v2)
    with pytest.raises(DatasetError, match=r"fresh_fraction 0.3 differs from the previous"):
        save_version(store, BASE, [], fresh_fraction=0.3, previous=v2)


def test_unknown_malformed_and_tampered_versions_are_named(store: LocalStore,
                                                           reference: Reference) -> None:
    with pytest.raises(DatasetError, match=r"unknown dataset version '0123456789abcdef': no "
                                           r"file://.*/datasets/0123456789abcdef/manifest"):
        load_version(store, "0123456789abcdef")
    with pytest.raises(DatasetError, match=r"unknown dataset version '\.\./x'"):
        load_version(store, "../x")
    v = save_version(store, BASE, [checked("a", 100, 10, reference)], fresh_fraction=0.2)
    key = f"datasets/{v.id}/manifest.json"
    doc = json.loads(store.read_bytes(key))
    doc["increments"][0]["train"] += 1
    store.write_bytes(key, json.dumps(doc).encode())
    with pytest.raises(DatasetError, match=rf"manifest content hashes to [0-9a-f]{{16}}, not its "
                                           rf"id {v.id}"):
        load_version(store, v.id)
    store.write_bytes(v.increments[0].arrays_key, b"garbage")
    with pytest.raises(DatasetError, match=r"arrays/a-[0-9a-f]{16}\.npz: not a readable npz"):
        load_arrays(store, v.increments[0])


def test_list_versions_oldest_first(store: LocalStore, reference: Reference) -> None:
    assert list_versions(store) == []
    a, b = checked("a", 100, 10, reference), checked("b", 60, 13, reference)
    late = save_version(store, BASE, [a, b], fresh_fraction=0.2, created_at="2026-11-27T00:00")
    early = save_version(store, BASE, [a], fresh_fraction=0.2, created_at="2026-11-20T00:00")
    assert [v.id for v in list_versions(store)] == [early.id, late.id]


# --------------------------------------------------------------------------- the CLI


def test_cli_list_and_show_tables_and_json(store: LocalStore, reference: Reference,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    x, _ = digits(60, 13)
    one = RawIncrement("b-one-digit", "file:///s", "png", x, np.full(60, 3, np.uint8),
                       payload_sha256(x, np.full(60, 3, np.uint8)), ())
    thick = validate_increment(one, reference=reference, policy=IncrementPolicy())
    assert thick.drift_flagged
    v = save_version(store, BASE, [checked("a", 100, 10, reference), thick,
                                   checked("c-tiny", 5, 12, reference)],
                     fresh_fraction=0.2, created_by="run-1", created_at="2026-11-20T00:00:00")
    assert datasets_cli.main(["--store", store.uri, "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["VERSION", "CREATED", "BY", "BASE", "INCREMENTS", "TRAIN",
                              "FRESH", "QUARANTINED", "DRIFT"]
    assert out[1].split() == [v.id, "2026-11-20T00:00:00", "run-1", "2,000", "2", "2,128",
                              "32", "1", "1"]
    assert datasets_cli.main(["--store", store.uri, "list", "--json"]) == 0
    assert [d["id"] for d in json.loads(capsys.readouterr().out)] == [v.id]
    assert datasets_cli.main(["--store", store.uri, "show", v.id]) == 0
    text = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line[:2] in
            ("a ", "b-", "c-")}
    assert rows["a"][:7] == ["a", "ACCEPTED", "idx", "100", "100", "80", "20"]
    assert rows["b-one-digit"][9] == "class_distribution"
    assert rows["c-tiny"][1] == "QUARANTINED"
    assert "c-tiny: too few images: 5 left of 5" in text
    assert "b-one-digit: drift: class_distribution: cramers_v = " in text
    assert datasets_cli.main(["--store", store.uri, "show", v.id, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["id"] == v.id and shown["totals"]["drift_flagged"] == 1


def test_cli_errors_are_one_line_with_status_2(store: LocalStore,
                                               capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    assert datasets_cli.main(["--store", store.uri, "show", "0123456789abcdef"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown dataset version '0123456789abcdef'")
    assert err.count("\n") == 1
    monkeypatch.delenv("MNIST_STORE", raising=False)
    assert datasets_cli.main(["list"]) == 2
    assert capsys.readouterr().err == ("error: parameter 'store' is missing: pass --store or "
                                       "set MNIST_STORE\n")
    with pytest.raises(SystemExit) as exit_info:
        datasets_cli.main(["add-increment", "--mnist", "m", "--out", "o", "--id", "x",
                           "--kind", "gif"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: python -m mnist_tasks.datasets add-increment: argument --kind")
    assert err.count("\n") == 1


# --------------------------------------------------------------------------- demo data


@pytest.fixture
def tiny_mnist(tmp_path: Path) -> Path:
    """A synthetic folder with the four MNIST file names (200 train, 40 test images)."""
    x, y = digits(200, seed=40)
    xt, yt = digits(40, seed=41)
    return write_folder(tmp_path / "mnist", {"x_train": x, "y_train": y, "x_test": xt,
                                             "y_test": yt})


def test_make_demo_lays_out_a_base_and_increments(tiny_mnist: Path, tmp_path: Path) -> None:
    out = tmp_path / "src"
    result = demo_data.make_demo(tiny_mnist, out, base=120, increments=2, size=30, drifted=20)
    assert result["increments"] == ["demo-01", "demo-02", "demo-drifted"]
    sha = json.loads((out / "payload-sha256.json").read_text())
    IngestConfig(source=str(out), checksums=sha)  # the mapping ingest's --checksums takes
    for name, digest in sha.items():
        payload = idx.decompress((out / name).read_bytes(), source=name)
        assert hashlib.sha256(payload).hexdigest() == digest
    base_x = idx.parse_idx(idx.decompress((out / MNIST_FILES["train_images"]).read_bytes(),
                                          source="x"), source="x", ndim=3)
    assert base_x.shape == (120, 28, 28)
    for role in ("test_images", "test_labels"):
        name = MNIST_FILES[role]
        assert (out / name).read_bytes() == (tiny_mnist / name).read_bytes()
    assert (out / "increments" / "demo-02" / MARKER).is_file()
    x, y = digits(200, seed=40)
    found = discover(str(out))
    results = check_all(found, Reference.build(x[:120], y[:120], digits(40, seed=41)[0]),
                        IncrementPolicy())
    assert [(r.id, r.status, r.counts["received"]) for r in results] == [
        ("demo-01", ACCEPTED, 30), ("demo-02", ACCEPTED, 30), ("demo-drifted", ACCEPTED, 20)]
    assert results[1].payload_sha256 == payload_sha256(x[150:180], y[150:180])
    assert results[2].payload_sha256 == payload_sha256(demo_data.thicken(x[180:200]), y[180:200])
    with pytest.raises(ConfigError, match=r"is not empty"):
        demo_data.make_demo(tiny_mnist, out, base=120, increments=1, size=30)
    with pytest.raises(ConfigError, match=r"base 150 \+ 2 x 30 \+ 0 drifted images is more "
                                          r"than the 200"):
        demo_data.make_demo(tiny_mnist, tmp_path / "src2", base=150, increments=2, size=30)


def test_make_demo_never_writes_into_the_repository(tiny_mnist: Path) -> None:
    repo = Path(demo_data.__file__).resolve().parents[1]
    with pytest.raises(ConfigError, match=r"inside the project checkout"):
        demo_data.make_demo(tiny_mnist, repo / "demo-source", base=10, increments=0, size=1)
    assert not (repo / "demo-source").exists()


def test_add_increment_kinds_and_no_overwrite(tiny_mnist: Path, tmp_path: Path) -> None:
    out = tmp_path / "src"
    x, y = digits(200, seed=40)
    r = demo_data.add_increment(tiny_mnist, out, "p1", kind="png", offset=0, size=20)
    assert r["offset"] == 0
    pngs = sorted((out / "increments" / "p1").rglob("*.png"))
    assert len(pngs) == 20 and {p.parent.name for p in pngs} == {str(d) for d in range(10)}
    demo_data.add_increment(tiny_mnist, out, "thick", kind="drifted", size=20)  # the last 20
    demo_data.add_increment(tiny_mnist, out, "inv", kind="drifted", drift="invert", size=20)
    demo_data.add_increment(tiny_mnist, out, "moved", kind="drifted", drift="shift", size=20,
                            seed=3)
    found = {f.id: f for f in discover(str(out)).complete}
    thick = read_increment(found["thick"])
    np.testing.assert_array_equal(thick.labels, y[180:])
    assert (thick.images >= x[180:]).all() and (thick.images > x[180:]).any()
    np.testing.assert_array_equal(read_increment(found["inv"]).images, 255 - x[180:])
    moved = read_increment(found["moved"]).images
    assert not np.array_equal(moved, x[180:])
    with pytest.raises(ConfigError, match=r"increment 'thick' already exists"):
        demo_data.add_increment(tiny_mnist, out, "thick", size=20)
    with pytest.raises(ConfigError, match=r"parameter 'offset' = 190 is invalid"):
        demo_data.add_increment(tiny_mnist, out, "x1", offset=190, size=20)
    with pytest.raises(ConfigError, match=r"invalid increment id 'bad/id'"):
        demo_data.add_increment(tiny_mnist, out, "bad/id", size=20)


@pytest.mark.parametrize("inc_id", ["", "x" * 65, "bad/id", ".."])
def test_cli_add_increment_checks_the_id_before_anything_else(
    inc_id: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "src"
    (out / "increments").mkdir(parents=True)  # an empty id would name this folder itself
    missing = tmp_path / "no-mnist-here"  # never read: the id is refused first
    assert datasets_cli.main(["add-increment", "--mnist", str(missing), "--out", str(out),
                    "--id", inc_id]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: invalid increment id {inc_id!r}: use letters, digits")
    assert [p.name for p in out.rglob("*")] == ["increments"]


def test_cli_add_increment_prints_one_line_and_refuses_overwrite(
    tiny_mnist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["add-increment", "--mnist", str(tiny_mnist), "--out", str(tmp_path / "s"),
            "--id", "2026-11-27", "--split", "test", "--size", "10"]
    assert datasets_cli.main(args) == 0
    assert capsys.readouterr().out.startswith("landed increment 2026-11-27 (idx, 10 test images")
    assert datasets_cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: increment '2026-11-27' already exists") and err.count("\n") == 1
