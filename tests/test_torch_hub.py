"""``hubconf.py``: ``torch.hub.load(repo, name, source='local', ...)`` for every model, offline."""
import hashlib
import importlib.util
import json
import time
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from mlan_timm.pretrained import PretrainedWeightsError
from mlan_timm.zoo import model_names

REPO = Path(__file__).resolve().parents[1]
NAME = 'mlan_resnet14_cifar10'


def test_hubconf_exposes_every_model_and_its_dependencies():
    spec = importlib.util.spec_from_file_location('mlan_hubconf', REPO / 'hubconf.py')
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    entries = {k for k, v in vars(hubconf).items() if callable(v) and not k.startswith('_')}
    assert entries == set(model_names()) and len(entries) == 56
    assert hubconf.dependencies == ['torch', 'timm']
    assert hubconf.mlan_resnet20_cifar10.__name__ == 'mlan_resnet20_cifar10'


def test_torch_hub_load_builds_the_timm_model():
    model = torch.hub.load(str(REPO), NAME, source='local', pretrained=False)
    ref = timm.create_model(NAME)
    assert type(model) is type(ref) and model.pretrained_cfg == ref.pretrained_cfg
    assert [(k, v.shape) for k, v in model.state_dict().items()] == [(k, v.shape) for k, v in ref.state_dict().items()]
    small = torch.hub.load(str(REPO), 'resnet14_cifar100', source='local', num_classes=7, attn=None)
    assert small(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_torch_hub_load_pretrained_from_the_weights_manifest(tmp_path, monkeypatch):
    torch.manual_seed(1)
    src = timm.create_model(NAME).eval()
    weights = tmp_path / 'weights'
    weights.mkdir()
    file = weights / f'{NAME}.safetensors'
    save_file(src.state_dict(), str(file))
    (weights / 'MANIFEST.json').write_text(json.dumps({'format': 1, 'weights': {
        NAME: {'file': file.name, 'sha256': hashlib.sha256(file.read_bytes()).hexdigest()}}}))
    monkeypatch.setenv('MLAN_TIMM_WEIGHTS_DIR', str(weights))
    hub = torch.hub.load(str(REPO), NAME, source='local', pretrained=True).eval()
    direct = timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay={'file': str(file)}).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        a, b, c = hub(x), direct(x), src(x)
    assert torch.equal(a, b) and torch.equal(a, c)


def test_torch_hub_load_pretrained_without_published_weights_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv('MLAN_TIMM_WEIGHTS_DIR', str(tmp_path / 'none'))
    t0 = time.perf_counter()
    with pytest.raises(PretrainedWeightsError, match=f"No pretrained weights available for '{NAME}'"):
        torch.hub.load(str(REPO), NAME, source='local', pretrained=True)
    assert time.perf_counter() - t0 < 2.0
