"""mlan_timm.data: layouts (ImageFolder, tarballs, torchvision), clear errors, the paper's augmentation (reflect
padding) on both loading paths."""
import pickle
import re

import numpy as np
import pytest
import torch
from torchvision.transforms import functional as TF

from mlan_timm import data as mdata
from mlan_timm import zoo


@pytest.fixture(scope='module')
def folder(tmp_path_factory, make_image_folder):
    return make_image_folder(tmp_path_factory.mktemp('folder'), train_per_class=3, test_per_class=2)


def test_image_folder_layout_and_paper_transforms(folder):
    ds = mdata.build_dataset('cifar10', folder, 'test')
    assert len(ds) == 20
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == 0
    tr = mdata.build_dataset('cifar10', folder, 'train', subset=7)
    assert len(tr) == 7
    tf = mdata.build_transforms('cifar10', train=True).transforms
    assert [type(t).__name__ for t in tf] == ['Pad', 'RandomCrop', 'RandomHorizontalFlip', 'ToTensor', 'Normalize']
    assert (tf[0].padding, tf[0].padding_mode, tf[1].size, tf[1].padding) == (4, 'reflect', (32, 32), None)
    assert tuple(tf[4].mean) == zoo.PAPER_MEAN and tuple(tf[4].std) == zoo.PAPER_STD
    assert mdata.build_transforms('cifar100', train=True, padding_mode='constant').transforms[0].padding_mode == \
        'constant'
    with pytest.raises(ValueError, match="padding_mode 'edge'"):
        mdata.build_transforms('cifar10', train=True, padding_mode='edge')
    assert [type(t).__name__ for t in mdata.build_transforms('cifar10', train=False).transforms] == \
        ['ToTensor', 'Normalize']


def test_val_folder_is_accepted(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path, train_per_class=1, test_per_class=1, test_name='val')
    assert len(mdata.build_dataset('cifar10', root, 'test')) == 10


def test_tarballs_are_extracted_once_into_cache(folder, tmp_path, make_tarballs):
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
        pickle.dump({'label_names': list(zoo.CIFAR10_CLASSES)}, f)
    import torchvision.datasets.cifar as tv_cifar
    monkeypatch.setattr(CIFAR10, '_check_integrity', lambda self: True)  # fake files: skip md5 checks
    monkeypatch.setattr(tv_cifar, 'check_integrity', lambda *a, **k: True)
    x, y = mdata.load_uint8('cifar10', tmp_path, 'train')
    assert x.shape == (20, 3, 32, 32) and x.dtype == torch.uint8 and y.tolist()[:4] == [0, 1, 2, 3]
    assert len(mdata.build_dataset('cifar10', root, 'test')) == 4  # the cifar-10-batches-py folder itself works


def test_missing_data_dir_error_names_the_problem(tmp_path):
    with pytest.raises(mdata.DatasetNotFoundError) as e:
        mdata.build_dataset('cifar100', tmp_path / 'missing', 'train')
    msg = str(e.value)
    assert 'missing' in msg and 'does not exist' in msg and 'cifar-100-python' in msg and '--download' in msg


def test_wrong_number_of_classes_is_reported(folder):
    with pytest.raises(mdata.DatasetNotFoundError, match='10 class folders, but cifar100 has 100'):
        mdata.build_dataset('cifar100', folder, 'test')


def test_dataset_info_comes_from_the_zoo():
    assert mdata.dataset_info('CIFAR-100') is zoo.DATASETS['cifar100']
    with pytest.raises(ValueError, match="Unknown dataset 'svhn'"):
        mdata.dataset_info('svhn')


def test_device_loader_test_mode_equals_torchvision_pipeline(folder):
    x, y = mdata.load_uint8('cifar10', folder, 'test', cache_dir=folder / '.cache')
    loader = mdata.DeviceLoader(x, y, 8, 'cifar10', train=False)
    xb = torch.cat([b for b, _ in loader])
    ds = mdata.build_dataset('cifar10', folder, 'test')
    ref = torch.stack([ds[i][0] for i in range(len(ds))])
    assert torch.allclose(xb, ref, atol=1e-5)


