"""mlan-train: lr milestone convention, logging/checkpoints, determinism, kill + resume, clear errors."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from _fixtures_train import REPO, TINY_MODEL, make_image_folder, subprocess_env, train_args
from mlan_timm import train as mtrain


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp('cifar_synth'), train_per_class=4, test_per_class=2)


def _lrs(argv, epochs):
    args = mtrain.build_parser().parse_args(['--epochs', str(epochs), *argv])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.lr)
    sched, n = mtrain._scheduler(args, opt, updates_per_epoch=10)
    out = []
    for e in range(n):
        sched.step(e)  # mlan-train steps at the start of each (0-based) epoch
        out.append(opt.param_groups[0]['lr'])
    return out


def test_paper_milestones_decay_at_start_of_epoch_50_100_150():
    lrs = _lrs([], 200)
    assert len(lrs) == 200
    assert lrs[0] == lrs[49] == pytest.approx(0.1)
    assert lrs[50] == lrs[99] == pytest.approx(0.01)
    assert lrs[100] == lrs[149] == pytest.approx(0.001)
    assert lrs[150] == lrs[199] == pytest.approx(0.0001)


def test_timm_multistep_raw_convention_is_one_epoch_early():
    """The finding behind the +1 in mlan_timm.train._scheduler: timm applies milestone m at index m - 1."""
    from timm.scheduler import create_scheduler_v2
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched, _ = create_scheduler_v2(opt, sched='multistep', num_epochs=10, decay_milestones=[5], decay_rate=0.1)
    lrs = []
    for e in range(10):
        sched.step(e)
        lrs.append(opt.param_groups[0]['lr'])
    assert lrs[3] == pytest.approx(0.1) and lrs[4] == pytest.approx(0.01)


def test_cosine_with_warmup():
    lrs = _lrs(['--sched', 'cosine', '--warmup-epochs', '2', '--warmup-lr', '0.01', '--min-lr', '0.0'], 10)
    assert lrs[0] == pytest.approx(0.01)
    assert lrs[0] < lrs[1] < lrs[2]
    assert lrs[2] == pytest.approx(max(lrs))
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))


def test_train_logs_checkpoints_and_is_deterministic(data_dir, tmp_path, capsys):
    outs = []
    for run in ('a', 'b'):
        out = tmp_path / run
        rc = mtrain.main(train_args(data_dir, out, epochs=2, extra=[
            '--model-ema', '--model-ema-decay', '0.9', '--smoothing', '0.1', '--decay-milestones', '1']))
        assert rc == 0
        outs.append(out)
    rows = [json.loads(x) for x in (outs[0] / 'log.jsonl').read_text().splitlines()]
    assert [r['epoch'] for r in rows] == [0, 1]
    assert rows[0]['lr'] == pytest.approx(0.1) and rows[1]['lr'] == pytest.approx(0.01)
    for key in ('train_loss', 'train_top1', 'test_top1', 'test_top5', 'test_loss', 'time', 'ema_test_top1'):
        assert key in rows[-1]
    assert 0 <= rows[-1]['test_top1'] <= 100
    ckpt = torch.load(outs[0] / 'last.pth', map_location='cpu', weights_only=False)
    assert ckpt['epoch'] == 2 and ckpt['args']['model'] == TINY_MODEL
    assert {'model', 'optimizer', 'scheduler', 'ema', 'rng'} <= set(ckpt)
    a, b = load_file(outs[0] / 'model.safetensors'), load_file(outs[1] / 'model.safetensors')
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (outs[0] / 'model_ema.safetensors').is_file()
    assert 'done: 2 epochs' in capsys.readouterr().out


def test_kill_mid_epoch_then_resume_matches_uninterrupted_run(data_dir, tmp_path):
    """SIGKILL a 3-epoch run during epoch 1, resume it, compare with an uninterrupted run bit for bit.

    Every epoch reseeds all randomness from (seed, epoch), and the checkpoint holds optimizer / scheduler /
    RNG state, so on CPU with one thread the resumed run's final weights are exactly equal."""
    extra = ['--decay-milestones', '2']
    ref = tmp_path / 'ref'
    assert mtrain.main(train_args(data_dir, ref, epochs=3, extra=extra)) == 0

    out = tmp_path / 'killed'
    cmd = [sys.executable, '-m', 'mlan_timm.train', *train_args(data_dir, out, epochs=3, extra=extra)]
    env = subprocess_env(MLAN_TIMM_DEBUG_STEP_SLEEP='0.2')  # 5 steps/epoch: an epoch lasts >= 1 s
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    log = out / 'log.jsonl'
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if log.is_file() and log.read_text().count('\n') >= 1:
                break
            time.sleep(0.05)
        time.sleep(0.3)  # now inside epoch 1 (its checkpoint is written only at its end)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, 'run finished before it could be killed'
    lines = log.read_text().splitlines()
    assert len(lines) == 1, lines
    assert torch.load(out / 'last.pth', map_location='cpu', weights_only=False)['epoch'] == 1
    assert not (out / 'model.safetensors').exists()

    res = subprocess.run([*cmd, '--resume'], cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    assert 'continuing at epoch 1' in res.stdout
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    assert [r['epoch'] for r in rows] == [0, 1, 2]
    a, b = load_file(ref / 'model.safetensors'), load_file(out / 'model.safetensors')
    assert all(torch.equal(a[k], b[k]) for k in a)
    ref_rows = [json.loads(x) for x in (ref / 'log.jsonl').read_text().splitlines()]
    assert [r['test_top1'] for r in rows] == [r['test_top1'] for r in ref_rows]


def test_unknown_model_is_a_clear_error(data_dir, tmp_path, capsys):
    rc = mtrain.main(['--model', 'mlan_resnet21_cifar10', '--data-dir', str(data_dir), '-o', str(tmp_path / 'x')])
    assert rc == 2
    err = capsys.readouterr().err
    assert "Unknown model 'mlan_resnet21_cifar10'" in err and 'mlan_resnet20_cifar10' in err


def test_missing_dataset_is_a_clear_error(tmp_path, capsys):
    rc = mtrain.main(['--model', TINY_MODEL, '--data-dir', str(tmp_path / 'nowhere'), '-o', str(tmp_path / 'x'),
                      '--device', 'cpu'])
    assert rc == 2
    err = capsys.readouterr().err
    assert 'nowhere' in err and 'does not exist' in err and 'cifar-10-batches-py' in err


def test_resume_without_checkpoint_is_a_clear_error(data_dir, tmp_path, capsys):
    rc = mtrain.main(train_args(data_dir, tmp_path / 'fresh', extra=['--resume']))
    assert rc == 2
    assert 'no checkpoint at' in capsys.readouterr().err


def test_model_kwargs_parsing():
    assert mtrain.parse_model_kwargs(['attn=cbam', 'drop_rate=0.1', 'flag=true']) == \
        dict(attn='cbam', drop_rate=0.1, flag=True)
    with pytest.raises(mtrain.UsageError, match='key=value'):
        mtrain.parse_model_kwargs(['cbam'])


def test_sched_on_updates_decays_at_first_update_of_milestone_epoch():
    """--sched-on-updates: with milestone 2 and U updates per epoch, update 2*U (first of epoch 2) is decayed."""
    U = 5
    args = mtrain.build_parser().parse_args(['--epochs', '4', '--decay-milestones', '2', '--sched-on-updates'])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.lr)
    sched, n = mtrain._scheduler(args, opt, updates_per_epoch=U)
    lrs, num_updates = [], 0
    for e in range(n):  # the same calls as mlan-train's loop
        sched.step(e)
        for _ in range(U):
            lrs.append(opt.param_groups[0]['lr'])  # lr used by this update
            num_updates += 1
            sched.step_update(num_updates)
    assert lrs[2 * U - 1] == pytest.approx(0.1)  # last update of epoch 1
    assert lrs[2 * U] == pytest.approx(0.01)  # first update of epoch 2
    assert lrs[0] == pytest.approx(0.1)


