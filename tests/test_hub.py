"""End-to-end, offline Hub round trip: export -> loopback HTTP server in the Hub's resolve layout ->
``timm.create_model(name, pretrained=True)`` and ``timm.create_model('hf-hub:...')`` give identical logits."""
import hashlib
import http.server
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import timm
import torch

from mlan_timm.tools.export import export_model

TINY_MODEL = 'resnet14_cifar10'

COMMIT = 'a' * 40


class _HubHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``<root>/<org>/<name>/<file>`` as ``/<org>/<name>/resolve/<revision>/<file>``."""
    root: Path = None
    log: list = None

    def _resolve(self):
        parts = self.path.split('?')[0].strip('/').split('/')
        if len(parts) >= 5 and parts[2] == 'resolve':
            return self.root / parts[0] / parts[1] / '/'.join(parts[4:]), parts
        return None, parts

    def _send(self, body: bytes, head_only: bool):
        path, parts = self._resolve()
        self.log.append((self.command, self.path))
        if path is None or not path.is_file():
            self.send_response(404)
            self.send_header('X-Error-Code', 'EntryNotFound' if path is not None else 'RepoNotFound')
            self.send_header('X-Error-Message', 'not found')
            self.send_header('Content-Length', '0')
            self.end_headers()
            return
        data = path.read_bytes()
        self.send_response(200)
        self.send_header('Content-Type', 'application/octet-stream')
        self.send_header('Content-Length', str(len(data)))
        self.send_header('ETag', '"%s"' % hashlib.sha256(data).hexdigest())
        self.send_header('X-Repo-Commit', COMMIT)
        self.end_headers()
        if not head_only:
            self.wfile.write(data)

    def do_HEAD(self):  # noqa: N802
        self._send(b'', True)

    def do_GET(self):  # noqa: N802
        self._send(b'', False)

    def log_message(self, *args):
        pass


@pytest.fixture
def hub_server(tmp_path):
    root = tmp_path / 'served'
    handler = type('H', (_HubHandler,), dict(root=root, log=[]))
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f'http://127.0.0.1:{server.server_address[1]}', handler.log
    finally:
        server.shutdown()
        server.server_close()


CHILD = r'''
import json, sys, torch, timm
import mlan_timm  # noqa: F401
name, x_path = sys.argv[1], sys.argv[2]
x = torch.load(x_path)
out = {}
for key, ident in (('pretrained', name), ('hf_hub', 'hf-hub:mlan-timm/' + name)):
    m = timm.create_model(ident, pretrained=True).eval()
    with torch.no_grad():
        out[key] = m(x).tolist()
print(json.dumps(out))
'''


def _hub_only_manifest(directory):
    """A weights manifest that lists TINY_MODEL as published on the Hub (no bundled file)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / 'MANIFEST.json').write_text(json.dumps(
        {'format': 1, 'weights': {TINY_MODEL: {'hf_hub_id': f'mlan-timm/{TINY_MODEL}'}}}))
    return directory


