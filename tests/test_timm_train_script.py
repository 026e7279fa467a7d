"""Fine-tuning through timm's own train.py with ``--device-modules mlan_timm`` (slow; needs a train.py).

timm's train.py is not part of the timm wheel. Point ``TIMM_TRAIN_SCRIPT`` at a copy (e.g. from
https://github.com/huggingface/pytorch-image-models/blob/main/train.py, matching your timm version) to run
this test; otherwise it is skipped. train.py imports each ``--device-modules`` entry before creating the model
(``importlib.import_module``), which registers the mlan_timm architectures."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow


def _train_script():
    env = os.environ.get('TIMM_TRAIN_SCRIPT')
    candidates = [Path(env)] if env else []
    candidates.append(Path.home() / '.cache' / 'mlan_timm' / 'timm_train.py')
    for c in candidates:
        if c.is_file():
            return c
    return None


def test_timm_train_py_fine_tunes_mlan_model(tmp_path, repo_root, make_image_folder, subprocess_env):
    script = _train_script()
    if script is None:
        pytest.skip('no timm train.py: set TIMM_TRAIN_SCRIPT=/path/to/pytorch-image-models/train.py')
    if '--device-modules' not in script.read_text(encoding='utf-8'):
        pytest.skip(f'{script} predates --device-modules; use a newer timm train.py')
    data = make_image_folder(tmp_path / 'data', train_per_class=2, test_per_class=1)
    out = tmp_path / 'out'
    cmd = [sys.executable, str(script), str(data), '--model', 'mlan_resnet20_cifar10', '--device-modules',
           'mlan_timm', '--device', 'cpu', '--epochs', '1', '--batch-size', '4', '--validation-batch-size', '4',
           '--val-split', 'test', '--workers', '0', '--no-prefetcher', '--lr', '0.01', '--sched', 'multistep',
           '--decay-milestones', '50', '--warmup-epochs', '0', '--log-interval', '1', '--output', str(out),
           '--experiment', 'ft', '--seed', '0']
    res = subprocess.run(cmd, cwd=repo_root, env=subprocess_env(), capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-4000:])
    run = out / 'ft'
    rows = list(csv.DictReader(open(run / 'summary.csv')))
    assert len(rows) == 1 and rows[0]['epoch'] == '0'
    ckpt = torch.load(run / 'last.pth.tar', map_location='cpu', weights_only=False)
    assert ckpt['arch'] == 'mlan_resnet20_cifar10'
    import timm

    import mlan_timm  # noqa: F401
    model = timm.create_model('mlan_resnet20_cifar10')
    model.load_state_dict(ckpt['state_dict'])  # the fine-tuned weights fit our architecture exactly
