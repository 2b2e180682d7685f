"""Dataset loading, fingerprints, splits, views and preprocessing (no TensorFlow needed)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from secure_maas.errors import SecureMaasError
from secure_maas.training import datasets
from secure_maas.training.datasets import DatasetError, DatasetNotFound, load_dataset


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


CSV = "a,b,label\n1,2.5,x\n3,4,y\n5,6,x\n"


# --------------------------------------------------------------------------- bundled


@pytest.mark.parametrize(
    ("name", "shape", "classes"),
    [("digits", (1797, 8, 8), 10), ("breast_cancer", (569, 30), 2), ("wine", (178, 13), 3)],
)
def test_bundled_datasets_load_without_network(name, shape, classes) -> None:
    ds = load_dataset(f"sklearn:{name}")
    assert ds.x.shape == shape and ds.x.dtype == np.float32
    assert ds.y.dtype == np.int64 and set(np.unique(ds.y)) == set(range(classes))
    assert ds.num_classes == classes and ds.n == shape[0]
    assert ds.feature_shape == shape[1:]
    assert len(ds.fingerprint) == 64
    assert load_dataset(f"sklearn:{name}").fingerprint == ds.fingerprint
    assert ds.summary()["n"] == shape[0]


def test_digits_have_a_public_value_range_and_tabular_data_does_not() -> None:
    digits = load_dataset("sklearn:digits")
    assert digits.value_range is not None and not digits.value_range_declared
    low, high = digits.value_range
    assert low.shape == high.shape == (8, 8)
    assert np.all(low == 0.0) and np.all(high == 16.0)
    assert digits.x.min() >= 0 and digits.x.max() <= 16
    assert load_dataset("sklearn:wine").value_range is None


# --------------------------------------------------------------------------- fingerprint


def test_fingerprint_is_the_documented_canonical_encoding() -> None:
    x = np.array([[1.0, 2.5], [3.0, -0.0]])
    y = np.array([0, 1])
    header = json.dumps(
        {"feature_shape": [2], "format": "secure-maas/dataset-fingerprint/v2"},
        sort_keys=True,
        separators=(",", ":"),
    )
    records = sorted(
        hashlib.sha256(len(name).to_bytes(4, "big") + name + row.astype("<f8").tobytes()).digest()
        for name, row in ((b"x", np.array([1.0, 2.5])), (b"y", np.array([3.0, 0.0])))
    )
    expected = hashlib.sha256(header.encode() + b"\n" + b"".join(records)).hexdigest()
    assert datasets.fingerprint(x, y, ["x", "y"]) == expected


def test_identity_is_the_multiset_of_feature_vectors() -> None:
    x = np.array([[1.0, 2.5], [3.0, 4.0]])
    header = json.dumps(
        {"feature_shape": [2], "format": "secure-maas/dataset-identity/v1"},
        sort_keys=True,
        separators=(",", ":"),
    )
    rows = sorted(hashlib.sha256(row.astype("<f8").tobytes()).digest() for row in x)
    expected = hashlib.sha256(header.encode() + b"\n" + b"".join(rows)).hexdigest()
    assert datasets.identity(x) == expected
    assert datasets.identity(x[::-1]) == expected
    assert datasets.identity(x[:1]) != expected


def test_the_v1_fingerprint_of_older_registrations_is_still_computed() -> None:
    x = np.array([[1.0, 2.5], [3.0, 4.0]])
    y = np.array([0, 1])
    header = json.dumps(
        {
            "classes": ["x", "y"],
            "format": "secure-maas/dataset-fingerprint/v1",
            "x": {"dtype": "<f8", "shape": [2, 2]},
            "y": {"dtype": "<i8", "shape": [2]},
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    expected = hashlib.sha256(
        header.encode() + b"\n" + x.astype("<f8").tobytes() + y.astype("<i8").tobytes()
    ).hexdigest()
    assert datasets.fingerprint_v1(x, y, ["x", "y"]) == expected


def test_fingerprint_ignores_csv_formatting(tmp_path) -> None:
    plain = load_dataset(f"csv:{write(tmp_path / 'a.csv', CSV)}", label_column="label")
    messy = write(
        tmp_path / "b.csv",
        '\ufeff a , "b" , label \r\n"1.0", 2.50 ,"x"\r\n 3e0,"4", y \r\n\r\n5,6.000,x\r\n',
    )
    moved = write(tmp_path / "c.csv", "label,a,b\nx,1,2.5\ny,3,4\nx,5,6\n")
    assert load_dataset(f"csv:{messy}", label_column="label").fingerprint == plain.fingerprint
    assert load_dataset(f"csv:{moved}", label_column="label").fingerprint == plain.fingerprint


def test_fingerprint_changes_with_the_data_not_with_the_row_order(tmp_path) -> None:
    base = load_dataset(f"csv:{write(tmp_path / 'a.csv', CSV)}", label_column="label")
    variants = {
        "value": "a,b,label\n1,2.5,x\n3,4.000001,y\n5,6,x\n",
        "label": "a,b,label\n1,2.5,x\n3,4,x\n5,6,y\n",
        "row": "a,b,label\n1,2.5,x\n3,4,y\n",
        "columns": "a,b,label\n2.5,1,x\n3,4,y\n5,6,x\n",
        "duplicate": "a,b,label\n1,2.5,x\n3,4,y\n5,6,x\n5,6,x\n",
    }
    prints = {base.fingerprint}
    for name, text in variants.items():
        path = write(tmp_path / f"{name}.csv", text)
        prints.add(load_dataset(f"csv:{path}", label_column="label").fingerprint)
    assert len(prints) == len(variants) + 1
    order = write(tmp_path / "order.csv", "a,b,label\n3,4,y\n1,2.5,x\n5,6,x\n")
    reordered = load_dataset(f"csv:{order}", label_column="label")
    assert reordered.fingerprint == base.fingerprint
    assert reordered.identity == base.identity


def test_identity_ignores_labels_and_their_names(tmp_path) -> None:
    base = load_dataset(f"csv:{write(tmp_path / 'a.csv', CSV)}", label_column="label")
    relabelled = write(tmp_path / "l.csv", "a,b,label\n1,2.5,y\n3,4,y\n5,6,x\n")
    renamed = write(tmp_path / "r.csv", "a,b,label\n1,2.5,no\n3,4,yes\n5,6,no\n")
    for path in (renamed, relabelled):
        other = load_dataset(f"csv:{path}", label_column="label")
        assert other.identity == base.identity
        assert other.fingerprint != base.fingerprint


def test_the_same_data_as_csv_and_npz_has_one_fingerprint(tmp_path) -> None:
    csv_path = write(tmp_path / "d.csv", "f0,f1,y\n1,2,0\n3,4,1\n5,6.5,1\n")
    npz_path = tmp_path / "d.npz"
    np.savez(npz_path, x=np.array([[1, 2], [3, 4], [5, 6.5]], np.float32), y=np.array([0, 1, 1]))
    from_csv = load_dataset(f"csv:{csv_path}", label_column="y")
    from_npz = load_dataset(f"npz:{npz_path}")
    assert from_csv.fingerprint == from_npz.fingerprint
    assert from_csv.classes == from_npz.classes == ("0", "1")


# --------------------------------------------------------------------------- csv and npz


def test_csv_labels_and_names(tmp_path) -> None:
    ds = load_dataset(f"csv:{write(tmp_path / 'a.csv', CSV)}", label_column="label")
    assert ds.classes == ("x", "y")
    assert ds.y.tolist() == [0, 1, 0]
    assert ds.feature_names == ("a", "b")
    assert ds.x.tolist() == [[1.0, 2.5], [3.0, 4.0], [5.0, 6.0]]


def test_numeric_labels_sort_numerically_and_print_canonically(tmp_path) -> None:
    path = write(tmp_path / "n.csv", "a,label\n1,10\n2,9.0\n3,2\n")
    ds = load_dataset(f"csv:{path}", label_column="label")
    assert ds.classes == ("2", "9", "10")
    assert ds.y.tolist() == [2, 1, 0]


def test_npz_with_image_features_and_string_labels(tmp_path) -> None:
    path = tmp_path / "img.npz"
    np.savez(path, x=np.zeros((4, 3, 3), np.uint8), y=np.array(["cat", "dog", "cat", "dog"]))
    ds = load_dataset(f"npz:{path}")
    assert ds.feature_shape == (3, 3) and ds.classes == ("cat", "dog")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("a,label\n", "no data rows"),
        ("a,b\n1,2\n", "no column 'label'"),
        ("label\nx\n", "at least one feature"),
        ("a,label\n1,x\nfoo,y\n", "'foo' is not a number"),
        ("a,label\n1,x\nnan,y\n", "NaN"),
        ("a,label\n1,x\ninf,y\n", "NaN or infinite"),
        ("a,label\n1,x\n,y\n", "missing value"),
        ("a,label\n1,x\n2,\n", "missing label"),
        ("a,label\n1,x\n2\n", "row 3 has 1 cells"),
        ("a,label\n1,x\n2,x\n", "at least two classes"),
        ("a,label,label\n1,x,y\n", "more than once"),
    ],
)
def test_bad_csv_gets_a_clear_error(tmp_path, text, message) -> None:
    path = write(tmp_path / "bad.csv", text)
    with pytest.raises(DatasetError, match=message):
        load_dataset(f"csv:{path}", label_column="label")


def test_missing_files_are_reported(tmp_path) -> None:
    with pytest.raises(DatasetNotFound, match="no such file"):
        load_dataset(f"csv:{tmp_path / 'nope.csv'}", label_column="label")
    with pytest.raises(DatasetNotFound, match="no such file"):
        load_dataset(f"npz:{tmp_path / 'nope.npz'}")
    with pytest.raises(DatasetNotFound, match="directory"):
        load_dataset(f"csv:{tmp_path}", label_column="label")


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"features": np.zeros((3, 2)), "y": np.zeros(3)}, "arrays named 'x' and 'y'"),
        ({"x": np.zeros(3), "y": np.zeros(3)}, "shape \\(examples, features"),
        ({"x": np.zeros((3, 2)), "y": np.zeros(4)}, "one label per example"),
        ({"x": np.array([[1.0, np.nan], [0, 0]]), "y": np.array([0, 1])}, "NaN"),
        ({"x": np.zeros((0, 2)), "y": np.zeros(0)}, "no examples"),
        ({"x": np.array([["a"], ["b"]]), "y": np.array([0, 1])}, "must hold numbers"),
        ({"x": np.zeros((2, 1)), "y": np.array([0.0, np.nan])}, "NaN or infinite labels"),
    ],
)
def test_bad_npz_gets_a_clear_error(tmp_path, arrays, message) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DatasetError, match=message):
        load_dataset(f"npz:{path}")


def test_npz_with_pickled_objects_is_refused(tmp_path) -> None:
    path = tmp_path / "pickled.npz"
    np.savez(path, x=np.array([[1], [2]], dtype=object), y=np.array([0, 1]))
    with pytest.raises(DatasetError, match="without pickled objects"):
        load_dataset(f"npz:{path}")
    garbage = write(tmp_path / "garbage.npz", "not a zip file")
    with pytest.raises(DatasetError, match="not a readable npz"):
        load_dataset(f"npz:{garbage}")


@pytest.mark.parametrize(
    ("source", "kwargs", "message"),
    [
        ("digits", {}, "must look like"),
        ("s3:bucket/x", {}, "unknown dataset source kind"),
        ("sklearn:iris", {}, "unknown bundled dataset"),
        ("csv:x.csv", {}, "label column"),
        ("sklearn:digits", {"label_column": "y"}, "csv: sources only"),
    ],
)
def test_bad_sources_get_a_clear_error(source, kwargs, message) -> None:
    with pytest.raises(DatasetError, match=message):
        load_dataset(source, **kwargs)


def test_dataset_errors_are_domain_errors() -> None:
    assert issubclass(DatasetNotFound, DatasetError)
    assert issubclass(DatasetError, SecureMaasError)


# --------------------------------------------------------------------------- split, views, prep


def test_split_is_deterministic_disjoint_and_keyed() -> None:
    ds = load_dataset("sklearn:wine")
    train, test = datasets.split(ds, test_fraction=0.25, seed=3)
    again = datasets.split(ds, test_fraction=0.25, seed=3)
    assert np.array_equal(train, again[0]) and np.array_equal(test, again[1])
    assert not set(train) & set(test) and len(train) + len(test) == ds.n
    assert 25 <= len(test) <= 65  # about a quarter of 178, by a hash per record
    other, _ = datasets.split(ds, test_fraction=0.25, seed=4)
    assert not np.array_equal(train, other)
    keyed, _ = datasets.split(replace(ds, split_key=b"k" * 32), test_fraction=0.25, seed=3)
    assert not np.array_equal(train, keyed)


def test_removing_one_record_changes_exactly_that_records_membership(tmp_path) -> None:
    ds = load_dataset("sklearn:breast_cancer")
    full = write(tmp_path / "full.csv", csv_text(ds))
    key = bytes(range(32))
    registered = replace(load_dataset(f"csv:{full}", label_column="label"), split_key=key)
    _, test = datasets.split(registered, seed=0)
    held_out = {tuple(row) for row in registered.x[test].tolist()}
    for removed in (0, 17, 300, int(test[0])):
        rows = [i for i in range(ds.n) if i != removed]
        smaller = write(tmp_path / f"minus{removed}.csv", csv_text(ds, rows))
        neighbour = replace(load_dataset(f"csv:{smaller}", label_column="label"), split_key=key)
        _, test_n = datasets.split(neighbour, seed=0)
        assert {tuple(row) for row in neighbour.x[test_n].tolist()} == held_out - {
            tuple(registered.x[removed].tolist())
        }
    # The old stratified shuffle moved dozens of other records for one removal.
    from sklearn.model_selection import train_test_split

    def stratified(y):
        return set(
            train_test_split(np.arange(len(y)), test_size=0.2, random_state=0, stratify=y)[1]
        )

    before = {tuple(ds.x[i].tolist()) for i in stratified(ds.y)}
    after = {tuple(ds.x[1:][i].tolist()) for i in stratified(ds.y[1:])}
    assert len(before ^ after) > 10


def csv_text(ds, rows=None) -> str:
    names = [f"f{i}" for i in range(ds.x.shape[1])]
    lines = [",".join([*names, "label"])]
    for i in range(ds.n) if rows is None else rows:
        lines.append(",".join([*(repr(float(v)) for v in ds.x[i]), ds.classes[ds.y[i]]]))
    return "\n".join(lines) + "\n"


def test_split_refuses_impossible_fractions() -> None:
    ds = load_dataset("sklearn:wine")
    with pytest.raises(DatasetError, match="test fraction"):
        datasets.split(ds, test_fraction=1.0)


def test_views() -> None:
    assert datasets.image_shape((8, 8)) == (8, 8, 1)
    assert datasets.image_shape((4, 5, 3)) == (4, 5, 3)
    assert datasets.image_shape((30,)) is None
    assert datasets.sequence_shape((8, 8)) == (8, 8)
    assert datasets.sequence_shape((30,)) == (30, 1)
    assert datasets.sequence_shape((4, 5, 3)) == (4, 15)


def test_public_range_preprocessing_is_covered_by_dp() -> None:
    ds = load_dataset("sklearn:digits")
    train, _ = datasets.split(ds)
    prep = datasets.preprocessing_for(ds, train)
    assert prep.kind == "public-range" and prep.covered_by_dp
    assert prep.stats_noise_multiplier is None
    scaled = (ds.x - prep.mean) / np.sqrt(prep.variance)
    assert scaled.min() >= 0.0 and scaled.max() <= 1.0


def test_without_a_public_range_auto_means_dp_statistics() -> None:
    ds = load_dataset("sklearn:breast_cancer")
    train, _ = datasets.split(ds)
    assert datasets.resolve_preprocessing(ds, "auto") == "dp-standardize"
    prep = datasets.preprocessing_for(ds, train, rng=np.random.default_rng(0))
    assert prep.kind == "dp-standardize" and prep.covered_by_dp
    assert prep.stats_noise_multiplier == 8.0 and "Gaussian mechanism" in prep.description
    assert prep.mean.shape == prep.variance.shape == (30,)
    with pytest.raises(DatasetError, match="random generator"):
        datasets.preprocessing_for(ds, train)
    with pytest.raises(DatasetError, match="no public value range"):
        datasets.preprocessing_for(ds, train, kind="public-range")
    with pytest.raises(DatasetError, match="unknown preprocessing"):
        datasets.resolve_preprocessing(ds, "z-score")


def test_exact_standardisation_says_it_is_not_private() -> None:
    ds = load_dataset("sklearn:breast_cancer")
    train, test = datasets.split(ds)
    prep = datasets.preprocessing_for(ds, train, kind="standardize")
    assert prep.kind == "standardize" and not prep.covered_by_dp
    assert "NOT" in prep.description and "never carries a DP guarantee" in prep.description
    np.testing.assert_allclose(prep.mean, ds.x[train].mean(axis=0), rtol=1e-4)
    assert not np.allclose(prep.mean, ds.x[test].mean(axis=0), rtol=1e-3)


# --------------------------------------------------------------------------- declared ranges


def test_declared_ranges_parse_to_one_canonical_form() -> None:
    parsed = datasets.parse_feature_ranges(["0:1", "b=-5:5.5", "c d=1e-3:2e3"])
    assert parsed == {"default": [0.0, 1.0], "features": {"b": [-5.0, 5.5], "c d": [1e-3, 2e3]}}
    for bad, message in [
        (["1:0"], "finite LO < HI"),
        (["0:nan"], "finite LO < HI"),
        (["a=1"], "finite LO < HI"),
        (["=0:1"], "name is empty"),
        (["0:1", "0:2"], "given twice"),
        (["a=0:1", "a=0:2"], "given twice"),
        ([], "no --feature-range"),
    ]:
        with pytest.raises(DatasetError, match=message):
            datasets.parse_feature_ranges(bad)


def test_declared_ranges_cover_every_feature_and_hold_every_value(tmp_path) -> None:
    ds = load_dataset(f"csv:{write(tmp_path / 'a.csv', CSV)}", label_column="label")
    ranged = datasets.with_declared_ranges(ds, datasets.parse_feature_ranges(["0:10", "b=0:8"]))
    assert ranged.value_range_declared
    low, high = ranged.value_range
    assert low.tolist() == [0.0, 0.0] and high.tolist() == [10.0, 8.0]
    prep = datasets.preprocessing_for(ranged, np.arange(ds.n))
    assert prep.kind == "public-range" and "declared public" in prep.description
    for specs, message in [
        (["a=0:10"], "feature 'b' has no declared range"),
        (["0:10", "z=0:1"], "unknown features"),
        (["0:5"], "outside their declared range"),
    ]:
        with pytest.raises(DatasetError, match=message):
            datasets.with_declared_ranges(ds, datasets.parse_feature_ranges(specs))


def test_data_without_names_declares_ranges_by_flat_index(tmp_path) -> None:
    path = tmp_path / "img.npz"
    np.savez(path, x=np.arange(8, dtype=np.float32).reshape(2, 2, 2), y=np.array([0, 1]))
    ds = load_dataset(f"npz:{path}")
    ranged = datasets.with_declared_ranges(ds, datasets.parse_feature_ranges(["0:8", "3=0:100"]))
    assert ranged.value_range[1].tolist() == [[8.0, 8.0], [8.0, 100.0]]
