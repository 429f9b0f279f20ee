"""One order-free BatchNorm running-statistics update per step (``PooledBatchNormStats``).

Known answers: with BatchNorm as the first layer its input is the raw batch, so the
expected running statistics are computed from the data by hand:
``(1 - m) * old + m * mean_d(batch statistic of domain d)``.
"""

import copy

import pytest
import torch
from torch import nn

from domainbed_surgery.surgery.batchnorm import PooledBatchNormStats


def batches(n=3, b=8, c=4, side=5, seed=0):
    """``n`` image batches with clearly different means per domain."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, c, side, side, generator=g) * (1 + d) + 3.0 * d for d in range(n)]


def net(c=4, momentum=0.1):
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm2d(c, momentum=momentum), nn.Conv2d(c, 3, 3),
                          nn.BatchNorm2d(3, momentum=momentum), nn.ReLU())
    model[0].running_mean.fill_(0.5)  # a non-trivial starting point
    model[0].running_var.fill_(2.0)
    return model.train()


def run(model, xs):
    with PooledBatchNormStats(model) as bn:
        outs = [model(x) for x in xs]
    bn.commit()
    return outs


@pytest.mark.parametrize("momentum", [0.1, 0.5])
def test_one_update_from_the_mean_of_per_domain_statistics(momentum):
    model, xs = net(momentum=momentum), batches()
    old_mean, old_var = model[0].running_mean.clone(), model[0].running_var.clone()
    run(model, xs)
    mean_d = torch.stack([x.mean(dim=(0, 2, 3)) for x in xs]).mean(0)
    var_d = torch.stack([x.var(dim=(0, 2, 3), unbiased=True) for x in xs]).mean(0)
    torch.testing.assert_close(model[0].running_mean, (1 - momentum) * old_mean + momentum * mean_d)
    torch.testing.assert_close(model[0].running_var, (1 - momentum) * old_var + momentum * var_d)
    assert model[0].num_batches_tracked.item() == 1 and model[2].num_batches_tracked.item() == 1


def test_plain_passes_are_order_dependent_and_pooled_ones_are_not():
    xs = batches()
    pooled = [net(), net()]
    run(pooled[0], xs)
    run(pooled[1], xs[::-1])
    for a, b in zip(pooled[0].buffers(), pooled[1].buffers()):
        torch.testing.assert_close(a, b)
    # What the context replaces: N momentum updates, biased toward the last domain.
    plain = [net(), net()]
    for x in xs:
        plain[0](x)
    for x in xs[::-1]:
        plain[1](x)
    assert plain[0][0].num_batches_tracked.item() == 3
    assert not torch.allclose(plain[0][0].running_mean, plain[1][0].running_mean)


def test_outputs_use_per_pass_batch_statistics_as_in_train_mode():
    model, xs = net(), batches()
    twin = copy.deepcopy(model)
    outs = run(model, xs)
    for x, out in zip(xs, outs):
        assert torch.equal(out, twin(x))  # same normalization as a plain train-mode forward


def test_cumulative_average_when_momentum_is_none():
    model, xs = net(momentum=None), batches()
    model[0].num_batches_tracked.fill_(3)
    old = model[0].running_mean.clone()
    run(model, xs)
    mean_d = torch.stack([x.mean(dim=(0, 2, 3)) for x in xs]).mean(0)
    torch.testing.assert_close(model[0].running_mean, old * 3 / 4 + mean_d / 4)
    assert model[0].num_batches_tracked.item() == 4


def test_no_commit_no_change_and_modules_restored():
    model, xs = net(), batches()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="boom"):
        with PooledBatchNormStats(model):
            model(xs[0])
            raise RuntimeError("boom")
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(m.track_running_stats for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    model(xs[0])  # back to normal: a plain forward updates the running statistics again
    assert model[0].num_batches_tracked.item() == 1


def test_eval_mode_frozen_and_batchnorm_free_models_are_untouched():
    xs = batches()
    frozen = net()
    frozen[0].eval()  # e.g. freeze_bn
    before = frozen[0].running_mean.clone()
    run(frozen, xs)
    assert torch.equal(frozen[0].running_mean, before)
    assert frozen[2].num_batches_tracked.item() == 1  # the train-mode one still updates

    no_stats = nn.BatchNorm2d(4, track_running_stats=False).train()
    assert not PooledBatchNormStats(no_stats).active
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(100, 5))
    assert not PooledBatchNormStats(mlp).active
    twin = copy.deepcopy(mlp)
    assert all(torch.equal(a, twin(x)) for a, x in zip(run(mlp, xs), xs))


def test_a_batchnorm_no_pass_used_is_left_alone():
    """A module outside the passes' path (an unused branch) keeps its statistics and count."""
    model, xs = net(), batches()
    unused = nn.BatchNorm2d(4).train()
    unused.running_mean.fill_(0.25)
    model.add_module("unused", unused)  # in modules(), never called by the passes below
    before = {k: v.clone() for k, v in unused.state_dict().items()}
    with PooledBatchNormStats(model) as bn:
        for x in xs:
            model[:4](x)
    bn.commit()
    for k, v in unused.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert model[0].num_batches_tracked.item() == 1


def test_commit_without_passes_and_twice_changes_nothing():
    model, xs = net(), batches()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with PooledBatchNormStats(model) as bn:
        pass
    bn.commit()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    with PooledBatchNormStats(model) as bn:
        model(xs[0])
    bn.commit()
    after_one = {k: v.clone() for k, v in model.state_dict().items()}
    bn.commit()  # a second commit of the same passes is not a second update
    for k, v in model.state_dict().items():
        assert torch.equal(v, after_one[k]), k
