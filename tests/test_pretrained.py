"""Bundled pretrained weights: manifest + sha256, and clear errors for every way they can be wrong."""
import hashlib
import json
import socket
import time

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
    assert model.pretrained_cfg['file'] == str(mp.bundled_file(NAME)) == str(wdir / f'{NAME}.safetensors')


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
        assert name.split('.')[0] in mlan_timm.list_models()
        if entry.get('file'):
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


# ----------------------------------------------------------------------------------------------------------
# Errors name the file actually read (pretrained_cfg_overlay=dict(file=...), local-dir:, bundled)
# ----------------------------------------------------------------------------------------------------------

@pytest.fixture
def files(tmp_path):
    """good / truncated / wrong-architecture safetensors for NAME, and an exported folder with a truncated file."""
    torch.manual_seed(0)
    good = tmp_path / 'good.safetensors'
    save_file(timm.create_model(NAME).state_dict(), str(good))
    truncated = tmp_path / 'truncated.safetensors'
    truncated.write_bytes(good.read_bytes()[:300])
    wrong = tmp_path / 'wrong.safetensors'
    save_file(timm.create_model('mlan_resnet14_cifar10').state_dict(), str(wrong))
    folder = tmp_path / 'export'
    from timm.models import save_for_hf
    save_for_hf(timm.create_model(NAME), str(folder), safe_serialization=True)
    return dict(good=good, truncated=truncated, wrong=wrong, folder=folder)


def _error(**kwargs):
    with pytest.raises(mp.PretrainedWeightsError) as e:
        timm.create_model(kwargs.pop('name', NAME), pretrained=True, **kwargs)
    return str(e.value)


@pytest.mark.parametrize('which, needle', [('truncated', 'corrupt or not a weights file'),
                                           ('wrong', "do not match the model's architecture")])
def test_overlay_file_errors_name_that_file(files, wdir, which, needle):
    msg = _error(pretrained_cfg_overlay=dict(file=str(files[which])))
    assert f"from file {files[which]} " in msg and needle in msg and NAME in msg
    assert 'Hugging Face' not in msg and 'mlan-timm/' not in msg


class _PickledObject:
    """Not a tensor: torch.load(weights_only=True) refuses a file holding one."""


def test_overlay_pth_that_torch_load_refuses_is_a_weights_error_without_unsafe_advice(tmp_path, wdir):
    """A .pth holding pickled objects torch.load(weights_only=True) refuses: named, and no advice to retry with
    weights_only=False (torch's own last sentence, unsafe for an unknown file)."""
    path = tmp_path / 'objects.pth'
    torch.save({'state_dict': {}, 'hook': _PickledObject()}, path)
    msg = _error(pretrained_cfg_overlay=dict(file=str(path)))
    refused = (f"Pretrained weights for '{NAME}' from file {path} are corrupt or not a weights file: "
               "torch.load(weights_only=True) refused it: it holds pickled Python objects, not only tensors")
    # older timm (1.0.22, the lowest allowed, tested by tests/test_min_timm.py) loads .pth files with
    # weights_only=False: the file loads, and holds no weights of this model
    loaded = f"Pretrained weights for '{NAME}' from file {path} do not match the model's architecture"
    assert msg == refused or msg.startswith(loaded), msg
    assert 'weights_only=False' not in msg


def test_overlay_url_that_cannot_be_reached_is_a_download_error(wdir):
    url = 'http://127.0.0.1:9/w.pth'  # the discard port: connection refused, no network involved
    msg = _error(pretrained_cfg_overlay=dict(url=url))
    assert msg.startswith(f"No pretrained weights available for '{NAME}': the download from URL {url} failed "
                          "(URLError:")


def test_overlay_missing_file_names_the_path(tmp_path, wdir):
    missing = tmp_path / 'nope' / 'model.safetensors'
    msg = _error(pretrained_cfg_overlay=dict(file=str(missing)))
    assert msg == f"Pretrained weights for '{NAME}': file not found: {missing}"


def test_overlay_folder_instead_of_file_says_so(files, wdir):
    msg = _error(pretrained_cfg_overlay=dict(file=str(files['folder'])))
    assert f"{files['folder']} is a folder, not a weights file" in msg and f"local-dir:{files['folder']}" in msg


@pytest.mark.parametrize('which, needle', [('truncated', 'corrupt or not a weights file'),
                                           ('wrong', "do not match the model's architecture")])
def test_local_dir_errors_name_the_file_in_the_folder(files, wdir, which, needle):
    weights = files['folder'] / 'model.safetensors'
    weights.write_bytes(files[which].read_bytes())
    msg = _error(name=f"local-dir:{files['folder']}")
    assert f"from file {weights} (local folder {files['folder']})" in msg and needle in msg
    assert 'Hugging Face' not in msg


def test_local_dir_without_weights_file(files, wdir):
    (files['folder'] / 'model.safetensors').unlink()
    msg = _error(name=f"local-dir:{files['folder']}")
    assert f"local folder {files['folder']} holds no weights file" in msg


