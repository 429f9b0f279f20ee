"""Our datasets' hparam ranges fit their data; a batch that can never be formed fails fast."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import SHARED_DATA

HOLDOUT = 0.2  # DomainBed's default --holdout_fraction


def in_split_sizes(lengths, holdout=HOLDOUT):
    """Sizes of DomainBed's training ('in') splits: ``len - int(len * holdout)`` per domain."""
    return [n - int(n * holdout) for n in lengths]


def random_batch_sizes(dataset, algorithm="ERM", trials=3, hparams_seeds=range(1, 60)):
    from domainbed import hparams_registry
    from domainbed.lib import misc

    return {(h, t): hparams_registry.random_hparams(algorithm, dataset,
                                                    misc.seed_hash(h, t))["batch_size"]
            for t in range(trials) for h in hparams_seeds}


# -- item 1: ranges that fit the data ------------------------------------------------------
@pytest.mark.parametrize("algorithm", ["ERM", "AgrSum", "IRM"])
def test_rotated_digits_random_batch_sizes_fit_a_training_split(domainbed, algorithm):
    from domainbed_surgery.extras.datasets import digits

    smallest = min(in_split_sizes(len(d) for d in digits.rotated_domains()))
    drawn = random_batch_sizes("RotatedDigits", algorithm)
    too_big = {k: v for k, v in drawn.items() if v > smallest}
    assert not too_big, f"batch sizes above the smallest training split ({smallest}): {too_big}"
    assert min(drawn.values()) >= 8 and max(drawn.values()) > 64  # still a search


def test_rotated_digits_batch_size_keeps_per_name_seeding(domainbed):
    """The draw comes from RandomState(seed_hash(seed, 'batch_size')), as DomainBed's would;
    every other hparam is RotatedMNIST's."""
    from domainbed import hparams_registry
    from domainbed.lib import misc

    for seed in (misc.seed_hash(1, 0), misc.seed_hash(13, 0), 7):
        ours = hparams_registry._hparams("ERM", "RotatedDigits", seed)
        mnist = hparams_registry._hparams("ERM", "RotatedMNIST", seed)
        state = np.random.RandomState(misc.seed_hash(seed, "batch_size"))
        assert ours["batch_size"] == (64, int(2 ** state.uniform(3, 8)))
        assert {k: v for k, v in ours.items() if k not in ("batch_size", "backbone")} == \
            {k: v for k, v in mnist.items() if k not in ("batch_size", "backbone")}
    assert hparams_registry.default_hparams("ERM", "RotatedDigits")["batch_size"] == 64


def test_pacs64_random_batch_sizes_fit_a_training_split(domainbed):
    folder = SHARED_DATA / "PACS"
    if not folder.is_dir():
        pytest.skip(f"no PACS at {folder}")
    sizes = [sum(1 for p in d.rglob("*") if p.is_file()) for d in folder.iterdir() if d.is_dir()]
    assert len(sizes) == 4
    smallest = min(in_split_sizes(sizes))
    assert max(random_batch_sizes("PACS64").values()) <= smallest


# -- item 1: a batch that can never be formed -----------------------------------------------
def tensor_dataset(n):
    import torch
    from torch.utils.data import TensorDataset

    return TensorDataset(torch.arange(n, dtype=torch.float32), torch.zeros(n, dtype=torch.long))


@pytest.mark.parametrize("name", ["InfiniteDataLoader", "InfiniteDataLoaderWithoutReplacement"])
def test_infinite_loader_refuses_a_batch_larger_than_its_dataset(domainbed, name):
    from domainbed.lib import fast_data_loader

    loader_class = getattr(fast_data_loader, name)
    with pytest.raises(ValueError, match=r"batch_size=16.*only 10 examples"):
        loader_class(dataset=tensor_dataset(10), weights=None, batch_size=16, num_workers=0)
    x, _ = next(iter(loader_class(dataset=tensor_dataset(16), weights=None, batch_size=16,
                                  num_workers=0)))
    assert len(x) == 16  # exactly enough examples: one batch per pass


def test_weighted_infinite_loader_still_samples_with_replacement(domainbed):
    """With weights (class_balanced), DomainBed draws ``batch_size`` with replacement: no hang."""
    import torch
    from domainbed.lib import fast_data_loader

    loader = fast_data_loader.InfiniteDataLoader(dataset=tensor_dataset(10),
                                                 weights=torch.ones(10), batch_size=16,
                                                 num_workers=0)
    x, _ = next(iter(loader))
    assert len(x) == 16


