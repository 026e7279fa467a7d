"""Bundled pretrained weights: manifest + sha256, and clear errors for every way they can be wrong."""
import hashlib
import json

import pytest
import timm
import torch
from safetensors.torch import save_file

import mlan_timm  # noqa: F401
from mlan_timm import pretrained as mp

NAME = 'resnet14_cifar10'


def _write_weights(directory, name, model, corrupt=False, sha=None):
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f'{name}.safetensors'
    if corrupt:
        path.write_bytes(b'\x00not a safetensors file' * 10)
    else:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    digest = sha or hashlib.sha256(path.read_bytes()).hexdigest()
    (directory / 'MANIFEST.json').write_text(json.dumps(
        {'format': 1, 'weights': {name: {'file': path.name, 'sha256': digest}}}))
    return path


@pytest.fixture
def wdir(tmp_path, monkeypatch):
    d = tmp_path / 'weights'
    monkeypatch.setenv('MLAN_TIMM_WEIGHTS_DIR', str(d))
    return d


def test_bundled_weights_load_offline_with_identical_logits(wdir):
    torch.manual_seed(0)
    src = timm.create_model(NAME).eval()
    _write_weights(wdir, NAME, src)
    model = timm.create_model(NAME, pretrained=True).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), src(x))
    assert mp.pretrained_cfg_overlay(NAME)['file'].endswith(f'{NAME}.safetensors')


def test_sha_mismatch_is_refused(wdir):
    _write_weights(wdir, NAME, timm.create_model(NAME), sha='0' * 64)
    with pytest.raises(mp.PretrainedWeightsError, match=f"'{NAME}'.*sha256.*corrupt or was replaced"):
        timm.create_model(NAME, pretrained=True)


def test_corrupt_file_is_a_clear_error(wdir):
    _write_weights(wdir, NAME, None, corrupt=True)  # sha matches the (garbage) file
    with pytest.raises(mp.PretrainedWeightsError) as e:
        timm.create_model(NAME, pretrained=True)
    assert NAME in str(e.value) and 'corrupt' in str(e.value) and str(wdir) in str(e.value)


def test_wrong_architecture_file_is_a_clear_error(wdir):
    other = timm.create_model('mlan_resnet20_cifar10')
    _write_weights(wdir, NAME, other)  # listed under NAME, holds another architecture's weights
    with pytest.raises(mp.PretrainedWeightsError) as e:
        timm.create_model(NAME, pretrained=True)
    msg = str(e.value)
    assert NAME in msg and 'do not match' in msg and f'{NAME}.safetensors' in msg


def test_manifest_listing_a_missing_file(wdir):
    wdir.mkdir()
    (wdir / 'MANIFEST.json').write_text(json.dumps({'weights': {NAME: {'file': 'gone.safetensors', 'sha256': 'x'}}}))
    with pytest.raises(mp.PretrainedWeightsError, match='gone.safetensors.*missing'):
        timm.create_model(NAME, pretrained=True)


def test_no_weights_anywhere_is_a_clear_error(wdir, monkeypatch):
    """Nothing bundled and the Hub unreachable (offline mode): the error names the model and the repo."""
    import huggingface_hub.constants as hc
    monkeypatch.setattr(hc, 'HF_HUB_OFFLINE', True)
    wdir.mkdir()
    with pytest.raises(mp.PretrainedWeightsError) as e:
        timm.create_model(NAME, pretrained=True)
    msg = str(e.value)
    assert f"No pretrained weights available for '{NAME}'" in msg and f'mlan-timm/{NAME}' in msg


def test_shipped_manifest_lists_only_existing_verified_files(monkeypatch):
    """The package ships no smoke-run weights; whatever it lists must exist and match its sha256."""
    monkeypatch.delenv('MLAN_TIMM_WEIGHTS_DIR', raising=False)
    manifest = mp.read_manifest()
    for name, entry in manifest.items():
        assert name in mlan_timm.list_models()
        path = mp.weights_dir() / entry['file']
        assert path.is_file() and mp.sha256_file(path) == entry['sha256']
    assert (mp.weights_dir() / 'MANIFEST.json').is_file()


def test_ema_from_a_safetensors_or_plain_state_dict_is_refused(tmp_path):
    model = timm.create_model(NAME)
    path = _write_weights(tmp_path, NAME, model)
    with pytest.raises(mp.PretrainedWeightsError, match='EMA weights were requested.*safetensors'):
        mp.read_state_dict(path, NAME, use_ema=True)
    pth = tmp_path / 'plain.pth'
    torch.save(model.state_dict(), pth)
    with pytest.raises(mp.PretrainedWeightsError, match='not an mlan-train checkpoint'):
        mp.read_state_dict(pth, NAME, use_ema=True)
    assert mp.read_state_dict(pth, NAME).keys() == model.state_dict().keys()
