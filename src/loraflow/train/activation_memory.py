"""Keep fewer activations for backward; the same ops run, gradients unchanged or within bf16 rounding.

Where a LoRA training step's saved activations go (SDXL / Kolors, bf16 autocast, LoRA on attention;
measured per module on the full layout, 1024 px, with `saved_tensor_bytes`) and what is done here:

* GEGLU (diffusers `models/activations.py`) returns `h * gelu(g)` of its projection `[h, g]`;
  autograd keeps the projection *and* `gelu(g)`: 12 channels per 4 of output. Checkpointing just
  the gate keeps the projection alone (8) and redoes the elementwise gelu in backward.
* peft's LoRA Linear casts its input to the adapter's fp32 before `lora_A`, and autocast casts that
  copy back down: every adapter (to_q, to_k, to_v) keeps a bf16 copy of the same norm output, and
  to_out one of the attention output. Under autocast the cast is skipped: the adapters share the
  input itself (autocast casts the small A matrix instead; the values are the same).
* Autocast runs group / layer norm in fp32: the norm keeps an fp32 copy of its input, and in a
  ResNet block the SiLU keeps the fp32 norm output as well. `_Norm` computes the same fp32 norm,
  keeps the input in its own dtype plus the fp32 statistics, and returns the input's dtype (the cast
  the next linear or convolution would make). Fused with the ResNet's SiLU, it recomputes the
  normalisation (elementwise) in backward instead of keeping the SiLU input.
* A convolution keeps its input even when its weight is frozen; the input gradient needs only the
  weight (`torch.nn.grad.conv2d_input`), so frozen convolutions keep nothing else.
* The attention adapters keep the layer norm's output that they read (lora_A's input); the norm
  keeps its own input anyway, so that output is remade in backward (one elementwise norm) instead.
  Group norms run a quarter of their groups at a time: their fp32 temporaries at 128 x 128 were
  the step's peak.

`recompute="ff"` (opt-in, `TrainConfig.recompute`) also redoes the feed-forward projection, a
matmul, in backward: its 8 channels are no longer kept, for about an eighth more UNet FLOPs;
"ff+cross" redoes the cross-attentions too (the q and output projections, a few percent more).
"""
from __future__ import annotations

import types

import torch
import torch.nn.functional as F


def _gate(projected, gelu):
    hidden, gate = projected.chunk(2, dim=-1)  # (..., 2 * inner) -> two (..., inner)
    return hidden * gelu(gate)


def _geglu_forward(self, hidden_states, *args, **kwargs):
    from torch.utils.checkpoint import checkpoint

    projected = self.proj(hidden_states)
    if not (torch.is_grad_enabled() and projected.requires_grad):
        return _gate(projected, self.gelu)
    return checkpoint(_gate, projected, self.gelu, use_reentrant=False)


def _geglu_recompute_forward(self, hidden_states, *args, **kwargs):
    if not (torch.is_grad_enabled() and hidden_states.requires_grad):
        return _gate(self.proj(hidden_states), self.gelu)
    return _from_norm_input(lambda x: _gate(self.proj(x), self.gelu), hidden_states)


def _from_norm_input(fn, hidden_states):
    """`fn(hidden_states)`, checkpointed (redone in backward). When `hidden_states` is a layer norm's
    output, from the norm's input: that is kept anyway (the residual stream), the output is not."""
    from torch.utils.checkpoint import checkpoint

    recipe = getattr(hidden_states, _RECIPE, None)
    if recipe is None:
        return checkpoint(fn, hidden_states, use_reentrant=False)
    x, weight, bias, shape, eps = recipe
    return checkpoint(lambda x: fn(_Norm.apply(x, weight, bias, 0, shape, eps, False)), x, use_reentrant=False)


def recompute_feed_forward_gates(model, projection: bool = False) -> int:
    """Make every diffusers `GEGLU` in `model` recompute its gelu in backward (and its projection,
    a matmul, with `projection`); returns how many."""
    from diffusers.models.activations import GEGLU

    forward = _geglu_recompute_forward if projection else _geglu_forward
    count = 0
    for module in model.modules():
        if type(module) is GEGLU:
            module.forward = types.MethodType(forward, module)
            count += 1
    return count


# ---- norms computed in fp32, kept in the input's dtype ----------------------------------------------
def _autocasting(x) -> bool:
    """Autocast is on for `x`'s device (loraflow.plan.cuda_rules says so for the meta device)."""
    try:
        return torch.is_autocast_enabled(x.device.type)
    except RuntimeError:  # a device type autocast does not know (meta outside the planner's rules)
        return False


