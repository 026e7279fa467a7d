"""mlan-train-many: several models train exactly as separate mlan-train runs would (bit for bit on CPU), kill +
--resume gives the uninterrupted weights, a time budget stops at an epoch boundary, clear errors."""
import json

import pytest
import torch
from safetensors.torch import load_file

from mlan_timm.tools import train as mtrain
from mlan_timm.tools import train_many as mmany

MODELS = ('resnet14_cifar10', 'mlan_resnet14_cifar10')


def _common(data, tmp, extra=()):
    return ['--data-dir', str(data), '--epochs', '2', '--batch-size', '8', '--workers', '0', '--device', 'cpu',
            '--threads', '1', '--no-progress', '--seed', '3', '--cache-dir', str(tmp / 'cache'),
            '--decay-milestones', '1', *extra]


def _same_weights(a, b):
    a, b = load_file(a), load_file(b)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _epochs(log):
    return [json.loads(x)['epoch'] for x in log.read_text().splitlines()]


@pytest.fixture(scope='module', params=['loader', 'device'])
def singles(request, cifar_folder, tmp_path_factory):
    """Two separate mlan-train runs; 'device' uses --data-on-device (the path the interleaved CUDA mode needs)."""
    tmp = tmp_path_factory.mktemp(f'singles_{request.param}')
    extra = ['--data-on-device'] if request.param == 'device' else []
    for m in MODELS:
        assert mtrain.main(['--model', m, '-o', str(tmp / m), *_common(cifar_folder, tmp, extra)]) == 0
    return request.param, extra, tmp


def test_many_equals_separate_runs(singles, cifar_folder, tmp_path):
    """Sequential (the CPU default) and, with data on the device, round-robin interleaved (the CUDA order)."""
    mode, extra, ref = singles
    extra = extra + (['--interleave'] if mode == 'device' else [])
    out = tmp_path / 'many'
    assert mmany.main(['--models', *MODELS, '-o', str(out), *_common(cifar_folder, tmp_path, extra)]) == 0
    for m in MODELS:
        assert _same_weights(ref / m / 'model.safetensors', out / m / 'model.safetensors'), m
        ours, theirs = (json.loads((d / m / 'summary.json').read_text()) for d in (out, ref))
        assert ours == theirs
        rows = [json.loads(x) for x in (out / m / 'log.jsonl').read_text().splitlines()]
        ref_rows = [json.loads(x) for x in (ref / m / 'log.jsonl').read_text().splitlines()]
        for r, rr in zip(rows, ref_rows):
            for k in ('epoch', 'lr', 'train_loss', 'train_top1', 'test_top1', 'test_top5', 'best_epoch'):
                assert r[k] == rr[k], (m, k)
            assert r['models_together'] == (2 if mode == 'device' else 1) and r['aggregate_img_per_s'] > 0
        ckpt = torch.load(out / m / 'last.pth', map_location='cpu', weights_only=False)
        assert ckpt['args']['model'] == m and ckpt['epoch'] == 2
    state = json.loads((out / 'many.json').read_text())
    assert state['complete'] and set(state['models']) == set(MODELS)
    assert state['session']['epochs_trained'] == (2 if mode == 'device' else 4)
    assert state['session']['aggregate_img_per_s_median'] > 0
    lines = [json.loads(x) for x in (out / 'many.jsonl').read_text().splitlines()]
    assert all(set(x['img_per_s']) <= set(MODELS) for x in lines)
    if mode == 'loader':  # resuming finished runs trains nothing and leaves their args.json (one session) alone
        before = {m: (out / m / 'args.json').read_bytes() for m in MODELS}
        assert mmany.main(['--models', *MODELS, '-o', str(out), '--resume', *_common(cifar_folder, tmp_path)]) == 0
        assert {m: (out / m / 'args.json').read_bytes() for m in MODELS} == before
        assert [len(json.loads(before[m])['sessions']) for m in MODELS] == [1, 1]


class Killed(Exception):
    pass