def test_non_finite_loss_is_a_clear_error_naming_the_epoch(data_dir, tmp_path, capsys):
    rc = mtrain.main(train_args(data_dir, tmp_path / 'nan', epochs=1, extra=['--lr', '1e38']))
    assert rc == 1
    err = capsys.readouterr().err
    assert err.startswith('mlan-train: error: non-finite training loss in epoch 0') and 'Traceback' not in err
    assert not (tmp_path / 'nan' / 'last.pth').exists()


@pytest.mark.parametrize('extra, needle', [
    (['--model-kwargs', 'attn=foo'], "Model 'resnet14_cifar10'"),
    (['--initial-weights', 'nowhere.safetensors'], '--initial-weights: file not found: nowhere.safetensors'),
    (['--model-kwargs', 'num_classes=100'], 'num_classes=100 clashes with dataset cifar10 (10 classes)'),
])
def test_bad_model_arguments_exit_2_with_one_line(data_dir, tmp_path, capsys, extra, needle):
    rc = mtrain.main(train_args(data_dir, tmp_path / 'x', epochs=1, extra=extra))
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith('mlan-train: error: ') and needle in err and err.count('\n') == 1, err


def test_bad_weights_file_and_offline_pretrained_exit_2(data_dir, tmp_path, capsys, monkeypatch):
    bad = tmp_path / 'bad.safetensors'
    bad.write_bytes(b'not safetensors' * 4)
    assert mtrain.main(train_args(data_dir, tmp_path / 'x', epochs=1, extra=['--initial-weights', str(bad)])) == 2
    assert 'mlan-train: error: Weights file' in capsys.readouterr().err
    import huggingface_hub.constants as hc
    monkeypatch.setattr(hc, 'HF_HUB_OFFLINE', True)
    monkeypatch.setenv('MLAN_TIMM_WEIGHTS_DIR', str(tmp_path / 'no_weights'))
    assert mtrain.main(train_args(data_dir, tmp_path / 'y', epochs=1, extra=['--pretrained'])) == 2
    assert 'mlan-train: error: No pretrained weights available' in capsys.readouterr().err


