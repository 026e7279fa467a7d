"""mlan-eval: metrics equal a direct computation; weights from safetensors / checkpoints; the training record of
mlan-train weights (final and best epoch, normalisation); clear errors."""
import json
import os

import pytest
import timm
import torch
from safetensors.torch import save_file

from mlan_timm import data as mdata
from mlan_timm.tools import eval as meval
from mlan_timm.tools import train as mtrain

TINY_MODEL = 'resnet14_cifar10'


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory, make_image_folder):
    return make_image_folder(tmp_path_factory.mktemp('evaldata'), train_per_class=1, test_per_class=3)


@pytest.fixture(scope='module')
def weights(tmp_path_factory, tiny_model):
    assert tiny_model == TINY_MODEL
    torch.manual_seed(1)
    model = timm.create_model(TINY_MODEL).eval()
    path = tmp_path_factory.mktemp('w') / 'w.safetensors'
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model, path


def _args(data_dir, *extra):
    return ['--model', TINY_MODEL, '--data-dir', str(data_dir), '--device', 'cpu', '--workers', '0',
            '--batch-size', '7', '--cache-dir', str(data_dir / '.cache'), *extra]


def _direct_metrics(model, data_dir):
    """(top1, top5, loss) of ``model`` on the test split, computed here without mlan-eval."""
    ds = mdata.build_dataset('cifar10', data_dir, 'test')
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.tensor([ds[i][1] for i in range(len(ds))])
    with torch.no_grad():
        logits = model.eval()(x)
    top1 = (logits.argmax(1) == y).float().mean().item() * 100
    top5 = (logits.topk(5, 1).indices == y[:, None]).any(1).float().mean().item() * 100
    return top1, top5, torch.nn.functional.cross_entropy(logits, y).item()


def test_eval_json_matches_direct_computation(data_dir, weights, capsys):
    model, path = weights
    assert meval.main(_args(data_dir, '--weights', str(path), '--json')) == 0
    res = json.loads(capsys.readouterr().out)
    top1, top5, loss = _direct_metrics(model, data_dir)
    assert res['images'] == 30
    assert res['top1'] == pytest.approx(top1, abs=1e-4) and res['top5'] == pytest.approx(top5, abs=1e-4)
    assert res['loss'] == pytest.approx(loss, rel=1e-4)
    assert res['img_per_s'] > 0 and res['params'] == sum(p.numel() for p in model.parameters())
    assert res['weights'] == 'w.safetensors' and 'training' not in res  # no local paths; no training record
    from mlan_timm.pretrained import weights_digest
    assert res['weights_digest'] == weights_digest(model.state_dict())  # what mlan-export checks its card against


def test_channels_last_and_bf16_autocast_evaluate_the_same_weights(data_dir, weights, capsys):
    """--channels-last changes only the memory layout (same metrics to float rounding); --amp bf16 runs the convs in
    bfloat16 (loss within bf16 precision) and is recorded in the JSON."""
    model, path = weights
    _, _, loss = _direct_metrics(model, data_dir)
    for extra, tol in (([], 1e-4), (['--channels-last'], 1e-4), (['--amp', 'bf16'], 3e-2)):
        assert meval.main(_args(data_dir, '--weights', str(path), '--json', *extra)) == 0
        res = json.loads(capsys.readouterr().out)
        assert res['loss'] == pytest.approx(loss, rel=tol), extra
        assert res['amp'] == ('bf16' if '--amp' in extra else 'none')
    assert res['loss'] != pytest.approx(loss, rel=1e-5)  # bf16 did run: its rounding shows in the loss


def test_eval_of_a_training_checkpoint_uses_its_model_or_its_ema_weights(data_dir, weights, tmp_path, capsys):
    """``--checkpoint last.pth`` evaluates the checkpoint's 'model' weights, ``--ema`` its 'ema' ones (ModelEmaV3's
    keys carry a ``module.`` prefix); both give the metrics of those weights computed directly."""
    model, _ = weights
    torch.manual_seed(2)
    ema_model = timm.create_model(TINY_MODEL).eval()
    ema_state = {f'module.{k}': v for k, v in ema_model.state_dict().items()}
    torch.save({'model': model.state_dict(), 'ema': ema_state, 'args': {'model': TINY_MODEL}, 'epoch': 1},
               tmp_path / 'last.pth')
    for extra, expected in (([], model), (['--ema'], ema_model)):
        assert meval.main(_args(data_dir, '--checkpoint', str(tmp_path / 'last.pth'), '--json', *extra)) == 0
        res = json.loads(capsys.readouterr().out)
        top1, _, loss = _direct_metrics(expected, data_dir)
        assert res['loss'] == pytest.approx(loss, rel=1e-4) and res['top1'] == pytest.approx(top1, abs=1e-4)
    assert _direct_metrics(model, data_dir)[2] != pytest.approx(_direct_metrics(ema_model, data_dir)[2], rel=1e-3)
    assert meval.main(_args(data_dir, '--checkpoint', str(tmp_path / 'last.pth'))) == 0
    out = capsys.readouterr().out
    assert 'top-1 (%)' in out and 'images/s' in out and 'cifar10 test (30 images)' in out
    torch.save({'model': model.state_dict(), 'ema': None, 'args': {'model': TINY_MODEL}}, tmp_path / 'no_ema.pth')
    assert meval.main(_args(data_dir, '--checkpoint', str(tmp_path / 'no_ema.pth'), '--ema')) == 2
    assert 'has no EMA weights (trained without --model-ema)' in capsys.readouterr().err


