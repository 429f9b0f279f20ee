"""Registration into DomainBed's registries and the hparams we add."""

import itertools
import types

import pytest

from domainbed_surgery import rules
from domainbed_surgery.plugin import hparams
from domainbed_surgery.surgery.hparams import domainbed_key
from domainbed_surgery.plugin import registration

OURS = ("AgrSum", "AgrRand", "PCGrad")


def test_registered_names_and_classes(domainbed):
    from domainbed import algorithms, datasets

    for name in OURS:
        assert name in algorithms.ALGORITHMS
        cls = algorithms.get_algorithm_class(name)
        assert issubclass(cls, algorithms.Algorithm) and cls.__name__ == name
    assert datasets.num_environments("RotatedDigits") == 4
    assert "RotatedDigits" in datasets.DATASETS
    reg = registration.registered()
    assert reg["algorithms"] == ["Fishr", *rules.names()] and reg["datasets"] == ["RotatedDigits", "PACS64", "PACS32",
                                                                             "PACS128"]
    assert rules.names()[:3] == list(OURS)  # the paper's first
    assert reg["backbones"] == ["alexnet", "efficientnet_lite0", "mnist_cnn", "resnet18", "resnet50"]


def test_register_twice_changes_nothing(domainbed):
    from domainbed import algorithms, datasets, hparams_registry, networks

    before = (list(algorithms.ALGORITHMS), list(datasets.DATASETS), hparams_registry._hparams,
              networks.Featurizer, [algorithms.get_algorithm_class(n) for n in OURS])
    registration.register()
    after = (list(algorithms.ALGORITHMS), list(datasets.DATASETS), hparams_registry._hparams,
             networks.Featurizer, [algorithms.get_algorithm_class(n) for n in OURS])
    assert before == after


def fake_algorithms_module(**attrs):
    module = types.ModuleType("domainbed.algorithms")
    module.ALGORITHMS = list(attrs)
    for name, value in attrs.items():
        setattr(module, name, value)
    return module


def test_a_foreign_class_is_never_replaced(domainbed):
    class AgrSum:  # somebody else's
        pass

    module = fake_algorithms_module(AgrSum=AgrSum)
    with pytest.raises(registration.RegistrationConflict, match="AgrSum"):
        registration.add_surgery_algorithms(module, strict=True)
    assert module.AgrSum is AgrSum
    with pytest.warns(RuntimeWarning, match="does not replace"):
        registration.add_surgery_algorithms(module, strict=False)
    assert module.AgrSum is AgrSum and module.ALGORITHMS.count("AgrSum") == 1
    assert module.AgrRand.__module__ == "domainbed_surgery.surgery.algorithm"  # the others still land


DATASETS = ("PACS", "VLCS", "OfficeHome", "RotatedMNIST", "ColoredMNIST")


@pytest.mark.parametrize("algorithm", OURS)
def test_our_hparams_are_ERMs_plus_our_keys(domainbed, algorithm):
    from domainbed import hparams_registry
    from domainbed.lib import misc

    original = hparams_registry._hparams.__wrapped__  # DomainBed's own function
    ours = {"backbone", "pretrained", "frozen_prefix", "surgery_batches", "surgery_layer_agreement",
            "surgery_diagnostics_every",
            "surgery_reduction"} | {domainbed_key(rules.get(algorithm), p)
                                                          for p in rules.get(algorithm).params}
    for dataset, seed in itertools.product(DATASETS, (0, 1, 7, 12345)):
        erm = {k: (d, r) for k, (d, r) in original("ERM", dataset, seed).items()}
        got = hparams_registry._hparams(algorithm, dataset, seed)
        assert set(got) == set(erm) | ours
        assert {k: got[k] for k in erm} == erm
    assert hparams_registry.default_hparams(algorithm, "PACS")["surgery_batches"] == "multi"
    assert hparams_registry.default_hparams(algorithm, "PACS")["surgery_reduction"] == "sum"
    random = hparams_registry.random_hparams(algorithm, "PACS", misc.seed_hash(3, 0))
    erm_random = {k: r for k, (d, r) in original("ERM", "PACS", misc.seed_hash(3, 0)).items()}
    assert {k: random[k] for k in erm_random} == erm_random
    assert random["surgery_reduction"] == "sum"  # fixed: never part of the search
    if algorithm == "PCGrad":  # the authors' order, also fixed
        assert hparams_registry.default_hparams(algorithm, "PACS")["pcgrad_order"] == "shared"
        assert random["pcgrad_order"] == "shared"


