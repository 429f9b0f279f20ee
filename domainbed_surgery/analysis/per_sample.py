"""Per-sample gradients with ``torch.func`` and the intra/inter-domain measurement on a model.

:func:`per_sample_gradients` returns the ``[S, P]`` matrix of the loss gradient of each
sample w.r.t. all trainable parameters (flattened and concatenated in
``named_parameters`` order), computed with ``vmap(grad(functional_call(...)))`` over
chunks of ``chunk_size`` samples written into one preallocated matrix, so peak memory is
``S * P`` floats plus one chunk's worth of ``vmap`` intermediates, whatever the backbone.

BatchNorm and dropout: :func:`measure_similarity` runs the model in **eval mode**
(restoring each module's mode afterwards). A per-sample gradient is the gradient of one
sample's loss; in train mode BatchNorm would normalize with the statistics of the batch,
so under ``vmap`` each "batch" is the single sample (its spatial statistics only: a
different function from the one being trained, and degenerate for 1x1 feature maps),
and updating running statistics inside ``vmap`` is not supported. In eval mode every
sample goes through the same, fixed function (BatchNorm uses its running statistics,
dropout is off), so the cosines compare the samples and not dropout masks or batch
composition. Networks without BatchNorm or dropout (DomainBed's MNIST CNN uses
GroupNorm) compute exactly the same function in both modes.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from .similarity import CosineStats, cosine_stats


def trainable_parameters(model: nn.Module) -> dict[str, Tensor]:
    """The parameters gradients are taken for: those with ``requires_grad``, by name."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def num_trainable(model: nn.Module) -> int:
    """P: the length of one flattened per-sample gradient."""
    return sum(p.numel() for p in trainable_parameters(model).values())


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode, then restore each one's own ``training`` flag."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def per_sample_gradients(model: nn.Module, x: Tensor, y: Tensor, *, chunk_size: int = 32,
                         loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
                         out: Tensor | None = None) -> Tensor:
    """``[S, P]``: row ``i`` is d loss(model(x[i]), y[i]) / d theta, theta = trainable params.

    The model is called as is (see the module docstring for eval mode): each sample is
    fed as a batch of one. Frozen parameters and buffers enter as constants.
    ``chunk_size`` bounds how many samples one ``vmap`` call processes.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if len(x) != len(y):
        raise ValueError(f"{len(x)} inputs but {len(y)} labels")
    params = {n: p.detach() for n, p in trainable_parameters(model).items()}
    if not params:
        raise ValueError("the model has no trainable parameter")
    constants = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    constants.update(dict(model.named_buffers()))
    sizes = [p.numel() for p in params.values()]
    ref = next(iter(params.values()))
    s, total = len(x), sum(sizes)
    if out is None:
        out = torch.empty(s, total, device=ref.device, dtype=ref.dtype)
    elif tuple(out.shape) != (s, total):
        raise ValueError(f"out must have shape {(s, total)}, got {tuple(out.shape)}")

    def sample_loss(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        logits = functional_call(model, {**constants, **p}, (xi.unsqueeze(0),))
        return loss_fn(logits, yi.unsqueeze(0))

    batched = vmap(grad(sample_loss), in_dims=(None, 0, 0))
    for start in range(0, s, chunk_size):
        stop = min(start + chunk_size, s)
        grads = batched(params, x[start:stop], y[start:stop])
        for piece, g in zip(out[start:stop].split(sizes, dim=1), grads.values()):
            piece.copy_(g.reshape(stop - start, -1))
        del grads
    return out


def measure_similarity(model: nn.Module, minibatches: Sequence[tuple[Tensor, Tensor]], *,
                       chunk_size: int = 32) -> CosineStats:
    """Intra/inter-domain mean gradient cosine of ``minibatches`` (one ``(x, y)`` per domain).

    Runs in eval mode (module docstring) and leaves the model's gradients untouched.
    """
    xs = torch.cat([x for x, _ in minibatches])
    ys = torch.cat([y for _, y in minibatches])
    domains = torch.cat([torch.full((len(x),), d, dtype=torch.long)
                         for d, (x, _) in enumerate(minibatches)])
    with eval_mode(model):
        grads = per_sample_gradients(model, xs, ys, chunk_size=chunk_size)
    return cosine_stats(grads, domains.to(grads.device))
