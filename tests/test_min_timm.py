"""The lowest timm that pyproject.toml allows really works: install it into a throwaway folder that shadows the
installed timm (``pip install --no-deps --target``; torch and everything else are reused) and run the tests of the
code that uses timm's APIs (models, pretrained loading, Hub format, tools) against it. Needs pip to reach PyPI (or
its cache); slow (about a minute and a half on 2 cores)."""
import os
import re
import subprocess
import sys

import pytest

TESTS = ['tests/test_models.py', 'tests/test_pretrained.py', 'tests/test_hub.py', 'tests/test_torch_hub.py',
         'tests/test_export.py', 'tests/test_eval.py', 'tests/test_train.py', 'tests/test_timm_conventions.py']


def timm_floor(repo_root) -> str:
    text = (repo_root / 'pyproject.toml').read_text(encoding='utf-8')
    m = re.search(r'"timm>=([0-9.]+)"', text)
    assert m, 'pyproject.toml has no "timm>=X" dependency'
    return m.group(1)


@pytest.mark.slow
def test_lowest_allowed_timm_passes_the_timm_facing_tests(repo_root, tmp_path, subprocess_env):
    floor = timm_floor(repo_root)
    target = tmp_path / 'timm_floor'
    pip = subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-deps', '--target', str(target),
                          f'timm=={floor}'], capture_output=True, text=True, timeout=600)
    if pip.returncode != 0:
        pytest.skip(f'pip could not install timm=={floor}: {pip.stderr.strip()[-500:]}')
    env = subprocess_env()
    env['PYTHONPATH'] = os.pathsep.join([str(target), env['PYTHONPATH']])
    version = subprocess.run([sys.executable, '-c', 'import timm; print(timm.__version__)'], env=env,
                             capture_output=True, text=True, timeout=300)
    assert version.stdout.strip() == floor, version.stderr[-2000:]
    res = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-x', '-p', 'no:cacheprovider', '-m', 'not slow',
                          *TESTS], cwd=repo_root, env=env, capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, f'timm {floor}:\n' + res.stdout[-4000:] + res.stderr[-2000:]
