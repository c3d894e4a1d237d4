"""Record once, replay many times: the prefix cache behind :func:`evaluate.sweep.cached_sweep`.

Steering ``block_output`` at layer ``l`` leaves layers <= ``l`` unchanged, so one unsteered pass can stand
in for their forward in every steered cell at layer ``l`` (:class:`PrefixCache`).
"""

from __future__ import annotations

from typing import Sequence


class PrefixCache:
    """Record once, then replay, what decoder layers 0..l produce, for every grid layer l at once.

    Steering ``block_output`` at ``l`` leaves layers <= ``l`` unchanged, and the scorer makes the same
    sequence of decoder calls for every cell. So ONE unsteered pass records, per decoder call, the output of
    every grid layer and every KV-cache update of layers <= max(grid). Replaying layer ``l`` replaces the
    forward of layers 0..l: the recorded cache updates are re-applied (the cache object ends up exactly as
    in a full forward), hidden states are passed through, and layer ``l`` returns its recorded output, on
    which the steering hook still fires; only layers > ``l`` run.

    Memory: what is recorded lives until the sweep ends: per decoder call, ``len(grid)`` hidden-state
    tensors ``[batch, tokens, hidden]`` and ``max(grid) + 1`` key/value pairs ``[batch, kv_heads, tokens,
    head_dim]``, linear in the items' prompt and answer tokens. Measured on gemma-3-270m (float32, ko,
    layers {9, 12, 15}): 38 MiB for 8 fact_probe + 8 locale_probe extract items, 133 MiB for 32 + 21.
    Meant for the small ``extract`` item sets of a sweep, not for whole benchmarks. The keys/values are
    kept (not only their shapes) although no replayed layer reads them: a model whose later layers
    share an earlier layer's cache would read them.

    Why not :func:`interventions.activations.record`: that recorder keeps one forward's tensor per site for
    reading; this keeps every decoder call of a scorer's run (a forward it does not drive), each layer's raw
    return value (tuple or tensor, model dtype, to be returned again as is) and the KV-cache updates, which are
    not activations; replay swaps layer forwards, which hooks cannot do.
    """

    def __init__(self, model, layers: Sequence[int]):
        from interventions.components import decoder_layers, decoder_stack

        self.modules = decoder_layers(model)
        self.stack = decoder_stack(model)
        self.grid = sorted({int(l) for l in layers})
        if self.grid[0] < 0 or self.grid[-1] >= len(self.modules):
            raise ValueError(f"layers: expected layers in 0..{len(self.modules) - 1}, got {list(layers)}")
        self.top = self.grid[-1]
        self.outputs: dict[int, list] = {l: [] for l in self.grid}
        self.updates: list[dict[int, list]] = []  # per call: layer -> [(key, value, args, kwargs), ...]
        self.shapes: list[tuple] = []  # per call: the input ids' shape, to refuse a replay of other inputs
        self.call = -1

    @staticmethod
    def _shape(args, kwargs) -> tuple:
        x = kwargs.get("input_ids", kwargs.get("inputs_embeds"))
        x = args[0] if x is None and args else x
        return tuple(x.shape) if hasattr(x, "shape") else ()

    def _count(self, module, args, kwargs):
        self.call += 1
        if self.call >= len(self.updates) or self._shape(args, kwargs) != self.shapes[self.call]:
            raise RuntimeError("sweep: this decoder call does not match the recorded pass (more calls or other "
                               "shapes); the replayed scoring must use the same items and batch size")

    def record(self):
        from transformers import cache_utils

        outer = self
        original = cache_utils.Cache.update

        def update(cache, key_states, value_states, layer_idx, *args, **kwargs):
            if layer_idx <= outer.top:
                outer.updates[outer.call].setdefault(layer_idx, []).append((key_states, value_states, args, kwargs))
            return original(cache, key_states, value_states, layer_idx, *args, **kwargs)

        def pre(module, args, kwargs):
            self.call += 1
            self.updates.append({})
            self.shapes.append(self._shape(args, kwargs))

        def post(layer):
            def hook(module, args, output):
                self.outputs[layer].append(output)
            return hook

        handles = [self.stack.register_forward_pre_hook(pre, with_kwargs=True)]
        handles += [self.modules[l].register_forward_hook(post(l)) for l in self.grid]
        return _Patched(handles, [(cache_utils.Cache, "update", update, original)], self)

    def replay(self, layer: int):
        """Inside the block, layers 0..``layer`` (a grid layer) are replayed from the record."""
        if layer not in self.outputs:
            raise ValueError(f"layer: {layer} was not recorded; expected one of {self.grid}")
        outer = self

        def make(j):
            def forward(hidden_states, *args, **kwargs):
                cache = kwargs.get("cache", kwargs.get("past_key_values"))
                for k, v, a, kw in outer.updates[outer.call].get(j, []):
                    if cache is None:
                        raise RuntimeError("sweep: the recorded pass used a KV cache but this call has none")
                    cache.update(k.clone(), v.clone(), j, *a, **kw)
                return _clone(outer.outputs[layer][outer.call]) if j == layer else hidden_states
            return forward

        patches = [(self.modules[j], "forward", make(j), None) for j in range(layer + 1)]
        return _Patched([self.stack.register_forward_pre_hook(self._count, with_kwargs=True)], patches, self)


def _clone(output):
    if isinstance(output, tuple):
        return tuple(o.clone() if hasattr(o, "clone") else o for o in output)
    return output.clone()


class _Patched:
    def __init__(self, handles, patches, owner):
        self.handles, self.patches, self.owner = handles, patches, owner

    def __enter__(self):
        self.owner.call = -1
        for obj, name, new, _ in self.patches:
            setattr(obj, name, new)
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        for obj, name, _, original in self.patches:
            if original is None:
                delattr(obj, name)  # back to the class's forward
            else:
                setattr(obj, name, original)
