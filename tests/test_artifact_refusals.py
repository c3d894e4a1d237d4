"""The bad-input catalogue for intervention directories.

Each case builds a valid directory (tiny gemma3 model, pyvene layout included), corrupts it, and checks
that both ``InterventionConfig.from_pretrained`` and ``python -m interventions validate DIR --model M``
refuse it: one :class:`InterventionConfigError` naming the field, exit 2 with one stderr line, no raw
control characters printed, and the model left untouched.
"""

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from interventions import AdditiveIntervention, InterventionConfig, InterventionConfigError, SetIntervention, steer
from interventions import models
from interventions.__main__ import main as cli
from interventions.config import CONFIG_NAME, VECTORS_NAME
from interventions.fsutil import MAX_JSON_BYTES
from tiny_models import tiny_model


def make_config(model):
    g = torch.Generator().manual_seed(0)
    return InterventionConfig.for_model(model, [
        AdditiveIntervention("en_transfer", "block_output", 1, torch.randn(32, generator=g), 4.0, "all",
                             {"method": "mean_difference", "data": "flores200/dev", "languages": ["en", "ko"]}),
        AdditiveIntervention("loc_ko", "block_output", 3, torch.randn(32, generator=g), 2.0, "prompt",
                             {"method": "mean_difference", "data": "locale_probe/extract", "languages": ["ko"]}),
        SetIntervention("experts_ko", "mlp_hidden", 2, torch.tensor([3, 7, 11]), torch.tensor([0.5, -1.0, 2.0])),
    ])


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    model = tiny_model("gemma3")
    return model, make_config(model).save_pretrained(tmp_path_factory.mktemp("template") / "iv", model=model)


@pytest.fixture()
def saved(template, tmp_path):
    model, src = template
    path = tmp_path / "iv"
    shutil.copytree(src, path)
    return model, path


def _edit(path, fn):
    raw = json.loads((path / CONFIG_NAME).read_text())
    fn(raw)
    (path / CONFIG_NAME).write_text(json.dumps(raw))


def _edit_text(path, old, new):
    text = (path / CONFIG_NAME).read_text()
    assert old in text, old
    (path / CONFIG_NAME).write_text(text.replace(old, new, 1))


def _edit_tensors(path, fn):
    tensors = load_file(str(path / VECTORS_NAME))
    fn(tensors)
    save_file(tensors, str(path / VECTORS_NAME))


def _rename_key(entry, old, new):
    entry[new] = entry.pop(old)


def _symlink_out(path, name):
    outside = path.parent / f"outside_{name}"
    shutil.move(str(path / name), outside)  # the very same bytes, only reached through a link
    os.symlink(outside, path / name)


def _nest(depth):
    return "[" * depth + "]" * depth


