"""Backbones chosen by the ``backbone`` hparam, for our algorithms and DomainBed's."""

import urllib.error
import zlib

import pytest
import torch
from torch import nn

from domainbed_surgery.extras import backbones
from domainbed_surgery.extras.backbones import common


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
    new = common.adapt_first_conv(conv, 5)
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


# --- the weights: exactly those DomainBed's own network loads under the same hparams ----------
def _fill(model: nn.Module, key: str) -> None:
    """Deterministic stand-in weights named ``key`` (what downloading ``key`` would give)."""
    g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)  # > 0: valid BN variances


@pytest.fixture
def downloads(monkeypatch):
    """Record every ImageNet-weights request (torchvision enum member or timm model name)
    and answer it offline with stand-in weights that depend only on the name."""
    import timm
    import torchvision

    requests: list[str] = []
    real_create_model = timm.create_model

    def get_state_dict(self, *args, **kwargs):
        key = f"torchvision {type(self).__name__}.{self.name}"
        requests.append(key)
        model = getattr(torchvision.models, type(self).__name__.split("_")[0].lower())()
        _fill(model, key)
        return model.state_dict()

    def create_model(name, pretrained=False, **kwargs):
        model = real_create_model(name, pretrained=False, **kwargs)
        if pretrained:
            requests.append(f"timm {name}")
            _fill(model, f"timm {name}")
        return model

    monkeypatch.setattr(torchvision.models._api.WeightsEnum, "get_state_dict", get_state_dict)
    monkeypatch.setattr(timm, "create_model", create_model)
    monkeypatch.setattr(common, "_ANNOUNCED", set())
    return requests


@pytest.mark.filterwarnings("ignore:.*deprecated since 0.13")  # DomainBed's pretrained=True
@pytest.mark.parametrize("resnet18, augmix, backbone, weights", [
    (False, True, "resnet50", "timm resnet50.ram_in1k"),  # DomainBed's default
    (False, False, "resnet50", "torchvision ResNet50_Weights.IMAGENET1K_V1"),
    (True, False, "resnet18", "torchvision ResNet18_Weights.IMAGENET1K_V1"),
    (True, True, "resnet50", "timm resnet50.ram_in1k"),  # DomainBed's quirk: resnet18 ignored
])
def test_resnets_start_from_the_weights_domainbed_loads(domainbed, downloads, capsys,
                                                        resnet18, augmix, backbone, weights):
    from domainbed import networks

    hparams = hp(pretrained=True, resnet18=resnet18, resnet50_augmix=augmix)
    theirs = networks.ResNet((3, 32, 32), hparams)
    assert downloads[-1] == weights  # the weights DomainBed keeps (it may load V1 first)
    del downloads[:]
    ours = backbones.build(backbone, (3, 32, 32), hparams)
    assert downloads == [weights]
    assert ours.n_outputs == theirs.n_outputs
    a, b = ours.network.state_dict(), theirs.network.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    ours.eval()
    theirs.eval()  # (DomainBed's train() returns None)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(ours(x), theirs(x))
    why = f" (hparam resnet50_augmix={str(augmix).lower()})" if backbone == "resnet50" else ""
    assert capsys.readouterr().out.splitlines()[-1] == \
        f"backbone {backbone}: {weights} weights{why}"


def test_resnet18_stays_a_resnet18_and_alexnet_is_v1(downloads, capsys):
    backbones.build("resnet18", (3, 32, 32), hp(pretrained=True, resnet50_augmix=True))
    backbones.build("alexnet", (3, 64, 64), hp(pretrained=True))
    assert downloads == ["torchvision ResNet18_Weights.IMAGENET1K_V1",
                         "torchvision AlexNet_Weights.IMAGENET1K_V1"]
    assert capsys.readouterr().out.splitlines() == [
        "backbone resnet18: torchvision ResNet18_Weights.IMAGENET1K_V1 weights",
        "backbone alexnet: torchvision AlexNet_Weights.IMAGENET1K_V1 weights"]


@pytest.mark.filterwarnings("ignore:.*deprecated since 0.13")  # DomainBed's pretrained=True
@pytest.mark.parametrize("augmix, library", [(True, "timm"), (False, "torchvision")])
def test_not_pretrained_builds_the_same_architecture_offline(domainbed, downloads, capsys,
                                                             augmix, library):
    from domainbed import networks

    ours = backbones.build("resnet50", (1, 32, 32), hp(resnet50_augmix=augmix))
    assert downloads == []  # nothing requested
    assert type(ours.network).__module__.split(".")[0] == library
    theirs = networks.ResNet((1, 32, 32), hp(resnet18=False, resnet50_augmix=augmix))
    shapes = lambda m: [(k, v.shape) for k, v in m.network.state_dict().items()]  # noqa: E731
    assert shapes(ours) == shapes(theirs)
    assert ours(torch.zeros(2, 1, 32, 32)).shape == (2, 2048)
    model = "resnet50.ram_in1k" if augmix else "resnet50"
    assert capsys.readouterr().out.splitlines()[0] == (
        f"backbone resnet50: random init (pretrained=false), {library} {model} architecture "
        f"(hparam resnet50_augmix={str(augmix).lower()})")


def test_timm_resnet50_keeps_domainbed_behaviour():
    f = backbones.build("resnet50", (5, 32, 32), hp(freeze_bn=True, resnet_dropout=0.1))
    assert f.network.conv1.in_channels == 5 and isinstance(f.network.fc, nn.Identity)
    f.train()
    assert all(not m.training for m in f.modules() if isinstance(m, nn.BatchNorm2d))
    assert f.dropout.p == 0.1 and f(torch.zeros(2, 5, 32, 32)).shape == (2, 2048)


def test_missing_timm_weights_say_what_to_do(monkeypatch):
    import timm

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(backbones.PretrainedWeightsError) as err:
        backbones.build("resnet50", (3, 32, 32), hp(pretrained=True))
    message = str(err.value)
    assert "timm resnet50.ram_in1k" in message and "models--timm--resnet50.ram_in1k" in message
    assert '"pretrained": false' in message


@pytest.mark.filterwarnings("ignore:.*deprecated since 0.13")
def test_domainbed_featurizer_says_which_weights(domainbed, downloads, capsys):
    from domainbed import hparams_registry, networks

    hparams = hparams_registry.default_hparams("ERM", "PACS")
    networks.Featurizer((3, 224, 224), hparams)
    networks.Featurizer((1, 28, 28), hparams)
    assert capsys.readouterr().out.splitlines() == [
        "featurizer: DomainBed's ResNet (resnet50): timm resnet50.ram_in1k weights "
        "(hparams resnet18=false, resnet50_augmix=true)",
        "featurizer: DomainBed's MNIST_CNN: random init (no pretrained weights)"]
