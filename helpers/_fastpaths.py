"""CPU fast paths the training loop switches on while it trains on a CPU (by default), and undoes when it returns.

They keep the math of a training step (not its exact bits). `python -m bench.ablation` measures them
(docs/benchmarks.md): on a CPU with AMX / avx512_bf16, 87.9 samples/s with both against 70.4 without
(1.25x) at equal test accuracy (0.873 against 0.874); the attention path is worth about 1.16x of it,
the dropout path about 1.07x. So `hp.train` uses them on a CPU unless `cpu_fast_paths=False` (or a
collection of the PARTS to use); on GPUs and MPS they are never used: dropout there is fused and cheap.

- **Dropout masks from random integers** (`FastDropout`, `fast_dropout`): `bernoulli_` draws one
  float per mask element; here one 64-bit draw from torch's generator gives four 16-bit integers,
  each compared with a threshold, about 4x cheaper. The drop probability is `p` rounded to a
  multiple of 2**-16 (0.1 becomes 0.100006) and the scale is the exact inverse of the keep
  probability, so the expected output is unchanged. Masks come from torch's seeded generator:
  runs repeat, and resumed runs match uninterrupted ones.
- **Attention dropout without the fp32 detour**: with dropout on, `scaled_dot_product_attention`
  on a CPU falls back to a reference path that upcasts bf16 queries, keys and values to fp32.
  While training, the model's `sdpa` attention is swapped for `cpu_sdpa_attention`: bf16
  matmuls, softmax in fp32, the integer-mask dropout. Everything else (no dropout, evaluation,
  causal masks without a mask tensor, position biases, caches, grouped KV heads) still goes to
  `sdpa`. The model's `config` says `sdpa` again when training returns.

Neither path touches the optimizer or its state: checkpoints are the same with or without them.
(A third path, row-sparse gradients and AdamW for the input embedding, added nothing measurable,
1.26x without it against 1.25x with it, and was removed; its checkpoints held the usual dense
optimizer state, so they still resume.)
"""

from __future__ import annotations

import torch
from torch import nn

ATTENTION_NAME = "workbook_cpu_sdpa"
PARTS = ("dropout", "attention")  # what `hp.train(cpu_fast_paths=...)` can switch on
_LEVELS = 2**16  # each mask element is a uniform 16-bit integer


def _drop_threshold(p: float) -> int:
    return min(_LEVELS - 1, max(1, round(p * _LEVELS)))


# bit patterns of 1.0: a 0/1 mask in the input's dtype without the slow bool -> float conversion
_ONE_BITS = {torch.bfloat16: (torch.int16, 0x3F80), torch.float16: (torch.int16, 0x3C00),
             torch.float32: (torch.int32, 0x3F800000)}