@pytest.mark.parametrize("algorithm", ("ERM", "IRM", "MLDG", "Mixup", "GroupDRO", "Fish", "Fishr"))
def test_baselines_keep_their_hparams_and_gain_backbone(domainbed, algorithm):
    from domainbed import hparams_registry

    original = hparams_registry._hparams.__wrapped__
    for seed in (0, 5):
        base = original(algorithm, "PACS", seed)
        got = hparams_registry._hparams(algorithm, "PACS", seed)
        assert {k: got[k] for k in base} == base
        assert set(got) - set(base) == {"backbone", "pretrained", "frozen_prefix"}
        assert got["backbone"] == (None, None) and got["pretrained"] == (True, True)
        assert got["frozen_prefix"] == (None, None)


def test_rotated_digits_uses_rotated_mnist_hparams(domainbed):
    from domainbed import hparams_registry

    digits = hparams_registry.default_hparams("ERM", "RotatedDigits")
    mnist = hparams_registry.default_hparams("ERM", "RotatedMNIST")
    assert digits.pop("backbone") == "mnist_cnn" and mnist.pop("backbone") is None
    assert digits == mnist and digits["batch_size"] == 64 and digits["lr"] == 1e-3


def test_added_hparam_is_seeded_by_its_name():
    calls = []

    def dbhparams(algorithm, dataset, seed):
        calls.append((algorithm, dataset))
        return {"lr": (1.0, 2.0)}

    wrapped = hparams.with_extras(dbhparams, lambda *args: hash(args) % 2**31)
    out = wrapped("AgrSum", "RotatedDigits", 3)
    assert calls == [("ERM", "RotatedMNIST")]
    assert out["lr"] == (1.0, 2.0) and out["surgery_batches"] == ("multi", "multi")
    with pytest.raises(KeyError, match="already defines"):
        hparams.with_extras(lambda a, d, s: {"backbone": (1, 1)}, lambda *a: 0)("ERM", "PACS", 0)


def test_import_of_the_package_is_light():
    import subprocess
    import sys

    code = ("import domainbed_surgery, sys; "
            "print(sorted(m for m in ('torch', 'numpy', 'domainbed') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_rules_without_their_dependencies_are_absent_with_one_clear_message(domainbed, monkeypatch):
    """Without TorchJD its rules stay out of ALGORITHMS (sweeps, tables), and asking for one
    by name fails at construction with what to install."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "torchjd" else real(name, *args))
    module = fake_algorithms_module()
    registration.add_surgery_algorithms(module, strict=True)
    assert module.ALGORITHMS == list(OURS)
    with pytest.raises(rules.RuleUnavailable, match=r"pip install 'domainbed-surgery\[torchjd\]'"):
        module.UPGrad((16,), 3, 2, {"lr": 1e-3, "weight_decay": 0.0})


@pytest.mark.parametrize("name", rules.names())
def test_every_rule_gets_its_hparams_seeded_by_name(domainbed, name):
    from domainbed import hparams_registry
    from domainbed.lib import misc

    cls = rules.get(name)
    got = hparams_registry.default_hparams(name, "PACS")
    assert got["surgery_reduction"] == cls.native_scale
    for p in cls.params:
        key = domainbed_key(cls, p)
        assert key == f"{name.lower()}_{p.arg}"
        assert got[key] == p.default
        seed = misc.seed_hash(4, 0)
        drawn = hparams_registry.random_hparams(name, "PACS", seed)[key]
        import numpy as np

        assert drawn == p.sample(np.random.RandomState(misc.seed_hash(seed, key)))


@pytest.mark.parametrize("ours, check", [
    ("domainbed_surgery.surgery.algorithm",
     "import domainbed.algorithms as db\nassert db.AgrSum is ours.ALGORITHMS['AgrSum'] and 'AgrSum' in db.ALGORITHMS"),
    ("domainbed_surgery.fixes.fishr",
     "import domainbed.algorithms as db\nassert db.Fishr is ours.Fishr and 'AgrSum' in db.ALGORITHMS"),
    ("domainbed_surgery.extras.datasets.pacs",
     "import domainbed.datasets as db\nassert db.PACS128 is ours.PACS128 and 'PACS128' in db.DATASETS"),
    ("domainbed_surgery.extras.datasets.rotated_digits",
     "import domainbed.datasets as db\nassert db.RotatedDigits is ours.RotatedDigits"),
])
def test_our_modules_imported_first_still_register_without_warning(domainbed, ours, check):
    """Importing one of ours before anything of DomainBed's: its own import of DomainBed
    triggers the hook while it is half imported; registration must wait for it instead of
    failing with a circular-import warning (registration.FEEDS)."""
    import subprocess
    import sys

    assert ours in registration.FEEDS
    code = ("import warnings; warnings.simplefilter('error', RuntimeWarning)\n"
            f"import {ours} as ours\n{check}\nprint('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