def test_kill_then_resume_matches_separate_runs(singles, cifar_folder, tmp_path):
    """Killed inside epoch 1 of the second model (one after another, the first has finished all epochs but has
    no final weights yet; interleaved, both are inside epoch 1): --resume finishes both, bit-identical to the
    uninterrupted runs."""
    mode, extra, ref = singles
    extra = extra + (['--interleave'] if mode == 'device' else [])
    out = tmp_path / 'many'
    argv = ['--models', *MODELS, '-o', str(out), *_common(cifar_folder, tmp_path, extra)]

    def on_step(model, epoch, step):
        if model == MODELS[1] and epoch == 1 and step == 2:
            raise Killed

    with pytest.raises(Killed):
        mmany.main(argv, mmany.ManyHooks(on_step=on_step))
    assert _epochs(out / MODELS[0] / 'log.jsonl') == ([0] if mode == 'device' else [0, 1])
    assert _epochs(out / MODELS[1] / 'log.jsonl') == [0]
    assert not any((out / m / 'model.safetensors').exists() for m in MODELS)
    assert mmany.main([*argv, '--resume']) == 0
    for m in MODELS:
        assert _same_weights(ref / m / 'model.safetensors', out / m / 'model.safetensors'), m
        assert _epochs(out / m / 'log.jsonl') == [0, 1]
    # a model trained by mlan-train-many continues with plain mlan-train (same folder, same checkpoint)
    argv1 = ['--model', MODELS[0], '-o', str(out / MODELS[0]),
             *_common(cifar_folder, tmp_path, [e for e in extra if e != '--interleave'])]
    argv1[argv1.index('--epochs') + 1] = '3'
    assert mtrain.main([*argv1, '--resume']) == 0
    assert _epochs(out / MODELS[0] / 'log.jsonl') == [0, 1, 2]


def test_time_budget_stops_at_an_epoch_boundary_and_resume_continues(cifar_folder, tmp_path, capsys):
    out = tmp_path / 'budget'
    argv = ['--models', MODELS[0], '-o', str(out), *_common(cifar_folder, tmp_path, ['--max-steps', '1'])]
    assert mmany.main([*argv, '--epochs', '1']) == 0  # now the log knows how long an epoch takes
    capsys.readouterr()
    argv += ['--epochs', '3', '--resume']
    assert mmany.main([*argv, '--time-budget-s', '0.001']) == 0
    assert 'stopping at an epoch boundary before epoch 1' in capsys.readouterr().out
    state = json.loads((out / 'many.json').read_text())
    assert not state['complete'] and state['stopped']['epoch'] == 1
    assert state['models'][MODELS[0]]['epochs_done'] == 1 and _epochs(out / MODELS[0] / 'log.jsonl') == [0]
    assert mmany.main([*argv, '--time-budget-s', '1e6']) == 0
    assert _epochs(out / MODELS[0] / 'log.jsonl') == [0, 1, 2]
    assert json.loads((out / 'many.json').read_text())['complete']


@pytest.mark.parametrize('extra, needle', [
    (['--models', 'resnet14_cifar10', 'resnet14_cifar10'], 'model(s) given more than once: resnet14_cifar10'),
    (['--models', 'resnet14_cifar10', 'mlan_resnet21_cifar10'], "Unknown model 'mlan_resnet21_cifar10'"),
    (['--models', 'resnet14_cifar10', '--cuda-graphs'], '--cuda-graphs needs a CUDA device'),
    (['--models', 'resnet14_cifar10', '--interleave'], '--interleave needs --data-on-device'),
    (['--models', 'resnet14_cifar10', '--epochs', '0'], 'expected an integer >= 1, got 0'),
    (['--models', 'resnet14_cifar10', '--no-such-flag'], 'unrecognized arguments: --no-such-flag'),
])
def test_clear_errors(cifar_folder, tmp_path, capsys, extra, needle):
    argv = [*extra, '-o', str(tmp_path / 'x'), '--data-dir', str(cifar_folder), '--device', 'cpu']
    try:
        rc = mmany.main(argv)
    except SystemExit as e:  # argparse errors
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err
    assert 'mlan-train-many: error: ' in err and needle in err and 'Traceback' not in err, err
    assert not (tmp_path / 'x').exists()


