"""Backbones chosen by the ``backbone`` hparam, for our algorithms and DomainBed's."""

import urllib.error

import pytest
import torch
from torch import nn

from domainbed_surgery import backbones


def hp(**kw):
    base = {"pretrained": False, "resnet_dropout": 0.0, "freeze_bn": False}
    base.update(kw)
    return base


def test_alexnet_is_torchvision_alexnet_without_last_fc():
    f = backbones.build("alexnet", (3, 64, 64), hp())
    assert f.n_outputs == 4096 and isinstance(f.network.classifier[-1], nn.Identity)
    assert f(torch.zeros(2, 3, 64, 64)).shape == (2, 4096)
    n_alexnet = sum(p.numel() for p in __import__("torchvision").models.alexnet().parameters())
    assert sum(p.numel() for p in f.parameters()) == n_alexnet - (4096 * 1000 + 1000)


def test_resnet18_features_channels_and_freeze_bn():
    f = backbones.build("resnet18", (1, 32, 32), hp(freeze_bn=True, resnet_dropout=0.5))
    assert f.n_outputs == 512 and f.network.conv1.in_channels == 1
    assert f(torch.zeros(2, 1, 32, 32)).shape == (2, 512)
    f.train()
    assert all(not m.training for m in f.modules() if isinstance(m, nn.BatchNorm2d))
    assert f.dropout.p == 0.5 and f.training


def test_channel_adaptation_cycles_rgb_filters():
    conv = nn.Conv2d(3, 4, 3)
    new = backbones._adapt_first_conv(conv, 5)
    for c in range(5):
        assert torch.equal(new.weight[:, c], conv.weight[:, c % 3])


@pytest.mark.parametrize("name, shape, match", [
    ("vgg", (3, 64, 64), "unknown backbone"),
    ("alexnet", (3, 32, 32), "at least 63x63"),
    ("resnet18", (784,), "image inputs"),
])
def test_bad_backbone_inputs(name, shape, match):
    with pytest.raises(ValueError, match=match):
        backbones.build(name, shape, hp())


def test_missing_weights_say_how_to_run_without_them(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(backbones.PretrainedWeightsError, match='"pretrained": false'):
        backbones.build("resnet18", (3, 32, 32), hp(pretrained=True))


@pytest.mark.parametrize("algorithm, backbone, side", [
    ("ERM", "alexnet", 64), ("AgrSum", "alexnet", 64),
    ("Mixup", "resnet18", 32), ("PCGrad", "resnet18", 32)])
def test_backbone_through_a_baseline_and_ours(domainbed, algorithm, backbone, side):
    from domainbed import algorithms, hparams_registry

    hparams = hparams_registry.default_hparams(algorithm, "PACS")
    hparams.update(backbone=backbone, pretrained=False)
    torch.manual_seed(0)
    alg = algorithms.get_algorithm_class(algorithm)((3, side, side), 7, 3, hparams)
    assert isinstance(alg.featurizer, (backbones.AlexNetFeaturizer, backbones.ResNetFeaturizer))
    batches = [(torch.randn(4, 3, side, side), torch.randint(0, 7, (4,))) for _ in range(3)]
    before = [p.detach().clone() for p in alg.parameters()]
    out = alg.update(batches)
    assert "loss" in out and any(not torch.equal(p, q) for p, q in zip(alg.parameters(), before))
    assert alg.predict(batches[0][0]).shape == (4, 7)


def test_unset_backbone_keeps_domainbed_featurizer(domainbed):
    from domainbed import hparams_registry, networks

    hparams = hparams_registry.default_hparams("ERM", "RotatedMNIST")
    assert hparams["backbone"] is None
    assert type(networks.Featurizer((1, 28, 28), hparams)).__name__ == "MNIST_CNN"
    hparams = hparams_registry.default_hparams("ERM", "RotatedDigits")
    featurizer = networks.Featurizer((1, 14, 14), hparams)  # DomainBed has none for 14x14
    assert type(featurizer).__name__ == "MNIST_CNN"
    assert featurizer(torch.zeros(2, 1, 14, 14)).shape == (2, 128)
    hparams = hparams_registry.default_hparams("ERM", "PACS")
    hparams["pretrained"] = False
    with pytest.raises(ValueError, match="only applies to a backbone"):
        networks.Featurizer((3, 224, 224), hparams)
