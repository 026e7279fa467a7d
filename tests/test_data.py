"""mlan_timm.data: layouts (ImageFolder, tarballs, torchvision), clear errors, on-device augmentation."""
import pickle

import numpy as np
import pytest
import torch

from _fixtures_train import make_image_folder, make_tarballs
from mlan_timm import data as mdata


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp('folder'), train_per_class=3, test_per_class=2)


def test_image_folder_layout_and_paper_transforms(folder):
    ds = mdata.build_dataset('cifar10', folder, 'test')
    assert len(ds) == 20
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == 0
    tr = mdata.build_dataset('cifar10', folder, 'train', subset=7)
    assert len(tr) == 7
    names = [type(t).__name__ for t in mdata.build_transforms('cifar10', train=True).transforms]
    assert names == ['RandomCrop', 'RandomHorizontalFlip', 'ToTensor', 'Normalize']
    assert [type(t).__name__ for t in mdata.build_transforms('cifar10', train=False).transforms] == \
        ['ToTensor', 'Normalize']


def test_val_folder_is_accepted(tmp_path):
    root = make_image_folder(tmp_path, train_per_class=1, test_per_class=1, test_name='val')
    assert len(mdata.build_dataset('cifar10', root, 'test')) == 10


def test_tarballs_are_extracted_once_into_cache(folder, tmp_path):
    tars = make_tarballs(folder, tmp_path / 'shared' / 'cifar10')
    cache = tmp_path / 'cache'
    x, y = mdata.load_uint8('cifar10', tmp_path / 'shared', 'test', cache_dir=cache)
    ref_x, ref_y = mdata.load_uint8('cifar10', folder, 'test', cache_dir=tmp_path / 'cache2')
    assert torch.equal(x, ref_x) and torch.equal(y, ref_y)
    extracted = [p for p in cache.iterdir() if p.is_dir() and not p.name.startswith('.')]
    assert len(extracted) == 1
    mdata.load_uint8('cifar10', tars, 'test', cache_dir=cache)  # same tarball found directly: no new copy
    assert len([p for p in cache.iterdir() if p.is_dir() and not p.name.startswith('.')]) == 1


def test_torchvision_layout(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10
    root = tmp_path / 'cifar-10-batches-py'
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']:
        with open(root / name, 'wb') as f:
            pickle.dump({'data': rng.integers(0, 256, (4, 3072), dtype=np.uint8), 'labels': [0, 1, 2, 3]}, f)
    with open(root / 'batches.meta', 'wb') as f:
        pickle.dump({'label_names': mdata_classes()}, f)
    import torchvision.datasets.cifar as tv_cifar
    monkeypatch.setattr(CIFAR10, '_check_integrity', lambda self: True)  # fake files: skip md5 checks
    monkeypatch.setattr(tv_cifar, 'check_integrity', lambda *a, **k: True)
    x, y = mdata.load_uint8('cifar10', tmp_path, 'train')
    assert x.shape == (20, 3, 32, 32) and x.dtype == torch.uint8 and y.tolist()[:4] == [0, 1, 2, 3]
    assert len(mdata.build_dataset('cifar10', root, 'test')) == 4  # the cifar-10-batches-py folder itself works


def mdata_classes():
    from _fixtures_train import CIFAR10_CLASSES
    return CIFAR10_CLASSES


def test_missing_data_dir_error_names_the_problem(tmp_path):
    with pytest.raises(mdata.DatasetNotFoundError) as e:
        mdata.build_dataset('cifar100', tmp_path / 'missing', 'train')
    msg = str(e.value)
    assert 'missing' in msg and 'does not exist' in msg and 'cifar-100-python' in msg and '--download' in msg


def test_wrong_number_of_classes_is_reported(folder):
    with pytest.raises(mdata.DatasetNotFoundError, match='10 class folders, but cifar100 has 100'):
        mdata.build_dataset('cifar100', folder, 'test')


def test_dataset_for_model():
    assert mdata.dataset_for_model('mlan_resnet20_cifar100') == 'cifar100'
    assert mdata.dataset_for_model('hf-hub:mlan-timm/se_resnet14_cifar10') == 'cifar10'
    assert mdata.dataset_for_model('resnet18') is None


def test_device_loader_test_mode_equals_torchvision_pipeline(folder):
    x, y = mdata.load_uint8('cifar10', folder, 'test', cache_dir=folder / '.cache')
    loader = mdata.DeviceLoader(x, y, 8, 'cifar10', train=False)
    xb = torch.cat([b for b, _ in loader])
    ds = mdata.build_dataset('cifar10', folder, 'test')
    ref = torch.stack([ds[i][0] for i in range(len(ds))])
    assert torch.allclose(xb, ref, atol=1e-5)


def test_device_loader_augmentation_is_a_padded_crop_or_flip(folder):
    x, y = mdata.load_uint8('cifar10', folder, 'train', cache_dir=folder / '.cache')
    loader = mdata.DeviceLoader(x, y, 5, 'cifar10', train=True, seed=1)
    mean = torch.tensor(mdata.CIFAR_STATS['cifar10']['mean']).view(3, 1, 1) * 255
    std = torch.tensor(mdata.CIFAR_STATS['cifar10']['std']).view(3, 1, 1) * 255
    first = [(xb.clone(), yb.clone()) for xb, yb in loader]
    loader.set_epoch(0)
    again = [(xb, yb) for xb, yb in loader]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again))  # reproducible per epoch
    xb, yb = first[0]
    pix = (xb * std + mean).round().to(torch.uint8)
    for img, label in zip(pix, yb):
        candidates = [i for i in range(len(y)) if y[i] == label]
        found = False
        for i in candidates:
            padded = torch.nn.functional.pad(x[i], (4, 4, 4, 4))
            for dy in range(9):
                for dx in range(9):
                    crop = padded[:, dy:dy + 32, dx:dx + 32]
                    if torch.equal(crop, img) or torch.equal(crop.flip(2), img):
                        found = True
        assert found


def test_normalisation_constants_are_the_models_own():
    from mlan_timm.models import cifar_resnet as cr
    assert mdata.CIFAR_STATS['cifar100']['mean'] == cr.CIFAR100_MEAN == (0.5071, 0.4866, 0.4409)
    assert mdata.CIFAR_STATS['cifar100']['std'] == cr.CIFAR100_STD
    assert mdata.CIFAR_STATS['cifar10']['mean'] == cr.CIFAR10_MEAN and mdata.CIFAR_STATS['cifar10']['std'] == cr.CIFAR10_STD


def test_image_folder_cache_is_rebuilt_when_an_image_changes(tmp_path):
    import os
    from PIL import Image
    root = make_image_folder(tmp_path / 'f', train_per_class=1, test_per_class=1)
    cache = tmp_path / 'cache'
    x0, _ = mdata.load_uint8('cifar10', root, 'test', cache_dir=cache)
    cached = sorted(p.name for p in cache.iterdir())
    assert len(cached) == 1 and (cache / cached[0]).stat().st_mode & 0o777 != 0o600
    img = sorted((root / 'test' / 'airplane').iterdir())[0]
    Image.fromarray(np.full((32, 32, 3), 7, np.uint8)).save(img)  # same path, new pixels
    st = img.stat()
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    x1, _ = mdata.load_uint8('cifar10', root, 'test', cache_dir=cache)
    assert not torch.equal(x0, x1)
    assert (x1[0] == 7).all()  # airplane is class 0, its only test image comes first
