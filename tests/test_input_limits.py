"""Caps on what train.py takes in, names it refuses, and messages that quote a user's data briefly."""

from __future__ import annotations

import struct
import time
import zipfile

import numpy as np
import pandas as pd
import pytest
import skops.io
from sklearn.dummy import DummyRegressor
from sklearn.linear_model import LogisticRegression

from tests.import_cli import refused


def _bomb(path, megabytes: int) -> None:
    """A fitted model carrying an array of zeros: a few hundred KB on disk, `megabytes` inflated."""
    model = DummyRegressor().fit([[0.0], [1.0]], [0.0, 1.0])
    model.constant_ = np.zeros((megabytes << 17, 1))  # 8 bytes each
    skops.io.dump(model, path, compression=zipfile.ZIP_DEFLATED, compresslevel=9)


def test_a_skops_file_that_inflates_past_the_cap_is_refused_before_loading(tmp_path, capsys):
    path = tmp_path / "bomb.skops"
    _bomb(path, 64)
    assert path.stat().st_size < 1 << 20
    err = refused(["--import-model", str(path), "--name", "bomb", "--max-model-bytes", str(32 << 20)], capsys)
    assert "inflates to" in err and "--max-model-bytes" in err


def test_a_zip_whose_header_understates_the_size_is_refused(tmp_path, capsys):
    path = tmp_path / "liar.skops"
    _bomb(path, 64)
    data = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # local and central headers
        at = data.find(signature)
        while at != -1:
            if struct.unpack_from("<I", data, at + offset)[0] > 1 << 20:
                struct.pack_into("<I", data, at + offset, 1000)
            at = data.find(signature, at + 4)
    path.write_bytes(bytes(data))
    assert sum(m.file_size for m in zipfile.ZipFile(path).infolist()) < 32 << 20
    err = refused(["--import-model", str(path), "--name", "bomb", "--max-model-bytes", str(32 << 20)], capsys)
    assert "not a valid .skops file" in err


def test_a_csv_with_too_many_columns_is_refused_at_once(tmp_path, capsys):
    path = tmp_path / "wide.csv"
    names = [f"c{i}" for i in range(100_000)]
    path.write_text(",".join(names) + "\n" + ",".join("1" for _ in names) + "\n")
    started = time.monotonic()
    err = refused(["--data", str(path), "--target", "c0", "--name", "wide"], capsys)
    assert "100,000 columns; the cap is 2,000" in err and time.monotonic() - started < 5


def test_rows_times_columns_are_capped(tmp_path, capsys):
    path = tmp_path / "long.csv"
    pd.DataFrame({"a": range(500), "b": range(500), "y": [0, 1] * 250}).to_csv(path, index=False)
    err = refused(["--data", str(path), "--target", "y", "--name", "long", "--max-cells", "300"], capsys)
    assert "more than 100 rows" in err and "--max-cells" in err


def test_a_huge_header_line_is_not_printed(tmp_path, capsys):
    path = tmp_path / "header.csv"
    path.write_text("x" * (3 << 20) + ",y\n1,2\n")
    assert "header line" in refused(["--data", str(path), "--target", "y", "--name", "h"], capsys)


def test_long_names_are_cut_in_messages(tmp_path, capsys):
    path = tmp_path / "names.csv"
    names = ["n" * 900 + str(i) for i in range(50)]
    pd.DataFrame([range(50)] * 12, columns=names).to_csv(path, index=False)
    err = refused(["--data", str(path), "--target", "missing", "--name", "n"], capsys)
    assert "more" in err and "chars)" in err


@pytest.mark.parametrize("header, expected", [
    ("a,a,target", "column names must be unique; repeated: ['a']"),
    ("\n\na,b,a,target", "repeated: ['a']"),
    ('"a\nforged line",b,target', "must not hold line breaks or control characters: ['a\\nforged line']"),
    ("a\tb,c,target", "control characters"),
    ("a\x1b[31m,c,target", "control characters"),
    ("a\u2028b,c,target", "control characters"),
])
def test_repeated_names_and_control_characters_are_refused(header, expected, tmp_path, capsys):
    path = tmp_path / "names.csv"
    path.write_text(header + "\n" + "\n".join(f"{i},{i % 3},{i % 2}" for i in range(20)) + "\n")
    err = refused(["--data", str(path), "--target", "target", "--name", "names"], capsys)
    assert expected in err, err