def test_offline_hub_round_trip(hub_server, tmp_path, repo_root, subprocess_env, tiny_model):
    assert tiny_model == TINY_MODEL
    root, endpoint, log = hub_server
    torch.manual_seed(5)
    model = timm.create_model(TINY_MODEL).eval()
    export_model(TINY_MODEL, root / 'mlan-timm', model=model)
    x = torch.randn(3, 3, 32, 32)
    torch.save(x, tmp_path / 'x.pt')
    with torch.no_grad():
        expected = model(x)
    env = subprocess_env(HF_ENDPOINT=endpoint, HF_HOME=tmp_path / 'hf_home', HF_HUB_DISABLE_TELEMETRY=1,
                         HF_HUB_DISABLE_XET=1, MLAN_TIMM_WEIGHTS_DIR=_hub_only_manifest(tmp_path / 'weights'),
                         NO_PROXY='127.0.0.1', no_proxy='127.0.0.1')
    for k in ('HF_TOKEN', 'HF_HUB_OFFLINE', 'HTTP_PROXY', 'HTTPS_PROXY', 'http_proxy', 'https_proxy'):
        env.pop(k, None)
    res = subprocess.run([sys.executable, '-c', CHILD, TINY_MODEL, str(tmp_path / 'x.pt')], cwd=repo_root, env=env,
                         capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    a, b = torch.tensor(out['pretrained']), torch.tensor(out['hf_hub'])
    assert torch.equal(a, b)
    assert torch.allclose(a, expected, rtol=0, atol=1e-6)
    assert any('/mlan-timm/%s/resolve/' % TINY_MODEL in p and p.endswith('model.safetensors') for _, p in log)
    assert any(p.endswith('config.json') for _, p in log)  # the hf-hub: path reads the exported config
    assert (tmp_path / 'hf_home').is_dir()  # the temporary cache was used, not the real one


def test_missing_hub_repo_gives_clear_error(hub_server, tmp_path, repo_root, subprocess_env):
    root, endpoint, _ = hub_server
    env = subprocess_env(HF_ENDPOINT=endpoint, HF_HOME=tmp_path / 'hf_home', HF_HUB_DISABLE_XET=1,
                         MLAN_TIMM_WEIGHTS_DIR=_hub_only_manifest(tmp_path / 'weights'), NO_PROXY='127.0.0.1',
                         no_proxy='127.0.0.1')
    env.pop('HF_HUB_OFFLINE', None)
    code = ('import timm, mlan_timm\n'
            'from mlan_timm.pretrained import PretrainedWeightsError\n'
            'try:\n    timm.create_model("%s", pretrained=True)\n'
            'except PretrainedWeightsError as e:\n    print("CLEAR:", e)\n' % TINY_MODEL)
    res = subprocess.run([sys.executable, '-c', code], cwd=repo_root, env=env, capture_output=True, text=True,
                         timeout=180)
    assert 'CLEAR: No pretrained weights available for' in res.stdout, res.stdout + res.stderr[-2000:]
    assert f'mlan-timm/{TINY_MODEL}' in res.stdout


def _child_error(code, endpoint, tmp_path, weights_dir, subprocess_env, repo_root):
    env = subprocess_env(HF_ENDPOINT=endpoint, HF_HOME=tmp_path / 'hf_home', HF_HUB_DISABLE_XET=1,
                         MLAN_TIMM_WEIGHTS_DIR=weights_dir, NO_PROXY='127.0.0.1', no_proxy='127.0.0.1')
    env.pop('HF_HUB_OFFLINE', None)
    code = ('import timm, mlan_timm\n'
            'from mlan_timm.pretrained import PretrainedWeightsError\n'
            f'try:\n    {code}\n'
            'except PretrainedWeightsError as e:\n    print("CLEAR:", e)\n')
    res = subprocess.run([sys.executable, '-c', code], cwd=repo_root, env=env, capture_output=True, text=True,
                         timeout=180)
    assert 'CLEAR:' in res.stdout, res.stdout + res.stderr[-2000:]
    return res.stdout


def test_unpublished_model_never_asks_the_hub(hub_server, tmp_path, subprocess_env, repo_root):
    """Nothing in the manifest: pretrained=True fails at once, no request reaches the (loopback) Hub."""
    root, endpoint, log = hub_server
    out = _child_error(f'timm.create_model("{TINY_MODEL}", pretrained=True)', endpoint, tmp_path, tmp_path / 'none',
                       subprocess_env, repo_root)
    assert f"No pretrained weights available for '{TINY_MODEL}': none are published yet" in out
    assert log == []


def test_hf_hub_errors_name_the_repo_actually_read(hub_server, tmp_path, subprocess_env, repo_root):
    """``hf-hub:someone/...`` with a corrupt model.safetensors: the error names someone's repo, not the zoo's."""
    root, endpoint, log = hub_server
    model = timm.create_model(TINY_MODEL)
    export_model(TINY_MODEL, root / 'someone', model=model)
    weights = root / 'someone' / TINY_MODEL / 'model.safetensors'
    weights.write_bytes(weights.read_bytes()[:200])
    out = _child_error(f'timm.create_model("hf-hub:someone/{TINY_MODEL}", pretrained=True)', endpoint, tmp_path,
                       tmp_path / 'none', subprocess_env, repo_root)
    assert f"from Hugging Face Hub repo 'someone/{TINY_MODEL}' are corrupt" in out
    assert f'mlan-timm/{TINY_MODEL}' not in out
