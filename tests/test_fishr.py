"""BackPACK-free Fishr against per-sample autograd, hand computations and DomainBed's own code."""

import copy

import pytest
import torch
import torch.nn.functional as F

import domainbed_surgery
from conftest import require_domainbed

require_domainbed()

from domainbed import algorithms, hparams_registry, networks  # noqa: E402
from domainbed.lib import misc  # noqa: E402

from domainbed_surgery.fixes import fishr  # noqa: E402
from domainbed_surgery.fixes.fishr import Fishr  # noqa: E402


@pytest.fixture
def f64():
    """float64 for the exact comparisons (per test, so other modules are unaffected)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


SHAPE = (12,)  # 1-D inputs: DomainBed's MLP featurizer, fast on a CPU


def hparams(**over):
    hp = hparams_registry.default_hparams("Fishr", "RotatedDigits")
    hp.update({"mlp_width": 32, "mlp_depth": 3, "mlp_dropout": 0.0, "backbone": None})
    hp.update(over)
    return hp


def loop_per_sample_grads(classifier, z, y):
    """Reference: one autograd call per sample on the summed-loss term, graph kept."""
    rows = {name: [] for name, _ in classifier.named_parameters()}
    params = list(classifier.parameters())
    for i in range(z.shape[0]):
        loss = F.cross_entropy(classifier(z[i:i + 1]), y[i:i + 1], reduction="sum")
        grads = torch.autograd.grad(loss, params, create_graph=True)
        for (name, _), g in zip(classifier.named_parameters(), grads):
            rows[name].append(g.reshape(-1))
    return {name: torch.stack(r) for name, r in rows.items()}


def minibatches(n_domains=3, n=5, shape=SHAPE, classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g))
            for _ in range(n_domains)]


# --- per-sample gradients ------------------------------------------------------------
def test_closed_form_equals_per_sample_autograd(f64):
    torch.manual_seed(0)
    lin = torch.nn.Linear(7, 4)
    z = torch.randn(9, 7, requires_grad=True)
    y = torch.randint(0, 4, (9,))
    ours = fishr.linear_per_sample_grads(z, lin(z), y)
    ref = loop_per_sample_grads(lin, z, y)
    assert set(ours) == {"weight", "bias"} and ours["weight"].shape == (9, 28)
    for k in ours:
        torch.testing.assert_close(ours[k], ref[k], atol=1e-6, rtol=0)
    # also the same function of the features (second-order, as create_graph=True gives)
    w = torch.randn(9, 28)
    g_ours, = torch.autograd.grad((ours["weight"] * w).sum(), z)
    g_ref, = torch.autograd.grad((ref["weight"] * w).sum(), z)
    torch.testing.assert_close(g_ours, g_ref, atol=1e-6, rtol=0)


def test_functional_grads_for_nonlinear_classifier_equal_autograd(f64):
    torch.manual_seed(1)
    mlp = networks.Classifier(16, 3, is_nonlinear=True)
    z = torch.randn(6, 16, requires_grad=True)
    y = torch.randint(0, 3, (6,))
    ours = fishr.functional_per_sample_grads(mlp, z, y)
    ref = loop_per_sample_grads(mlp, z, y)
    assert list(ours) == [n for n, _ in mlp.named_parameters()]
    for k in ours:
        torch.testing.assert_close(ours[k], ref[k], atol=1e-6, rtol=0)
    g_ours, = torch.autograd.grad(sum(v.pow(2).sum() for v in ours.values()), z)
    g_ref, = torch.autograd.grad(sum(v.pow(2).sum() for v in ref.values()), z)
    torch.testing.assert_close(g_ours, g_ref, atol=1e-6, rtol=0)


# --- the penalty ------------------------------------------------------------------------
def test_penalty_by_hand_on_a_tiny_example(f64):
    """2 domains x 2 samples, 1 feature, 2 classes, ema=0 (no smoothing, correction /1)."""
    alg = Fishr(SHAPE, 2, 2, hparams(ema=0.0))
    z = torch.tensor([[1.0], [2.0], [0.0], [3.0]])
    logits = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    y = torch.tensor([0, 1, 0, 0])
    # residual p - onehot with p = (1/2, 1/2): y=0 -> (-1/2, 1/2), y=1 -> (1/2, -1/2)
    # domain 0: bias grads (-.5,.5), (.5,-.5): var (.25,.25); weight = residual * z:
    #   (-.5,.5), (1,-1): mean (.25,-.25), var (.5625,.5625)
    # domain 1: bias grads equal: var (0,0); weight (0,0), (-1.5,1.5): var (.5625,.5625)
    # mean var: bias (.125,.125), weight (.5625,.5625); each domain's squared distance
    # averaged over the 4 entries: (2 * .125^2 + 0) / 4; penalty = mean over domains.
    penalty = alg.compute_fishr_penalty(z, logits, y, [2, 2])
    assert penalty.item() == pytest.approx(2 * 0.125 ** 2 / 4, abs=1e-12)


def test_penalty_equals_domainbed_pipeline_and_reaches_featurizer(f64):
    """Same per-sample grads fed to DomainBed's own variance/EMA/distance methods."""
    torch.manual_seed(0)
    hp = hparams(ema=0.9)
    alg = Fishr(SHAPE, 10, 3, hp)
    ref_self = type("RefSelf", (), {})()
    ref_self.num_domains = 3
    ref_self.ema_per_domain = [misc.MovingAverage(0.9, oneminusema_correction=True)
                               for _ in range(3)]
    DB = Fishr.original
    for step in range(3):  # EMA state must agree too
        mb = minibatches(seed=step)
        x = torch.cat([a for a, _ in mb])
        y = torch.cat([b for _, b in mb])
        z = alg.featurizer(x)
        ours = alg.compute_fishr_penalty(z, alg.classifier(z), y, [5, 5, 5])
        grads = loop_per_sample_grads(alg.classifier, z, y)
        var = DB._get_grads_var_per_domain(ref_self, grads, [5, 5, 5])
        ref = DB._compute_distance_grads_var(ref_self, var)
        torch.testing.assert_close(ours, ref, atol=1e-10, rtol=1e-8)
    assert ours.item() > 0
    alg.zero_grad()
    ours.backward()
    conv = next(alg.featurizer.parameters())
    assert conv.grad is not None and conv.grad.abs().sum() > 0


