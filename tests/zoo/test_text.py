"""Tests of the built-in standard-library docstring corpus."""

import json

import pytest

from prunekit.zoo.text import (
    _all_sourced,
    _source_files,
    corpus_info,
    stdlib_corpus,
    stdlib_root,
    stdlib_sources,
    train_val_split,
)


def test_corpus_is_deterministic_and_filtered():
    a = stdlib_corpus(max_docs=50, min_chars=300)
    b = stdlib_corpus(max_docs=50, min_chars=300)
    assert a == b
    assert len(a) == 50
    assert all(len(d) >= 300 for d in a)
    assert len(set(a)) == len(a)


def test_max_docs_is_a_prefix():
    assert stdlib_corpus(max_docs=5) == stdlib_corpus(max_docs=20)[:5]


def test_sources_name_file_and_kind(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text(
        '"""Module doc here."""\n\nclass C:\n    """Class doc here."""\n\n    async def f(self):\n'
        '        """Function doc."""\n\ndef g():\n    """Module doc here."""\n'
    )
    (tmp_path / "a.py").write_text('def h():\n    """Short"""\n')
    got = _all_sourced(str(tmp_path), 6)
    assert got == (("Module doc here.", "pkg/mod.py", "module"), ("Class doc here.", "pkg/mod.py", "class"),
                   ("Function doc.", "pkg/mod.py", "function"))  # "Short" too short, g's doc a repeat
    real = stdlib_sources(max_docs=40)
    assert [d for d, _, _ in real] == stdlib_corpus(max_docs=40)
    assert all((stdlib_root() / f).is_file() and k in ("module", "class", "function") for _, f, k in real)


def test_corpus_is_large_enough_for_training():
    info = corpus_info()
    assert info["n_docs"] > 500
    assert info["n_chars"] > 200_000


def test_no_test_folders_or_packages_read():
    root = stdlib_root()
    files = _source_files(root)
    parts = [set(p.relative_to(root).parts[:-1]) for p in files]
    assert not any({"test", "tests", "site-packages"} & s for s in parts)
    assert any(p.name == "textwrap.py" for p in files)


def test_split_exact_sizes_and_order():
    docs = [f"doc {i}" for i in range(10)]
    train, val = train_val_split(docs, val_fraction=0.3, seed=1)
    assert len(val) == 3 and len(train) == 7
    assert sorted(train + val) == sorted(docs)
    assert train == [d for d in docs if d in train]  # original order kept
    assert train_val_split(docs, 0.3, seed=1) == (train, val)
    assert train_val_split(docs, 0.3, seed=2) != (train, val)


def test_split_side_independent_of_position():
    docs = [f"doc {i}" for i in range(10)]
    _, val = train_val_split(docs, 0.2, seed=0)
    _, val_rev = train_val_split(docs[::-1], 0.2, seed=0)
    assert set(val) == set(val_rev)


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1, True])
def test_split_rejects_bad_fraction(bad):
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_split(["a", "b"], bad)


def test_bad_arguments():
    with pytest.raises(ValueError, match="max_docs"):
        stdlib_corpus(max_docs=0)
    with pytest.raises(ValueError, match="min_chars"):
        stdlib_corpus(min_chars=0)
    with pytest.raises(ValueError, match="docs"):
        train_val_split(["only one"])


def _fake_stdlib(root):
    (root / "pkg").mkdir(parents=True)
    (root / "os.py").write_text('"""' + "Module doc of os, long enough. " * 3 + '"""\n')
    (root / "pkg" / "m.py").write_text('def f():\n    """' + "Function doc, long enough here. " * 3 + '"""\n')
    return root


def test_docstrings_cached_on_disk_and_rebuilt_when_stale(tmp_path, monkeypatch):
    from prunekit.zoo import text

    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    root = _fake_stdlib(tmp_path / "lib")
    fresh = text._extract_sourced(root, 20)
    assert len(fresh) == 2 and fresh[0][0].startswith("Module doc") and fresh[0][2] == "module"
    text._all_sourced.cache_clear()
    assert text._all_sourced(str(root), 20) == fresh
    assert text._all_docs(str(root), 20) == tuple(d for d, _, _ in fresh)
    (path,) = (tmp_path / "cache" / "corpus").glob("stdlib-docstrings-*.json")
    calls = []
    parsed = (("parsed", "x.py", "module"),)
    monkeypatch.setattr(text, "_extract_sourced", lambda r, m: calls.append(r) or parsed)
    text._all_sourced.cache_clear()
    assert text._all_sourced(str(root), 20) == fresh and calls == []  # read back, not parsed
    obj = json.loads(path.read_text())
    obj["docs"][0][0] = "tampered"
    path.write_text(json.dumps(obj))  # digest no longer matches: parsed again and rewritten
    text._all_sourced.cache_clear()
    assert text._all_sourced(str(root), 20) == parsed and len(calls) == 1
    assert json.loads(path.read_text())["docs"] == [["parsed", "x.py", "module"]]
    text._all_sourced.cache_clear()
    assert text._all_sourced(str(root), 21) == parsed and len(calls) == 2  # another key, another file
    text._all_sourced.cache_clear()


def test_unwritable_cache_only_costs_the_parse(tmp_path, monkeypatch):
    from prunekit.zoo import text

    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("PRUNEKIT_CACHE", str(blocker))  # a file: corpus/ cannot be created below it
    root = _fake_stdlib(tmp_path / "lib")
    text._all_sourced.cache_clear()
    assert text._all_sourced(str(root), 20) == text._extract_sourced(root, 20)
    text._all_sourced.cache_clear()
