"""``data.texts.read_texts``: .txt (one document per line) and .jsonl (a text field per object)."""

import pytest

from prunekit.data.texts import read_texts


def test_txt_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("one\n\n two \n")
    assert read_texts(tmp_path / "a.txt") == ["one", " two "]
    (tmp_path / "b.jsonl").write_text('{"body": "x"}\n{"body": "y"}\n')
    assert read_texts(tmp_path / "b.jsonl", "body") == ["x", "y"]


@pytest.mark.parametrize("text,match", [('{"text": "x"}\n{"text": 1}\n', "line 2: expected an object"),
                                        ('{"text": "x"}\nnot json\n', "line 2 is not valid JSON")])
def test_bad_jsonl_names_the_line(tmp_path, text, match):
    (tmp_path / "c.jsonl").write_text(text)
    with pytest.raises(ValueError, match=match):
        read_texts(tmp_path / "c.jsonl")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_texts(tmp_path / "none.txt")


def _parquet(path, columns, row_group_size=None, write_statistics=True):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path, row_group_size=row_group_size, write_statistics=write_statistics)
    return path


def test_parquet_column_streams_and_serves_rows_across_row_groups(tmp_path):
    from prunekit.data.texts import ParquetTexts

    docs = [f"doc {i}" for i in range(10)]
    path = _parquet(tmp_path / "p.parquet", {"id": list(range(10)), "body": docs}, row_group_size=3)  # 4 groups
    pt = ParquetTexts(path, "body")
    assert len(pt) == 10 and pt.starts == [0, 3, 6, 9, 10]
    got = list(pt.batches(4))
    assert [s for s, _ in got] == [0, 4, 8] and [t for _, b in got for t in b] == docs
    assert pt.take([2, 3, 4, 9]) == ["doc 2", "doc 3", "doc 4", "doc 9"]  # spans three row groups
    assert read_texts(path, "body") == docs
    with pytest.raises(IndexError, match="row 10 out of range"):
        pt.take([10])


@pytest.mark.parametrize("stats", [True, False])
def test_parquet_nulls_are_refused_with_or_without_statistics(tmp_path, stats):
    from prunekit.data.texts import ParquetTexts

    path = _parquet(tmp_path / "n.parquet", {"text": ["a", "b", None, "d"]}, row_group_size=2, write_statistics=stats)
    with pytest.raises(ValueError, match="null values \\((row group 1|row 2)\\)"):
        ParquetTexts(path)


def test_parquet_bad_inputs_name_the_file_and_what_was_expected(tmp_path):
    from prunekit.data.texts import ParquetTexts

    path = _parquet(tmp_path / "c.parquet", {"n": [1, 2], "text": ["a", "b"]})
    with pytest.raises(ValueError, match="no column 'body' \\(--text-field\\); its columns: \\['n', 'text'\\]"):
        ParquetTexts(path, "body")
    with pytest.raises(ValueError, match="column 'n' must hold strings, got int64"):
        ParquetTexts(path, "n")
    with pytest.raises(ValueError, match="has no rows"):
        ParquetTexts(_parquet(tmp_path / "z.parquet", {"text": pytest.importorskip("pyarrow").array([], "string")}))
    (tmp_path / "t.parquet").write_text("this is a text file with a parquet name\n")
    with pytest.raises(ValueError, match="t.parquet' is not a Parquet file"):
        ParquetTexts(tmp_path / "t.parquet")
    (tmp_path / "f.parquet").write_bytes(b"PAR1" + b"x" * 20 + b"PAR1")
    with pytest.raises(ValueError, match="f.parquet' is not a readable Parquet file"):
        ParquetTexts(tmp_path / "f.parquet")
    (tmp_path / "e.parquet").write_bytes(b"")
    with pytest.raises(ValueError, match="e.parquet' is empty or truncated"):
        ParquetTexts(tmp_path / "e.parquet")
    with pytest.raises(FileNotFoundError, match="expected a Parquet file"):
        ParquetTexts(tmp_path / "none.parquet")
