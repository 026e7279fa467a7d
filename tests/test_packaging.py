"""Packaging metadata: the Apache-2.0 LICENSE ships in the wheel, project URLs agree with ``mlan_timm.zoo``, and the
C++ source of the optional CPU kernels ships too (they are compiled on first use)."""
import email
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from mlan_timm import pretrained, zoo

REPO = Path(__file__).resolve().parents[1]
URLS = {'Homepage': zoo.REPO_URL, 'Source': zoo.REPO_URL, 'Issues': f'{zoo.REPO_URL}/issues',
        'Paper': f'https://doi.org/{zoo.DOI}'}


def _pyproject():
    tomllib = pytest.importorskip('tomllib' if sys.version_info >= (3, 11) else 'tomli')
    return tomllib.loads((REPO / 'pyproject.toml').read_text(encoding='utf-8'))


def test_pyproject_license_and_urls_match_the_zoo():
    project = _pyproject()['project']
    assert project['license'] == 'Apache-2.0' and project['license-files'] == ['LICENSE']
    assert project['urls'] == URLS
    license_text = (REPO / 'LICENSE').read_text(encoding='utf-8')
    assert 'Apache License' in license_text and 'Version 2.0, January 2004' in license_text
    assert 'END OF TERMS AND CONDITIONS' in license_text


@pytest.mark.slow
def test_wheel_carries_license_and_metadata(tmp_path):
    """Build the wheel as a user would (no isolation: uses the installed hatchling) and read its dist-info and the
    kernels' C++ source."""
    res = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q', '-w',
                          str(tmp_path), str(REPO)], check=False, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    (wheel,) = tmp_path.glob('mlan_timm-*.whl')
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        (meta_name,) = [n for n in names if n.endswith('.dist-info/METADATA')]
        dist_info = meta_name.rsplit('/', 1)[0]
        assert f'{dist_info}/licenses/LICENSE' in names
        assert z.read(f'{dist_info}/licenses/LICENSE') == (REPO / 'LICENSE').read_bytes()
        meta = email.message_from_bytes(z.read(meta_name))
        # the optional CPU kernels are JIT-built from this source (mlan_timm/layers/cpu_kernels.py, SOURCE)
        kernel_source = 'mlan_timm/layers/csrc/small_conv.cpp'
        assert kernel_source in names
        assert z.read(kernel_source) == (REPO / kernel_source).read_bytes()
        # the bundled pretrained weights: the manifest and every file it lists, byte for byte
        weights = REPO / 'mlan_timm' / 'weights'
        listed = [e['file'] for e in pretrained.read_manifest(weights).values() if e.get('file')]
        assert listed  # the shipped pairs
        for name in [pretrained.MANIFEST_NAME, *listed]:
            assert z.read(f'mlan_timm/weights/{name}') == (weights / name).read_bytes(), name
    assert meta['License-Expression'] == 'Apache-2.0' and meta['License-File'] == 'LICENSE'
    urls = dict(u.split(', ', 1) for u in meta.get_all('Project-URL'))
    assert urls == URLS
