"""The format writers on their own: streamed .npy files and CSR matrices equal numpy's and
scipy's own results."""

from __future__ import annotations

import io

import numpy as np
import pytest
import scipy.sparse
from hypothesis import given, settings
from hypothesis import strategies as st

from amc_data.encoding.formats import CsrBuilder, NpyRowWriter


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 1000), max_size=40), max_size=50))
def test_streamed_npy_equals_numpy_save(tmp_path_factory, chunks):
    rows = [np.array(c[: len(c) // 2 * 2], dtype=np.int64).reshape(-1, 2) for c in chunks]
    path = tmp_path_factory.mktemp("npy") / "pairs.npy"
    writer = NpyRowWriter(path, columns=2)
    for block in rows:
        writer.write(block)
    writer.close()
    expected = np.concatenate(rows) if rows else np.zeros((0, 2), dtype=np.int64)
    buffer = io.BytesIO()
    np.save(buffer, expected.reshape(-1, 2))
    assert path.read_bytes() == buffer.getvalue()


documents = st.lists(
    st.tuples(
        st.integers(0, 30),  # image id (repeats allowed)
        st.dictionaries(st.integers(0, 9), st.integers(1, 70_000), max_size=5),  # word -> count
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(st.lists(documents, max_size=4))
def test_csr_equals_scipy_built_from_the_same_counts(tmp_path_factory, chunks):
    folder = tmp_path_factory.mktemp("csr")
    builder = CsrBuilder(n_columns=10, spill_dir=folder, name="m")
    rows, cols, vals = [], [], []
    for chunk in chunks:
        img_ids = np.array([img for img, _ in chunk], dtype=np.int64)
        nnz = np.array([len(counts) for _, counts in chunk], dtype=np.int32)
        columns = [w for _, counts in chunk for w in sorted(counts)]
        values = [counts[w] for _, counts in chunk for w in sorted(counts)]
        builder.add(img_ids, nnz, np.array(columns, dtype=np.int32), np.array(values, np.int32))
        for img, counts in chunk:
            for word, count in counts.items():
                rows.append(img)
                cols.append(word)
                vals.append(count)
    path = folder / "m.npz"
    shape = builder.save(path)
    assert sorted(p.name for p in folder.iterdir()) == ["m.npz"]  # the spill files are gone
    loaded = scipy.sparse.load_npz(path)
    n_rows = max([img for chunk in chunks for img, _ in chunk], default=-1) + 1
    assert shape == loaded.shape == (n_rows, 10)
    expected = scipy.sparse.coo_matrix((vals, (rows, cols)), shape=(n_rows, 10)).tocsr()
    assert (loaded != expected).nnz == 0
    assert loaded.dtype == np.int32
    assert loaded.has_sorted_indices or loaded.nnz == 0


def test_arrow_arrays_from_numpy_equal_pyarrow_own():
    import pyarrow as pa

    from amc_data.encoding.formats import arrow_array, dictionary_array

    names = np.array(["keywords_dev/caf\u00e9.json".encode(), b"a.json", b""], dtype=bytes)
    assert arrow_array(names, pa.string()).to_pylist() == ["keywords_dev/café.json", "a.json", ""]
    assert arrow_array(["x", "ÿ"], pa.string()).to_pylist() == ["x", "ÿ"]
    numbers = np.array([3, -1, 7], dtype=np.int64)
    assert arrow_array(numbers, pa.int32()).equals(pa.array([3, -1, 7], type=pa.int32()))
    splits = dictionary_array(np.array([1, 0, 1]), arrow_array(["dev", "lite"], pa.string()))
    assert splits.to_pylist() == ["lite", "dev", "lite"]
    with pytest.raises(pa.ArrowInvalid):  # invalid UTF-8 is refused, as pyarrow.array does
        arrow_array(np.array([b"\xff\xfe"], dtype=bytes), pa.string())
