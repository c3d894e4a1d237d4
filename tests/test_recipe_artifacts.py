"""The typed stage artifacts (recipes.artifacts): round trips, and strict loads that name the file and the field."""

from __future__ import annotations

import json
import os

import pytest

from recipes.artifacts import (
    FORMAT_VERSION,
    AdapterInfo,
    ArtifactError,
    CrossfitLanguage,
    CrossfitResult,
    ModalChoice,
    ModelInfo,
    SelectionSettings,
    SteeringResult,
    VectorSelection,
)
from recipes.errors import RecipeError

MODEL = ModelInfo(name_or_path="tiny", model_type="llama", num_hidden_layers=4, hidden_size=32, dtype="float32",
                  revision=None)
ADAPTER = AdapterInfo(source="/runs/alignment-0123/adapter", local=True, trained=True, method="clo")
SELECTION = {
    "en_transfer_ko": VectorSelection(layer=1, alpha=2.0, positions="prompt", steered=True, kind="en", language="ko",
                                      selected="fixed in the recipe"),
    "loc_ko": VectorSelection(layer=None, alpha=0.0, positions="last", steered=False, kind="loc", language="ko",
                              selected="cross-validated (2 folds by group): modal choice in 2 of 2 folds"),
}
STEERING = SteeringResult(computed=True, source=None, protocol="crossfit", selection=SELECTION, primary_run="cla",
                          intervention=True, grid_rows="grid.json")
LANGUAGE = CrossfitLanguage(
    folds={"g1": 0, "g2": 1}, selections={"en": [{"layer": 1, "alpha": 2.0, "steered": True, "kl": None}], "loc": []},
    stability={"en": {"agreement": 1.0}}, n_items={"transfer": 4, "localization": 6},
    modal={"en": ModalChoice(layer=1, alpha=2.0, steered=True, folds=2, n_folds=2),
           "loc": ModalChoice(layer=None, alpha=0.0, steered=False, folds=1, n_folds=2)})
CROSSFIT = CrossfitResult(protocol="crossfit", runs={"cla": {"ko": LANGUAGE}}, primary_run="cla",
                          settings=SelectionSettings(layers=[0, 1, 2], alphas=[1.0, 2.0], k=2, tolerance=0.0,
                                                     max_kl=None, seed=0),
                          preregistered_cosine_layer=1)
ALL = [MODEL, ADAPTER, STEERING, SteeringResult.loaded("./my-intervention"), CROSSFIT,
       AdapterInfo(source="someone/adapter", local=False, trained=False, method=None)]


@pytest.mark.parametrize("artifact", ALL, ids=lambda a: type(a).__name__)
def test_round_trip(tmp_path, artifact):
    path = artifact.save(tmp_path)
    assert path == tmp_path / type(artifact).FILE
    assert type(artifact).load(tmp_path) == artifact and type(artifact).find(tmp_path) == artifact
    text = path.read_text(encoding="utf-8")
    data = json.loads(text)
    assert data["format_version"] == FORMAT_VERSION
    assert text == json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"  # sorted keys, stable
    artifact.save(tmp_path)
    assert path.read_text(encoding="utf-8") == text  # identical bytes on a re-save
    assert sorted(os.listdir(tmp_path)) == [type(artifact).FILE]  # the atomic write leaves no temporary file


def test_file_names_and_content_kept(tmp_path):
    """The names users' run directories and the README use; the keys earlier readers read."""
    assert [a.FILE for a in (ModelInfo, AdapterInfo, SteeringResult, CrossfitResult)] == [
        "model.json", "adapter.json", "steering.json", "crossfit.json"]
    STEERING.save(tmp_path)
    data = json.loads((tmp_path / "steering.json").read_text())
    assert data["computed"] is True and data["selection"]["en_transfer_ko"]["layer"] == 1
    assert data["selection"]["loc_ko"]["positions"] == "last" and data["primary_run"] == "cla"
    assert ModelInfo.find(tmp_path) is None and SteeringResult.find(None) is None


def test_helpers():
    assert ADAPTER.location("/stage") == "/stage/adapter"
    assert AdapterInfo(source="me/a", local=False, trained=False, method=None).location("/stage") == "me/a"
    assert STEERING.selection_dicts()["loc_ko"] == {
        "layer": None, "alpha": 0.0, "positions": "last", "steered": False, "kind": "loc", "language": "ko",
        "selected": SELECTION["loc_ko"].selected}
    assert CROSSFIT.plain("modal")["cla"]["ko"]["en"] == {"layer": 1, "alpha": 2.0, "steered": True, "folds": 2,
                                                          "n_folds": 2}
    assert CROSSFIT.plain("n_items") == {"cla": {"ko": {"transfer": 4, "localization": 6}}}


def _write(tmp_path, artifact, change):
    artifact.save(tmp_path)
    path = tmp_path / type(artifact).FILE
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return path


def _refused(cls, tmp_path, field, match):
    with pytest.raises(ArtifactError, match=match) as info:
        cls.load(tmp_path)
    err = info.value
    assert isinstance(err, RecipeError) and err.field == field
    assert err.file == str(tmp_path / cls.FILE) and str(err).startswith(f"{tmp_path / cls.FILE}: {field}: ")
    return err