def test_local_dir_and_overlay_file_still_load(files, wdir):
    x = torch.randn(2, 3, 32, 32)
    ref = timm.create_model(NAME).eval()
    ref.load_state_dict(mp.read_state_dict(files['good']))
    a = timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=str(files['good']))).eval()
    (files['folder'] / 'model.safetensors').write_bytes(files['good'].read_bytes())
    b = timm.create_model(f"local-dir:{files['folder']}", pretrained=True).eval()
    with torch.no_grad():
        assert torch.equal(a(x), ref(x)) and torch.equal(b(x), ref(x))


def test_other_timm_models_keep_timms_own_behaviour(tmp_path):
    """The load-time routing is active only while an mlan_timm model is built."""
    _error(pretrained_cfg_overlay=dict(file=str(tmp_path / 'missing.safetensors')))  # the hook is installed
    with pytest.raises(FileNotFoundError):  # timm's own error, not rewritten
        timm.create_model('resnet10t', pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / 'x.pth')))


# ----------------------------------------------------------------------------------------------------------
# Fail fast when nothing is published; HF_HUB_OFFLINE
# ----------------------------------------------------------------------------------------------------------

@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection is recorded and refused."""
    attempts = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError(f'network blocked in this test ({address})')

    monkeypatch.setattr(socket.socket, 'connect', refuse)
    monkeypatch.setattr(socket.socket, 'connect_ex', refuse)
    monkeypatch.setattr(socket, 'create_connection', lambda address, *a, **k: refuse(None, address))
    import huggingface_hub.constants as hc
    monkeypatch.setattr(hc, 'HF_HUB_OFFLINE', False)  # prove the speed does not come from offline mode
    monkeypatch.delenv('HF_HUB_OFFLINE', raising=False)
    return attempts


@pytest.mark.parametrize('name', [NAME, 'mlan_resnet20_cifar100'])
def test_unpublished_model_fails_fast_without_network(wdir, no_network, name):
    wdir.mkdir()
    t0 = time.perf_counter()
    msg = _error(name=name)
    elapsed = time.perf_counter() - t0
    assert elapsed < 2.0, f'{elapsed:.2f} s'
    assert no_network == []  # not a single connection attempt
    assert msg.startswith(f"No pretrained weights available for '{name}': none are published yet")
    assert "pretrained_cfg_overlay=dict(file=" in msg and 'local-dir:' in msg and f'mlan-timm/{name}' in msg


def test_shipped_package_fails_fast_for_every_unlisted_model(monkeypatch, no_network):
    monkeypatch.delenv('MLAN_TIMM_WEIGHTS_DIR', raising=False)
    unpublished = [n for n in mlan_timm.list_models() if not mp.has_pretrained(n)]
    t0 = time.perf_counter()
    for name in unpublished[:4]:
        assert 'none are published yet' in _error(name=name)
    assert time.perf_counter() - t0 < 2.0 and no_network == []


def _manifest(wdir, weights):
    wdir.mkdir(parents=True, exist_ok=True)
    (wdir / 'MANIFEST.json').write_text(json.dumps({'format': 1, 'weights': weights}))


def test_published_tags_and_has_pretrained(wdir):
    assert mp.published_tags(NAME) == () and not mp.has_pretrained(NAME)
    model = timm.create_model(NAME)
    path = _write_weights(wdir, f'{NAME}.paper', model)  # writes a one-entry manifest
    weights = json.loads((wdir / 'MANIFEST.json').read_text())['weights']
    weights[f'{NAME}.long'] = {'hf_hub_id': f'mlan-timm/{NAME}'}
    weights['mlan_resnet20_cifar10'] = {'hf_hub_id': 'mlan-timm/mlan_resnet20_cifar10'}
    _manifest(wdir, weights)
    assert mp.published_tags(NAME) == ('paper', 'long')
    assert mp.published_tags(f'timm/{NAME}.long') == ('paper', 'long')
    assert mp.published_tags('mlan_resnet20_cifar10') == ('',)
    assert mp.published_tags('resnet20_cifar10') == ()
    assert mp.has_pretrained(NAME) and mp.has_pretrained(f'{NAME}.long') and not mp.has_pretrained(f'{NAME}.x')
    assert mp.has_pretrained('mlan_resnet20_cifar10') and not mp.has_pretrained('resnet20_cifar10')
    assert mp.bundled_file(NAME) == path == mp.bundled_file(f'{NAME}.paper') and mp.bundled_file(f'{NAME}.long') is None


def test_bad_manifest_entry_is_a_clear_error(wdir):
    _manifest(wdir, {NAME: {'sha256': 'abc'}})
    with pytest.raises(mp.PretrainedWeightsError, match=f"entry '{NAME}' needs 'file'"):
        mp.published_tags(NAME)


def _offline(monkeypatch):
    import huggingface_hub.constants as hc
    monkeypatch.setattr(hc, 'HF_HUB_OFFLINE', True)


def test_offline_hub_only_weights_not_cached(wdir, tmp_path, monkeypatch, no_network):
    _offline(monkeypatch)
    _manifest(wdir, {NAME: {'hf_hub_id': f'someone/{NAME}'}})
    t0 = time.perf_counter()
    msg = _error(cache_dir=tmp_path / 'hf_cache')
    assert time.perf_counter() - t0 < 2.0 and no_network == []
    assert f"HF_HUB_OFFLINE is set and Hugging Face Hub repo 'someone/{NAME}' is not in the local cache" in msg
    assert str(tmp_path / 'hf_cache') in msg


def _put_in_hf_cache(cache, repo_id, files):
    """A file in huggingface_hub's cache layout (models--org--name/snapshots/<commit>/...)."""
    commit = 'c' * 40
    repo = cache / ('models--' + repo_id.replace('/', '--'))
    (repo / 'refs').mkdir(parents=True)
    (repo / 'refs' / 'main').write_text(commit)
    snap = repo / 'snapshots' / commit
    snap.mkdir(parents=True)
    for name, data in files.items():
        (snap / name).write_bytes(data)