BAD = {
    # ------------------------------------------------ the 22 cases of the catalogue before issue 12
    "layer_out_of_range": (lambda p: _edit(p, lambda r: r["interventions"][0].update(layer=40)),
                           "interventions[0].layer", "[0, 3]"),
    "negative_layer": (lambda p: _edit(p, lambda r: r["interventions"][1].update(layer=-1)),
                       "interventions[1].layer", "[0, 3]"),
    "layer_not_int": (lambda p: _edit(p, lambda r: r["interventions"][0].update(layer="2")),
                      "interventions[0].layer", "expected an int"),
    "unknown_component": (lambda p: _edit(p, lambda r: r["interventions"][0].update(component="resid_post")),
                          "interventions[0].component", "block_output"),
    "unknown_position": (lambda p: _edit(p, lambda r: r["interventions"][1].update(positions="first")),
                         "interventions[1].positions", "generated"),
    "unknown_kind": (lambda p: _edit(p, lambda r: r["interventions"][0].update(kind="multiply")),
                     "interventions[0].kind", "additive"),
    "missing_vector_key": (lambda p: _edit(p, lambda r: r["interventions"][0].pop("vector")),
                           "interventions[0].vector", "missing"),
    "missing_vector_tensor": (lambda p: _edit_tensors(p, lambda t: t.pop("loc_ko.vector")),
                              "interventions[1].vector", "missing from"),
    "wrong_shape": (lambda p: _edit_tensors(p, lambda t: t.update({"en_transfer.vector": torch.zeros(33)})),
                    "interventions[0].vector", "(32,)"),
    "two_dim": (lambda p: _edit_tensors(p, lambda t: t.update({"en_transfer.vector": torch.zeros(2, 16)})),
                "interventions[0].vector", "1-D"),
    "non_finite": (lambda p: _edit_tensors(p, lambda t: t["en_transfer.vector"].__setitem__(0, float("nan"))),
                   "interventions[0].vector", "non-finite"),
    "wrong_dtype": (lambda p: _edit_tensors(p, lambda t: t.update({"en_transfer.vector": torch.zeros(32,
                                                                   dtype=torch.int64)})),
                    "interventions[0].vector", "floating-point"),
    "units_float": (lambda p: _edit_tensors(p, lambda t: t.update({"experts_ko.units": torch.zeros(3)})),
                    "interventions[2].units", "integer"),
    "units_out_of_range": (lambda p: _edit_tensors(p, lambda t: t.update({"experts_ko.units": torch.tensor(
        [1, 2, 64])})), "interventions[2].units", "out of range"),
    "values_shape": (lambda p: _edit_tensors(p, lambda t: t.update({"experts_ko.values": torch.zeros(2)})),
                     "interventions[2].values", "one value per unit"),
    "format_version": (lambda p: _edit(p, lambda r: r.update(format_version=7)), "format_version", "expected 2"),
    "malformed_json": (lambda p: (p / CONFIG_NAME).write_text('{"format_version": 2,'), "json", "line 1"),
    "hidden_size_mismatch": (lambda p: _edit(p, lambda r: r["base_model"].update(hidden_size=640)),
                             "base_model.hidden_size", "640"),
    "duplicate_name": (lambda p: _edit(p, lambda r: r["interventions"][1].update(name="en_transfer")),
                       "interventions[1].name", "duplicate"),
    "bad_coefficient": (lambda p: _edit(p, lambda r: r["interventions"][0].update(coefficient="strong")),
                        "interventions[0].coefficient", "finite number"),
    "corrupt_safetensors": (lambda p: (p / VECTORS_NAME).write_bytes(b"not a safetensors file"),
                            VECTORS_NAME, "unreadable"),
    "missing_config": (lambda p: (p / CONFIG_NAME).unlink(), CONFIG_NAME, "not found"),
    # ------------------------------------------------ issue 12: duplicate and unknown keys
    "duplicate_key_layer": (lambda p: _edit_text(p, '"layer": 1,', '"layer": 3, "layer": 1,'),
                            "interventions[0].layer", "duplicate key"),
    "duplicate_top_key": (lambda p: _edit_text(p, '"format_version": 2,', '"format_version": 2, '
                                               '"format_version": 2,'), "format_version", "duplicate key"),
    "misspelled_coefficient": (lambda p: _edit(p, lambda r: _rename_key(r["interventions"][0], "coefficient",
                                                                        "coeficient")),
                               "interventions[0].coeficient", "did you mean 'coefficient'"),
    "unknown_top_key": (lambda p: _edit(p, lambda r: r.update(interventionz=[])), "interventionz",
                        "did you mean 'interventions'"),
    "unknown_base_model_key": (lambda p: _edit(p, lambda r: _rename_key(r["base_model"], "hidden_size",
                                                                        "hiden_size")),
                               "base_model.hiden_size", "did you mean 'hidden_size'"),
    "coefficient_on_set": (lambda p: _edit(p, lambda r: r["interventions"][2].update(coefficient=2.0)),
                           "interventions[2].coefficient", "unknown key"),
    "ansi_key": (lambda p: _edit(p, lambda r: r["interventions"][0].update({"\x1b[2Jx": 1})),
                 "interventions[0]['\\x1b[2Jx']", "unknown key"),
    # ------------------------------------------------ malformed JSON: one message, never a traceback
    "deep_nesting_recursion": (lambda p: (p / CONFIG_NAME).write_text('{"a": ' + _nest(200_000) + "}"),
                               "json", "nested deeper"),
    "deep_nesting_in_source": (lambda p: _edit_text(p, '"source": {', '"source": {"deep": ' + _nest(100) + ", "),
                               "interventions[0].source.deep" + "[0]" * 61, "nested deeper than 64"),
    "invalid_utf8": (lambda p: (p / CONFIG_NAME).write_bytes((p / CONFIG_NAME).read_bytes().replace(
        b'"en_transfer"', b'"en_\xff\xfeansfer"', 1)), "json", "not valid UTF-8"),
    "huge_integer": (lambda p: _edit_text(p, '"layer": 1,', '"layer": 1' + "0" * 5000 + ","),
                     "interventions[0].layer", "5001 digits"),
    "nan_literal": (lambda p: _edit_text(p, '"coefficient": 4.0', '"coefficient": NaN'),
                    "interventions[0].coefficient", "NaN is not valid JSON"),
    "infinity_literal": (lambda p: _edit_text(p, '"coefficient": 4.0', '"coefficient": -Infinity'),
                         "interventions[0].coefficient", "-Infinity is not valid JSON"),
    "float_overflow_literal": (lambda p: _edit_text(p, '"coefficient": 4.0', '"coefficient": 1e999'),
                               "interventions[0].coefficient", "finite number"),
    "top_level_list": (lambda p: (p / CONFIG_NAME).write_text("[1, 2]"), "json", "JSON object"),
    "top_level_string": (lambda p: (p / CONFIG_NAME).write_text('"hello"'), "json", "JSON object"),
    "huge_file": (lambda p: (p / CONFIG_NAME).write_bytes(b" " * (MAX_JSON_BYTES + 1) + b"{}"), "json",
                  "more than"),
    "utf8_bom": (lambda p: (p / CONFIG_NAME).write_bytes(b"\xef\xbb\xbf" + (p / CONFIG_NAME).read_bytes()),
                 "json", "BOM"),
    "entry_not_object": (lambda p: _edit(p, lambda r: r["interventions"].append(1)), "interventions[3]",
                         "JSON object"),
    "format_version_bool": (lambda p: _edit(p, lambda r: r.update(format_version=True)), "format_version",
                            "expected 2"),
    "hidden_size_string": (lambda p: _edit(p, lambda r: r["base_model"].update(hidden_size="32")),
                           "base_model.hidden_size", "positive int"),
    "library_not_mapping": (lambda p: _edit(p, lambda r: r.update(library="surgical-steering")), "library",
                            "mapping"),
    "layer_float": (lambda p: _edit(p, lambda r: r["interventions"][0].update(layer=1.0)),
                    "interventions[0].layer", "expected an int"),
    "ansi_name": (lambda p: _edit(p, lambda r: r["interventions"][0].update(name="\x1b[31mred")),
                  "interventions[0].name", "printable"),
    "config_is_directory": (lambda p: ((p / CONFIG_NAME).unlink(), (p / CONFIG_NAME).mkdir()), CONFIG_NAME,
                            "not a regular file"),
    # ------------------------------------------------ strength must be finite in the model's dtype
    "coefficient_1e308": (lambda p: _edit(p, lambda r: r["interventions"][0].update(coefficient=1e308)),
                          "interventions[0].coefficient", "overflows"),
    "vector_float64_1e300": (lambda p: _edit_tensors(p, lambda t: t.update(
        {"en_transfer.vector": torch.full((32,), 1e300, dtype=torch.float64)})), "interventions[0].vector",
        "overflow"),
    "set_values_float64_1e300": (lambda p: _edit_tensors(p, lambda t: t.update(
        {"experts_ko.values": torch.full((3,), -1e300, dtype=torch.float64)})), "interventions[2].values",
        "overflow"),
    # ------------------------------------------------ format_version 2: role and language are typed fields
    "unknown_role": (lambda p: _edit(p, lambda r: r["interventions"][0].update(role="transfer")),
                     "interventions[0].role", "expected one of ['en_transfer', 'loc_cultural'"),
    "role_null": (lambda p: _edit(p, lambda r: r["interventions"][1].update(role=None)), "interventions[1].role",
                  "got None"),
    "missing_role": (lambda p: _edit(p, lambda r: r["interventions"][2].pop("role")), "interventions[2].role",
                     "missing"),
    "missing_language": (lambda p: _edit(p, lambda r: r["interventions"][0].pop("language")),
                         "interventions[0].language", "missing"),
    "language_not_iso": (lambda p: _edit(p, lambda r: r["interventions"][1].update(language="Korean")),
                         "interventions[1].language", "ISO 639"),
    "misspelled_role": (lambda p: _edit(p, lambda r: _rename_key(r["interventions"][0], "role", "rol")),
                        "interventions[0].rol", "did you mean 'role'"),
    # ------------------------------------------------ no symlink is followed out of the directory
    "config_symlink_outside": (lambda p: _symlink_out(p, CONFIG_NAME), CONFIG_NAME, "symbolic link"),
    "vectors_symlink_outside": (lambda p: _symlink_out(p, VECTORS_NAME), VECTORS_NAME, "symbolic link"),
    "config_symlink_to_etc": (lambda p: ((p / CONFIG_NAME).unlink(), os.symlink("/etc/passwd", p / CONFIG_NAME)),
                              CONFIG_NAME, "outside"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_artifacts_are_refused_naming_the_field(saved, case, monkeypatch, capsys):
    model, path = saved
    corrupt, field, expected = BAD[case]
    corrupt(path)
    with pytest.raises(InterventionConfigError) as err:
        InterventionConfig.from_pretrained(path, model=model)
    assert err.value.field == field, str(err.value)
    assert expected in str(err.value)
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    assert hooks == 0, "validation must not touch the model"
    # the CLI, in process, against the same model
    monkeypatch.setattr(models, "load_model", lambda name, **kw: model)
    capsys.readouterr()
    assert cli(["validate", str(path), "--model", "tiny"]) == 2
    out, errtext = capsys.readouterr()
    assert out == "" and errtext.count("\n") == 1 and errtext.endswith("\n"), errtext
    assert field in errtext and expected in errtext
    assert errtext[:-1].isprintable(), "control characters must be escaped"


def test_the_catalogue_grew():
    assert len(BAD) >= 22 + 30 + 6  # + role/language (format_version 2)


def test_a_symlink_inside_the_directory_is_read(saved):
    model, path = saved
    (path / "real.json").write_bytes((path / CONFIG_NAME).read_bytes())
    (path / CONFIG_NAME).unlink()
    os.symlink("real.json", path / CONFIG_NAME)
    assert len(InterventionConfig.from_pretrained(path, model=model).interventions) == 3


def test_hub_snapshot_files_linking_into_blobs_load(saved, tmp_path, monkeypatch):
    model, path = saved
    repo = tmp_path / "hub" / "models--someone--ko-steering"
    snap = repo / "snapshots" / ("a" * 40)
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    for i, name in enumerate((CONFIG_NAME, VECTORS_NAME, "README.md")):
        (repo / "blobs" / f"blob{i}").write_bytes((path / name).read_bytes())
        os.symlink(f"../../blobs/blob{i}", snap / name)  # what snapshot_download writes
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = InterventionConfig.from_pretrained("someone/ko-steering", model=model, cache_dir=str(tmp_path / "hub"))
    assert [iv.name for iv in loaded.interventions] == ["en_transfer", "loc_ko", "experts_ko"]


@pytest.mark.parametrize("coefficient", [1e308, float("inf"), 10 ** 400])
def test_python_api_refuses_a_strength_that_overflows(coefficient):
    model = tiny_model("gemma3")
    with pytest.raises(InterventionConfigError, match=r"interventions\[0\]\.coefficient"):
        InterventionConfig.for_model(model, [AdditiveIntervention("x", "block_output", 1, torch.ones(32),
                                                                  coefficient)])


def test_strength_is_checked_in_the_models_dtype_and_again_in_steer():
    model = tiny_model("gemma3")
    config = InterventionConfig([AdditiveIntervention("x", "block_output", 1, torch.ones(32), 1e5)])
    config.validate(model)  # 1e5 is finite in float32 ...
    half = tiny_model("gemma3").to(torch.float16)
    with pytest.raises(InterventionConfigError, match=r"interventions\[0\]\.coefficient.*torch.float16"):
        config.validate(half)  # ... but not in float16 (largest 65504)
    with pytest.raises(InterventionConfigError, match="float16"):
        with steer(half, config):
            pass
    from interventions.steer import build_intervenable

    with pytest.raises(InterventionConfigError, match="float16"):
        build_intervenable(half, config)  # defence in depth for callers that skip validate()
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in half.modules()) == 0


def test_validate_escapes_control_characters_in_printed_names(saved, capsys):
    model, path = saved
    _edit(path, lambda r: r["base_model"].update(name_or_path="evil\x1b[2J\x07name\u2028x"))
    assert cli(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\u2028" not in out and "\\x1b[2J" in out
    assert cli(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\\u001b[2J" in out


def test_cli_refuses_a_model_it_cannot_load_in_one_line(saved, capsys):
    model, path = saved
    assert cli(["validate", str(path), "--model", str(path / "no-such-model")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --model:") and err.count("\n") == 1