def test_train_with_an_impossible_batch_fails_fast(domainbed, subprocess_env, tmp_path):
    """DomainBed's own train.py (through the start-up hook): an error, not a job that never ends."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "domainbed.scripts.train", "--dataset", "RotatedDigits",
           "--algorithm", "ERM", "--test_envs", "0", "--steps", "2", "--skip_model_save",
           "--hparams", json.dumps({"batch_size": 400}), "--output_dir", str(out)]
    try:
        proc = subprocess.run(cmd, env=subprocess_env, cwd=tmp_path, capture_output=True,
                              text=True, timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail("train.py with batch_size 400 > a 360-image training split hung")
    printed = proc.stdout + proc.stderr  # DomainBed's Tee sends stderr to stdout too
    assert proc.returncode != 0
    assert "batch_size=400" in printed and "only 360 examples" in printed
    assert not (out / "done").exists()


def test_loader_check_is_registered_once(domainbed):
    import domainbed_surgery
    from domainbed.lib import fast_data_loader

    before = fast_data_loader.InfiniteDataLoader
    assert domainbed_surgery.register()["data_loaders"] == [
        "InfiniteDataLoader", "InfiniteDataLoaderWithoutReplacement"]
    assert fast_data_loader.InfiniteDataLoader is before  # idempotent: not wrapped twice
    assert before.__wrapped__.__module__ == "domainbed.lib.fast_data_loader"


# -- item 5: PACS64 reads exactly PACS's layout ---------------------------------------------
PACS_DOMAINS = ("art_painting", "cartoon", "photo", "sketch")
PACS_CLASSES = ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person")


def make_pacs(root, per_class=6, domains=PACS_DOMAINS, classes=PACS_CLASSES):
    """A tiny PACS in DomainBed's layout: ``root/PACS/<domain>/<class>/<i>.jpg`` (8x8 images)."""
    from PIL import Image

    for d, domain in enumerate(domains):
        for c, cls in enumerate(classes):
            folder = root / "PACS" / domain / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.new("RGB", (8, 8), (30 * c, 60 * d, 10 * i)).save(folder / f"{i}.jpg")
    return root


def pacs64(root, test_envs=(0,)):
    from domainbed_surgery.extras.datasets.pacs import PACS64

    return PACS64(str(root), list(test_envs), {"data_augmentation": False})


def test_pacs64_reads_the_expected_layout(domainbed, tmp_path):
    make_pacs(tmp_path)
    data = pacs64(tmp_path)
    assert [env.root.rsplit("/", 1)[-1] for env in data.datasets] == list(PACS_DOMAINS)
    assert data.num_classes == 7 and all(env.classes == list(PACS_CLASSES) for env in data)
    x, y = data[2][6 * 4]  # photo, the first 'horse' image
    assert tuple(x.shape) == (3, 64, 64) and y == PACS_CLASSES.index("horse")
    # without augmentation the images are decoded once, to the tensors a plain read gives
    import torch
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    from domainbed_surgery.extras.datasets.pacs import PACS64

    assert all(isinstance(env, torch.utils.data.TensorDataset) for env in data)
    augmented = PACS64(str(tmp_path), [0], {"data_augmentation": True})
    assert isinstance(augmented[1], ImageFolder)  # a training domain, augmented on the fly
    assert isinstance(augmented[0], torch.utils.data.TensorDataset)  # the test domain
    plain = ImageFolder(str(tmp_path / "PACS" / "photo"), transform=transforms.Compose([
        transforms.Resize((64, 64)), transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])]))
    assert torch.equal(plain[6 * 4][0], x)


@pytest.mark.parametrize("change,expected", [
    ("missing_domain", r"missing domain folder\(s\): sketch"),
    ("extra_domain", r"unexpected folder\(s\): sketch_old"),
    ("missing_class", r"cartoon: missing class folder\(s\): horse"),
    ("extra_class", r"photo: unexpected folder\(s\): zebra"),
    ("empty", r"no domain folders"),
])
def test_pacs64_wrong_layout_is_an_error_naming_what(domainbed, tmp_path, change, expected):
    import shutil

    make_pacs(tmp_path)
    pacs = tmp_path / "PACS"
    if change == "missing_domain":
        shutil.rmtree(pacs / "sketch")
    elif change == "extra_domain":
        shutil.copytree(pacs / "sketch", pacs / "sketch_old")
    elif change == "missing_class":
        shutil.rmtree(pacs / "cartoon" / "horse")
    elif change == "extra_class":
        shutil.copytree(pacs / "photo" / "horse", pacs / "photo" / "zebra")
    elif change == "empty":
        shutil.rmtree(pacs)
        pacs.mkdir()
    with pytest.raises(ValueError, match=expected):
        pacs64(tmp_path)


def test_pacs64_empty_class_folder_names_its_domain(domainbed, tmp_path):
    make_pacs(tmp_path)
    for image in (tmp_path / "PACS" / "cartoon" / "dog").iterdir():
        image.unlink()
    with pytest.raises(ValueError, match=r"cartoon.*dog"):
        pacs64(tmp_path)


def test_pacs64_default_hparams_build_a_model(domainbed):
    """DomainBed's featurizer has nothing for 64 px (NotImplementedError): PACS64 defaults
    to a ResNet-18 trained from scratch (no download needed)."""
    from domainbed import algorithms, hparams_registry

    hparams = hparams_registry.default_hparams("ERM", "PACS64")
    assert (hparams["backbone"], hparams["pretrained"]) == ("resnet18", False)
    model = algorithms.ERM((3, 64, 64), 7, 3, hparams)
    assert type(model.featurizer).__name__ == "ResNetFeaturizer"


def test_train_pacs64_with_default_hparams(domainbed, subprocess_env, tmp_path):
    make_pacs(tmp_path)
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "domainbed.scripts.train", "--dataset", "PACS64",
                           "--data_dir", str(tmp_path), "--test_envs", "0", "--steps", "1",
                           "--skip_model_save", "--output_dir", str(out)],
                          env=subprocess_env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert (out / "done").exists()