def test_matching_num_classes_kwarg_is_accepted(data_dir, tmp_path):
    assert mtrain.main(train_args(data_dir, tmp_path / 'x', epochs=1,
                                  extra=['--model-kwargs', 'num_classes=10', '--max-steps', '1'])) == 0


def test_eval_every_must_be_positive(capsys):
    with pytest.raises(SystemExit) as e:
        mtrain.build_parser().parse_args(['--eval-every', '0'])
    assert e.value.code == 2
    assert 'argument --eval-every: expected an integer >= 1, got 0' in capsys.readouterr().err


def test_plain_resume_needs_output_dir(data_dir, tmp_path, capsys):
    argv = train_args(data_dir, tmp_path / 'x', epochs=1, extra=['--resume'])
    i = argv.index('-o')
    del argv[i:i + 2]
    assert mtrain.main(argv) == 2
    assert 'mlan-train: error: --resume without a path needs -o/--output RUN_DIR' in capsys.readouterr().err


def test_resume_checks_model_kwargs_and_starts_ema_from_resumed_weights(data_dir, tmp_path, capsys):
    out = tmp_path / 'run'
    assert mtrain.main(train_args(data_dir, out, epochs=1, extra=['--max-steps', '2'])) == 0
    # different kwargs: a clear error naming both
    assert mtrain.main(train_args(data_dir, out, epochs=2, extra=['--resume', '--model-kwargs', 'drop_rate=0.5'])) == 2
    err = capsys.readouterr().err
    assert "--model-kwargs {}" in err and "{'drop_rate': 0.5}" in err
    # --resume PATH without -o continues in that run folder; --model-ema on a checkpoint without EMA
    argv = train_args(data_dir, out, epochs=1, extra=['--resume', str(out / 'last.pth'), '--model-ema'])
    i = argv.index('-o')
    del argv[i:i + 2]
    assert mtrain.main(argv) == 0
    a, b = load_file(out / 'model.safetensors'), load_file(out / 'model_ema.safetensors')
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # not a fresh random init


def test_checkpoints_and_weights_are_not_private_files(data_dir, tmp_path):
    out = tmp_path / 'mode'
    assert mtrain.main(train_args(data_dir, out, epochs=1, extra=['--max-steps', '1'])) == 0
    for name in ('last.pth', 'model.safetensors', 'args.json'):
        assert (out / name).stat().st_mode & 0o777 != 0o600, name