def _norm32(x32, weight, bias, groups, shape, eps):
    """(y, mean, rstd) in fp32: native_group_norm when `groups`, else native_layer_norm over `shape`."""
    w32 = None if weight is None else weight.float()
    b32 = None if bias is None else bias.float()
    if groups:
        n, c = x32.shape[:2]
        return torch.ops.aten.native_group_norm(x32, w32, b32, n, c, x32.numel() // (n * c), groups, eps)
    return torch.ops.aten.native_layer_norm(x32, shape, w32, b32, eps)


class _Norm(torch.autograd.Function):
    """Group / layer norm (+ SiLU) in fp32 as autocast runs it; keeps x in its dtype and the stats."""

    @staticmethod
    def forward(ctx, x, weight, bias, groups, shape, eps, silu):
        x = x.contiguous()
        ctx.spec = (groups, shape, eps, silu)
        if not groups:
            y, mean, rstd = _norm32(x.float(), weight, bias, groups, shape, eps)
            ctx.save_for_backward(x, weight, bias, mean, rstd)
            return (F.silu(y) if silu else y).to(x.dtype)
        out, means, rstds = torch.empty_like(x), [], []
        for cs, gs, per in _group_blocks(x, groups):  # a part of the fp32 temporaries at a time, as backward
            y, mean, rstd = _norm32(x[:, cs].float().contiguous(), _part(weight, cs), _part(bias, cs), per, shape, eps)
            out[:, cs] = F.silu(y) if silu else y
            means.append(mean)
            rstds.append(rstd)
        ctx.save_for_backward(x, weight, bias, torch.cat(means, 1), torch.cat(rstds, 1))
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        groups, shape, eps, silu = ctx.spec
        mask = [ctx.needs_input_grad[0], weight is not None and ctx.needs_input_grad[1],
                bias is not None and ctx.needs_input_grad[2]]
        if not groups:
            grads = _norm_backward(grad, x, weight, bias, mean, rstd, 0, shape, eps, silu, mask)
            return (*(_like(g, t) for g, t in zip(grads, (x, weight, bias))), None, None, None, None)
        gx = torch.empty_like(x) if mask[0] else None
        gws, gbs = [], []
        for cs, gs, per in _group_blocks(x, groups):
            gxi, gwi, gbi = _norm_backward(grad[:, cs], x[:, cs], _part(weight, cs), _part(bias, cs), mean[:, gs],
                                           rstd[:, gs], per, shape, eps, silu, mask)
            if gx is not None:
                gx[:, cs] = gxi
            gws.append(gwi)
            gbs.append(gbi)
        gw = torch.cat(gws).to(weight.dtype) if mask[1] else None
        gb = torch.cat(gbs).to(bias.dtype) if mask[2] else None
        return gx, gw, gb, None, None, None, None


_BLOCK_ELEMENTS = 1 << 22  # tensors from this size on are normalised in blocks of groups


def _group_blocks(x, groups: int, blocks: int = 4):
    """(channel slice, group slice, groups in it) of `blocks` runs of whole groups. Groups are
    independent, so a quarter of them at a time keeps a quarter of the fp32 temporaries, which at
    128 x 128 (a 960-channel up-block ResNet) are the step's peak. Small tensors (the tests' tiny
    models) go in one block: four kernel calls instead of one would cost more than they save."""
    blocks = blocks if groups % blocks == 0 and x.numel() >= _BLOCK_ELEMENTS else 1
    per, channels = groups // blocks, x.shape[1] // blocks
    return [(slice(i * channels, (i + 1) * channels), slice(i * per, (i + 1) * per), per) for i in range(blocks)]


def _part(param, channels):
    return None if param is None else param[channels]


def _norm_backward(grad, x, weight, bias, mean, rstd, groups, shape, eps, silu, mask):
    """fp32 (grad_x, grad_weight, grad_bias) of the norm (+ SiLU) as autograd's formula computes them."""
    g32 = grad.float().contiguous()  # the native kernels assume it (autograd's own formula does this)
    if silu:  # the SiLU's input, recomputed (elementwise) instead of kept; at most 3 fp32 copies live
        g32 = torch.ops.aten.silu_backward(g32, _norm32(x.float().contiguous(), weight, bias, groups, shape, eps)[0])
    x32, w32 = x.float().contiguous(), None if weight is None else weight.float()
    if groups:
        n, c = x.shape[:2]
        return torch.ops.aten.native_group_norm_backward(g32, x32, mean.contiguous(), rstd.contiguous(), w32, n, c,
                                                         x.numel() // (n * c), groups, mask)
    b32 = None if bias is None else bias.float()
    return torch.ops.aten.native_layer_norm_backward(g32, x32, shape, mean, rstd, w32, b32, mask)


def _like(grad, tensor):
    return None if grad is None else grad.to(tensor.dtype)


# Tensors below this many elements take the stock path: what they would keep is small, and a Python
# autograd Function costs tens of microseconds a call, which is what a tiny CPU model's step is made of.
# Every activation of an SDXL / Kolors UNet at 1024 px is larger (the smallest: 32 x 32 x 1280).
_MIN_ELEMENTS = 1 << 18


def _use_norm_function(x, *params) -> bool:
    """Training (something needs a gradient) in fp32 or under autocast, on a large tensor; else the
    stock module."""
    wants_grad = x.requires_grad or any(p is not None and p.requires_grad for p in params)
    return (torch.is_grad_enabled() and wants_grad and x.numel() >= _MIN_ELEMENTS
            and (x.dtype == torch.float32 or _autocasting(x)))


def _group_norm(module, x, silu=False):
    if not _use_norm_function(x, module.weight, module.bias):
        y = torch.nn.GroupNorm.forward(module, x)
        return F.silu(y) if silu else y
    return _Norm.apply(x, module.weight, module.bias, module.num_groups, None, module.eps, silu)


def _group_norm_forward(self, x):
    return _group_norm(self, x)


def _layer_norm_forward(self, x):
    if not _use_norm_function(x, self.weight, self.bias):
        return torch.nn.LayerNorm.forward(self, x)
    x = x.contiguous()
    out = _Norm.apply(x, self.weight, self.bias, 0, list(self.normalized_shape), self.eps, False)
    setattr(out, _RECIPE, (x, self.weight, self.bias, list(self.normalized_shape), self.eps))
    return out


# ---- a norm output the attention's adapters keep: recomputed in backward from the norm's input ------
_RECIPE = "_loraflow_norm_recipe"  # attribute of a layer norm's training output: how to remake it


class _NormOutput:
    """What is kept instead of a saved view of a layer norm's output: its recipe (the norm keeps the
    input and weights anyway) and the view's geometry. The norm's input goes through the hooks set
    around the attention (`pack`, `unpack`) as the norm's own saved copy of it does: where those move
    saved tensors to the host (loraflow.train.activation_offload), a reference held here would keep it
    on the device."""

    def __init__(self, recipe, tensor, pack, unpack):
        x, *rest = recipe
        self.x, self.rest, self.unpack = pack(x), rest, unpack
        self.view = (tensor.shape, tensor.stride(), tensor.storage_offset())

    def tensor(self):
        x, (weight, bias, shape, eps) = self.unpack(self.x), self.rest
        with torch.no_grad():  # the same kernel on the same input as `_Norm.forward`: the same values
            y = _norm32(x.float(), weight, bias, 0, shape, eps)[0].to(x.dtype)
        return y.as_strided(*self.view)


def _attention_forward(self, hidden_states, *args, **kwargs):
    """diffusers Attention.forward; when its input is a layer norm's output (BasicTransformerBlock's
    attn1 / attn2), the adapters' saved copies of it are remade in backward instead of kept."""
    recipe = getattr(hidden_states, _RECIPE, None)
    # the hooks around the call, if any: the planner's accountant or saved_tensor_bytes are chained to;
    # inside gradient checkpointing (which recomputes the block anyway) nothing is changed
    outer = torch._C._autograd._top_saved_tensors_default_hooks(False)
    if recipe is None or not torch.is_grad_enabled() or (outer and "checkpoint" in outer[0].__module__):
        return type(self).forward(self, hidden_states, *args, **kwargs)
    if getattr(self, "_loraflow_recompute", False):  # recompute="ff+cross": attn2 redone in backward
        return _from_norm_input(lambda h: type(self).forward(self, h, *args, **kwargs), hidden_states)
    outer = outer or (lambda t: t, lambda t: t)
    source = hidden_states.untyped_storage()._cdata
    # autograd keeps `pack` with every tensor it saved here: the recipe (the norm's input) is let go of
    # after the forward, or it would stay on the device when the outer hooks move it to the host
    recipes = [recipe]

    def pack(tensor):
        if tensor.untyped_storage()._cdata == source:
            return _NormOutput(recipes[0], tensor, *outer)
        return outer[0](tensor)

    def unpack(packed):
        return packed.tensor() if isinstance(packed, _NormOutput) else outer[1](packed)

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            return type(self).forward(self, hidden_states, *args, **kwargs)
    finally:
        recipes.clear()


def _resnet_forward(self, input_tensor, temb, *args, **kwargs):
    """diffusers ResnetBlock2D.forward (time_embedding_norm "default", no resampling), norm + SiLU fused."""
    hidden_states = self.conv1(_group_norm(self.norm1, input_tensor, silu=True))
    if self.time_emb_proj is not None:
        if not self.skip_time_act:
            temb = self.nonlinearity(temb)
        temb = self.time_emb_proj(temb)[:, :, None, None]
    if temb is not None:
        hidden_states = hidden_states + temb
    hidden_states = self.conv2(self.dropout(_group_norm(self.norm2, hidden_states, silu=True)))
    if self.conv_shortcut is not None:
        input_tensor = self.conv_shortcut(input_tensor.contiguous() if self.training else input_tensor)
    return (input_tensor + hidden_states) / self.output_scale_factor


# ---- frozen convolutions and LoRA inputs -----------------------------------------------------------
class _FrozenConv2d(torch.autograd.Function):
    """conv2d whose weight and bias need no gradient: keeps the weight, not the input."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        out = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
        ctx.save_for_backward(weight)
        ctx.conv = (x.shape, x.dtype, stride, padding, dilation, groups)
        return out

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        shape, dtype, stride, padding, dilation, groups = ctx.conv
        grad_input = torch.nn.grad.conv2d_input(shape, weight.to(grad.dtype), grad, stride, padding, dilation, groups)
        return grad_input.to(dtype), None, None, None, None, None, None


def _frozen_conv_forward(self, x):
    frozen = not (self.weight.requires_grad or (self.bias is not None and self.bias.requires_grad))
    if not (frozen and torch.is_grad_enabled() and x.requires_grad and x.numel() >= _MIN_ELEMENTS):
        return torch.nn.Conv2d.forward(self, x)
    return _FrozenConv2d.apply(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


def _lora_input_cast(self, x, dtype):
    """peft's `_cast_input_dtype`, except under autocast (which casts the adapter weight instead)."""
    if x is None or x.dtype == dtype or (_autocasting(x) and x.dtype in (torch.float16, torch.bfloat16)):
        return x
    return x.to(dtype)


def keep_less_for_backward(model, norm_outputs: bool = True, cross_attention: bool = False) -> dict[str, int]:
    """The savings above on `model` (after LoRA is added); returns what was changed. `norm_outputs`:
    the attention adapters' inputs are remade in backward from the layer norms' inputs.
    `cross_attention` (recompute="ff+cross"): cross-attentions are redone in backward (their q and
    output projections: matmuls), keeping only the norm's input."""
    from diffusers.models.attention_processor import Attention
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.transformers.transformer_2d import Transformer2DModel
    from peft.tuners.lora.layer import Linear as LoraLinear

    counts = dict.fromkeys(("resnets", "norms", "convs", "lora", "attention"), 0)
    for module in model.modules():
        if "forward" in vars(module):  # patched already (fp8 base layers keep their own)
            continue
        if (type(module) is ResnetBlock2D and module.time_embedding_norm == "default" and not module.up
                and not module.down and type(module.nonlinearity) is torch.nn.SiLU):
            module.forward = types.MethodType(_resnet_forward, module)
            counts["resnets"] += 1
        elif type(module) is Transformer2DModel and type(module.norm) is torch.nn.GroupNorm:
            module.norm.forward = types.MethodType(_group_norm_forward, module.norm)
            counts["norms"] += 1
        elif type(module) is torch.nn.LayerNorm:
            module.forward = types.MethodType(_layer_norm_forward, module)
            counts["norms"] += 1
        elif type(module) is torch.nn.Conv2d and module.padding_mode == "zeros":
            module.forward = types.MethodType(_frozen_conv_forward, module)
            counts["convs"] += 1
        elif type(module) is Attention and norm_outputs:
            module.forward = types.MethodType(_attention_forward, module)
            module._loraflow_recompute = cross_attention and module.is_cross_attention
            counts["attention"] += 1
        elif type(module) is LoraLinear and not module.lora_variant:
            module._cast_input_dtype = types.MethodType(_lora_input_cast, module)
            counts["lora"] += 1
    return counts


def saved_tensor_bytes(fn, model) -> int:
    """Bytes of the distinct tensors autograd keeps for backward while `fn()` runs, not counting
    `model`'s parameters (they exist anyway). Storages are told apart by their handle, not their
    address: meta tensors (the planner's) all have address 0."""
    weights = {p.untyped_storage()._cdata for p in model.parameters()}
    seen: dict[int, object] = {}  # handle -> storage, held so that no handle is reused meanwhile

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage._cdata not in weights:
            seen.setdefault(storage._cdata, storage)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sum(storage.nbytes() for storage in seen.values())
