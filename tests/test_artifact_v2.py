"""format_version 2: typed ``role``/``language`` of every intervention, version-1 directories migrated on load,
and the intervention-kind registry (a new kind is one class plus one registration line)."""

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from safetensors.torch import load_file

from interventions import AdditiveIntervention, InterventionConfig, InterventionConfigError, SetIntervention, steer
from interventions.artifact import FORMAT_VERSION, role_and_language
from interventions.config import CONFIG_NAME, VECTORS_NAME
from interventions.controls import control_intervention
from interventions.experts import ExpertRanking
from interventions.kinds import INTERVENTION_KINDS, Intervention, register_kind
from interventions.loader import migrate_v1
from interventions.positions import position_mask
from interventions.pyvene_compat import pyvene
from interventions.vectors import SteeringVectors
from tiny_models import tiny_model

V1 = Path(__file__).parent / "data" / "intervention_v1"  # written by the format_version 1 code (git 56d1fb5)
V1_EXPECTED = {  # name: (role, language) that the migration must derive from each entry's source
    "en_transfer_ko": ("en_transfer", "ko"),        # source["vector"] + source["negative"]
    "loc_ko": ("loc_cultural", "ko"),               # source["vector"] + source["languages"] == ["ko"]
    "en_transfer_es": ("en_transfer", "es"),        # source["role"] / source["language"] (crossfit)
    "en_transfer_ko_control": ("control", "ko"),    # source["role"] == "control" (controls.py)
    "experts_ko.mlp_hidden.2": ("experts", "ko"),   # source["method"] == "finding_experts"
    "probe": ("other", None),                       # nothing to go on
}


@pytest.fixture(scope="module")
def model():
    return tiny_model("gemma3")


def _logits(model, config=None):
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    with torch.no_grad():
        if config is None:
            return model(input_ids=ids).logits
        with steer(model, config):
            return model(input_ids=ids).logits


# ------------------------------------------------------------------ role and language as fields

def test_role_and_language_default_from_what_each_producer_writes_in_source():
    vectors = SteeringVectors("en_transfer_ko", torch.randn(2, 32), [1, 2], torch.ones(2),
                              {"vector": "en_transfer", "positive": "en", "negative": "ko", "languages": ["en", "ko"],
                               "method": "mean_difference"})
    en = vectors.intervention(1, alpha=2.0)
    assert (en.role, en.language) == ("en_transfer", "ko")
    ctl = control_intervention(en, seed=3)
    assert (ctl.role, ctl.language) == ("control", "ko")
    ranking = ExpertRanking("zh", [("mlp_hidden", 1, 64)], torch.rand(64, dtype=torch.float64),
                            torch.tensor([5, 9]), torch.tensor([0.3, 0.1]), {"method": "finding_experts",
                                                                             "language": "zh"})
    assert {(iv.role, iv.language) for iv in ranking.interventions(2)} == {("experts", "zh")}
    plain = AdditiveIntervention("x", "block_output", 1, torch.ones(32))
    assert (plain.role, plain.language) == ("other", None)


def test_explicit_role_and_language_win_over_source():
    iv = AdditiveIntervention("x", "block_output", 1, torch.ones(32), source={"vector": "en_transfer",
                                                                              "negative": "ko"},
                              role="control", language="es")
    assert (iv.role, iv.language) == ("control", "es")


@pytest.mark.parametrize("kwargs,field_name,expected", [
    ({"role": "steering"}, "interventions[0].role", "en_transfer"),
    ({"role": "control", "language": "Korean"}, "interventions[0].language", "ISO 639"),
    ({"role": "other", "language": 7}, "interventions[0].language", "ISO 639"),
])
def test_validate_refuses_a_role_or_language_naming_the_field(model, kwargs, field_name, expected):
    iv = AdditiveIntervention("x", "block_output", 1, torch.ones(32), **kwargs)
    with pytest.raises(InterventionConfigError) as err:
        InterventionConfig.for_model(model, [iv])
    assert err.value.field == field_name and expected in str(err.value)