def _as_mask(keep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if dtype in _ONE_BITS:
        int_dtype, one = _ONE_BITS[dtype]
        return keep.to(int_dtype).mul_(one).view(dtype)
    return keep.to(dtype)


class _MaskedScale(torch.autograd.Function):
    """y = x * mask * scale with a 0/1 mask in x's dtype; the backward applies the same."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        n = x.numel()
        # random_(-2**63) is uniform over all 64-bit patterns: four uniform 16-bit integers per draw
        draws = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-(2**63), None)
        quarters = draws.view(torch.int16)[:n].view(x.shape)
        threshold = _drop_threshold(p)
        mask = _as_mask(quarters >= threshold - _LEVELS // 2, x.dtype)
        ctx.save_for_backward(mask)
        ctx.scale = _LEVELS / (_LEVELS - threshold)  # the exact inverse of the keep probability
        return (x * mask).mul_(ctx.scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (mask,) = ctx.saved_tensors
        return (grad * mask).mul_(ctx.scale), None


def fast_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """`nn.functional.dropout` with masks drawn as integers (see the module docstring)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    return _MaskedScale.apply(x, p)


class FastDropout(nn.Dropout):
    """An `nn.Dropout` whose training-mode masks come from `fast_dropout`; identical in eval mode."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace:  # the fast path allocates its output; in-place callers keep the original
            return super().forward(x)
        return fast_dropout(x, self.p, self.training)


def attention_math(query, key, value, attention_mask=None, *, dropout: float = 0.0, scaling: float | None = None):
    """softmax(q k^T * scaling + mask) v with integer-mask dropout; q, k, v: (batch, heads, len, dim).

    Matmuls run in the inputs' dtype (bf16 under autocast), the softmax in fp32. A boolean mask
    marks the positions that may be attended to; a float mask is added to the scores.
    Returns (batch, len, heads, dim), as the `transformers` attention functions do.
    """
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(-1, -2)).float().mul_(scale)  # in place: nothing saved it
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores.masked_fill_(attention_mask.logical_not(), torch.finfo(scores.dtype).min)
        else:
            scores.add_(attention_mask)
    probs = torch.softmax(scores, dim=-1).to(value.dtype)
    probs = fast_dropout(probs, dropout, training=dropout > 0)
    return torch.matmul(probs, value).transpose(1, 2).contiguous()


def cpu_sdpa_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """An attention function for `transformers`' AttentionInterface (see the module docstring)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    is_causal = kwargs.get("is_causal")
    is_causal = getattr(module, "is_causal", False) if is_causal is None else is_causal
    simple = (dropout > 0.0 and query.device.type == "cpu" and kwargs.get("position_bias") is None
              and kwargs.get("cache") is None and kwargs.get("softcap") is None
              and getattr(module, "num_key_value_groups", 1) == 1
              and key.shape[2] == query.shape[2] and not (attention_mask is None and is_causal))
    if not simple:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    return attention_math(query, key, value, attention_mask, dropout=dropout, scaling=scaling), None


def _register_attention() -> bool:
    """Register the attention function under ATTENTION_NAME; True when this call registered it."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    if ATTENTION_NAME in AttentionInterface._global_mapping:
        return False
    AttentionInterface.register(ATTENTION_NAME, cpu_sdpa_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, sdpa_mask)
    return True


def _unregister_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    for registry in (AttentionInterface, ALL_MASK_ATTENTION_FUNCTIONS):
        registry._global_mapping.pop(ATTENTION_NAME, None)


def _dropout_works() -> str | None:
    """None when the integer-mask dropout behaves as dropout on this build of torch; else why not."""
    with torch.random.fork_rng(devices=[]):  # the check must not move the run's random stream (exact resume)
        torch.manual_seed(0)
        y = fast_dropout(torch.ones(1 << 14), 0.25)
    zeros = float((y == 0).float().mean())
    if abs(zeros - 0.25) > 0.03 or abs(float(y.mean()) - 1.0) > 0.05:
        return f"its masks drop {zeros:.2f} of values, not 0.25"
    return None


def _attention_works(math=attention_math) -> str | None:
    """None when transformers has the registries this path uses and it matches SDPA; else why not."""
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS  # noqa: F401
    except ImportError as err:
        return f"transformers has no attention registry ({err})"
    if not hasattr(AttentionInterface, "_global_mapping") or not hasattr(AttentionInterface, "register"):
        return "transformers' AttentionInterface changed"
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 5, 8, generator=gen) for _ in range(3))
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2)
    got = math(q, k, v, dropout=0.0)
    got = got[0] if isinstance(got, tuple) else got
    if got.shape != expected.shape or not torch.allclose(got.float(), expected, atol=5e-2):
        return "it does not match torch's SDPA here"
    return None


def _checked(part: str, why_not: str | None) -> bool:
    """True when the fast path may be used; else one printed line and the standard path."""
    if why_not is None:
        return True
    print(f"CPU fast path {part!r} is off: {why_not}; the standard path is used instead")
    return False


class CpuFastPaths:
    """Context manager: switch the fast paths on for `model`, restore it on exit (errors included)."""

    def __init__(self, model: nn.Module, *, parts=PARTS):
        unknown = set(parts) - set(PARTS)
        if unknown:
            gone = " ('embedding' was removed: it added nothing measurable)" if "embedding" in unknown else ""
            raise ValueError(f"Unknown CPU fast paths {sorted(unknown)}; choose from {list(PARTS)}{gone}.")
        self.model = model
        dropouts = [m for m in model.modules() if type(m) is nn.Dropout] if "dropout" in parts else []
        self.dropouts = dropouts if dropouts and _checked("dropout", _dropout_works()) else []
        self.attention = ("attention" in parts and _can_swap_attention(model)
                          and _checked("attention", _attention_works()))
        self.registered = False

    def describe(self) -> str:
        """The fast paths actually in use ('' when none)."""
        parts = [f"integer dropout masks ({len(self.dropouts)} modules)"] if self.dropouts else []
        if self.attention:
            parts.append("bf16 attention with dropout")
        return "; ".join(parts)

    def __enter__(self) -> CpuFastPaths:
        for module in self.dropouts:
            module.__class__ = FastDropout
        if self.attention:
            self.registered = _register_attention()
            self.model.set_attn_implementation(ATTENTION_NAME)
        return self

    def __exit__(self, *exc) -> None:
        for module in self.dropouts:
            if type(module) is FastDropout:
                module.__class__ = nn.Dropout
        if self.attention and self.model.config._attn_implementation == ATTENTION_NAME:
            self.model.set_attn_implementation("sdpa")
        if self.registered:  # leave transformers' registries as they were
            _unregister_attention()
            self.registered = False


def _can_swap_attention(model: nn.Module) -> bool:
    config = getattr(model, "config", None)
    can = getattr(model, "_can_set_attn_implementation", None)
    return (config is not None and getattr(config, "_attn_implementation", None) == "sdpa"
            and callable(can) and bool(can()))