def test_offline_hub_weights_from_the_cache(wdir, files, tmp_path, monkeypatch, no_network):
    _offline(monkeypatch)
    cache = tmp_path / 'hf_cache'
    _put_in_hf_cache(cache, f'mlan-timm/{NAME}', {'model.safetensors': files['good'].read_bytes()})
    _manifest(wdir, {NAME: {'hf_hub_id': f'mlan-timm/{NAME}'}})
    model = timm.create_model(NAME, pretrained=True, cache_dir=cache).eval()
    ref = timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=str(files['good']))).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))
    assert no_network == []
    # a corrupt cached file is reported naming the Hub repo it came from
    _put_in_hf_cache(cache / 'bad', f'mlan-timm/{NAME}', {'model.safetensors': files['truncated'].read_bytes()})
    msg = _error(cache_dir=cache / 'bad')
    assert f"from Hugging Face Hub repo 'mlan-timm/{NAME}' are corrupt" in msg


def test_user_named_hub_repo_is_used_not_the_manifest(wdir, tmp_path, monkeypatch, no_network):
    """An hf_hub_id in pretrained_cfg_overlay is the user's choice: no fail-fast, the error names that repo."""
    _offline(monkeypatch)
    wdir.mkdir()
    msg = _error(pretrained_cfg_overlay=dict(hf_hub_id='someone/my-weights'), cache_dir=tmp_path / 'c')
    assert "Hugging Face Hub repo 'someone/my-weights' is not in the local cache" in msg


def test_registry_contract_for_tagged_and_untagged_cfgs(wdir):
    """What the registry will pass once cfgs carry tags: a cfg tagged 'paper' with the zoo's hf_hub_id loads the
    manifest's ``<model>.paper`` file; an unpublished tag or a cfg without any source fails fast naming it."""
    torch.manual_seed(2)
    src = timm.create_model(NAME).eval()
    _write_weights(wdir, f'{NAME}.paper', src)
    base = {k: v for k, v in timm.create_model(NAME).pretrained_cfg.items() if k != 'hf_hub_id'}
    cfg = dict(base, tag='paper', hf_hub_id=f'mlan-timm/{NAME}')
    model = timm.create_model(NAME, pretrained=True, pretrained_cfg=cfg)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), src(x))
    assert _error(pretrained_cfg=dict(base, tag='other')).startswith(
        f"No pretrained weights available for '{NAME}.other': none are published yet")
    wdir.joinpath('MANIFEST.json').unlink()
    assert 'none are published yet' in _error(pretrained_cfg=base)  # no hf_hub_id, no url: still our error


def test_only_published_models_carry_a_pretrained_tag(tmp_path):
    """With one tagged model in the manifest, timm lists exactly that model as pretrained, and it loads offline
    through a bare ``import timm`` (autoload) with the weights' logits; the other models stay untagged."""
    import subprocess
    import sys
    wdir = tmp_path / 'weights'
    torch.manual_seed(0)
    src = timm.create_model(NAME).eval()
    _write_weights(wdir, f'{NAME}.paper', src)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.save(dict(x=x, y=src(x)), tmp_path / 'io.pt')
    code = f"""
import timm, torch
print(timm.list_models('*_cifar*', pretrained=True))
m = timm.create_model({NAME!r}, pretrained=True).eval()
io = torch.load({str(tmp_path / 'io.pt')!r})
with torch.no_grad():
    assert torch.equal(m(io['x']), io['y'])
print(m.pretrained_cfg['tag'], m.pretrained_cfg['hf_hub_id'])
print(timm.create_model('mlan_resnet20_cifar10').pretrained_cfg.get('hf_hub_id'))
"""
    env = dict(__import__('os').environ, MLAN_TIMM_WEIGHTS_DIR=str(wdir), HF_HUB_OFFLINE='1')
    out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"['{NAME}.paper']"
    assert lines[1] == f"paper mlan-timm/{NAME}"
    assert lines[2] == "None"
