"""Helpers for the training / evaluation / export / hub tests: tiny synthetic CIFAR-like data."""
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np

CIFAR10_CLASSES = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']
REPO = Path(__file__).resolve().parents[1]
# the smallest registered model keeps CPU tests fast
TINY_MODEL = 'resnet14_cifar10'


def make_image_folder(root, num_classes=10, train_per_class=4, test_per_class=2, seed=0, test_name='test'):
    """``root/train/<class>/*.png`` and ``root/<test_name>/<class>/*.png`` of random 32x32 RGB images.

    Each class has its own mean colour so a model can learn something in a few steps."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    root = Path(root)
    names = CIFAR10_CLASSES if num_classes == 10 else [f'class{i:03d}' for i in range(num_classes)]
    for split, n in (('train', train_per_class), (test_name, test_per_class)):
        for c, name in enumerate(names):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            base = rng.integers(0, 256, size=3)
            for i in range(n):
                img = np.clip(base + rng.normal(0, 40, size=(32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f'{i:04d}.png')
    return root


def make_tarballs(folder_root, out_dir):
    """``out_dir/train.tar.gz`` and ``out_dir/test.tar.gz`` in the shared-data layout."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for split in ('train', 'test'):
        with tarfile.open(out_dir / f'{split}.tar.gz', 'w:gz') as tf:
            tf.add(Path(folder_root) / split, arcname=split)
    return out_dir


def subprocess_env(**extra):
    env = dict(os.environ)
    env['PYTHONPATH'] = str(REPO) + os.pathsep + env.get('PYTHONPATH', '')
    env['OMP_NUM_THREADS'] = '1'
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_module(module, args, env=None, timeout=300, **kw):
    return subprocess.run([sys.executable, '-m', module, *map(str, args)], cwd=REPO, env=env or subprocess_env(),
                          capture_output=True, text=True, timeout=timeout, **kw)


def train_args(data_dir, out, epochs=2, extra=()):
    """mlan-train arguments for a fast, deterministic CPU run on the synthetic data."""
    return ['--model', TINY_MODEL, '--data-dir', str(data_dir), '--epochs', str(epochs), '--batch-size', '8',
            '--workers', '0', '--device', 'cpu', '--threads', '1', '--no-progress', '--seed', '3',
            '--cache-dir', str(Path(out).parent / 'cache'), '-o', str(out), *extra]
