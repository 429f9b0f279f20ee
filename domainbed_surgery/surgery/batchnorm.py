"""BatchNorm running statistics for per-domain forward passes: one update per step.

A surgery step runs N train-mode forwards, one per domain minibatch, so that BatchNorm
normalizes each domain by its own batch statistics (that is the method). Left alone,
each of those forwards would also move the running statistics, N momentum updates per
step in a fixed domain order: biased toward the last domain, and ``num_batches_tracked``
growing N times per step. :class:`PooledBatchNormStats` keeps the per-domain
normalization but records each pass's batch statistics instead, and :meth:`commit`
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


class _Record:
    """Batch statistics written by one BatchNorm module during the recorded passes."""

    def __init__(self) -> None:
        self.means: list[Tensor] = []
        self.vars: list[Tensor] = []

    def __call__(self, module: _BatchNorm, args, output) -> None:
        # momentum 1 inside the block: the running statistics now hold this batch's own
        self.means.append(module.running_mean.clone())
        self.vars.append(module.running_var.clone())


class PooledBatchNormStats:
    """Context manager: per-pass batch statistics inside, one pooled running update on commit.

    Inside the ``with`` block, every BatchNorm of ``model`` that is in train mode and
    tracks running statistics normalizes with the batch's statistics (as usual) and runs
    with momentum 1, so its own kernel writes that batch's mean and unbiased variance into
    the running statistics, where a hook records them: free, and exactly the statistics
    BatchNorm computed. Leaving the block restores the modules (running statistics,
    ``num_batches_tracked``, momentum). :meth:`commit` (after the block) applies the
    single update; without it nothing changes, e.g. when the step is abandoned because a
    gradient is not finite.
    """

    def __init__(self, model: nn.Module) -> None:
        self._modules = [m for m in model.modules()
                         if isinstance(m, _BatchNorm) and m.training and m.track_running_stats
                         and m.running_mean is not None and m.running_var is not None]
        self._records: list[_Record] = []
        self._handles: list = []
        self._saved: list[tuple] = []

    def __enter__(self) -> "PooledBatchNormStats":
        self._records = [_Record() for _ in self._modules]
        self._saved = []
        for module, record in zip(self._modules, self._records):
            tracked = module.num_batches_tracked
            self._saved.append((module.running_mean.clone(), module.running_var.clone(),
                                None if tracked is None else tracked.clone(), module.momentum))
            module.momentum = 1.0
            self._handles.append(module.register_forward_hook(record))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        with torch.no_grad():
            for module, (mean, var, tracked, momentum) in zip(self._modules, self._saved):
                module.running_mean.copy_(mean)
                module.running_var.copy_(var)
                if tracked is not None:
                    module.num_batches_tracked.copy_(tracked)
                module.momentum = momentum
        self._saved = []

    @property
    def active(self) -> bool:
        """Whether ``model`` has any BatchNorm whose running statistics this manages."""
        return bool(self._modules)

    def commit(self) -> None:
        """Apply one momentum update per module from the mean of the recorded statistics."""
        with torch.no_grad():
            for module, record in zip(self._modules, self._records):
                if not record.means:
                    continue  # not used in these passes: nothing to learn from
                mean = torch.stack(record.means).mean(dim=0)
                var = torch.stack(record.vars).mean(dim=0)
                factor = _momentum(module)
                module.running_mean.mul_(1.0 - factor).add_(mean.to(module.running_mean.dtype),
                                                            alpha=factor)
                module.running_var.mul_(1.0 - factor).add_(var.to(module.running_var.dtype),
                                                           alpha=factor)
        self._records = [_Record() for _ in self._modules]


def _momentum(module: _BatchNorm) -> float:
    """Count this update and return its factor, as ``_BatchNorm.forward`` does."""
    tracked: Optional[Tensor] = module.num_batches_tracked
    if tracked is not None:
        tracked.add_(1)
    if module.momentum is None:  # cumulative moving average
        return 1.0 / float(tracked) if tracked is not None else 0.0
    return float(module.momentum)
