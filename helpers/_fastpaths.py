"""CPU fast paths the training loop can switch on while it trains (opt-in), and undoes when it returns.

They keep the math of a training step (not its exact bits). `python -m bench.ablation` measures them
(docs/benchmarks.md): 1.09x on real data, below the 1.15x that would make them the default, so
`hp.train(..., cpu_fast_paths=True)` asks for them.

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
- **Row-sparse gradients and AdamW for the input embedding**: the dense backward of a 30,522 x 384
  word embedding allocates and zero-fills a fresh 47 MB gradient every step (page faults included, a
  sixth of a small model's step on a CPU), clipping reads and scales all of it, and AdamW reads and
  writes its 94 MB of moments, although a batch uses a few hundred rows. With `sparse=True` the
  backward emits only the used rows; clipping measures and scales those; AdamW decays every row
  (rows never used have zero moments, so decay is all AdamW does to them) and runs torch's fused
  AdamW on the rows used so far, whose moments are kept compact. Same math as the dense path;
  checkpoints hold the usual dense optimizer state, so runs resume with or without the fast paths.

None of this is used on GPUs, where dropout and zero-fills are fused and cheap. The sparse
embedding path is left out of multi-process runs (DDP reduces the gradient layout it saw when it
wrapped the model), for embeddings tied to an output layer (which get a dense gradient from it),
and for optimizers other than plain `torch.optim.AdamW`.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.optim.adamw import adamw

ATTENTION_NAME = "workbook_cpu_sdpa"
PARTS = ("dropout", "attention", "embedding")  # what `hp.train(cpu_fast_paths=...)` can switch on
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


def _embedding_works() -> str | None:
    missing = [f for f in ("_foreach_norm", "_foreach_mul_") if not hasattr(torch, f)]
    return f"torch has no {', '.join(missing)}" if missing else None


def _checked(part: str, why_not: str | None) -> bool:
    """True when the fast path may be used; else one printed line and the standard path."""
    if why_not is None:
        return True
    print(f"CPU fast path {part!r} is off: {why_not}; the standard path is used instead")
    return False


class CpuFastPaths:
    """Context manager: switch the fast paths on for `model`, restore it on exit (errors included).

    The loop calls `clip_grad_norm_` instead of `clip` (torch's or the accelerator's), `step(optimizer)`
    instead of `optimizer.step()`, and saves checkpoints inside `dense_optimizer_state()`.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *, parts=PARTS,
                 sparse_embedding: bool = True, clip=None):
        unknown = set(parts) - set(PARTS)
        if unknown:
            raise ValueError(f"Unknown CPU fast paths {sorted(unknown)}; choose from {list(PARTS)}.")
        self.model = model
        self._clip = clip or torch.nn.utils.clip_grad_norm_
        dropouts = [m for m in model.modules() if type(m) is nn.Dropout] if "dropout" in parts else []
        self.dropouts = dropouts if dropouts and _checked("dropout", _dropout_works()) else []
        self.attention = ("attention" in parts and _can_swap_attention(model)
                          and _checked("attention", _attention_works()))
        self.registered = False
        embedding = (_sparse_candidate(model) if sparse_embedding and "embedding" in parts
                     and _checked("embedding", _embedding_works()) else None)
        self.sparse_adam = (_SparseEmbeddingAdamW(embedding, optimizer)
                            if embedding is not None and _SparseEmbeddingAdamW.supports(embedding, optimizer) else None)

    def describe(self) -> str:
        """The fast paths actually in use ('' when none)."""
        parts = [f"integer dropout masks ({len(self.dropouts)} modules)"] if self.dropouts else []
        if self.attention:
            parts.append("bf16 attention with dropout")
        if self.sparse_adam is not None:
            rows, dim = self.sparse_adam.weight.shape
            parts.append(f"row-sparse gradients and AdamW for the {rows:,} x {dim} input embedding")
        return "; ".join(parts)

    def __enter__(self) -> CpuFastPaths:
        for module in self.dropouts:
            module.__class__ = FastDropout
        if self.attention:
            self.registered = _register_attention()
            self.model.set_attn_implementation(ATTENTION_NAME)
        if self.sparse_adam is not None:
            self.sparse_adam.enter()
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
        if self.sparse_adam is not None:
            self.sparse_adam.exit()

    def clip_grad_norm_(self, parameters, max_norm: float) -> torch.Tensor:
        """torch's `clip_grad_norm_` (2-norm over all gradients, scaled by min(1, max_norm / norm)),
        with the embedding's gradient read and scaled as its used rows only (the others are zero)."""
        parameters = list(parameters)
        grad = self.sparse_adam.take_grad() if self.sparse_adam is not None else None
        if grad is None:
            return self._clip(parameters, max_norm)
        others = [p.grad for p in parameters if p.grad is not None]
        norms = list(torch._foreach_norm(others)) if others else []
        total = torch.linalg.vector_norm(torch.stack([*norms, torch.linalg.vector_norm(grad[1])]))
        coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        if coef.item() == 1.0:  # nothing to scale (reading a CPU tensor costs no sync)
            return total
        if others:
            torch._foreach_mul_(others, coef)
        grad[1].mul_(coef)
        return total

    def step(self, optimizer, *, sync: bool = True) -> None:
        """`optimizer.step()`, with the embedding updated from its used rows first (when gradients are
        synchronized: with accumulation, the accelerator's optimizer skips the other micro-steps)."""
        if self.sparse_adam is not None and sync:
            self.sparse_adam.step()
        optimizer.step()

    @contextlib.contextmanager
    def dense_optimizer_state(self):
        """Inside: the optimizer holds the embedding's AdamW state as a dense one, so checkpoints are
        the same with or without the fast paths (and resume either way)."""
        dense = self.sparse_adam.dense_state() if self.sparse_adam is not None else None
        if dense is None:
            yield
            return
        self.sparse_adam.optimizer.state[self.sparse_adam.weight] = dense
        try:
            yield
        finally:
            self.sparse_adam.optimizer.state.pop(self.sparse_adam.weight, None)


