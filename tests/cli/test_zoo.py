"""``prunekit zoo`` sub-commands."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from prunekit.cli import app


def test_models_json_lists_every_model() -> None:
    r = CliRunner().invoke(app, ["zoo", "models", "--json"])
    assert r.exit_code == 0
    rows = {row["name"]: row for row in json.loads(r.output)}
    assert len(rows) == 9 and rows["cnn1d"]["params"] == 5210 and rows["cnn1d"]["input_shape"] == [40]
    assert rows["cnn1d"]["recipe_dataset"] == "mnist1d" and rows["vit"]["recipe"] is None
    assert rows["vit-softhgnn"]["recipe_dataset"] == "digits"


def test_datasets_lists_names() -> None:
    r = CliRunner().invoke(app, ["zoo", "datasets"])
    assert r.exit_code == 0 and all(n in r.output for n in ("mnist1d", "digits", "stdlib-text"))