def test_saving_writes_version_2_with_role_and_language_and_they_round_trip(model, tmp_path):
    ivs = [AdditiveIntervention("en_transfer_ko", "block_output", 1, torch.randn(32), 2.0, "prompt",
                                {"vector": "en_transfer", "negative": "ko"}),
           SetIntervention("experts_ko", "mlp_hidden", 2, torch.tensor([1, 4]), torch.tensor([0.5, 1.0]),
                           role="experts", language="ko"),
           AdditiveIntervention("agnostic", "block_output", 2, torch.randn(32), role="control")]
    path = InterventionConfig.for_model(model, ivs).save_pretrained(tmp_path / "iv")
    raw = json.loads((path / CONFIG_NAME).read_text())
    assert raw["format_version"] == FORMAT_VERSION == 2
    assert [(e["role"], e["language"]) for e in raw["interventions"]] == [("en_transfer", "ko"), ("experts", "ko"),
                                                                          ("control", None)]
    loaded = InterventionConfig.from_pretrained(path, model=model)
    assert [(iv.role, iv.language) for iv in loaded.interventions] == [(iv.role, iv.language) for iv in ivs]
    assert "| `experts_ko` | set | experts | ko |" in (path / "README.md").read_text()


# ------------------------------------------------------------------ version 1 migrated on load

def test_version_1_directory_loads_with_derived_roles_and_saves_as_version_2(model, tmp_path):
    assert json.loads((V1 / CONFIG_NAME).read_text())["format_version"] == 1
    config = InterventionConfig.from_pretrained(V1, model=model)
    assert config.format_version == 2
    assert {iv.name: (iv.role, iv.language) for iv in config.interventions} == V1_EXPECTED
    tensors = load_file(str(V1 / VECTORS_NAME))
    for iv in config.interventions:  # nothing but role and language changed
        for key, t in iv.tensors().items():
            assert torch.equal(t, tensors[key])
    assert config.interventions[0].coefficient == 2.0 and config.interventions[1].positions == "last"
    out = config.save_pretrained(tmp_path / "v2", model=model)
    raw = json.loads((out / CONFIG_NAME).read_text())
    assert raw["format_version"] == 2 and all("role" in e and "language" in e for e in raw["interventions"])
    again = InterventionConfig.from_pretrained(out, model=model)
    assert {iv.name: (iv.role, iv.language) for iv in again.interventions} == V1_EXPECTED
    torch.testing.assert_close(_logits(model, again), _logits(model, config), rtol=0, atol=0)
    assert not torch.equal(_logits(model, config), _logits(model))


def test_migration_is_one_function_and_leaves_its_input_alone():
    raw = json.loads((V1 / CONFIG_NAME).read_text())
    before = json.dumps(raw, sort_keys=True)
    migrated = migrate_v1(raw, "v1")
    assert json.dumps(raw, sort_keys=True) == before
    assert migrated["format_version"] == 2
    assert {e["name"]: (e["role"], e["language"]) for e in migrated["interventions"]} == V1_EXPECTED
    assert {e["name"]: role_and_language(e["source"]) for e in raw["interventions"]} == V1_EXPECTED


def _v1_copy(tmp_path, edit):
    path = tmp_path / "v1"
    shutil.copytree(V1, path)
    raw = json.loads((path / CONFIG_NAME).read_text())
    edit(raw)
    (path / CONFIG_NAME).write_text(json.dumps(raw))
    return path


@pytest.mark.parametrize("edit,field_name,expected", [
    (lambda r: r["interventions"][0].update(role="en_transfer"), "interventions[0].role", "format_version 1"),
    (lambda r: r["interventions"][5]["source"].update(role="steering"), "interventions[5].role", "loc_cultural"),
    (lambda r: r["interventions"][1]["source"].update(language="korean"), "interventions[1].language", "ISO 639"),
    (lambda r: r["interventions"][0].update(coeficient=2.0), "interventions[0].coeficient", "did you mean"),
])
def test_bad_version_1_files_are_refused_naming_the_field(model, tmp_path, edit, field_name, expected):
    with pytest.raises(InterventionConfigError) as err:
        InterventionConfig.from_pretrained(_v1_copy(tmp_path, edit), model=model)
    assert err.value.field == field_name and expected in str(err.value), str(err.value)


# ------------------------------------------------------------------ a new kind: one class + one registration

