"""mlan-train: the paper recipe, the lr schedule, logging of final and best epoch, checkpoints, kill + resume,
clear errors."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from mlan_timm import __version__ as MLAN_TIMM_VERSION
from mlan_timm import zoo
from mlan_timm.pretrained import read_state_dict
from mlan_timm.tools import train as mtrain
from mlan_timm.tools.common import TRAINING_METADATA_KEY, UsageError, summarize_history


def _lrs(argv, epochs=None, updates_per_epoch=10):
    args = mtrain.parse_args(([] if epochs is None else ['--epochs', str(epochs)]) + list(argv))
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.lr)
    sched, n = mtrain.build_scheduler(args, opt, updates_per_epoch=updates_per_epoch)
    out = []
    for e in range(n):
        sched.step(e)  # mlan-train steps at the start of each (0-based) epoch
        out.append(opt.param_groups[0]['lr'])
    return out


def test_paper_recipe_lr_per_epoch_equals_torch_multisteplr():
    """The default schedule (200 epochs, milestones 50/100/150, gamma 0.1) is torch's MultiStepLR, epoch by epoch."""
    ours = _lrs([])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    ref_sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[50, 100, 150], gamma=0.1)
    ref = []
    for _ in range(200):
        ref.append(opt.param_groups[0]['lr'])  # the lr an epoch trains with
        opt.step()
        ref_sched.step()
    assert len(ours) == 200
    assert ours == pytest.approx(ref, rel=1e-12)
    assert ours[49] == pytest.approx(0.1) and ours[50] == pytest.approx(0.01) and ours[150] == pytest.approx(1e-4)


def test_step_schedule_decays_every_decay_epochs():
    """``--sched step --decay-epochs 3``: lr x decay_rate every 3 epochs, from epoch 3 on."""
    lrs = _lrs(['--sched', 'step', '--decay-epochs', '3', '--decay-rate', '0.5'], epochs=8)
    assert lrs == pytest.approx([0.1] * 3 + [0.05] * 3 + [0.025] * 2)


def test_no_wd_norm_bias_exempts_biases_and_norm_weights_from_weight_decay():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.Linear(4, 2))
    decayed = lambda opt: {id(p) for g in opt.param_groups if g['weight_decay'] > 0 for p in g['params']}  # noqa
    everything = mtrain.build_optimizer(model, mtrain.parse_args([]))
    assert decayed(everything) == {id(p) for p in model.parameters()}
    filtered = mtrain.build_optimizer(model, mtrain.parse_args(['--no-wd-norm-bias']))
    assert decayed(filtered) == {id(model[0].weight), id(model[3].weight)}  # conv and linear weights only
    assert sum(len(g['params']) for g in filtered.param_groups) == len(list(model.parameters()))


