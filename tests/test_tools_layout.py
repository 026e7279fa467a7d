"""The library / tools split: ``import mlan_timm`` loads no tool; every tool runs as a console script and as
``python -m mlan_timm.tools.<name>``; one ``k=v`` kwargs syntax for all tools."""
import json
import re
import runpy
import subprocess
import sys
from importlib.metadata import entry_points

import pytest

from mlan_timm.tools import common
from mlan_timm.tools.bench.measure import Spec, parse_spec

CONSOLE_SCRIPTS = {'mlan-train': 'mlan_timm.tools.train:main', 'mlan-eval': 'mlan_timm.tools.eval:main',
                   'mlan-export': 'mlan_timm.tools.export:main', 'mlan-push': 'mlan_timm.tools.export:push_main',
                   'mlan-bench': 'mlan_timm.tools.bench.cli:main',
                   'mlan-train-many': 'mlan_timm.tools.train_many:main',
                   'mlan-runstate': 'mlan_timm.tools.runstate:main'}


def test_import_mlan_timm_imports_no_tool(repo_root, subprocess_env):
    code = ('import json, sys\nimport mlan_timm, timm\n'
            'timm.create_model("resnet14_cifar10")\n'
            'print(json.dumps(sorted(m for m in sys.modules if m.startswith("mlan_timm"))))')
    res = subprocess.run([sys.executable, '-c', code], cwd=repo_root, env=subprocess_env(), capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    loaded = json.loads(res.stdout.strip().splitlines()[-1])
    assert 'mlan_timm' in loaded and 'mlan_timm.models' in loaded  # the probe did import the library
    assert [m for m in loaded if m == 'mlan_timm.tools' or m.startswith('mlan_timm.tools.')] == []


def test_console_scripts_point_at_the_tools():
    eps = {ep.name: ep for ep in entry_points(group='console_scripts') if ep.name.startswith('mlan-')}
    assert {name: ep.value for name, ep in eps.items()} == CONSOLE_SCRIPTS
    assert all(callable(ep.load()) for ep in eps.values())


@pytest.mark.filterwarnings('ignore:.*found in sys.modules:RuntimeWarning')
@pytest.mark.parametrize('module, prog', [
    ('mlan_timm.tools.train', 'mlan-train'), ('mlan_timm.tools.eval', 'mlan-eval'),
    ('mlan_timm.tools.export', 'mlan-export'), ('mlan_timm.tools.bench', 'mlan-bench'),
    ('mlan_timm.tools.train_many', 'mlan-train-many'), ('mlan_timm.tools.runstate', 'mlan-runstate')])
def test_python_dash_m_runs_each_tool(module, prog, monkeypatch, capsys):
    monkeypatch.setattr(sys, 'argv', [module, '--help'])
    with pytest.raises(SystemExit) as e:
        runpy.run_module(module, run_name='__main__', alter_sys=False)
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith(f'usage: {prog}')


def test_one_kwargs_syntax_for_all_tools():
    items = ['attn=cbam', 'drop_rate=0.1', 'flag=true', 'other=False', 'none=null', 'sizes=[1, 2]', 'n=3']
    expected = dict(attn='cbam', drop_rate=0.1, flag=True, other=False, none=None, sizes=[1, 2], n=3)
    assert common.parse_model_kwargs(items) == expected
    assert parse_spec('m?' + '&'.join(i for i in items if ',' not in i)).kwargs == \
        {k: v for k, v in expected.items() if k != 'sizes'}
    assert common.parse_model_kwargs(common.format_model_kwargs(expected)) == expected
    spec = Spec('mlan_resnet20_cifar10', dict(attn='cbam', num_masks=3, fusion='concat'))
    assert parse_spec(spec.key) == Spec(spec.model, spec.kwargs)
    with pytest.raises(common.UsageError, match='expects key=value pairs'):
        common.parse_model_kwargs(['cbam'])


def test_local_dir_models_are_checked_before_timm_reads_them(tmp_path):
    """timm stops with a bare FileNotFoundError / JSONDecodeError for a bad local-dir: folder."""
    (tmp_path / 'bad').mkdir()
    (tmp_path / 'bad' / 'config.json').write_text('{bad')
    (tmp_path / 'other').mkdir()
    (tmp_path / 'other' / 'config.json').write_text('{"architecture": "no_such_model"}')
    for folder, needle in (('nope', 'nope not found (local-dir: takes a folder written by mlan-export'),
                           ('.', 'config.json not found'), ('bad', 'config.json is not readable JSON: Expecting'),
                           ('other', "names no architecture timm knows (architecture: 'no_such_model')")):
        with pytest.raises(common.UsageError, match=re.escape(needle)):
            common.check_model_registered(f'local-dir:{tmp_path / folder}')
    good = tmp_path / 'good'
    good.mkdir()
    (good / 'config.json').write_text('{"architecture": "resnet14_cifar10"}')
    common.check_model_registered(f'local-dir:{good}')


def test_an_unreadable_hub_repo_is_a_usage_error_naming_it(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc
    monkeypatch.setattr(hc, 'HF_HUB_OFFLINE', True)  # nothing leaves the machine; the cache below is empty
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setattr(hc, 'HF_HUB_CACHE', str(tmp_path / 'hub-cache'))
    with pytest.raises(common.UsageError, match=r"Model 'hf-hub:someone/nope': its Hugging Face Hub repo could "
                                                r"not be read \(HF_HUB_OFFLINE is set: only the local cache was "
                                                r"searched\)"):
        common.create_model('hf-hub:someone/nope', pretrained=True)


def test_common_errors_name_the_problem(tmp_path, tiny_model, monkeypatch):
    with pytest.raises(common.UsageError, match="Cannot tell the dataset from model name 'resnet18'"):
        common.resolve_dataset('resnet18')
    with pytest.raises(common.UsageError, match="Unknown model 'mlan_resnet21_cifar10'.*mlan_resnet20_cifar10"):
        common.resolve_dataset('mlan_resnet21_cifar10')
    assert common.resolve_dataset('hf-hub:mlan-timm/se_resnet14_cifar100') == 'cifar100'
    assert common.resolve_dataset('resnet18', 'cifar10') == 'cifar10'
    monkeypatch.setattr('torch.cuda.is_available', lambda: False)  # the same message on a GPU machine
    with pytest.raises(common.UsageError, match='CUDA is not available'):
        common.resolve_device('cuda')
    monkeypatch.undo()
    with pytest.raises(common.UsageError, match='not a device'):
        common.resolve_device('gpu0')
    assert common.read_training_record(tmp_path / 'missing.safetensors') is None


def test_cpu_tools_flush_subnormal_floats():
    """Trained MLAN masks reach subnormal floats, which are 7x slower on the CPU: the tools flush them to zero."""
    import torch
    torch.set_flush_denormal(False)
    tiny = torch.tensor([1e-39])
    try:
        assert (tiny * 1.0).item() != 0.0  # subnormal kept
        common.resolve_device('cpu')
        assert (tiny * 1.0).item() == 0.0  # flushed
    finally:
        torch.set_flush_denormal(False)


def test_run_cli_turns_errors_into_one_line(capsys):
    def bad():
        raise common.UsageError('the thing is wrong')
    assert common.run_cli('mlan-x', bad) == 2
    assert capsys.readouterr().err == 'mlan-x: error: the thing is wrong\n'