def test_mismatched_weights_name_model_and_file(data_dir, tmp_path, capsys):
    other = timm.create_model('mlan_resnet20_cifar10')
    bad = tmp_path / 'other.safetensors'
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(bad))
    assert meval.main(_args(data_dir, '--weights', str(bad))) == 2
    err = capsys.readouterr().err
    assert 'do not match' in err and TINY_MODEL in err and str(bad) in err


def test_corrupt_and_missing_weights(data_dir, tmp_path, capsys):
    bad = tmp_path / 'bad.safetensors'
    bad.write_bytes(b'garbage')
    assert meval.main(_args(data_dir, '--weights', str(bad))) == 2
    assert 'corrupt' in capsys.readouterr().err
    assert meval.main(_args(data_dir, '--weights', str(tmp_path / 'nope.safetensors'))) == 2
    assert 'not found' in capsys.readouterr().err


def test_eval_needs_a_weights_source(data_dir, capsys):
    assert meval.main(_args(data_dir)) == 2
    assert '--pretrained, --weights FILE or --checkpoint FILE' in capsys.readouterr().err


def test_ema_needs_a_checkpoint(data_dir, weights, capsys):
    _, path = weights
    assert meval.main(_args(data_dir, '--weights', str(path), '--ema')) == 2
    err = capsys.readouterr().err
    assert err.startswith('mlan-eval: error: --ema') and '--checkpoint' in err
    assert meval.main(_args(data_dir, '--pretrained', '--ema')) == 2
    assert '--ema picks the EMA weights' in capsys.readouterr().err


def test_eval_json_records_model_kwargs_and_subset(data_dir, weights, capsys):
    _, path = weights
    assert meval.main(_args(data_dir, '--weights', str(path), '--json', '--subset', '5',
                            '--model-kwargs', 'num_classes=10')) == 0
    res = json.loads(capsys.readouterr().out)
    assert res['model_kwargs'] == {} and res['subset'] == 5 and res['images'] == 5


def test_eval_of_mlan_train_weights_reports_final_and_best_epoch(data_dir, tmp_path, train_args, capsys):
    """Weights written by mlan-train carry the run's record; normalisation uses the constants recorded there."""
    out = tmp_path / 'run'
    assert mtrain.main(train_args(data_dir, out, epochs=2, extra=['--max-steps', '1'])) == 0
    summary = json.loads((out / 'summary.json').read_text())
    capsys.readouterr()
    for src in (['--weights', str(out / 'model.safetensors')], ['--checkpoint', str(out / 'last.pth')]):
        assert meval.main(_args(data_dir, *src, '--json')) == 0
        res = json.loads(capsys.readouterr().out)
        t = res['training']
        assert (t['final_epoch'], t['best_epoch']) == (summary['final_epoch'], summary['best_epoch'])
        assert (t['final_test_top1'], t['best_test_top1'], t['best_test_top5']) == \
            (summary['final_test_top1'], summary['best_test_top1'], summary['best_test_top5'])
        assert res['top1'] == pytest.approx(summary['final_test_top1'])  # the same weights on the same test split
    assert meval.main(_args(data_dir, '--weights', str(out / 'model.safetensors'))) == 0
    table = capsys.readouterr().out
    assert f"training: best epoch  | {summary['best_epoch']}: test top-1" in table


