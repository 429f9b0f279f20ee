"""BatchNorm running statistics for per-domain forward passes: one update per step.

A surgery step runs N train-mode forwards, one per domain minibatch, so that BatchNorm
normalizes each domain by its own batch statistics (that is the method). Left alone,
each of those forwards would also move the running statistics, N momentum updates per
step in a fixed domain order: biased toward the last domain, and ``num_batches_tracked``
growing N times per step. :class:`PooledBatchNormStats` keeps the per-domain
normalization but averages the passes' batch statistics instead, and :meth:`commit`
applies **one** update per step from their mean::

    running_mean <- (1 - m) * running_mean + m * mean_d(batch_mean_d)
    running_var  <- (1 - m) * running_var  + m * mean_d(batch_var_d)   (unbiased, as torch)

with ``m`` the module's momentum (or ``1 / num_batches_tracked`` when it is None, as
torch does). Order-free, and ``num_batches_tracked`` grows by one per step, as for ERM.
Modules in eval mode (e.g. ``freeze_bn``) or without running statistics are left alone.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["PooledBatchNormStats"]


class PooledBatchNormStats:
    """Context manager: per-pass batch statistics inside, one pooled running update on commit.

    Inside the ``with`` block, every BatchNorm of ``model`` that is in train mode and
    tracks running statistics normalizes with the batch's statistics (as usual), and its
    own kernel averages the passes' statistics: a pre-hook sets the momentum of the k-th
    pass to ``1 / k``, so after the passes the running statistics hold the mean of the
    batch means and of the unbiased batch variances (a cumulative average, exact up to
    rounding). Nothing is copied per pass. Leaving the block keeps that mean and restores
    the modules (running statistics, ``num_batches_tracked``, momentum); :meth:`commit`
    (after the block) applies the single update; without it nothing changes, e.g. when the
    step is abandoned because a gradient is not finite. Saving, restoring and updating are
    ``torch._foreach_*`` calls over all modules: a handful of kernels per step on a GPU
    instead of several per module and pass (ResNet-50 has 53 BatchNorms).
    """

    def __init__(self, model: nn.Module) -> None:
        self._modules = [m for m in model.modules()
                         if isinstance(m, _BatchNorm) and m.training and m.track_running_stats
                         and m.running_mean is not None and m.running_var is not None]
        self._handles: list = []
        self._saved: Optional[tuple] = None
        self._passes: list[int] = []
        self._pooled: Optional[tuple] = None

    def _stats(self) -> tuple[list[Tensor], list[Tensor]]:
        return ([m.running_mean for m in self._modules], [m.running_var for m in self._modules])

    def __enter__(self) -> "PooledBatchNormStats":
        self._pooled = None
        self._passes = [0] * len(self._modules)
        if not self._modules:
            return self
        means, variances = self._stats()
        tracked = [m.num_batches_tracked for m in self._modules if m.num_batches_tracked is not None]
        self._saved = (_copies(means), _copies(variances), _copies(tracked),
                       [m.momentum for m in self._modules])
        for index, module in enumerate(self._modules):
            self._handles.append(module.register_forward_pre_hook(self._next_pass(index)))
        return self

    def _next_pass(self, index: int):
        def hook(module: _BatchNorm, args) -> None:
            self._passes[index] += 1
            module.momentum = 1.0 / self._passes[index]  # the k-th pass: cumulative average
        return hook

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._saved is None:
            return
        means, variances = self._stats()
        saved_means, saved_vars, saved_tracked, momenta = self._saved
        with torch.no_grad():
            self._pooled = (_copies(means), _copies(variances))
            torch._foreach_copy_(means, saved_means)
            torch._foreach_copy_(variances, saved_vars)
            tracked = [m.num_batches_tracked for m in self._modules
                       if m.num_batches_tracked is not None]
            if tracked:
                torch._foreach_copy_(tracked, saved_tracked)
        for module, momentum in zip(self._modules, momenta):
            module.momentum = momentum
        self._saved = None

    @property
    def active(self) -> bool:
        """Whether ``model`` has any BatchNorm whose running statistics this manages."""
        return bool(self._modules)

    def commit(self) -> None:
        """Apply one momentum update per module from the mean of the recorded statistics;
        a module that no pass used is left alone."""
        if self._pooled is None:
            return
        pooled_means, pooled_vars = self._pooled
        used = [i for i, passes in enumerate(self._passes) if passes]
        groups: dict[float, list[int]] = {}
        with torch.no_grad():
            tracked = [self._modules[i].num_batches_tracked for i in used
                       if self._modules[i].num_batches_tracked is not None]
            if tracked:
                torch._foreach_add_(tracked, 1)  # counted as _BatchNorm.forward counts
            for i in used:
                groups.setdefault(_factor(self._modules[i]), []).append(i)
            for factor, indices in groups.items():
                torch._foreach_lerp_([self._modules[i].running_mean for i in indices],
                                     [pooled_means[i] for i in indices], factor)
                torch._foreach_lerp_([self._modules[i].running_var for i in indices],
                                     [pooled_vars[i] for i in indices], factor)
        self._pooled = None


def _copies(tensors: list[Tensor]) -> list[Tensor]:
    """Copies of ``tensors``: one fused copy per device and dtype instead of one per tensor."""
    out = [torch.empty_like(t) for t in tensors]
    if out:
        torch._foreach_copy_(out, tensors)
    return out


def _factor(module: _BatchNorm) -> float:
    """This update's factor (``num_batches_tracked`` already counts it), as
    ``_BatchNorm.forward`` computes it."""
    if module.momentum is not None:
        return float(module.momentum)
    tracked: Optional[Tensor] = module.num_batches_tracked
    return 1.0 / float(tracked) if tracked is not None else 0.0  # cumulative moving average