@pytest.mark.parametrize('padding_mode', mdata.PADDING_MODES)
def test_pad_crop_flip_equals_torchvision_pad_crop_flip(padding_mode):
    """Every (offset, flip) of the on-device augmentation is torchvision's Pad(4, mode) -> crop -> hflip."""
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    padded = TF.pad(x, 4, padding_mode=padding_mode)
    for dy in range(9):
        for dx in range(9):
            for flip in (False, True):
                out = mdata.pad_crop_flip(x, torch.tensor([[dy, dy], [dx, dx]]), torch.tensor([flip, flip]),
                                          padding_mode)
                ref = TF.crop(padded, dy, dx, 32, 32)
                assert torch.equal(out, TF.hflip(ref) if flip else ref), (dy, dx, flip)
    # the reflect border mirrors the image without repeating its edge: padded row 3 is image row 1
    refl = mdata.pad_crop_flip(x, torch.zeros(2, 2, dtype=torch.long), torch.tensor([False, False]), 'reflect')
    assert torch.equal(refl[:, :, 3, 4:], x[:, :, 1, :28]) and torch.equal(refl[:, :, 4:, 0], x[:, :, :28, 4])


def test_device_loader_augmentation_is_a_reflect_padded_crop_or_flip(folder):
    x, y = mdata.load_uint8('cifar10', folder, 'train', cache_dir=folder / '.cache')
    loader = mdata.DeviceLoader(x, y, 5, 'cifar10', train=True, seed=1)
    assert loader.padding_mode == 'reflect'
    info = zoo.DATASETS['cifar10']
    mean = torch.tensor(info.mean).view(3, 1, 1) * 255
    std = torch.tensor(info.std).view(3, 1, 1) * 255
    first = [(xb.clone(), yb.clone()) for xb, yb in loader]
    loader.set_epoch(0)
    again = [(xb, yb) for xb, yb in loader]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again))  # reproducible per epoch
    offsets_seen = set()
    for xb, yb in first:
        pix = (xb * std + mean).round().to(torch.uint8)
        for img, label in zip(pix, yb):
            found = None
            for i in (i for i in range(len(y)) if y[i] == label):
                padded = TF.pad(x[i], 4, padding_mode='reflect')
                for dy in range(9):
                    for dx in range(9):
                        crop = padded[:, dy:dy + 32, dx:dx + 32]
                        if torch.equal(crop, img) or torch.equal(crop.flip(2), img):
                            found = (dy, dx)
            assert found is not None
            offsets_seen.add(found)
    assert len(offsets_seen) > 1  # the crops move


def test_loaders_normalise_with_the_paper_constants(folder):
    x, y = mdata.load_uint8('cifar10', folder, 'test', cache_dir=folder / '.cache')
    xb, _ = next(iter(mdata.DeviceLoader(x, y, 4, 'cifar100', train=False)))
    mean = torch.tensor(zoo.PAPER_MEAN).view(3, 1, 1)
    std = torch.tensor(zoo.PAPER_STD).view(3, 1, 1)
    assert torch.allclose(xb, (x[:4].float() / 255 - mean) / std, atol=1e-5)


def test_image_folder_cache_is_rebuilt_when_an_image_changes(tmp_path, make_image_folder):
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