def test_mixed_datasets_train_together(tmp_path, make_image_folder):
    """A CIFAR-10 and a CIFAR-100 model in one run, from one --data-dir holding cifar10/ and cifar100/."""
    make_image_folder(tmp_path / 'data' / 'cifar10', train_per_class=1, test_per_class=1)
    make_image_folder(tmp_path / 'data' / 'cifar100', num_classes=100, train_per_class=1, test_per_class=1)
    out = tmp_path / 'mixed'
    models = ['resnet14_cifar10', 'resnet14_cifar100']
    argv = ['--models', *models, '-o', str(out), *_common(tmp_path / 'data', tmp_path, ['--data-on-device']),
            '--epochs', '1', '--max-steps', '1']
    assert mmany.main(argv) == 0
    assert [json.loads((out / m / 'summary.json').read_text())['test_images'] for m in models] == [10, 100]


def test_graph_setup_without_the_capture_leaves_training_unchanged(cifar_folder, tmp_path):
    """The CUDA path's set-up on CPU: fused SGD with a 0-d tensor lr that follows the schedule, warm-up steps whose
    effect is undone (fresh momentum buffers restored as zeros). Training afterwards is bit-identical to the same
    optimizer without the warm-up, and checkpoints keep the ordinary optimizer state."""
    many, base = mmany.parse_args(['--models', MODELS[1], '-o', str(tmp_path), *_common(cifar_folder, tmp_path)])
    runs = []
    for name, warmup in (('a', 3), ('b', 0)):
        r = mmany.ModelRun(mtrain.prepare_train(mmany.model_args(base, MODELS[1], tmp_path / name, False)))
        if warmup:
            r.capture(warmup, graph=False)
        else:
            r._tensor_lr_optimizer()
        runs.append(r)
    session = dict(started='t', epochs=[])
    lrs = []
    for epoch in range(2):
        for r in runs:
            mmany._train_group_epoch([r], epoch, mmany.ManyHooks(), session)
            lrs.append(float(r.lr_tensors[0]))
    assert lrs == [pytest.approx(0.1)] * 2 + [pytest.approx(0.01)] * 2  # --decay-milestones 1
    a, b = (r.s.model.state_dict() for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    ckpt = torch.load(tmp_path / 'a' / 'last.pth', map_location='cpu', weights_only=False)
    assert all(type(g['lr']) is float and g['fused'] is None for g in ckpt['optimizer']['param_groups'])
    assert all(g['fused'] is True and isinstance(g['lr'], torch.Tensor) for g in runs[0].s.optimizer.param_groups)


def test_a_trained_folder_is_refused_without_resume_before_any_folder_is_written(singles, cifar_folder, tmp_path,
                                                                                 capsys):
    """Without --resume, a model folder that holds a run stops mlan-train-many before it writes anything: the
    run's files stay byte for byte, and the other models' folders are not created."""
    _, extra, tmp = singles
    out = tmp_path / 'many'
    (out / MODELS[1]).mkdir(parents=True)
    for name in ('last.pth', 'model.safetensors', 'log.jsonl', 'summary.json', 'args.json'):
        (out / MODELS[1] / name).write_bytes((tmp / MODELS[1] / name).read_bytes())
    before = {p.name: p.read_bytes() for p in (out / MODELS[1]).iterdir()}
    rc = mmany.main(['--models', *MODELS, '-o', str(out), *_common(cifar_folder, tmp, extra)])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"{out / MODELS[1]} already holds a run (last.pth, model.safetensors, summary.json, log.jsonl)" in err
    assert '--resume' in err and 'Traceback' not in err
    assert {p.name: p.read_bytes() for p in (out / MODELS[1]).iterdir()} == before
    assert not (out / MODELS[0]).exists()
