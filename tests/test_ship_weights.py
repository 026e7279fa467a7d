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
    readme = tmp_path / 'README.md'
    if not readme.exists():
        readme.write_text('# x\n<!-- weights-table:start -->\nold\n<!-- weights-table:end -->\nend\n')
    return [str(run), '--data-dir', str(cifar_folder), '--cache-dir', str(tmp_path / 'cache'),
            '--weights-dir', str(tmp_path / 'weights'), '--hub-dir', str(tmp_path / 'hub'), '--readme', str(readme),
            *extra]


def test_ship_bundles_exports_and_timm_loads_it_offline(ship_mod, finished, cifar_folder, tmp_path, tiny_model,
                                                        capsys, monkeypatch):
    monkeypatch.chdir(finished.parent)  # the run as the runbook names it, relative (runs/state/<model>)
    assert ship_mod.main(_argv(finished.relative_to(finished.parent), cifar_folder, tmp_path, '--tag', 'smoke')) == 0
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
    readme = (tmp_path / 'README.md').read_text()
    assert f"| `{key}` | 1 | {summary['final_test_top1']:.2f} | {summary['best_test_top1']:.2f} (0) | " in readme
    assert readme.startswith('# x\n<!-- weights-table:start -->\n| weights |') and readme.endswith('end\n')
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


def test_readme_table_gives_mlan_gain_over_its_backbone_and_the_paper(ship_mod, tmp_path):
    from safetensors.torch import save_file

    from mlan_timm.paper_tables import paper_value
    from mlan_timm.tools.common import TRAINING_METADATA_KEY
    weights = tmp_path / 'w'
    weights.mkdir()
    entries = {}
    for name, final, best in (('mlan_resnet20_cifar10', 90.5, 91.25), ('resnet20_cifar10', 89.0, 90.0)):
        rec = dict(epochs=200, final_test_top1=final, best_test_top1=best, best_epoch=150)
        save_file({}, str(weights / f'{name}.paper.safetensors'), metadata={TRAINING_METADATA_KEY: json.dumps(rec)})
        entries[f'{name}.paper'] = dict(file=f'{name}.paper.safetensors', sha256='x')
    (weights / 'MANIFEST.json').write_text(json.dumps(dict(format=1, weights=entries)))
    table = ship_mod.weights_table(weights)
    paper = paper_value('cifar10', 'mlan_sma_plus', 20, 'top1')  # Table 2's MLAN-20, the default architecture
    assert f"| `mlan_resnet20_cifar10.paper` | 200 | 90.50 | 91.25 (150) | {paper:.2f} (Table " in table
    assert f"| {91.25 - paper:+.2f} | +1.50 / +1.25 |" in table
    assert "| `resnet20_cifar10.paper` | 200 | 89.00 | 90.00 (150) | " in table and table.count('| - |') == 1
    (weights / 'MANIFEST.json').write_text(json.dumps(dict(format=1, weights={})))
    assert ship_mod.weights_table(weights).startswith('No weights are shipped yet')
    readme = tmp_path / 'README.md'
    readme.write_text('no markers')
    with pytest.raises(ship_mod.UsageError, match='has no <!-- weights-table:start -->'):
        ship_mod.render_readme(readme, weights)


def test_readme_weights_table_is_the_rendered_one(ship_mod, repo_root):
    """README.md's table is what `ship_weights.py --render-readme` gives for the package's weights manifest."""
    block = (repo_root / 'README.md').read_text().split(ship_mod.TABLE_START)[1].split(ship_mod.TABLE_END)[0]
    assert block.strip() == ship_mod.weights_table(repo_root / 'mlan_timm' / 'weights')


def test_a_failed_load_check_changes_nothing(ship_mod, finished, cifar_folder, tmp_path, monkeypatch, capsys):
    def fail(*_):
        raise ship_mod.UsageError('does not load')
    monkeypatch.setattr(ship_mod, 'check_loading', fail)
    argv = _argv(finished, cifar_folder, tmp_path, '--tag', 'smoke')
    readme = (tmp_path / 'README.md').read_text()
    assert ship_mod.main(argv) == 2 and 'does not load' in capsys.readouterr().err
    assert not (tmp_path / 'weights').exists() and not (tmp_path / 'hub').exists()
    assert (tmp_path / 'README.md').read_text() == readme


def test_paper_recipe_check_allows_runtime_changes_at_a_resume_only(ship_mod, finished, tmp_path, tiny_model):
    """A run with the paper's recipe flags passes; a resume that moved the data or grew --epochs is still the
    paper recipe, one that changed the lr is not."""
    import shutil
    run = tmp_path / 'run'
    shutil.copytree(finished, run)
    paper = vars(mtrain.build_parser('paper').parse_args(['--model', tiny_model]))
    args = dict(json.loads((run / 'args.json').read_text()), **{k: paper[k] for k in mtrain.RESUME_REFUSED_FLAGS
                                                                 if k not in ship_mod.NOT_RECIPE}, seed=7)
    (run / 'log.jsonl').write_text((run / 'log.jsonl').read_text().splitlines()[0] + '\n' + '{}\n' * 199)
    for overrides, ok in (([], True), ([dict(epoch=3, changes={'--data-dir': ['a', 'b'], '--epochs': [100, 200]})],
                                       True),
                          ([dict(epoch=3, changes={'--lr': [0.1, 0.05]})], False)):
        (run / 'args.json').write_text(json.dumps(dict(args, resume_overrides=overrides)))
        if ok:
            assert ship_mod.check_run(run, 'paper')[0]['seed'] == 7
        else:
            with pytest.raises(ship_mod.UsageError, match=r'not the paper recipe: --lr changed at a resume'):
                ship_mod.check_run(run, 'paper')