@pytest.mark.parametrize('n, batch, world', [(40, 4, 2), (41, 4, 2), (10, 3, 3), (5, 2, 4)])
def test_shards_of_each_global_batch_make_up_the_single_process_batch(n, batch, world):
    """Distributed sharding: every step, the ranks' parts concatenated are the global batch of one process (the
    order padded by wrapping around to a multiple of world), equal parts, same number of steps on every rank."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    single = [g for g, _ in mdata.shard_batches(order, batch * world, True)]
    per_rank = [[g[p] for g, p in mdata.shard_batches(order, batch, True, rank=r, world_size=world)]
                for r in range(world)]
    assert all(len(b) == len(single) for b in per_rank)
    for step, g in enumerate(single):
        joined = torch.cat([per_rank[r][step] for r in range(world)])
        assert torch.equal(joined[:len(g)], g) and len({len(per_rank[r][step]) for r in range(world)}) == 1
    test = [torch.cat([g for g, _ in mdata.shard_batches(order, batch, False, rank=r, world_size=world)])
            for r in range(world)]
    assert sorted(torch.cat(test).tolist()) == sorted(order.tolist())  # each test image once


def test_device_loader_shards_reproduce_the_single_process_batches():
    x = torch.randint(0, 256, (24, 3, 32, 32), dtype=torch.uint8)
    y = torch.arange(24)
    one = list(mdata.DeviceLoader(x, y, 8, 'cifar10', train=True, seed=5))
    ranks = [list(mdata.DeviceLoader(x, y, 4, 'cifar10', train=True, seed=5, rank=r, world_size=2)) for r in (0, 1)]
    assert len(one) == len(ranks[0]) == len(ranks[1]) == 3
    for step, (xb, yb) in enumerate(one):
        assert torch.equal(torch.cat([ranks[0][step][0], ranks[1][step][0]]), xb)  # same images, same crops
        assert torch.equal(torch.cat([ranks[0][step][1], ranks[1][step][1]]), yb)


def test_subset_is_fixed_and_the_same_images_on_both_loading_paths(folder, tmp_path):
    """``--subset`` / ``--test-subset``: a fixed subset (its own seed, not the run's), the same images whether the
    loader decodes per item or holds the split as one uint8 tensor (``--data-on-device``)."""
    a = mdata.subset_indices(30, 7)
    assert a == mdata.subset_indices(30, 7) and a == sorted(set(a)) and len(a) == 7 and max(a) < 30
    assert mdata.subset_indices(30, 7, seed=1) != a
    assert mdata.subset_indices(30, None) is None and mdata.subset_indices(30, 30) is None
    torch.manual_seed(123)  # the global RNG plays no part
    assert mdata.subset_indices(30, 7) == a
    plain = mdata.build_transforms('cifar10', train=False, mean=(0, 0, 0), std=(1, 1, 1))
    ds = mdata.build_dataset('cifar10', folder, 'train', transform=plain, subset=7, cache_dir=tmp_path)
    x, y = mdata.load_uint8('cifar10', folder, 'train', subset=7, cache_dir=tmp_path)
    assert len(ds) == len(y) == 7
    assert [ds[i][1] for i in range(7)] == y.tolist()
    torch.testing.assert_close(torch.stack([ds[i][0] for i in range(7)]), x.float() / 255)


def _small_folder(root, make_image_folder):
    """A 10-class ImageFolder of one train and one test 32x32 image per class; ``root/test/airplane/0000.png``
    is the first test image."""
    return make_image_folder(root, train_per_class=1, test_per_class=1)


def _first_test_image(root):
    return root / 'test' / 'airplane' / '0000.png'


def _both_paths_raise(root, split, match, tmp_path, workers=0):
    """Iterating the per-item loader and loading the split as one uint8 tensor both raise DatasetNotFoundError."""
    with pytest.raises(mdata.DatasetNotFoundError, match=match):
        list(mdata.build_loader('cifar10', root, split, 4, workers=workers, cache_dir=tmp_path / 'cache'))
    with pytest.raises(mdata.DatasetNotFoundError, match=match):
        mdata.load_uint8('cifar10', root, split, cache_dir=tmp_path / 'cache')


@pytest.mark.parametrize('content', [b'not an image at all', 'truncated'])
def test_unreadable_image_is_reported_with_its_path(tmp_path, make_image_folder, content):
    root = _small_folder(tmp_path / 'f', make_image_folder)
    bad = _first_test_image(root)
    if content == 'truncated':
        content = bad.read_bytes()[:len(bad.read_bytes()) // 2]
        reason = 'image file is truncated'
    else:
        reason = 'cannot identify image file'
    bad.write_bytes(content)
    _both_paths_raise(root, 'test', rf'^{re.escape(str(bad))}: not a readable image \({reason}\)$', tmp_path)


def test_class_folder_without_images_is_reported(tmp_path, make_image_folder):
    root = _small_folder(tmp_path / 'f', make_image_folder)
    for f in (root / 'test' / 'cat').iterdir():
        f.unlink()
    (root / 'test' / 'cat' / 'notes.txt').write_text('not an image')
    match = rf"^{re.escape(str(root / 'test' / 'cat'))}: class folder holds no images \(looked for .*\.png"
    with pytest.raises(mdata.DatasetNotFoundError, match=match):
        mdata.build_dataset('cifar10', root, 'test')
    _both_paths_raise(root, 'test', match, tmp_path)
    assert len(mdata.build_dataset('cifar10', root, 'train')) == 10  # the other split is not affected


@pytest.mark.parametrize('size, which, split', [(40, 'one', 'test'), (30, 'all', 'test'), (30, 'all', 'train'),
                                                (64, 'all', 'train'), (64, 'all', 'test')])
def test_image_of_another_size_is_reported_with_its_path(tmp_path, make_image_folder, size, which, split):
    """Not only where batching would fail: the train augmentation's crop would hide 30x30 or 64x64 images (64x64
    ones would even evaluate, at 64x64), so both loading paths check the size of every image."""
    from PIL import Image
    root = _small_folder(tmp_path / 'f', make_image_folder)
    images = sorted((root / split).rglob('*.png'))
    for p in images[:1] if which == 'one' else images:
        Image.fromarray(np.zeros((size, size, 3), np.uint8)).save(p)
    bad = '|'.join(re.escape(str(p)) for p in images)  # the loader may meet any of them first
    _both_paths_raise(root, split, rf'^({bad}): expected a 32x32 RGB image, got {size}x{size}$', tmp_path)


def test_worker_errors_keep_their_one_line_message(tmp_path, make_image_folder):
    """An error in a DataLoader worker (torch re-raises it with the worker's traceback as message) is one line."""
    root = _small_folder(tmp_path / 'f', make_image_folder)
    _first_test_image(root).write_bytes(b'garbage')
    with pytest.raises(mdata.DatasetNotFoundError) as e:
        list(mdata.build_loader('cifar10', root, 'test', 4, workers=1))
    assert str(e.value) == f'{_first_test_image(root)}: not a readable image (cannot identify image file)'


@pytest.mark.parametrize('mode', ['L', 'LA', 'RGBA', 'P'])
def test_grayscale_alpha_and_palette_images_are_read_as_rgb(tmp_path, make_image_folder, mode):
    from PIL import Image
    root = _small_folder(tmp_path / 'f', make_image_folder)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).convert(mode)
    img.save(_first_test_image(root))
    expected = torch.from_numpy(np.array(img.convert('RGB'))).permute(2, 0, 1)
    x, _ = mdata.load_uint8('cifar10', root, 'test', cache_dir=tmp_path / 'cache')
    assert torch.equal(x[0], expected)
    plain = mdata.build_transforms('cifar10', train=False, mean=(0, 0, 0), std=(1, 1, 1))
    xb, _ = next(iter(mdata.build_loader('cifar10', root, 'test', 4, workers=0)))
    assert xb.shape == (4, 3, 32, 32)
    torch.testing.assert_close(mdata.build_dataset('cifar10', root, 'test', transform=plain)[0][0],
                               expected.float() / 255)