@pytest.mark.parametrize('clip', [None, 1e-3])
def test_clip_grad_bounds_the_step_by_the_gradient_norm(clip):
    """With plain SGD (lr 1, no momentum, no decay) the step is the gradient: its norm is min(norm, clip)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    x, y = torch.randn(4, 5), torch.tensor([0, 1, 2, 0])
    args = mtrain.parse_args(['--opt', 'sgd', '--lr', '1', '--momentum', '0', '--weight-decay', '0', '--amp', 'none']
                             + ([] if clip is None else ['--clip-grad', str(clip)]))
    ref = torch.nn.Linear(5, 3)
    ref.load_state_dict(model.state_dict())
    torch.nn.functional.cross_entropy(ref(x), y).backward()
    full = torch.cat([ref.weight.grad.flatten(), ref.bias.grad.flatten()])
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    mtrain.train_step(model, model, x, y, opt, torch.nn.CrossEntropyLoss(), torch.device('cpu'), args)
    step = torch.cat([(ref.weight - model.weight).flatten(), (ref.bias - model.bias).flatten()]).detach()
    assert full.norm() > 1e-2  # the clip below binds
    expected = full if clip is None else full * (clip / full.norm())
    torch.testing.assert_close(step, expected, rtol=1e-4, atol=1e-7)


def test_timm_multistep_raw_convention_is_one_epoch_early():
    """The finding behind the +1 in build_scheduler: timm applies milestone m at index m - 1."""
    from timm.scheduler import create_scheduler_v2
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched, _ = create_scheduler_v2(opt, sched='multistep', num_epochs=10, decay_milestones=[5], decay_rate=0.1)
    lrs = []
    for e in range(10):
        sched.step(e)
        lrs.append(opt.param_groups[0]['lr'])
    assert lrs[3] == pytest.approx(0.1) and lrs[4] == pytest.approx(0.01)


def test_paper_recipe_is_the_default_and_flags_override_it():
    args = mtrain.parse_args([])
    assert args.recipe == 'paper'
    assert (args.epochs, args.batch_size, args.lr, args.momentum, args.weight_decay, args.seed, args.smoothing) == \
        (200, 128, 0.1, 0.9, 5e-4, 2021, 0.0)
    assert args.padding_mode == 'reflect' and args.decay_milestones == [50, 100, 150] and args.decay_rate == 0.1
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    opt = mtrain.build_optimizer(model, args)
    assert type(opt) is torch.optim.SGD  # plain SGD: momentum 0.9, no Nesterov, wd 5e-4 on every parameter
    assert all(g['momentum'] == 0.9 and g['nesterov'] is False and g['weight_decay'] == 5e-4 and g['lr'] == 0.1
               for g in opt.param_groups)
    assert sum(len(g['params']) for g in opt.param_groups) == len(list(model.parameters()))
    over = mtrain.parse_args(['--lr', '0.05', '--padding-mode', 'constant', '--seed', '1'])
    assert (over.lr, over.padding_mode, over.seed, over.epochs) == (0.05, 'constant', 1, 200)


def test_cosine_with_warmup():
    lrs = _lrs(['--sched', 'cosine', '--warmup-epochs', '2', '--warmup-lr', '0.01', '--min-lr', '0.0'], 10)
    assert lrs[0] == pytest.approx(0.01)
    assert lrs[0] < lrs[1] < lrs[2]
    assert lrs[2] == pytest.approx(max(lrs))
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))


def test_sched_on_updates_decays_at_first_update_of_milestone_epoch():
    """--sched-on-updates: with milestone 2 and U updates per epoch, update 2*U (first of epoch 2) is decayed."""
    U = 5
    args = mtrain.parse_args(['--epochs', '4', '--decay-milestones', '2', '--sched-on-updates'])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.lr)
    sched, n = mtrain.build_scheduler(args, opt, updates_per_epoch=U)
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


def test_summarize_history_final_and_best():
    hist = [dict(epoch=0, test_top1=50.0, test_top5=90.0), dict(epoch=1, test_top1=70.0, test_top5=91.0),
            dict(epoch=2), dict(epoch=3, test_top1=70.0, test_top5=99.0), dict(epoch=4, test_top1=60.0, test_top5=95.0)]
    s = summarize_history(hist)
    assert (s['final_epoch'], s['final_test_top1'], s['final_test_top5']) == (4, 60.0, 95.0)
    assert (s['best_epoch'], s['best_test_top1'], s['best_test_top5']) == (1, 70.0, 91.0)  # earliest of a tie
    assert summarize_history([dict(epoch=0)])['best_epoch'] is None


def test_train_logs_final_and_best_and_is_deterministic(cifar_folder, tmp_path, train_args, tiny_model, capsys):
    outs = []
    for run in ('a', 'b'):
        out = tmp_path / run
        rc = mtrain.main(train_args(cifar_folder, out, epochs=2, extra=[
            '--model-ema', '--model-ema-decay', '0.9', '--smoothing', '0.1', '--decay-milestones', '1']))
        assert rc == 0
        outs.append(out)
    rows = [json.loads(x) for x in (outs[0] / 'log.jsonl').read_text().splitlines()]
    assert [r['epoch'] for r in rows] == [0, 1]
    assert rows[0]['lr'] == pytest.approx(0.1) and rows[1]['lr'] == pytest.approx(0.01)
    for key in ('train_loss', 'train_top1', 'test_top1', 'test_top5', 'test_loss', 'time', 'ema_test_top1'):
        assert key in rows[-1]
    # the running best in every line is the best of the lines so far
    for i, r in enumerate(rows):
        best = max(rows[:i + 1], key=lambda x: x['test_top1'])
        assert (r['best_epoch'], r['best_test_top1'], r['best_test_top5']) == \
            (best['epoch'], best['test_top1'], best['test_top5'])
    summary = json.loads((outs[0] / 'summary.json').read_text())
    assert summary['final_epoch'] == 1 and summary['final_test_top1'] == rows[1]['test_top1']
    assert summary['best_epoch'] == rows[1]['best_epoch'] and summary['test_images'] == 20
    assert summary['recipe'] == 'paper' and summary['mean'] == list(zoo.PAPER_MEAN)
    with safe_open(str(outs[0] / 'model.safetensors'), framework='pt') as f:
        assert json.loads(f.metadata()[TRAINING_METADATA_KEY]) == summary
    ckpt = torch.load(outs[0] / 'last.pth', map_location='cpu', weights_only=False)
    assert ckpt['epoch'] == 2 and ckpt['args']['model'] == tiny_model and ckpt['summary'] == summary
    assert {'model', 'optimizer', 'scheduler', 'ema', 'rng', 'history'} <= set(ckpt)
    a, b = load_file(outs[0] / 'model.safetensors'), load_file(outs[1] / 'model.safetensors')
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # The EMA weights: the final file and the checkpoint's 'ema' entry hold the same tensors, which are not the
    # model's (decay 0.9 over a few steps).
    ema_file = load_file(outs[0] / 'model_ema.safetensors')
    ema_ckpt = read_state_dict(outs[0] / 'last.pth', use_ema=True)
    assert ema_file.keys() == ema_ckpt.keys() == a.keys()
    assert all(torch.equal(ema_file[k], ema_ckpt[k]) for k in a)
    assert any(not torch.equal(ema_file[k], a[k]) for k in a if a[k].is_floating_point())
    plain = read_state_dict(outs[0] / 'last.pth')
    assert plain.keys() == a.keys() and all(torch.equal(plain[k], a[k]) for k in a)
    out = capsys.readouterr().out
    assert 'done: 2 epochs; test top-1 / top-5: final epoch 1' in out and 'best epoch' in out


def test_a_new_run_into_a_trained_folder_is_refused_and_the_run_kept(cifar_folder, tmp_path, train_args, capsys):
    """Without --resume, -o pointing at a folder that holds a run is an error, and the run's files stay byte for
    byte (a rerun used to replace them, and a failing one to leave an empty log beside the old checkpoint); a
    folder a run only started in (args.json, empty log) is reused."""
    out = tmp_path / 'run'
    assert mtrain.main(train_args(cifar_folder, out, epochs=1, extra=['--max-steps', '1'])) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert mtrain.main(train_args(cifar_folder, out, epochs=2, extra=['--max-steps', '1'])) == 2
    err = capsys.readouterr().err
    assert f"-o/--output {out} already holds a run (last.pth, model.safetensors, summary.json, log.jsonl)" in err
    assert 'pass --resume to continue it' in err and 'Traceback' not in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    started = tmp_path / 'started'
    started.mkdir()
    (started / 'args.json').write_text('{}')
    (started / 'log.jsonl').write_text('')
    assert mtrain.main(train_args(cifar_folder, started, epochs=1, extra=['--max-steps', '1'])) == 0


KILLER = r'''
import os, signal, sys
from mlan_timm.tools import train

def on_step(epoch, step):
    if epoch == 1 and step == 2:  # in the middle of epoch 1, after epoch 0's checkpoint and log line
        os.kill(os.getpid(), signal.SIGKILL)

sys.exit(train.main(sys.argv[1:], train.TrainHooks(on_step=on_step)))
'''


def test_kill_mid_epoch_then_resume_matches_uninterrupted_run(cifar_folder, tmp_path, train_args, repo_root,
                                                              subprocess_env):
    """SIGKILL a 3-epoch run inside epoch 1 (a step hook kills its own process), resume, compare bit for bit.

    Every epoch reseeds all randomness from (seed, epoch), and the checkpoint holds optimizer / scheduler /
    RNG state, so on CPU with one thread the resumed run's final weights are exactly equal."""
    extra = ['--decay-milestones', '2']
    ref = tmp_path / 'ref'
    assert mtrain.main(train_args(cifar_folder, ref, epochs=3, extra=extra)) == 0

    out = tmp_path / 'killed'
    argv = train_args(cifar_folder, out, epochs=3, extra=extra)
    res = subprocess.run([sys.executable, '-c', KILLER, *argv], cwd=repo_root, env=subprocess_env(),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    log = out / 'log.jsonl'
    assert [json.loads(x)['epoch'] for x in log.read_text().splitlines()] == [0]
    assert torch.load(out / 'last.pth', map_location='cpu', weights_only=False)['epoch'] == 1
    assert not (out / 'model.safetensors').exists()

    assert mtrain.main([*argv, '--resume']) == 0
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    assert [r['epoch'] for r in rows] == [0, 1, 2]
    a, b = load_file(ref / 'model.safetensors'), load_file(out / 'model.safetensors')
    assert all(torch.equal(a[k], b[k]) for k in a)
    ref_rows = [json.loads(x) for x in (ref / 'log.jsonl').read_text().splitlines()]
    assert [r['test_top1'] for r in rows] == [r['test_top1'] for r in ref_rows]
    assert [r['best_epoch'] for r in rows] == [r['best_epoch'] for r in ref_rows]


def test_resume_rewrites_a_log_that_lags_the_checkpoint(cifar_folder, tmp_path, train_args):
    """Killed between checkpoint and log line: the resumed log is rebuilt from the checkpoint's history."""
    out = tmp_path / 'lag'
    argv = train_args(cifar_folder, out, epochs=1, extra=['--max-steps', '1'])
    assert mtrain.main(argv) == 0
    (out / 'log.jsonl').write_text('')  # the log line of epoch 0 never made it to disk
    argv[argv.index('--epochs') + 1] = '2'
    assert mtrain.main([*argv, '--resume']) == 0
    assert [json.loads(x)['epoch'] for x in (out / 'log.jsonl').read_text().splitlines()] == [0, 1]


def test_unknown_model_is_a_clear_error(cifar_folder, tmp_path, capsys):
    rc = mtrain.main(['--model', 'mlan_resnet21_cifar10', '--data-dir', str(cifar_folder), '-o', str(tmp_path / 'x')])
    assert rc == 2
    err = capsys.readouterr().err
    assert "Unknown model 'mlan_resnet21_cifar10'" in err and 'mlan_resnet20_cifar10' in err


def test_missing_dataset_is_a_clear_error(tmp_path, tiny_model, capsys):
    rc = mtrain.main(['--model', tiny_model, '--data-dir', str(tmp_path / 'nowhere'), '-o', str(tmp_path / 'x'),
                      '--device', 'cpu'])
    assert rc == 2
    err = capsys.readouterr().err
    assert 'nowhere' in err and 'does not exist' in err and 'cifar-10-batches-py' in err


def test_resume_without_checkpoint_or_with_a_truncated_one_is_a_clear_error(cifar_folder, tmp_path, train_args,
                                                                             capsys):
    assert mtrain.main(train_args(cifar_folder, tmp_path / 'fresh', extra=['--resume'])) == 2
    assert 'no checkpoint at' in capsys.readouterr().err
    (tmp_path / 'bad').mkdir()
    (tmp_path / 'bad' / 'last.pth').write_bytes(b'PK\x03\x04 truncated')
    assert mtrain.main(train_args(cifar_folder, tmp_path / 'bad', extra=['--resume'])) == 2
    err = capsys.readouterr().err
    assert err.startswith('mlan-train: error: --resume: checkpoint') and 'unreadable' in err
    assert 'Traceback' not in err


def test_non_finite_loss_is_a_clear_error_naming_the_epoch(cifar_folder, tmp_path, train_args, capsys):
    rc = mtrain.main(train_args(cifar_folder, tmp_path / 'nan', epochs=1, extra=['--lr', '1e38']))
    assert rc == 1
    err = capsys.readouterr().err
    assert err.startswith('mlan-train: error: non-finite training loss in epoch 0') and 'Traceback' not in err
    assert not (tmp_path / 'nan' / 'last.pth').exists()


@pytest.mark.parametrize('extra, needle', [
    (['--model-kwargs', 'attn=foo'], "Model 'resnet14_cifar10'"),
    (['--initial-weights', 'nowhere.safetensors'], '--initial-weights: file not found: nowhere.safetensors'),
    (['--model-kwargs', 'num_classes=100'], 'num_classes=100 clashes with dataset cifar10 (10 classes)'),
    (['--model-kwargs', 'cbam'], '--model-kwargs expects key=value pairs'),
    (['--opt', 'foo'], 'optimizer --opt foo (--lr 0.1, --momentum 0.9, --weight-decay 0.0005): Optimizer foo not'),
    (['--lr', '-1'], 'optimizer --opt momentum (--lr -1.0, --momentum 0.9, --weight-decay 0.0005): Invalid learn'),
    (['--sched', 'foo'], "schedule --sched foo: Unknown scheduler 'foo'"),
    (['--model-kwargs', 'features_only=true'], '--model-kwargs features_only builds a feature extractor'),
])
def test_bad_model_arguments_exit_2_with_one_line(cifar_folder, tmp_path, train_args, capsys, extra, needle):
    rc = mtrain.main(train_args(cifar_folder, tmp_path / 'x', epochs=1, extra=extra))
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith('mlan-train: error: ') and needle in err and err.count('\n') == 1, err
    assert not (tmp_path / 'x' / 'log.jsonl').exists()  # refused before the run starts


def test_bad_weights_file_and_offline_pretrained_exit_2(cifar_folder, tmp_path, train_args, capsys, monkeypatch):
    bad = tmp_path / 'bad.safetensors'
    bad.write_bytes(b'not safetensors' * 4)
    assert mtrain.main(train_args(cifar_folder, tmp_path / 'x', epochs=1, extra=['--initial-weights', str(bad)])) == 2
    assert 'mlan-train: error: Weights file' in capsys.readouterr().err
    import huggingface_hub.constants as hc
    monkeypatch.setattr(hc, 'HF_HUB_OFFLINE', True)
    monkeypatch.setenv('MLAN_TIMM_WEIGHTS_DIR', str(tmp_path / 'no_weights'))
    assert mtrain.main(train_args(cifar_folder, tmp_path / 'y', epochs=1, extra=['--pretrained'])) == 2
    err = capsys.readouterr().err
    assert err.startswith('mlan-train: error: --pretrained: No pretrained weights available') and err.count('\n') == 1
    assert '--initial-weights FILE' in err and 'pretrained=' not in err and 'pretrained_cfg_overlay' not in err


@pytest.mark.parametrize('flag, value', [('--eval-every', '0'), ('--batch-size', '0'), ('--epochs', '0'),
                                         ('--subset', '-5')])
def test_counts_must_be_positive(flag, value, capsys):
    with pytest.raises(SystemExit) as e:
        mtrain.parse_args([flag, value])
    assert e.value.code == 2
    assert f'expected an integer >= 1, got {value}' in capsys.readouterr().err


@pytest.mark.parametrize('flag, value, low', [('--threads', '0', 1), ('--workers', '-1', 0)])
def test_threads_and_workers_are_checked_by_the_parser(flag, value, low, capsys):
    from mlan_timm.tools import eval as meval
    for parse in (mtrain.parse_args, meval.build_parser().parse_args):
        with pytest.raises(SystemExit) as e:
            parse([flag, value] + ([] if parse is mtrain.parse_args else ['--model', 'resnet14_cifar10']))
        assert e.value.code == 2
        assert f'argument {flag}: expected an integer >= {low}, got {value}' in capsys.readouterr().err


def test_plain_resume_needs_output_dir(cifar_folder, tmp_path, train_args, capsys):
    argv = train_args(cifar_folder, tmp_path / 'x', epochs=1, extra=['--resume'])
    i = argv.index('-o')
    del argv[i:i + 2]
    assert mtrain.main(argv) == 2
    assert 'mlan-train: error: --resume without a path needs -o/--output RUN_DIR' in capsys.readouterr().err


def test_resume_checks_model_kwargs_and_starts_ema_from_resumed_weights(cifar_folder, tmp_path, train_args, capsys):
    out = tmp_path / 'run'
    assert mtrain.main(train_args(cifar_folder, out, epochs=1,
                                  extra=['--max-steps', '2', '--model-kwargs', 'num_classes=10'])) == 0
    # different kwargs: a clear error naming both
    argv = train_args(cifar_folder, out, epochs=2, extra=['--resume', '--model-kwargs', 'drop_rate=0.5'])
    assert mtrain.main(argv) == 2
    err = capsys.readouterr().err
    assert "--model-kwargs {}" in err and "{'drop_rate': 0.5}" in err
    # --resume PATH without -o continues in that run folder; --model-ema on a checkpoint without EMA. The run was
    # killed after its last checkpoint, before its final weights: the resume writes them (and the EMA's)
    (out / 'model.safetensors').unlink()
    argv = train_args(cifar_folder, out, epochs=1,
                      extra=['--resume', str(out / 'last.pth'), '--model-ema', '--max-steps', '2'])
    i = argv.index('-o')
    del argv[i:i + 2]
    assert mtrain.main(argv) == 0
    a, b = load_file(out / 'model.safetensors'), load_file(out / 'model_ema.safetensors')
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # not a fresh random init
    for name in ('last.pth', 'model.safetensors', 'args.json'):
        assert (out / name).stat().st_mode & 0o777 != 0o600, name  # written atomically, but not private


def test_load_checkpoint_refuses_another_model(tmp_path, tiny_model):
    path = tmp_path / 'last.pth'
    torch.save(dict(model={}, epoch=1, args=dict(model='mlan_resnet20_cifar10')), path)
    args = mtrain.parse_args(['--model', tiny_model])
    with pytest.raises(UsageError, match="is for model 'mlan_resnet20_cifar10', not 'resnet14_cifar10'"):
        mtrain.load_checkpoint(path, args, {}, 10)


# ----------------------------------------------------------------------------------------------------------------
# Clear errors before any work; resume safety (issue 11)
# ----------------------------------------------------------------------------------------------------------------
def _no_work(monkeypatch):
    """Fail the test if mlan-train builds a model or loads data."""
    def boom(*a, **k):
        raise AssertionError('model or data loaded before the output folder was checked')
    monkeypatch.setattr(mtrain, 'create_model', boom)
    monkeypatch.setattr(mtrain.mdata, 'build_loader', boom)


def test_unwritable_output_is_refused_before_loading_data(cifar_folder, tmp_path, train_args, capsys, monkeypatch):
    """Tests run as root, which ignores permission bits: a folder below a regular file is the real unwritable case,
    and os.access is monkeypatched for the read-only-folder case."""
    _no_work(monkeypatch)
    (tmp_path / 'file').write_text('x')
    assert mtrain.main(train_args(cifar_folder, tmp_path / 'file' / 'run', epochs=1)) == 2
    err = capsys.readouterr().err
    assert err.startswith('mlan-train: error: -o/--output ') and 'is a file, not a folder' in err, err
    ro = tmp_path / 'ro'
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, 'access', lambda p, mode, **k: False if Path(p) == ro else real_access(p, mode, **k))
    assert mtrain.main(train_args(cifar_folder, ro / 'run', epochs=1)) == 2
    err = capsys.readouterr().err
    assert err.startswith('mlan-train: error: -o/--output ') and f'folder {ro} is not writable' in err
    assert 'Traceback' not in err and not (ro / 'run').exists()


