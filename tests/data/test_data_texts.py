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
