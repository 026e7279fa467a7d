"""scripts/gpu_runbook.py: the core models' order and waves, the data cut into per-call pieces and joined back,
and the whole runbook dry-run on CPU (two sessions, state packed, unpacked and resumed)."""
import json
import subprocess
import sys

import pytest

from mlan_timm import zoo


@pytest.fixture(scope='module')
def runbook(load_script):
    return load_script('scripts/gpu_runbook.py')


def test_core_models_in_the_issues_order(runbook):
    assert runbook.CORE_ORDER[:6] == ['mlan_resnet20_cifar10', 'resnet20_cifar10', 'mlan_resnet20_cifar100',
                                      'resnet20_cifar100', 'mlan_resnet32_cifar100', 'resnet32_cifar100']
    core = {zoo.model_name(f, d, ds) for f in ('', 'mlan_') for d in (14, 20, 26, 32) for ds in ('cifar10', 'cifar100')}
    assert len(runbook.CORE_ORDER) == 16 and set(runbook.CORE_ORDER) == core
    assert sorted(runbook.WAVES[1] + runbook.WAVES[2]) == sorted(core)
    assert all(runbook.CORE_ORDER.index(a) < runbook.CORE_ORDER.index(b)
               for w in runbook.WAVES.values() for a, b in zip(w, w[1:]))


def test_cpu_session_takes_the_next_unfinished_pair(runbook, tmp_path):
    """cpu-session's default models: the first pair of the order that is unfinished and not started on a GPU."""
    order = runbook.CORE_ORDER

    def trained(model, epochs, on_cpu=True):
        (tmp_path / model).mkdir(exist_ok=True)
        (tmp_path / model / 'log.jsonl').write_text('{}\n' * epochs)
        (tmp_path / model / 'args.json').write_text(json.dumps({'epochs': 200}))
        if on_cpu:
            (tmp_path / model / runbook.CPU_MARKER).write_text('')

    assert runbook.next_cpu_pair(tmp_path) == order[:2]
    trained(order[0], 200)
    trained(order[1], 150)
    assert runbook.next_cpu_pair(tmp_path) == order[:2]  # the backbone is not finished yet
    trained(order[1], 200)
    assert runbook.next_cpu_pair(tmp_path) == order[2:4]
    trained(order[3], 3, on_cpu=False)  # its backbone trains in GPU sessions: the pair is theirs
    assert runbook.next_cpu_pair(tmp_path) == order[4:6]


def test_data_pieces_fit_each_call_and_join_back(runbook, tmp_path, make_image_folder, make_tarballs, capsys):
    make_tarballs(make_image_folder(tmp_path / 'synth', train_per_class=2, test_per_class=1),
                  tmp_path / 'shared' / 'cifar10')
    room = 30_000
    assert runbook.main(['plan-data', '--wave', '1', '--data-root', str(tmp_path / 'shared'), '--out',
                         str(tmp_path / 'gpudata'), '--call-bytes', str(room)]) == 0
    calls = sorted((tmp_path / 'gpudata').iterdir())
    total = sum((tmp_path / 'shared' / 'cifar10' / f'{s}.tar.gz').stat().st_size for s in ('train', 'test'))
    assert len(calls) == -(-total // room) >= 2
    assert all(sum(p.stat().st_size for p in c.glob('piece*')) <= room for c in calls)
    for c in calls[:-1]:
        runbook.main(['receive', str(c), '--tmp', str(tmp_path / 'tmp')])
    with pytest.raises(SystemExit, match=f'{len(calls) - 1} of {len(calls)} data pieces'):
        runbook._join(tmp_path / 'tmp')  # one call missing: a clear stop, no training on partial data
    runbook.main(['receive', str(calls[-1]), '--tmp', str(tmp_path / 'tmp')])
    data = runbook._join(tmp_path / 'tmp')
    for s in ('train', 'test'):
        assert (data / 'cifar10' / f'{s}.tar.gz').read_bytes() == \
            (tmp_path / 'shared' / 'cifar10' / f'{s}.tar.gz').read_bytes()


@pytest.mark.slow  # ~11 s: runs in CI's slow step
def test_dry_run_of_the_whole_runbook(repo_root, tmp_path, subprocess_env):
    """plan-data, receive, session (stops at an epoch boundary after one epoch: budget 0), pack into parts,
    unpack into the state folder, then a second session resumes from it and finishes; about 12 s."""
    res = subprocess.run([sys.executable, 'scripts/gpu_runbook.py', 'dry-run', '--workdir', str(tmp_path / 'dry')],
                         cwd=repo_root, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert 'stopping at an epoch boundary before epoch 1' in res.stdout
    assert 'dry run OK' in res.stdout
