"""Shared fixtures: tiny synthetic CIFAR-like data, the small model the tool tests use, subprocess helpers."""
import importlib.util
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    # before anything imports Triton (timm and torchvision do): without a GPU, tests/test_gpu_kernels.py runs the
    # Triton kernels in Triton's interpreter, which must be chosen when Triton's own functions are defined
    os.environ.setdefault("TRITON_INTERPRET", "1")

from mlan_timm import zoo

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _cpu_kernels_off_unless_a_test_asks(monkeypatch):
    """The process-wide CPU-kernels switch is off in every test (``MLAN_TIMM_CPU_KERNELS=1`` in the shell would
    otherwise change the paths other tests check); tests/test_cpu_kernels.py switches it on where it tests it."""
    from mlan_timm.layers import cpu_kernels
    monkeypatch.setattr(cpu_kernels._State, "enabled", False)


@pytest.fixture
def launches(monkeypatch):
    """Names of the Triton kernels (mlan_timm.layers.gpu_kernels) launched during a test, in order."""
    from mlan_timm.layers import gpu_kernels

    calls = []
    real = gpu_kernels._launch

    def spy(name, *args, **kwargs):
        calls.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(gpu_kernels, "_launch", spy)
    return calls


def _make_image_folder(root, num_classes=10, train_per_class=4, test_per_class=2, seed=0, test_name='test'):
    """``root/train/<class>/*.png`` and ``root/<test_name>/<class>/*.png`` of random 32x32 RGB images.

    Each class has its own mean colour so a model can learn something in a few steps."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    root = Path(root)
    names = zoo.CIFAR10_CLASSES if num_classes == 10 else [f'class{i:03d}' for i in range(num_classes)]
    for split, n in (('train', train_per_class), (test_name, test_per_class)):
        for c, name in enumerate(names):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            base = rng.integers(0, 256, size=3)
            for i in range(n):
                img = np.clip(base + rng.normal(0, 40, size=(32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f'{i:04d}.png')
    return root


def _make_tarballs(folder_root, out_dir):
    """``out_dir/train.tar.gz`` and ``out_dir/test.tar.gz`` in the shared-data layout."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for split in ('train', 'test'):
        with tarfile.open(out_dir / f'{split}.tar.gz', 'w:gz') as tf:
            tf.add(Path(folder_root) / split, arcname=split)
    return out_dir


def _subprocess_env(**extra):
    env = dict(os.environ)
    env['PYTHONPATH'] = str(REPO) + os.pathsep + env.get('PYTHONPATH', '')
    env['OMP_NUM_THREADS'] = '1'
    env.update({k: str(v) for k, v in extra.items()})
    return env


@pytest.fixture(scope='session')
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope='session')
def load_script():
    """``load_script("scripts/gpu_runbook.py")``: a script of the repository (not a package module) as a module."""
    def load(relpath: str):
        spec = importlib.util.spec_from_file_location(Path(relpath).stem, REPO / relpath)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    return load


@pytest.fixture(scope='session')
def tiny_model() -> str:
    """The smallest registered model (the plain ResNet-14 backbone) keeps CPU tool tests fast."""
    return zoo.model_name('', min(zoo.DEPTHS), 'cifar10')


@pytest.fixture(scope='session')
def make_image_folder():
    """Factory: ``make_image_folder(root, num_classes=10, train_per_class=4, test_per_class=2, ...)``."""
    return _make_image_folder


@pytest.fixture(scope='session')
def make_tarballs():
    """Factory: ``make_tarballs(folder_root, out_dir)`` -> ``out_dir`` with train/test tarballs."""
    return _make_tarballs


@pytest.fixture(scope='session')
def cifar_folder(tmp_path_factory):
    """A shared synthetic CIFAR-10 ImageFolder: 4 train and 2 test images per class (read-only for tests)."""
    return _make_image_folder(tmp_path_factory.mktemp('cifar_synth'), train_per_class=4, test_per_class=2)


@pytest.fixture(scope='session')
def subprocess_env():
    """Factory: the environment for child interpreters (repo on PYTHONPATH, one OpenMP thread) plus ``extra``."""
    return _subprocess_env


@pytest.fixture(scope='session')
def run_module():
    """Factory: run ``python -m module *args`` in the repo root; returns the CompletedProcess."""
    def run(module, args, env=None, timeout=300, **kw):
        return subprocess.run([sys.executable, '-m', module, *map(str, args)], cwd=REPO,
                              env=env or _subprocess_env(), capture_output=True, text=True, timeout=timeout, **kw)
    return run


@pytest.fixture(scope='session')
def train_args(tiny_model):
    """Factory: mlan-train arguments for a fast, deterministic CPU run on synthetic data."""
    def args(data_dir, out, epochs=2, extra=()):
        return ['--model', tiny_model, '--data-dir', str(data_dir), '--epochs', str(epochs), '--batch-size', '8',
                '--workers', '0', '--device', 'cpu', '--threads', '1', '--no-progress', '--seed', '3',
                '--cache-dir', str(Path(out).parent / 'cache'), '-o', str(out), *extra]
    return args