# --- the whole update against DomainBed's Fishr.update ----------------------------------
class EmulatedBackPACKFishr(Fishr.original):
    """DomainBed's Fishr, only its BackPACK call replaced by per-sample autograd."""

    def _get_grads(self, logits, y):
        features = self._features  # the classifier's input, kept by the hook below
        return loop_per_sample_grads(self.classifier, features, y)

    @classmethod
    def build(cls, monkeypatch, *args):
        monkeypatch.setattr(algorithms, "backpack", object(), raising=False)
        monkeypatch.setattr(algorithms, "extend", lambda m: m, raising=False)
        # its __init__ calls super(Fishr, self): the global name must be DomainBed's again
        with monkeypatch.context() as m:
            m.setattr(algorithms, "Fishr", Fishr.original)
            alg = cls(*args)

        def hook(module, inputs):
            alg._features = inputs[0]
        alg.classifier.register_forward_pre_hook(hook)
        return alg


@pytest.mark.parametrize("nonlinear", [False, True])
def test_update_matches_domainbed_fishr_including_anneal_step(monkeypatch, nonlinear, f64):
    hp = hparams(penalty_anneal_iters=2, nonlinear_classifier=nonlinear, ema=0.8,
                 **{"lambda": 10.0})
    torch.manual_seed(3)
    ours = Fishr(SHAPE, 10, 3, hp)
    torch.manual_seed(3)
    ref = EmulatedBackPACKFishr.build(monkeypatch, SHAPE, 10, 3, hp)
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(),
                                                 ref.state_dict().values()))
    assert list(ours.state_dict()) == list(ref.state_dict())  # checkpoints interchangeable
    for step in range(4):
        mb = minibatches(seed=10 + step)
        a, b = ours.update(mb), ref.update(mb)
        assert a.keys() == b.keys() == {"loss", "nll", "penalty"}
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-7, abs=1e-10), (step, k)
        assert (a["loss"] == pytest.approx(a["nll"])) == (step < 2)
        for p, q in zip(ours.parameters(), ref.parameters()):
            torch.testing.assert_close(p, q, atol=1e-8, rtol=1e-6)


# --- annealing -------------------------------------------------------------------------
@pytest.mark.parametrize("anneal", [0, 2])
def test_annealing_switches_lambda_and_resets_adam_once(anneal, f64):
    torch.manual_seed(0)
    alg = Fishr(SHAPE, 10, 3, hparams(penalty_anneal_iters=anneal, **{"lambda": 100.0}))
    optimizers = [alg.optimizer]
    for step in range(4):
        out = alg.update(minibatches(seed=step))
        optimizers.append(alg.optimizer)
        weight = 100.0 if step >= anneal else 0.0
        assert out["loss"] == pytest.approx(out["nll"] + weight * out["penalty"], rel=1e-9)
    new = [i for i in range(1, 5) if optimizers[i] is not optimizers[i - 1]]
    assert new == ([anneal + 1] if anneal else [])  # recreated during update number anneal
    assert int(alg.update_count) == 4
    if anneal:  # the new Adam has taken only the steps since the reset
        state = next(iter(alg.optimizer.state.values()))
        assert int(state["step"]) == 4 - anneal


