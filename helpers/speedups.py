"""CPU fast paths the training loop switches on while it trains, and undoes when it returns.

They keep the math of a training step (not its exact bits). `make bench` measures them
(docs/benchmarks.md); `hp.train(..., cpu_fast_paths=False)` turns them off.

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
- **Row-sparse gradients for the input embedding**: the dense backward of a 30,522 x 384 word
  embedding allocates and zero-fills a fresh 47 MB gradient every step (page faults included, a
  sixth of a small model's step on a CPU), and clipping then reads and scales all of it. With
  `sparse=True` the backward emits only the rows of the batch's tokens; they are added into one
  dense buffer that lives across steps. Clipping measures and scales only those rows (the others
  are zero) and only they are zeroed after the optimizer step. The optimizer still sees a dense
  gradient, so AdamW, weight decay and the clipped norm are unchanged.

None of this is used on GPUs, where dropout and zero-fills are fused and cheap. The sparse
embedding gradient is left out of multi-process runs (DDP reduces the gradient layout it saw when
it wrapped the model) and for embeddings tied to an output layer (whose dense gradient would
land in the same buffer).
"""

from __future__ import annotations

import torch
from torch import nn

ATTENTION_NAME = "workbook_cpu_sdpa"
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


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    if ATTENTION_NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(ATTENTION_NAME, cpu_sdpa_attention)
        ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, sdpa_mask)


class CpuFastPaths:
    """Context manager: switch the fast paths on for `model`, restore it on exit (errors included).

    The loop calls `clip_grad_norm_` instead of `clip` (torch's or the accelerator's), and
    `after_zero_grad()` after each `optimizer.zero_grad(set_to_none=True)` (it zeroes the embedding
    rows used and puts the gradient buffer back).
    """

    def __init__(self, model: nn.Module, *, sparse_embedding: bool = True, attention: bool = True, clip=None):
        self.model = model
        self._clip = clip or torch.nn.utils.clip_grad_norm_  # for when no embedding rows are tracked
        self.dropouts = [m for m in model.modules() if type(m) is nn.Dropout]
        self.embedding = _sparse_candidate(model) if sparse_embedding else None
        self.attention = attention and _can_swap_attention(model)
        self._buffer: torch.Tensor | None = None
        self._ids: list[torch.Tensor] = []
        self._rows: torch.Tensor | None = None
        self._hook = None
        self._was_sparse = False

    def describe(self) -> str:
        parts = [f"integer dropout masks ({len(self.dropouts)} modules)"]
        if self.attention:
            parts.append("bf16 attention with dropout")
        if self.embedding is not None:
            rows, dim = self.embedding.weight.shape
            parts.append(f"row-sparse gradients for the {rows:,} x {dim} input embedding")
        return "; ".join(parts)

    def __enter__(self) -> CpuFastPaths:
        for module in self.dropouts:
            module.__class__ = FastDropout
        if self.attention:
            _register_attention()
            self.model.set_attn_implementation(ATTENTION_NAME)
        if self.embedding is not None:
            weight = self.embedding.weight
            if weight.grad is not None:
                raise RuntimeError("The input embedding already has a gradient; zero the gradients first.")
            self._was_sparse = self.embedding.sparse
            self._buffer = torch.zeros_like(weight)
            weight.grad = self._buffer
            self.embedding.sparse = True
            self._hook = self.embedding.register_forward_pre_hook(self._record_ids)
        return self

    def __exit__(self, *exc) -> None:
        for module in self.dropouts:
            if type(module) is FastDropout:
                module.__class__ = nn.Dropout
        if self.attention and self.model.config._attn_implementation == ATTENTION_NAME:
            self.model.set_attn_implementation("sdpa")
        if self.embedding is not None:
            self._hook.remove()
            self.embedding.sparse = self._was_sparse
            if self.embedding.weight.grad is self._buffer:
                self.embedding.weight.grad = None
            self._buffer, self._ids, self._rows = None, [], None

    def _record_ids(self, module, args) -> None:
        if module.training and torch.is_grad_enabled():
            self._ids.append(args[0].detach().reshape(-1))
            self._rows = None

    def _touched_rows(self) -> torch.Tensor:
        if self._rows is None:
            ids = torch.cat(self._ids) if self._ids else torch.zeros(0, dtype=torch.long)
            self._rows = torch.unique(ids.to(self._buffer.device))
        return self._rows

    def clip_grad_norm_(self, parameters, max_norm: float) -> torch.Tensor:
        """torch's `clip_grad_norm_` (2-norm over all gradients, scaled by min(1, max_norm / norm)),
        reading and scaling only the embedding rows that can be non-zero."""
        parameters = list(parameters)
        if self.embedding is None or self.embedding.weight.grad is not self._buffer:
            return self._clip(parameters, max_norm)
        others = [p.grad for p in parameters if p.grad is not None and p.grad is not self._buffer]
        rows = self._touched_rows()
        used = self._buffer.index_select(0, rows)
        norms = list(torch._foreach_norm(others)) if others else []
        total = torch.linalg.vector_norm(torch.stack([*norms, torch.linalg.vector_norm(used)]))
        coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        if coef.item() == 1.0:  # nothing to scale (reading a CPU tensor costs no sync)
            return total
        if others:
            torch._foreach_mul_(others, coef)
        self._buffer.index_copy_(0, rows, used.mul_(coef))
        return total

    def after_zero_grad(self) -> None:
        if self.embedding is not None and self.embedding.weight.grad is None:
            self._buffer.index_fill_(0, self._touched_rows(), 0.0)
            self.embedding.weight.grad = self._buffer
            self._ids, self._rows = [], None


def _can_swap_attention(model: nn.Module) -> bool:
    config = getattr(model, "config", None)
    can = getattr(model, "_can_set_attn_implementation", None)
    return (config is not None and getattr(config, "_attn_implementation", None) == "sdpa"
            and callable(can) and bool(can()))


def _sparse_candidate(model: nn.Module) -> nn.Embedding | None:
    """The input embedding, when a sparse backward is safe and worth it for it."""
    get = getattr(model, "get_input_embeddings", None)
    embedding = get() if callable(get) else None
    if type(embedding) is not nn.Embedding or not embedding.weight.requires_grad:
        return None
    if embedding.max_norm is not None or embedding.scale_grad_by_freq:
        return None
    out = getattr(model, "get_output_embeddings", lambda: None)()
    if out is not None and getattr(out, "weight", None) is embedding.weight:
        return None  # tied to the LM head: its dense gradient lands in the same tensor
    return embedding
