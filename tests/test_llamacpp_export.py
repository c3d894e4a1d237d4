"""Export to llama.cpp: control-vector GGUF round trip, refusals, CLI, LoRA GGUF; llama.cpp itself only if installed."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from interventions.llamacpp_lora import LoraExportError, export_lora
from benchmarks.llamacpp_compare import control_vector_data, shift_metrics, variant_metrics
from interventions import AdditiveIntervention, InterventionConfig, SetIntervention
from interventions.llamacpp import LlamaCppExportError, export_control_vector, main
from tiny_models import HIDDEN, LAYERS, tiny_lora, tiny_model


@pytest.fixture(scope="module")
def gemma3():
    return tiny_model("gemma3")


def _vec(seed: int) -> torch.Tensor:
    return torch.randn(HIDDEN, generator=torch.Generator().manual_seed(seed))


def _additive(name, layer, seed, coefficient=1.0, **kw):
    return AdditiveIntervention(name=name, component=kw.pop("component", "block_output"), layer=layer,
                                vector=_vec(seed), coefficient=coefficient, **kw)


def _directory(model, tmp_path: Path, interventions, name="iv") -> Path:
    return InterventionConfig.for_model(model, interventions).save_pretrained(tmp_path / name)


def _fields(reader: gguf.GGUFReader) -> dict:
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def _files(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


# ------------------------------------------------------------------------------------------ control vector
def test_round_trip_gives_the_summed_vectors_at_their_layers(gemma3, tmp_path):
    ivs = [_additive("a", 2, 1, 0.5), _additive("b", 2, 2, -2.0), _additive("c", 3, 3, 1.5)]
    directory = _directory(gemma3, tmp_path, ivs)
    out = export_control_vector(directory, tmp_path / "out" / "steer.gguf")
    reader = gguf.GGUFReader(out)
    got = {t.name: np.asarray(t.data) for t in reader.tensors}
    assert sorted(got) == ["direction.2", "direction.3"]
    want2 = (0.5 * _vec(1).double() - 2.0 * _vec(2).double()).float().numpy()
    want3 = (1.5 * _vec(3).double()).float().numpy()
    assert np.array_equal(got["direction.2"], want2) and np.array_equal(got["direction.3"], want3)
    for t in reader.tensors:
        assert t.tensor_type == gguf.GGMLQuantizationType.F32 and list(t.shape) == [HIDDEN]
    assert _fields(reader) == {"general.architecture": "controlvector", "controlvector.model_hint": "gemma3",
                               "controlvector.layer_count": 2}
    assert _files(out.parent) == {"steer.gguf"}  # no temporary file left
    # the same from the config object, and what llama.cpp's loader builds from the file
    again = export_control_vector(InterventionConfig.from_pretrained(directory), tmp_path / "again.gguf")
    assert again.read_bytes() == out.read_bytes()
    data, n_embd = control_vector_data(out)
    assert n_embd == HIDDEN and data.shape == (3 * HIDDEN,)  # layer 1 at offset 0 (zero), layers 2 and 3
    assert not data[:HIDDEN].any() and np.array_equal(data[HIDDEN:2 * HIDDEN], want2)


def test_model_hint_can_be_given(gemma3, tmp_path):
    out = export_control_vector(_directory(gemma3, tmp_path, [_additive("a", 1, 0)]), tmp_path / "x.gguf",
                                model_hint="my-model")
    assert _fields(gguf.GGUFReader(out))["controlvector.model_hint"] == "my-model"


def _set_kind():
    return SetIntervention(name="experts", component="mlp_hidden", layer=1, units=torch.tensor([0, 3]),
                           values=torch.tensor([1.0, 2.0]))


REFUSALS = {
    "layer_zero": (lambda: [_additive("ok", 2, 0), _additive("first", 0, 1)], "first", "layer"),
    "component": (lambda: [_additive("mlp", 1, 0, component="mlp_output")], "mlp", "component"),
    "block_input": (lambda: [_additive("inp", 2, 0, component="block_input")], "inp", "component"),
    "positions": (lambda: [_additive("last_tok", 1, 0, positions="last")], "last_tok", "positions"),
    "set_kind": (lambda: [_additive("ok", 1, 0), _set_kind()], "experts", "kind"),
    # each finite (coefficient 3e38 x a unit vector), their float32 sum is not
    "non_finite_sum": (lambda: [AdditiveIntervention("big1", "block_output", 1, torch.eye(HIDDEN)[0], 3e38),
                                AdditiveIntervention("big2", "block_output", 1, torch.eye(HIDDEN)[0], 3e38)],
                       "big1, big2", "vector"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusals_name_the_intervention_and_write_nothing(gemma3, tmp_path, case, capsys):
    make, name, field = REFUSALS[case]
    directory = _directory(gemma3, tmp_path, make())
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(LlamaCppExportError) as err:
        export_control_vector(directory, out_dir / "steer.gguf")
    assert err.value.intervention == name and err.value.field == field and name in str(err.value)
    assert main([str(directory), "--out", str(out_dir / "steer.gguf")]) == 2
    message = capsys.readouterr().err.strip()
    assert message.count("\n") == 0 and name in message and field in message
    assert _files(out_dir) == set()


@pytest.mark.parametrize("what", ["file", "empty_dir", "bad_json"])
def test_cli_refuses_what_is_not_an_intervention_directory(tmp_path, what, capsys):
    path = tmp_path / "thing"
    if what == "file":
        path.write_text("hello")
    else:
        path.mkdir()
        if what == "bad_json":
            (path / "intervention_config.json").write_text("{not json")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert main([str(path), "--out", str(out_dir / "steer.gguf")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert _files(out_dir) == set()


def test_cli_writes_vector_and_command(gemma3, tmp_path, capsys):
    directory = _directory(gemma3, tmp_path, [_additive("a", 1, 0), _additive("b", 3, 1)])
    out = tmp_path / "out" / "steer.gguf"
    assert main([str(directory), "--out", str(out), "--model-gguf", "gemma.gguf"]) == 0
    command = (tmp_path / "out" / "steer.command.txt").read_text().strip()
    assert command == f"llama-cli -m gemma.gguf --control-vector-scaled {out}:1.0"
    assert command in capsys.readouterr().out
    assert sorted(t.name for t in gguf.GGUFReader(out).tensors) == ["direction.1", "direction.3"]


# ------------------------------------------------------------------------------------------ LoRA
def _lora_dir(tmp_path: Path, arch="gemma3", **config) -> Path:
    peft_model = tiny_lora(tiny_model(arch), arch)
    directory = tmp_path / f"lora_{arch}"
    peft_model.save_pretrained(directory)
    if config:
        path = directory / "adapter_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **config}))
    return directory


def test_lora_round_trip(tmp_path):
    directory = _lora_dir(tmp_path)
    saved = load_file(directory / "adapter_model.safetensors")
    out = export_lora(directory, tmp_path / "a.lora.gguf", arch="gemma3_text")
    reader = gguf.GGUFReader(out)
    fields = _fields(reader)
    assert (fields["general.type"], fields["adapter.type"], fields["general.architecture"]) == \
        ("adapter", "lora", "gemma3")
    assert fields["adapter.lora.alpha"] == 8.0
    got = {t.name: t for t in reader.tensors}
    gguf_names = {"self_attn.q_proj": "attn_q", "self_attn.v_proj": "attn_v", "mlp.up_proj": "ffn_up"}
    assert len(got) == 2 * len(gguf_names) * LAYERS
    base = tiny_model("gemma3")
    for i in range(LAYERS):
        for hf, name in gguf_names.items():
            a, b = got[f"blk.{i}.{name}.weight.lora_a"], got[f"blk.{i}.{name}.weight.lora_b"]
            key = f"base_model.model.model.layers.{i}.{hf}"
            assert np.array_equal(np.asarray(a.data), saved[f"{key}.lora_A.weight"].numpy())
            assert np.array_equal(np.asarray(b.data), saved[f"{key}.lora_B.weight"].numpy())
            weight = base.get_submodule(f"model.layers.{i}.{hf}").weight  # [out, in]
            # llama.cpp's checks (llama_adapter_lora_init_impl):
            # W.ne[0] == a.ne[0], W.ne[1] == b.ne[1], a.ne[1] == b.ne[0]
            assert list(a.shape) == [weight.shape[1], 4] and list(b.shape) == [4, weight.shape[0]]
            assert a.tensor_type == b.tensor_type == gguf.GGMLQuantizationType.F32


def _rename_first_key(directory: Path, old: str, new: str) -> None:
    path = directory / "adapter_model.safetensors"
    tensors = load_file(path)
    save_file({k.replace(old, new): v for k, v in tensors.items()}, str(path))


@pytest.mark.parametrize("case,field", [("unmappable", "target_modules"), ("rslora", "use_rslora"),
                                        ("dora", "use_dora"), ("llama", "architecture"), ("no_arch", None)])
def test_lora_refusals_write_nothing(tmp_path, case, field):
    arch = "llama" if case == "llama" else "gemma3"
    directory = _lora_dir(tmp_path, arch, **({"use_rslora": True} if case == "rslora" else
                                             {"use_dora": True} if case == "dora" else {}))
    if case == "unmappable":
        _rename_first_key(directory, "layers.1.self_attn.q_proj", "layers.1.self_attn.my_proj")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(LoraExportError) as err:
        export_lora(directory, out_dir / "a.gguf", arch=None if case == "no_arch" else arch)
    assert err.value.field == (field or "base_model_name_or_path")
    if case == "unmappable":
        assert "model.layers.1.self_attn.my_proj" in str(err.value)
    assert _files(out_dir) == set()


def test_cli_with_adapter(gemma3, tmp_path, capsys):
    directory = _directory(gemma3, tmp_path, [_additive("a", 2, 0)])
    out = tmp_path / "out" / "steer.gguf"
    assert main([str(directory), "--out", str(out), "--adapter", str(_lora_dir(tmp_path))]) == 0
    lora = tmp_path / "out" / "steer.lora.gguf"
    assert _fields(gguf.GGUFReader(lora))["general.architecture"] == "gemma3"
    assert (tmp_path / "out" / "steer.command.txt").read_text().strip().endswith(f"{out}:1.0 --lora {lora}")
    # a bad adapter: exit 2 and not even the control vector is written
    bad = tmp_path / "not_an_adapter"
    bad.mkdir()
    out2 = tmp_path / "out2"
    assert main([str(directory), "--out", str(out2 / "steer.gguf"), "--adapter", str(bad)]) == 2
    assert not out2.exists() or _files(out2) == set()


# ------------------------------------------------------------------------------------------ comparison metrics
def test_comparison_metrics_see_agreement_and_a_wrong_layer():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(8, 50)).astype(np.float32)
    shift = rng.normal(size=(8, 50)).astype(np.float32)
    noise = 0.01 * rng.normal(size=(8, 50)).astype(np.float32)
    same = shift_metrics(base, base + shift, base + noise, base + noise + shift, k=10)
    assert same["shift_correlation_topk"] > 0.99 and abs(same["shift_slope_topk"] - 1) < 0.05
    other = shift_metrics(base, base + shift, base, base + rng.normal(size=(8, 50)).astype(np.float32), k=10)
    assert other["shift_correlation_topk"] < 0.6
    v = variant_metrics(base, base)
    assert v["top1_agreement"] == 1.0 and v["mean_kl"] == pytest.approx(0.0, abs=1e-9)


# ------------------------------------------------------------------------------------------ llama.cpp itself
@pytest.mark.gemma
@pytest.mark.slow
def test_llamacpp_steers_like_pytorch(tmp_path):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install llama-cpp-python)")
    from benchmarks.llamacpp_compare import compare, passes

    results = compare(None, tmp_path, n=50)
    assert results["variants"]["steered"]["n"] >= 50
    assert results["shifts"]["steered - base"]["mean_abs_shift_torch_topk"] > 0.01  # the vector does something
    assert passes(results), results