# --- training ----------------------------------------------------------------------------
def test_training_on_rotated_digits_lowers_the_loss():
    from domainbed import datasets

    torch.manual_seed(0)
    data = datasets.get_dataset_class("RotatedDigits")(None, [3], {})
    hp = hparams(penalty_anneal_iters=5, mlp_width=64, lr=3e-3, **{"lambda": 10.0})
    side = data.input_shape[1]
    alg = Fishr((side * side,), data.num_classes, 3, hp)  # flattened: MLP featurizer
    g = torch.Generator().manual_seed(0)
    fixed = []
    for env in list(data)[:3]:
        idx = torch.randperm(len(env), generator=g)[:32]
        fixed.append((torch.stack([env[i][0].flatten() for i in idx]),
                      torch.tensor([int(env[i][1]) for i in idx])))
    with torch.no_grad():
        before = F.cross_entropy(alg.predict(torch.cat([x for x, _ in fixed])),
                                 torch.cat([y for _, y in fixed])).item()
    for _ in range(20):
        out = alg.update(fixed)
    assert set(out) == {"loss", "nll", "penalty"}
    assert all(torch.isfinite(torch.tensor(v)) for v in out.values())
    assert out["nll"] < 0.5 * before


# --- registration ------------------------------------------------------------------------
def test_registered_fishr_is_ours_and_original_reachable():
    assert algorithms.get_algorithm_class("Fishr") is Fishr
    assert algorithms.Fishr is Fishr and "Fishr" in algorithms.ALGORITHMS
    original = algorithms.Fishr_BackPACK
    assert Fishr.original is original and original.__module__ == "domainbed.algorithms"
    assert "BatchGrad" in original._get_grads.__code__.co_names
    assert "Fishr" in domainbed_surgery.register()["algorithms"]
    assert algorithms.Fishr is Fishr and algorithms.Fishr_BackPACK is original  # idempotent


def test_keep_backpack_fishr_env_and_foreign_class(monkeypatch):
    from domainbed_surgery.plugin import registration

    original = algorithms.Fishr_BackPACK
    monkeypatch.setattr(algorithms, "Fishr", original)
    monkeypatch.setenv(registration.KEEP_BACKPACK_FISHR, "1")
    registration.fix_algorithms(algorithms)
    assert algorithms.Fishr is original
    monkeypatch.delenv(registration.KEEP_BACKPACK_FISHR)
    registration.fix_algorithms(algorithms)
    assert algorithms.Fishr is Fishr

    class Foreign:
        pass
    monkeypatch.setattr(algorithms, "Fishr", Foreign)
    with pytest.raises(registration.RegistrationConflict, match="Fishr"):
        registration.fix_algorithms(algorithms, strict=True)
    assert algorithms.Fishr is Foreign


def test_fresh_interpreter_gets_our_fishr_via_the_import_hook(tmp_path):
    import subprocess
    import sys

    code = ("import domainbed.algorithms as a, domainbed_surgery.fixes.fishr as f; "
            "print(a.get_algorithm_class('Fishr') is f.Fishr, a.Fishr_BackPACK.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, check=True).stdout.split()
    assert out == ["True", "domainbed.algorithms"]
    env = {**__import__("os").environ, "DOMAINBED_SURGERY_KEEP_BACKPACK_FISHR": "1"}
    code = "import domainbed.algorithms as a; print(a.Fishr.__module__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, check=True, env=env).stdout.split()
    assert out == ["domainbed.algorithms"]


# --- DomainBed's Fish with our backbones -----------------------------------------------
def test_domainbed_fish_runs_with_our_resnet18():
    hp = hparams_registry.default_hparams("Fish", "RotatedDigits")
    hp.update({"backbone": "resnet18", "pretrained": False})
    torch.manual_seed(0)
    alg = algorithms.get_algorithm_class("Fish")((3, 64, 64), 5, 3, hp)
    before = copy.deepcopy(alg.network.state_dict())
    mb = minibatches(n_domains=3, n=4, shape=(3, 64, 64), classes=5)
    out = alg.update(mb)
    assert set(out) == {"loss"} and torch.isfinite(torch.tensor(out["loss"]))
    changed = [k for k, v in alg.network.state_dict().items()
               if v.is_floating_point() and not torch.equal(v, before[k])]
    assert changed  # the meta step moved the weights
    assert alg.predict(mb[0][0]).shape == (4, 5)
