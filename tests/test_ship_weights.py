"""scripts/ship_weights.py: a finished run becomes bundled pretrained weights that timm loads offline."""
import importlib.util
import json

import pytest

from mlan_timm.tools import train as mtrain


@pytest.fixture(scope='module')
def ship_mod(repo_root):
    spec = importlib.util.spec_from_file_location('ship_weights', repo_root / 'scripts' / 'ship_weights.py')
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope='module')
def finished(cifar_folder, tmp_path_factory, train_args):
    out = tmp_path_factory.mktemp('ship') / 'run'
    assert mtrain.main(train_args(cifar_folder, out, epochs=1)) == 0
    return out


def _argv(run, cifar_folder, tmp_path, *extra):
    return [str(run), '--data-dir', str(cifar_folder), '--cache-dir', str(tmp_path / 'cache'),
            '--weights-dir', str(tmp_path / 'weights'), '--hub-dir', str(tmp_path / 'hub'), *extra]


def test_ship_bundles_exports_and_timm_loads_it_offline(ship_mod, finished, cifar_folder, tmp_path, tiny_model,
                                                        capsys):
    assert ship_mod.main(_argv(finished, cifar_folder, tmp_path, '--tag', 'smoke')) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    summary = json.loads((finished / 'summary.json').read_text())
    manifest = json.loads((tmp_path / 'weights' / 'MANIFEST.json').read_text())
    key = f'{tiny_model}.smoke'
    assert manifest['weights'] == {key: dict(file=f'{key}.safetensors', sha256=out['sha256'])}
    assert (tmp_path / 'weights' / f'{key}.safetensors').read_bytes() == (finished / 'model.safetensors').read_bytes()
    # a fresh offline process without `import mlan_timm`: same logits as the run's weights, listed as pretrained
    assert out['same_logits'] is True and out['listed'] is True
    # the evaluation of the shipped file is the run's last epoch on the same test split
    assert out['eval_top1'] == pytest.approx(summary['final_test_top1'])
    assert out['final_epoch_top1'] == summary['final_test_top1'] and out['paper_top1'] is not None
    card = (tmp_path / 'hub' / tiny_model / 'README.md').read_text()
    assert f"| {out['eval_top1']:.2f} |" in card and 'Where it trained' in card
    # shipping again needs --replace; the manifest is unchanged by the refusal
    before = (tmp_path / 'weights' / 'MANIFEST.json').read_bytes()
    assert ship_mod.main(_argv(finished, cifar_folder, tmp_path, '--tag', 'smoke')) == 2
    assert f'already lists {key}: pass --replace' in capsys.readouterr().err
    assert (tmp_path / 'weights' / 'MANIFEST.json').read_bytes() == before


def test_paper_tag_needs_the_paper_recipe(ship_mod, finished, cifar_folder, tmp_path, capsys):
    assert ship_mod.main(_argv(finished, cifar_folder, tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f'ship_weights: error: {finished}: not the paper recipe: ')
    assert 'epochs=1 (paper: 200)' in err and 'batch_size=8 (paper: 128)' in err and 'seed' not in err
    assert not (tmp_path / 'weights').exists()


@pytest.mark.parametrize('damage, text', [
    (lambda run: (run / 'summary.json').unlink(), 'no summary.json: not a finished mlan-train run'),
    (lambda run: (run / 'log.jsonl').write_text(''), '0 epochs logged of the 1 in args.json: not finished'),
    (lambda run: (run / 'args.json').write_text(json.dumps(dict(
        json.loads((run / 'args.json').read_text()), subset=20))), 'trained with --subset 20: shipped weights'),
])
def test_unfinished_or_partial_runs_are_refused(ship_mod, finished, cifar_folder, tmp_path, capsys, damage, text):
    import shutil
    run = tmp_path / 'run'
    shutil.copytree(finished, run)
    damage(run)
    assert ship_mod.main(_argv(run, cifar_folder, tmp_path, '--tag', 'smoke')) == 2
    assert text in capsys.readouterr().err
    assert not (tmp_path / 'weights').exists()