def test_an_imported_model_with_such_feature_names_is_refused(tmp_path, capsys):
    frame = pd.DataFrame({"ok": np.arange(20.0), "bad\nname": np.arange(20.0) % 3})
    model = LogisticRegression().fit(frame, np.arange(20) % 2)
    path = tmp_path / "model.skops"
    skops.io.dump(model, path)
    assert "control characters" in refused(["--import-model", str(path), "--name", "bad_names"], capsys)


def test_the_reference_data_is_capped_too(tmp_path, capsys):
    frame = pd.DataFrame({"a": np.arange(40.0), "b": np.arange(40.0) % 3})
    model = LogisticRegression().fit(frame, np.arange(40) % 2)
    path, reference = tmp_path / "model.skops", tmp_path / "ref.csv"
    skops.io.dump(model, path)
    frame.assign(a=frame["a"]).rename(columns={"b": "a"}).to_csv(reference, index=False)
    assert "repeated: ['a']" in refused(["--import-model", str(path), "--reference-data", str(reference),
                                         "--name", "ref"], capsys)


def test_a_header_with_a_lone_carriage_return_is_one_line_not_a_traceback(tmp_path):
    from sklearn_service.csv_data import read_csv
    from sklearn_service.user_input import DataError

    path = tmp_path / "cr.csv"
    path.write_bytes(b"a,b\rc,y\n" + b"".join(b"%d,%d,%d\n" % (i, i, i % 2) for i in range(40)))
    with pytest.raises(DataError, match="not valid CSV"):
        read_csv(path)


@pytest.mark.parametrize("suffix, compress", [
    (".csv.gz", lambda b: __import__("gzip").compress(b)),
    (".csv.bz2", lambda b: __import__("bz2").compress(b)),
    (".csv.xz", lambda b: __import__("lzma").compress(b)),
])
def test_a_compressed_csv_is_read_and_its_header_checked(suffix, compress, tmp_path):
    from sklearn_service.csv_data import read_csv
    from sklearn_service.user_input import DataError

    rows = b"".join(b"%d,%d,%d\n" % (i, i % 3, i % 2) for i in range(20))
    good = tmp_path / ("good" + suffix)
    good.write_bytes(compress(b"a,b,y\n" + rows))
    assert list(read_csv(good).columns) == ["a", "b", "y"]
    repeated = tmp_path / ("repeated" + suffix)
    repeated.write_bytes(compress(b"a,a,y\n" + rows))
    with pytest.raises(DataError, match="repeated"):  # the header check sees the decompressed names
        read_csv(repeated)
    damaged = tmp_path / ("damaged" + suffix)
    damaged.write_bytes(b"not compressed at all")
    with pytest.raises(DataError):
        read_csv(damaged)


@pytest.mark.parametrize("name", ["prediction", "endpoint", "timestamp", "request_id", "trace_id", "__target__"])
def test_feature_names_the_payload_log_uses_are_refused_at_train_and_import(name, tmp_path, capsys):
    frame = pd.DataFrame({"ok": np.arange(20.0), name: np.arange(20.0) % 3})
    data = tmp_path / "data.csv"
    frame.assign(y=np.arange(20) % 2).to_csv(data, index=False)
    err = refused(["--data", str(data), "--target", "y", "--name", "reserved"], capsys)
    assert f"feature names ['{name}'] are reserved for the payload log and drift data" in err, err
    path = tmp_path / "model.skops"
    skops.io.dump(LogisticRegression().fit(frame, np.arange(20) % 2), path)
    assert "are reserved" in refused(["--import-model", str(path), "--name", "reserved"], capsys)


def test_a_reserved_name_may_be_the_target(tmp_path):
    from sklearn_service.csv_data import load_csv_dataset

    data = tmp_path / "data.csv"
    pd.DataFrame({"a": np.arange(20.0), "prediction": np.arange(20) % 2}).to_csv(data, index=False)
    assert list(load_csv_dataset(data, "prediction").X.columns) == ["a"]


def test_a_stored_model_with_a_reserved_feature_name_serves_without_the_payload_log(caplog):
    from sklearn_service.payload_log import PayloadLog
    from sklearn_service.signature import Feature, Signature

    log = PayloadLog(True, Signature([Feature("a"), Feature("prediction")]))
    assert not log.enabled and "payload log off: feature name(s) ['prediction']" in caplog.text
    log.write("/predict", np.zeros((1, 2)), np.zeros(1))  # nothing written, nothing raised
    assert PayloadLog(True, Signature([Feature("a"), Feature("b")])).enabled