class _ScaleSteering(pyvene().ConstantSourceIntervention, pyvene().LocalistRepresentationIntervention):
    """Multiplies the component by ``factor`` on the selected positions."""

    def __init__(self, factor: float, positions: str = "all", state=None, **kwargs):
        super().__init__(keep_last_dim=True, **kwargs)
        self.factor, self.positions, self.state = factor, positions, state

    def forward(self, base, source=None, subspaces=None, **kwargs):
        mask = True if self.state is None else position_mask(self.state, self.positions, base)
        if mask is False:
            return base
        return base * self.factor if mask is True else torch.where(mask, base * self.factor, base)


@dataclass
class ScaleIntervention(Intervention):  # the whole kind: fields, JSON layout, pyvene module, card line
    factor: float = 1.0
    positions: str = "all"
    source: dict = field(default_factory=dict)

    kind: ClassVar[str] = "scale"
    number_fields: ClassVar[dict[str, float]] = {"factor": 1.0}

    def steering_module(self, state):
        return _ScaleSteering(float(self.factor), self.positions, state)

    def pyvene_export(self, width):
        return _ScaleSteering(float(self.factor))

    def describe(self):
        return f"multiply by {self.factor:g}"


@pytest.fixture()
def scale_kind():
    register_kind(ScaleIntervention)  # the one registration line
    yield ScaleIntervention
    INTERVENTION_KINDS.pop("scale")


def _scaled_by_hook(model, layer, factor):
    from interventions.components import resolve, unwrap

    module = unwrap(model).get_submodule(resolve(model, "block_output", layer).module_path)

    def post(mod, args, out):
        return (out[0] * factor,) + tuple(out[1:]) if isinstance(out, tuple) else out * factor

    handle = module.register_forward_hook(post)
    try:
        return _logits(model)
    finally:
        handle.remove()


def test_a_registered_kind_saves_loads_steers_and_describes_itself(model, tmp_path, scale_kind):
    iv = scale_kind("damp", "block_output", 2, factor=0.5, role="other")
    config = InterventionConfig.for_model(model, [iv])
    path = config.save_pretrained(tmp_path / "iv", model=model)
    entry = json.loads((path / CONFIG_NAME).read_text())["interventions"][0]
    assert entry["kind"] == "scale" and entry["factor"] == 0.5
    assert "| `damp` | scale | other | any | `block_output` | 2 | all | multiply by 0.5 |" in \
        (path / "README.md").read_text()
    assert (path / "config.json").is_file()  # pyvene's layout, from the kind's pyvene_export
    loaded = InterventionConfig.from_pretrained(path, model=model)
    assert isinstance(loaded.interventions[0], scale_kind) and loaded.interventions[0].factor == 0.5
    torch.testing.assert_close(_logits(model, loaded), _scaled_by_hook(model, 2, 0.5), rtol=1e-5, atol=1e-5)
    # the generic checks apply to the new kind's own fields
    bad = json.loads((path / CONFIG_NAME).read_text())
    bad["interventions"][0]["factr"] = bad["interventions"][0].pop("factor")
    (path / CONFIG_NAME).write_text(json.dumps(bad))
    with pytest.raises(InterventionConfigError, match="did you mean 'factor'"):
        InterventionConfig.from_pretrained(path, model=model)
    with pytest.raises(InterventionConfigError, match=r"interventions\[0\]\.factor: expected a finite number"):
        InterventionConfig.for_model(model, [scale_kind("x", "block_output", 1, factor=float("inf"))])


def test_an_unregistered_kind_is_refused_in_memory_and_on_disk(model, tmp_path, scale_kind):
    path = InterventionConfig.for_model(model, [scale_kind("damp", "block_output", 2, factor=0.5)]).save_pretrained(
        tmp_path / "iv")
    INTERVENTION_KINDS.pop("scale")
    try:
        with pytest.raises(InterventionConfigError) as err:
            InterventionConfig.from_pretrained(path, model=model)
        assert err.value.field == "interventions[0].kind" and "'additive', 'set'" in str(err.value)
        with pytest.raises(InterventionConfigError, match="registered kind"):
            InterventionConfig.for_model(model, [scale_kind("damp", "block_output", 2)])
    finally:
        register_kind(scale_kind)
    with pytest.raises(ValueError, match="already registered"):
        register_kind(type("Other", (ScaleIntervention,), {}))