class _SparseEmbeddingAdamW:
    """AdamW for the input embedding from its row-sparse gradient, the same math as torch's AdamW.

    Rows never used yet have zero moments, so AdamW only decays them: p *= 1 - lr * weight_decay.
    Every row gets that decay; the rows used so far (in order of first use) keep compact moments and
    get the Adam update through torch's own fused AdamW function.
    """

    def __init__(self, embedding: nn.Embedding, optimizer: torch.optim.Optimizer):
        self.embedding, self.optimizer, self.weight = embedding, optimizer, embedding.weight
        self.group = next(g for g in optimizer.param_groups if any(p is self.weight for p in g["params"]))
        rows, dim = self.weight.shape
        self.rows = torch.zeros(0, dtype=torch.long)
        self.slot = torch.full((rows,), -1, dtype=torch.long)
        self.exp_avg = torch.zeros(0, dim)
        self.exp_avg_sq = torch.zeros(0, dim)
        self.steps = torch.zeros((), dtype=torch.float32)
        self._grad: tuple[torch.Tensor, torch.Tensor] | None = None
        self._was_sparse = embedding.sparse

    @staticmethod
    def supports(embedding: nn.Embedding, optimizer) -> bool:
        if type(optimizer) is not torch.optim.AdamW or embedding.weight.device.type != "cpu":
            return False
        if embedding.weight.dtype != torch.float32:
            return False
        group = next((g for g in optimizer.param_groups if any(p is embedding.weight for p in g["params"])), None)
        return group is not None and not (group.get("amsgrad") or group.get("maximize")
                                          or group.get("capturable") or group.get("differentiable"))

    def enter(self) -> None:
        state = self.optimizer.state.pop(self.weight, None)  # resuming: a checkpoint's dense state
        if state:
            used = (state["exp_avg_sq"] != 0).any(dim=1).nonzero().flatten()
            self.rows = used
            self.slot[used] = torch.arange(len(used))
            self.exp_avg = state["exp_avg"].index_select(0, used)
            self.exp_avg_sq = state["exp_avg_sq"].index_select(0, used)
            self.steps = torch.as_tensor(state["step"], dtype=torch.float32).clone()
        self.embedding.sparse = True

    def exit(self) -> None:
        self.embedding.sparse = self._was_sparse
        grad = self.weight.grad
        if grad is not None and grad.is_sparse:
            self.weight.grad = grad.to_dense()
        self._grad = None

    def take_grad(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(rows, values) of the summed gradient; the parameter itself is left without one, so the
        main optimizer skips it."""
        if self._grad is None and self.weight.grad is not None:
            grad, self.weight.grad = self.weight.grad, None
            if grad.is_sparse:
                grad = grad.coalesce()
                self._grad = grad.indices()[0], grad.values()
            else:
                rows = grad.ne(0).any(dim=1).nonzero().flatten()
                self._grad = rows, grad.index_select(0, rows)
        return self._grad

    def step(self) -> None:
        grad = self.take_grad()
        self._grad = None
        if grad is None:
            return  # like torch's optimizers: a parameter without a gradient is left alone
        rows, values = grad
        new = rows[self.slot[rows] < 0]
        if len(new):
            self.slot[new] = torch.arange(len(self.rows), len(self.rows) + len(new))
            self.rows = torch.cat([self.rows, new])
            zeros = torch.zeros(len(new), self.exp_avg.shape[1])
            self.exp_avg = torch.cat([self.exp_avg, zeros])
            self.exp_avg_sq = torch.cat([self.exp_avg_sq, zeros])
        dense_grad = torch.zeros_like(self.exp_avg).index_copy_(0, self.slot[rows], values.float())
        lr, weight_decay = self.group["lr"], self.group["weight_decay"]
        beta1, beta2 = self.group["betas"]
        with torch.no_grad():
            if weight_decay:
                self.weight.mul_(1 - lr * weight_decay)
            used = self.weight.index_select(0, self.rows)
            adamw([used], [dense_grad], [self.exp_avg], [self.exp_avg_sq], [], [self.steps], fused=True,
                  amsgrad=False, beta1=beta1, beta2=beta2, lr=lr, weight_decay=0.0, eps=self.group["eps"],
                  maximize=False)
            self.weight.index_copy_(0, self.rows, used)

    def dense_state(self) -> dict | None:
        if not len(self.rows) and not self.steps:
            return None
        exp_avg = torch.zeros_like(self.weight).index_copy_(0, self.rows, self.exp_avg)
        exp_avg_sq = torch.zeros_like(self.weight).index_copy_(0, self.rows, self.exp_avg_sq)
        return {"step": self.steps.clone(), "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}


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