def test_eval_normalises_with_the_recorded_constants(data_dir, weights, tmp_path, capsys):
    """A training record with other mean/std changes the inputs: the accuracy is that of those inputs."""
    from mlan_timm.tools.common import TRAINING_METADATA_KEY
    model, _ = weights
    path = tmp_path / 'odd.safetensors'
    record = dict(mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0])
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={TRAINING_METADATA_KEY: json.dumps(record)})
    assert meval.main(_args(data_dir, '--weights', str(path), '--json')) == 0
    res = json.loads(capsys.readouterr().out)
    ds = mdata.build_dataset('cifar10', data_dir, 'test', transform=mdata.build_transforms(
        'cifar10', False, mean=record['mean'], std=record['std']))
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.tensor([ds[i][1] for i in range(len(ds))])
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(model(x), y).item()
    assert res['loss'] == pytest.approx(loss, rel=1e-4)


# ----------------------------------------------------------------------------------------------------------------
# CLI polish and clear errors (issue 11)
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('tty, flags, bar', [(False, [], False), (True, [], True), (True, ['--no-progress'], False),
                                             (False, ['--progress'], True)])
def test_eval_progress_bar_on_a_terminal_only(data_dir, weights, capsys, monkeypatch, tty, flags, bar):
    _, path = weights
    monkeypatch.setattr(meval.sys.stderr, 'isatty', lambda: tty, raising=False)
    assert meval.main(_args(data_dir, '--weights', str(path), *flags)) == 0
    err = capsys.readouterr().err
    assert ('eval:' in err and 'it/s' in err or '%|' in err) == bar, err


def test_eval_weights_folder_reads_its_model_safetensors_or_asks_for_the_file(data_dir, weights, tmp_path, capsys):
    _, path = weights
    folder = tmp_path / 'export'
    folder.mkdir()
    (folder / 'model.safetensors').write_bytes(path.read_bytes())
    assert meval.main(_args(data_dir, '--weights', str(folder), '--json')) == 0
    assert json.loads(capsys.readouterr().out)['weights'] == 'model.safetensors'
    empty = tmp_path / 'empty'
    empty.mkdir()
    assert meval.main(_args(data_dir, '--weights', str(empty))) == 2
    err = capsys.readouterr().err
    assert err.startswith(f'mlan-eval: error: --weights {empty} is a folder without model.safetensors; pass the '
                          'weights file itself')


def test_eval_dataset_that_contradicts_the_model_name_is_named(data_dir, weights, capsys):
    _, path = weights
    argv = _args(data_dir, '--weights', str(path), '--dataset', 'cifar10')
    argv[argv.index('--model') + 1] = 'resnet14_cifar100'
    assert meval.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("mlan-eval: error: --dataset cifar10 conflicts with model 'resnet14_cifar100', which is "
                          "built for cifar100 (100 classes): use resnet14_cifar10 for cifar10") and 'size' not in err


def test_eval_pretrained_error_names_the_weights_flag(data_dir, capsys, monkeypatch, tmp_path):
    import huggingface_hub.constants as hc
    monkeypatch.setattr(hc, 'HF_HUB_OFFLINE', True)
    monkeypatch.setenv('MLAN_TIMM_WEIGHTS_DIR', str(tmp_path / 'no_weights'))
    assert meval.main(_args(data_dir, '--pretrained')) == 2
    err = capsys.readouterr().err
    assert err.startswith('mlan-eval: error: --pretrained: No pretrained weights available') and '--weights FILE' in err
    assert 'pretrained=False' not in err and 'pretrained_cfg_overlay' not in err and err.count('\n') == 1


def test_eval_unwritable_cache_dir_is_a_clear_error(tmp_path, weights, make_image_folder, make_tarballs, capsys):
    """Root ignores permission bits, so the cache folder lies below a regular file (mkdir fails for anyone)."""
    _, path = weights
    tarballs = make_tarballs(make_image_folder(tmp_path / 'folder', train_per_class=1, test_per_class=1),
                             tmp_path / 'tars')
    (tmp_path / 'file').write_text('x')
    argv = _args(tarballs, '--weights', str(path))
    argv[argv.index('--cache-dir') + 1] = str(tmp_path / 'file' / 'cache')
    assert meval.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith('mlan-eval: error: Cannot extract dataset tarball') and 'is not writable' in err
    assert '--cache-dir' in err and err.count('\n') == 1


def test_extracted_cache_folder_honours_the_umask(tmp_path, make_image_folder, make_tarballs):
    tarballs = make_tarballs(make_image_folder(tmp_path / 'folder', train_per_class=1, test_per_class=1),
                             tmp_path / 'tars')
    old = os.umask(0o022)
    try:
        mdata.build_dataset('cifar10', tarballs, 'test', cache_dir=tmp_path / 'cache')
    finally:
        os.umask(old)
    (extracted,) = [p for p in (tmp_path / 'cache').iterdir()]
    assert extracted.stat().st_mode & 0o777 == 0o755  # was 0700 (tempfile.mkdtemp)
