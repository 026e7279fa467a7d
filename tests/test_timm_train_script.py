"""timm's own train.py runs the command documented in docs/timm-train-py.md (the run is slow and needs a train.py).

timm's train.py is not part of the timm wheel. Point ``TIMM_TRAIN_SCRIPT`` at a copy (from
https://github.com/huggingface/pytorch-image-models, the tag matching your timm version) or put one at
``~/.cache/mlan_timm/timm_train.py``; otherwise the test is skipped. The command is parsed out of the doc (the
```bash block after the ``<!-- timm-train-command`` marker), so doc and test cannot drift: only DATA, DEVICE and
MODEL are replaced, and ``--epochs 1 -b 8 --workers 0 --output <tmp>`` are appended (argparse keeps the last value).
"""
import csv
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / 'docs' / 'timm-train-py.md'
MODEL = 'mlan_resnet14_cifar10'


def documented_command(doc=DOC):
    """``(variables, argv)`` of the doc's command: ``VAR=value`` lines and the ``python train.py ...`` words."""
    text = doc.read_text(encoding='utf-8')
    block = re.search(r'<!-- timm-train-command:.*?-->\s*```bash\n(.*?)\n```', text, re.DOTALL)
    assert block, f'{doc} has no <!-- timm-train-command --> marker followed by a ```bash block'
    lines = block.group(1).replace('\\\n', ' ').splitlines()
    variables, commands = {}, []
    for line in lines:
        words = shlex.split(line, comments=True)
        if len(words) == 1 and re.fullmatch(r'[A-Z_]+=.*', words[0]):
            key, value = words[0].split('=', 1)
            variables[key] = value
        elif words:
            commands.append(words)
    assert len(commands) == 1 and commands[0][:2] == ['python', 'train.py'], commands
    return variables, commands[0]


def _train_script():
    env = os.environ.get('TIMM_TRAIN_SCRIPT')
    for c in ([Path(env)] if env else []) + [Path.home() / '.cache' / 'mlan_timm' / 'timm_train.py']:
        if c.is_file():
            return c
    return None


def _image_folder(root, classes=10, train_per_class=2, test_per_class=1, seed=0):
    """``root/{train,test}/<class>/*.png``: random 32x32 RGB images, one mean colour per class."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    for c in range(classes):
        base = rng.integers(0, 256, size=3)
        for split, n in (('train', train_per_class), ('test', test_per_class)):
            d = Path(root) / split / f'class{c}'
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = np.clip(base + rng.normal(0, 40, size=(32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f'{i}.png')
    return Path(root)


def test_documented_command_is_the_paper_recipe():
    """The doc's command sets every recipe flag it claims (cheap, no train.py needed)."""
    variables, argv = documented_command()
    assert set(variables) == {'DATA', 'DEVICE', 'MODEL'}
    cmd = ' '.join(argv)
    for flag in ('--device-modules mlan_timm', '--device $DEVICE', '--opt momentum', '--lr 0.1', '--momentum 0.9',
                 '--weight-decay 5e-4', '--opt-kwargs filter_bias_and_bn=False', '--sched multistep',
                 '--decay-milestones 51 101 151', '--decay-rate 0.1', '--warmup-epochs 0', '--epochs 200',
                 '-b 128', '--scale 1 1', '--ratio 1 1', '--color-jitter 0', '--smoothing 0', '--val-split test'):
        assert f' {flag} ' in f' {cmd} ', flag
    assert '--input-size' not in cmd and '--lr-base' not in cmd


@pytest.mark.slow
def test_timm_train_py_runs_the_documented_command(tmp_path):
    script = _train_script()
    if script is None:
        pytest.skip('no timm train.py: set TIMM_TRAIN_SCRIPT=/path/to/pytorch-image-models/train.py')
    variables, argv = documented_command()
    values = dict(variables, DATA=str(_image_folder(tmp_path / 'data')), DEVICE='cpu', MODEL=MODEL)
    words = [re.sub(r'\$(\w+)', lambda m: values[m.group(1)], w) for w in argv[2:]]
    out = tmp_path / 'out'
    cmd = [sys.executable, str(script), *words, '--epochs', '1', '-b', '8', '--workers', '0', '--output', str(out)]
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-4000:])
    run = out / MODEL
    with open(run / 'summary.csv', newline='') as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]['epoch'] == '0'
    assert float(rows[0]['lr']) == pytest.approx(0.1)  # no warm-up, no batch scaling
    args = (run / 'args.yaml').read_text()
    assert 'smoothing: 0' in args and 'filter_bias_and_bn: false' in args
    ckpt = torch.load(run / 'last.pth.tar', map_location='cpu', weights_only=False)
    assert ckpt['arch'] == MODEL
    import timm

    import mlan_timm  # noqa: F401
    model = timm.create_model(MODEL)
    model.load_state_dict(ckpt['state_dict'])  # the trained weights fit our architecture exactly