@pytest.mark.parametrize("artifact", ALL, ids=lambda a: type(a).__name__)
def test_unknown_missing_and_version_refused(tmp_path, artifact):
    cls = type(artifact)
    _write(tmp_path, artifact, lambda d: d.update(extra=1))
    _refused(cls, tmp_path, "extra", "unknown key")
    first = sorted(k for k in artifact.to_dict() if k != "format_version")[0]
    _write(tmp_path, artifact, lambda d: d.pop(first))
    _refused(cls, tmp_path, first, "missing")
    _write(tmp_path, artifact, lambda d: d.update(format_version=FORMAT_VERSION + 1))
    _refused(cls, tmp_path, "format_version", rf"expected {FORMAT_VERSION}, got {FORMAT_VERSION + 1}")
    _write(tmp_path, artifact, lambda d: d.update(format_version="1"))
    _refused(cls, tmp_path, "format_version", "expected 1, got '1'")
    _write(tmp_path, artifact, lambda d: d.pop("format_version"))
    _refused(cls, tmp_path, "format_version", "missing.*--force")


def test_nested_fields_named(tmp_path):
    _write(tmp_path, STEERING, lambda d: d["selection"]["loc_ko"].update(layer="x"))
    _refused(SteeringResult, tmp_path, "selection.loc_ko.layer", "expected an int or null, got 'x'")
    _write(tmp_path, STEERING, lambda d: d["selection"]["en_transfer_ko"].pop("positions"))
    _refused(SteeringResult, tmp_path, "selection.en_transfer_ko.positions", "missing")
    _write(tmp_path, STEERING, lambda d: d["selection"]["en_transfer_ko"].update(colour="red"))
    _refused(SteeringResult, tmp_path, "selection.en_transfer_ko.colour", "unknown key")
    _write(tmp_path, STEERING, lambda d: d.update(protocol="magic"))
    _refused(SteeringResult, tmp_path, "protocol", "expected one of 'fixed', 'crossfit' or null")
    _write(tmp_path, STEERING, lambda d: d["selection"]["en_transfer_ko"].update(steered=1))
    _refused(SteeringResult, tmp_path, "selection.en_transfer_ko.steered", "expected a boolean, got 1")
    _write(tmp_path, CROSSFIT, lambda d: d["runs"]["cla"]["ko"]["modal"]["en"].update(folds=2.5))
    _refused(CrossfitResult, tmp_path, "runs.cla.ko.modal.en.folds", "expected an int, got 2.5")
    _write(tmp_path, CROSSFIT, lambda d: d["settings"]["alphas"].append(True))
    _refused(CrossfitResult, tmp_path, "settings.alphas[2]", "expected a finite number, got True")
    _write(tmp_path, MODEL, lambda d: d.update(num_hidden_layers=None))
    _refused(ModelInfo, tmp_path, "num_hidden_layers", "expected an int, got None")


def test_inconsistent_content_refused(tmp_path):
    _write(tmp_path, STEERING, lambda d: d["selection"]["en_transfer_ko"].update(layer=None))
    _refused(SteeringResult, tmp_path, "selection.en_transfer_ko.layer", "steered vector has no layer")
    _write(tmp_path, STEERING, lambda d: d.update(source="./dir"))
    _refused(SteeringResult, tmp_path, "source", "null when computed")
    _write(tmp_path, CROSSFIT, lambda d: d.update(primary_run="base"))
    _refused(CrossfitResult, tmp_path, "primary_run", "not one of the runs")
    _write(tmp_path, STEERING, lambda d: d["selection"]["loc_ko"].update(layer=3))
    _refused(SteeringResult, tmp_path, "selection.loc_ko.layer", "unsteered vector is applied nowhere")
    _write(tmp_path, ADAPTER, lambda d: d.update(method=None))
    _refused(AdapterInfo, tmp_path, "method", "names its method")


def test_invalid_json_and_absent_file_refused(tmp_path):
    for cls in (ModelInfo, AdapterInfo, SteeringResult, CrossfitResult):
        path = tmp_path / cls.FILE
        _refused(cls, tmp_path, "json", "not found")
        path.write_text('{"format_version": 1,')
        _refused(cls, tmp_path, "json", "malformed JSON at line 1")
        path.write_text("[1, 2]")
        _refused(cls, tmp_path, "json", "expected a JSON object at the top level")
        path.write_text('{"format_version": 1, "format_version": 1}')
        _refused(cls, tmp_path, "format_version", "duplicate key")
        path.write_bytes(b'{"a": "\xff"}')
        _refused(cls, tmp_path, "json", "not valid UTF-8")
        path.unlink()


def test_save_refuses_what_load_would(tmp_path):
    bad = SteeringResult(computed=True, source=None, protocol="fixed", selection={"loc_ko": SELECTION["loc_ko"]},
                         primary_run="base", intervention=True, grid_rows=3)
    with pytest.raises(ArtifactError, match="steering.json: grid_rows: expected a string or null, got 3"):
        bad.save(tmp_path)
    nan = CrossfitLanguage(folds={}, selections={}, stability={"en": float("nan")}, modal={}, n_items={})
    with pytest.raises(ArtifactError, match="crossfit.json: json: not writable as JSON"):
        CrossfitResult(protocol="crossfit", runs={"base": {"ko": nan}}, primary_run="base", settings=CROSSFIT.settings,
                       preregistered_cosine_layer=1).save(tmp_path)
    assert not list(tmp_path.iterdir())