def test_resume_from_a_truncated_real_checkpoint_is_a_clear_error(cifar_folder, tmp_path, train_args, capsys):
    out = tmp_path / 'run'
    argv = train_args(cifar_folder, out, epochs=1, extra=['--max-steps', '1'])
    assert mtrain.main(argv) == 0
    blob = (out / 'last.pth').read_bytes()
    (out / 'last.pth').write_bytes(blob[:len(blob) // 2])
    capsys.readouterr()
    assert mtrain.main([*argv, '--resume']) == 2
    err = capsys.readouterr().err
    assert err.startswith('mlan-train: error: --resume: checkpoint') and 'unreadable' in err and err.count('\n') == 1


def test_batch_size_zero_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        mtrain.main(['-b', '0'])
    assert e.value.code == 2
    assert 'mlan-train: error: argument --batch-size/-b: expected an integer >= 1, got 0' in capsys.readouterr().err


@pytest.fixture
def finished_run(cifar_folder, tmp_path, train_args):
    out = tmp_path / 'run'
    argv = train_args(cifar_folder, out, epochs=1, extra=['--max-steps', '1', '--subset', '20'])
    assert mtrain.main(argv) == 0
    return out, argv


def _snapshot(out):
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_resume_refuses_changed_training_flags_and_keeps_args_json(finished_run, capsys):
    out, argv = finished_run
    before = _snapshot(out)
    i = argv.index('--subset')
    changed = argv[:i] + argv[i + 2:] + ['--epochs', '2', '--lr', '0.05', '--resume']  # drops --subset 20
    capsys.readouterr()
    assert mtrain.main(changed) == 2
    err = capsys.readouterr().err
    assert err.startswith('mlan-train: error: --resume: this command changes what run') and err.count('\n') == 1
    assert '--subset 20 (run) -> not given (now)' in err and '--lr 0.1 (run) -> 0.05 (now)' in err
    assert '--override-resume-flags' in err and '--epochs' not in err  # more epochs is not a change of recipe
    assert _snapshot(out) == before  # args.json, checkpoint, log untouched


def test_resume_with_override_records_the_changes(finished_run, capsys):
    out, argv = finished_run
    capsys.readouterr()
    assert mtrain.main([*argv, '--epochs', '2', '--lr', '0.05', '--resume', '--override-resume-flags']) == 0
    err = capsys.readouterr().err
    assert 'warning: --override-resume-flags' in err and '--lr 0.1 (run) -> 0.05 (now)' in err
    saved = json.loads((out / 'args.json').read_text())
    assert saved['lr'] == 0.05 and saved['subset'] == 20
    assert saved['resume_overrides'] == [dict(epoch=1, changes={'--epochs': [1, 2], '--lr': [0.1, 0.05]})]
    ckpt = torch.load(out / 'last.pth', map_location='cpu', weights_only=False)
    assert ckpt['epoch'] == 2 and ckpt['args']['resume_overrides'] == saved['resume_overrides']
    assert [json.loads(x)['lr'] for x in (out / 'log.jsonl').read_text().splitlines()] == [0.1, 0.05]


def test_resume_of_a_finished_run_has_nothing_to_do(finished_run, capsys):
    out, argv = finished_run
    before = _snapshot(out)
    capsys.readouterr()
    assert mtrain.main([*argv, '--resume']) == 0
    assert 'mlan-train: nothing to do: ' in capsys.readouterr().out
    assert _snapshot(out) == before


def test_resume_with_same_flags_keeps_the_args_and_records_each_session(cifar_folder, tmp_path, train_args):
    out = tmp_path / 'run'
    argv = train_args(cifar_folder, out, epochs=2, extra=['--max-steps', '1'])
    assert mtrain.main(argv) == 0
    (out / 'model.safetensors').unlink()  # as if killed before the end
    ckpt = torch.load(out / 'last.pth', map_location='cpu', weights_only=False)
    ckpt['epoch'], ckpt['history'] = 1, ckpt['history'][:1]
    torch.save(ckpt, out / 'last.pth')
    before = json.loads((out / 'args.json').read_text())
    assert mtrain.main([*argv, '--resume', '--workers', '0', '--threads', '1']) == 0  # runtime flags may differ
    after = json.loads((out / 'args.json').read_text())
    runtime = ('sessions', 'resume', 'workers', 'threads')
    assert {k: v for k, v in after.items() if k not in runtime} == {k: v for k, v in before.items() if k not in runtime}
    assert after['resume_overrides'] == []
    # one record per session: where it ran, from which epoch; the first session's record is kept as it was
    assert [x['first_epoch'] for x in after['sessions']] == [0, 1] and after['sessions'][0] == before['sessions'][0]
    for x in after['sessions']:
        assert x['machine'].startswith('CPU: ') and f'torch {torch.__version__}' in x['machine']
        assert x['mlan_timm'] == MLAN_TIMM_VERSION and x['code'] and x['started'][:2] == '20'
    assert torch.load(out / 'last.pth', map_location='cpu', weights_only=False)['args']['sessions'] == after['sessions']


def test_resume_of_a_run_from_before_sessions_were_recorded(cifar_folder, tmp_path, train_args):
    out = tmp_path / 'run'
    argv = train_args(cifar_folder, out, epochs=2, extra=['--max-steps', '1'])
    assert mtrain.main(argv) == 0
    (out / 'model.safetensors').unlink()
    ckpt = torch.load(out / 'last.pth', map_location='cpu', weights_only=False)
    ckpt['epoch'], ckpt['history'] = 1, ckpt['history'][:1]
    del ckpt['args']['sessions']  # written by a version without session records
    torch.save(ckpt, out / 'last.pth')
    assert mtrain.main([*argv, '--resume']) == 0
    assert [x['first_epoch'] for x in json.loads((out / 'args.json').read_text())['sessions']] == [1]


TORCHRUN = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
            '-m', 'mlan_timm.tools.train']


def _torchrun(argv, repo_root, subprocess_env):
    return subprocess.run([*TORCHRUN, *argv], cwd=repo_root, env=subprocess_env(), capture_output=True, text=True,
                          timeout=300)


def test_torchrun_two_processes_gloo_matches_the_global_batch(cifar_folder, tmp_path, train_args, repo_root,
                                                               subprocess_env):
    """2 CPU processes (gloo) train with the global batch 8 split 4 + 4: rank 0 alone writes the run, metrics cover
    all 40 train / 20 test images, and the result is close to one process with batch 8 (not bit-equal: each
    process normalises its BatchNorm over its own 4 images; SyncBatchNorm is CUDA-only)."""
    extra = ['--data-on-device', '--decay-milestones', '1']
    dist_out, one_out = tmp_path / 'ddp', tmp_path / 'one'
    res = _torchrun(train_args(cifar_folder, dist_out, epochs=2, extra=extra), repo_root, subprocess_env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert res.stdout.count('done: 2 epochs') == 1  # rank 0 reports
    assert sorted(p.name for p in dist_out.iterdir()) == ['args.json', 'last.pth', 'log.jsonl', 'model.safetensors',
                                                          'summary.json']
    rows = [json.loads(x) for x in (dist_out / 'log.jsonl').read_text().splitlines()]
    assert [r['epoch'] for r in rows] == [0, 1] and all(r['train_images'] == 40 for r in rows)
    assert json.loads((dist_out / 'summary.json').read_text())['world_size'] == 2
    assert json.loads((dist_out / 'args.json').read_text())['world_size'] == 2
    assert mtrain.main(train_args(cifar_folder, one_out, epochs=2, extra=extra)) == 0
    one = [json.loads(x) for x in (one_out / 'log.jsonl').read_text().splitlines()]
    assert [r['lr'] for r in rows] == [r['lr'] for r in one]
    for a, b in zip(rows, one):
        assert a['train_loss'] == pytest.approx(b['train_loss'], rel=0.1)
    wa, wb = load_file(dist_out / 'model.safetensors'), load_file(one_out / 'model.safetensors')
    keys = [k for k in wa if k.endswith('weight') and wa[k].dim() > 1]  # conv and fc weights
    dist2 = sum(((wa[k] - wb[k]) ** 2).sum() for k in keys) / sum((wb[k] ** 2).sum() for k in keys)
    assert dist2.sqrt() < 0.15  # measured 0.06; two independent initialisations are about 1.4 apart


@pytest.mark.slow
def test_torchrun_with_the_dataloader_path_shards_every_image_once(cifar_folder, tmp_path, train_args, repo_root,
                                                                    subprocess_env):
    """The same 2-process run without --data-on-device: the DataLoader path's sharded sampler gives the train and
    test images to the ranks without padding or repeats (global counts 40 / 20, as one process sees). Each rank
    draws its own augmentation and normalises BatchNorm over its half batch, so the losses are not compared."""
    dist_out = tmp_path / 'ddp'
    res = _torchrun(train_args(cifar_folder, dist_out, epochs=2, extra=['--decay-milestones', '1']), repo_root,
                    subprocess_env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    rows = [json.loads(x) for x in (dist_out / 'log.jsonl').read_text().splitlines()]
    assert [r['epoch'] for r in rows] == [0, 1] and all(r['train_images'] == 40 for r in rows)
    summary = json.loads((dist_out / 'summary.json').read_text())
    assert summary['test_images'] == 20 and summary['world_size'] == 2


@pytest.mark.slow
def test_torchrun_resume_continues_the_run(cifar_folder, tmp_path, train_args, repo_root, subprocess_env):
    out = tmp_path / 'ddp'
    argv = train_args(cifar_folder, out, epochs=1, extra=['--data-on-device'])
    assert _torchrun(argv, repo_root, subprocess_env).returncode == 0
    argv[argv.index('--epochs') + 1] = '2'
    res = _torchrun([*argv, '--resume'], repo_root, subprocess_env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count('Resuming from') == 1
    assert [json.loads(x)['epoch'] for x in (out / 'log.jsonl').read_text().splitlines()] == [0, 1]
    res = _torchrun([*argv, '--resume'], repo_root, subprocess_env)
    assert res.returncode == 0 and res.stdout.count('nothing to do') == 1
