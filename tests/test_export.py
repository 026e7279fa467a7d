"""mlan-export (HF folder + model card with the paper's number beside ours) and mlan-push (mocked HfApi)."""
import json
import os
from unittest import mock

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from mlan_timm import paper_tables, zoo
from mlan_timm.tools import export as mexport

TINY_MODEL = 'resnet14_cifar10'


@pytest.fixture
def weights(tmp_path, tiny_model):
    assert tiny_model == TINY_MODEL
    torch.manual_seed(2)
    model = timm.create_model(TINY_MODEL).eval()
    path = tmp_path / 'w.safetensors'
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model, path


def _log(tmp_path):
    run = tmp_path / 'run'
    run.mkdir()
    rows = [dict(epoch=0, lr=0.1, train_loss=2.0, train_top1=20.0, test_top1=31.25, test_top5=77.5, test_loss=1.9,
                 time=3.0),
            dict(epoch=1, lr=0.1, train_loss=1.7, train_top1=30.0, test_top1=45.0, test_top5=90.0, test_loss=1.7,
                 time=3.0),
            dict(epoch=2, lr=0.01, train_loss=1.5, train_top1=40.0, test_top1=42.5, test_top5=88.75, test_loss=1.6,
                 time=3.0)]
    (run / 'log.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
    (run / 'args.json').write_text(json.dumps(dict(epochs=3, batch_size=8, lr=0.1, sched='multistep',
                                                   decay_milestones=[2], seed=3, data_dir=str(tmp_path / 'data'),
                                                   output=str(run), padding_mode='reflect',
                                                   mean=list(zoo.PAPER_MEAN), std=list(zoo.PAPER_STD))))
    return run / 'log.jsonl'


def test_export_folder_round_trips_through_timm(weights, tmp_path, capsys):
    model, path = weights
    ev = tmp_path / 'eval.json'
    ev.write_text(json.dumps(dict(top1=42.5, top5=88.75, loss=1.6, images=30, split='test',
                                  weights=str(tmp_path / 'w.safetensors'))))
    rc = mexport.main(['--model', TINY_MODEL, '--weights', str(path), '--hub-dir', str(tmp_path / 'hub'),
                       '--eval-json', str(ev), '--train-log', str(_log(tmp_path))])
    assert rc == 0
    out = tmp_path / 'hub' / TINY_MODEL
    assert sorted(p.name for p in out.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    cfg = json.loads((out / 'config.json').read_text())
    assert cfg['architecture'] == TINY_MODEL and cfg['num_classes'] == 10 and len(cfg['label_names']) == 10
    assert cfg['pretrained_cfg']['input_size'] == [3, 32, 32] and 'model_args' in cfg
    sd = load_file(out / 'model.safetensors')
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())
    loaded = timm.create_model(TINY_MODEL, pretrained=True,
                               pretrained_cfg_overlay=dict(file=str(out / 'model.safetensors'))).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    card = (out / 'README.md').read_text()
    assert zoo.CITATION_BIBTEX in card and 'library_name: timm' in card
    assert '| these weights, `mlan-eval` (30 test images) | - | 42.50 | 88.75 |' in card
    assert '| training run, final epoch | 2 | 42.50 | 88.75 |' in card  # from the log
    assert '| training run, best epoch | 1 | 45.00 | 90.00 |' in card
    paper = paper_tables.paper_value('cifar10', 'backbone', 14, 'top1')
    assert f"| paper, Table 2 (ResNet backbone), best epoch | - | {paper:.2f} | not reported |" in card
    assert f"{sum(p.numel() for p in model.parameters()):,}" in card
    assert f"{mexport.count_macs(model) / 1e6:.2f}" in card
    assert str(tmp_path) not in card and '/tmp' not in card  # no local paths


def test_card_says_when_final_epoch_numbers_come_from_a_test_subset(weights, tmp_path):
    model, path = weights
    log = _log(tmp_path)
    args = json.loads((log.parent / 'args.json').read_text())
    (log.parent / 'args.json').write_text(json.dumps(dict(args, test_subset=1000)))
    rc = mexport.main(['--model', TINY_MODEL, '--weights', str(path), '--hub-dir', str(tmp_path / 'hub'),
                       '--train-log', str(log)])
    assert rc == 0
    card = (tmp_path / 'hub' / TINY_MODEL / 'README.md').read_text()
    assert '| training run, final epoch (on a 1000-image subset of the test split) | 2 | 42.50 | 88.75 |' in card
    assert 'test_subset=1000' in card


@pytest.mark.parametrize('name, kwargs, variant', [
    ('resnet20_cifar10', {}, 'backbone'), ('mlan_resnet20_cifar10', {}, 'mlan_sma_plus'),
    ('mlan_v2_resnet32_cifar100', {}, 'multilevel_sma_v2'), ('se_resnet14_cifar10', {}, 'classic_se'),
    ('gc_resnet26_cifar100', {'num_classes': 100}, 'classic_gc'), ('mlan_resnet20_cifar10', {'attn': 'fma'}, 'fma'),
    ('mlan_resnet20_cifar10', {'levels': 'single'}, 'single_level'), ('mlan_resnet20_cifar10', {'num_masks': 2}, None),
    ('resnet18', {}, None)])
def test_paper_variant_of_models(name, kwargs, variant):
    assert mexport.paper_variant_of(name, kwargs) == variant
    res = mexport.paper_result(name, kwargs)
    if variant is None:
        assert res is None
    else:
        mid = zoo.parse_model_name(name)
        value, table, found = res
        # The paper's number for the variant this model is (the default MLAN is printed under several labels, one
        # number: tests/test_paper_tables.py), from the table that prints it under the label returned.
        assert zoo.PAPER_VARIANTS[found].config == zoo.PAPER_VARIANTS[variant].config
        assert value == paper_tables.paper_value(mid.dataset, variant, mid.depth, 'top1') is not None
        assert table in {r.table for r in paper_tables.records(dataset=mid.dataset, variant=found, depth=mid.depth,
                                                               metric='top1')}


def test_card_of_a_model_the_paper_does_not_have(weights, tmp_path, monkeypatch):
    model, path = weights
    monkeypatch.setattr(mexport, 'paper_result', lambda *a, **k: None)
    out = mexport.export_model(TINY_MODEL, tmp_path / 'hub', weights=str(path))
    card = (out / 'README.md').read_text()
    assert '| paper | - | not in the paper | not in the paper |' in card
    assert 'No evaluation results were supplied' in card and 'No training record was supplied' in card


def test_card_takes_final_and_best_from_the_weights_training_record(tmp_path, cifar_folder, train_args):
    """Without --train-log, the training rows come from the record mlan-train stores in its weights; the exported
    pretrained_cfg carries the normalisation the weights were trained with."""
    from mlan_timm.tools import train as mtrain
    run = tmp_path / 'run'
    assert mtrain.main(train_args(cifar_folder, run, epochs=2, extra=['--max-steps', '1'])) == 0
    s = json.loads((run / 'summary.json').read_text())
    out = mexport.export_model(TINY_MODEL, tmp_path / 'hub', weights=str(run / 'model.safetensors'))
    card = (out / 'README.md').read_text()
    assert f"| training run, best epoch | {s['best_epoch']} | {s['best_test_top1']:.2f} | " in card
    cfg = json.loads((out / 'config.json').read_text())
    assert cfg['pretrained_cfg']['mean'] == pytest.approx(list(zoo.PAPER_MEAN))
    assert cfg['pretrained_cfg']['std'] == pytest.approx(list(zoo.PAPER_STD))


def test_card_commands_reproduce_the_cards_numbers(tmp_path, cifar_folder, capsys):
    """The card's "How the numbers were measured" commands, run as written, print the card's params, MACs and
    mlan-eval row (model kwargs, a list among them, split, subset and autocast passed through)."""
    import contextlib
    import io
    import re
    import shlex

    from mlan_timm.tools import eval as meval
    kwargs = {'drop_rate': 0.25, 'widths': [4, 8, 16]}
    torch.manual_seed(3)
    model = timm.create_model(TINY_MODEL, **kwargs).eval()
    path = tmp_path / 'w.safetensors'
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    eval_args = ['--model', TINY_MODEL, '--model-kwargs', 'drop_rate=0.25', 'widths=[4, 8, 16]', '--weights',
                 str(path), '--data-dir', str(cifar_folder), '--split', 'train', '--subset', '12', '--amp', 'bf16',
                 '--workers', '0', '--json']
    assert meval.main(eval_args) == 0
    (tmp_path / 'eval.json').write_text(capsys.readouterr().out)
    ev = json.loads((tmp_path / 'eval.json').read_text())
    out = mexport.export_model(TINY_MODEL, tmp_path / 'hub', weights=str(path), model_kwargs=kwargs,
                               eval_results=ev)
    card = (out / 'README.md').read_text()
    section = card[card.index('## How the numbers were measured'):card.index('## Usage')]
    code = re.search(r'`python -c "(.+?)"`', section).group(1)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(code, {})
    params, macs = map(int, printed.getvalue().split())
    assert f"{params:,}" in card and f"{macs / 1e6:.2f}" in card
    command = re.search(r'`(mlan-eval [^`]+)`', section).group(1)
    assert '--model-kwargs drop_rate=0.25 ' in command and " 'widths=[4, 8, 16]' " in command
    assert '--split train --subset 12 --amp bf16' in command
    argv = [str(cifar_folder) if a == '<CIFAR data>' else a
            for a in shlex.split(command.replace('<CIFAR data>', "'<CIFAR data>'"))[1:]]
    os.chdir(out)  # "in this repository's folder": --weights .
    try:
        assert meval.main(argv + ['--workers', '0']) == 0
    finally:
        os.chdir(tmp_path)
    again = json.loads(capsys.readouterr().out)
    assert (again['top1'], again['top5'], again['images']) == (ev['top1'], ev['top5'], 12)
    assert f"| these weights, `mlan-eval` (12 train images) | - | {ev['top1']:.2f} | {ev['top5']:.2f} |" in card


def test_failed_export_keeps_previous_export(weights, tmp_path, monkeypatch):
    model, path = weights
    out = mexport.export_model(TINY_MODEL, tmp_path / 'hub', weights=str(path))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(mexport, 'count_macs', mock.Mock(side_effect=RuntimeError('boom')))
    with pytest.raises(RuntimeError, match='boom'):
        mexport.export_model(TINY_MODEL, tmp_path / 'hub', weights=str(path))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in (tmp_path / 'hub').iterdir()] == [TINY_MODEL]  # no temp leftovers


def test_count_macs_of_a_linear_layer():
    assert mexport.count_macs(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5)), (3, 2, 2)) == 60


def test_push_uploads_folder_with_mocked_api(weights, tmp_path):
    _, path = weights
    out = mexport.export_model(TINY_MODEL, tmp_path / 'hub', weights=str(path))
    api = mock.Mock()
    api.upload_folder.return_value = mock.Mock(commit_url='https://hf.co/x/commit/1')
    url = mexport.push_folder(out, 'me/x', token='hf_test', api=api)
    assert url == 'https://hf.co/x/commit/1'
    api.create_repo.assert_called_once_with(repo_id='me/x', private=False, exist_ok=True, repo_type='model')
    kw = api.upload_folder.call_args.kwargs
    assert kw['folder_path'] == str(out) and kw['repo_id'] == 'me/x'


def test_paper_results_flag_is_ignored_with_a_warning(weights, tmp_path, capsys):
    _, path = weights
    paper = tmp_path / 'paper.json'
    paper.write_text(json.dumps({TINY_MODEL: {'top1': '99.99'}}))
    assert mexport.main(['--model', TINY_MODEL, '--weights', str(path), '--hub-dir', str(tmp_path / 'hub'),
                         '--paper-results', str(paper)]) == 0
    assert '--paper-results is ignored' in capsys.readouterr().err
    assert '99.99' not in (tmp_path / 'hub' / TINY_MODEL / 'README.md').read_text()


def test_missing_train_log_is_a_clear_error(weights, tmp_path, capsys):
    _, path = weights
    assert mexport.main(['--model', TINY_MODEL, '--weights', str(path), '--hub-dir', str(tmp_path / 'hub'),
                         '--train-log', str(tmp_path / 'nope' / 'log.jsonl')]) == 2
    assert capsys.readouterr().err.startswith('mlan-export: error: Training log file not found')


@pytest.fixture
def fake_hub(weights, tmp_path, monkeypatch):
    """An export under tmp_path/hub, HfApi replaced by a mock and HF_TOKEN set: returns the mock class."""
    _, path = weights
    mexport.export_model(TINY_MODEL, tmp_path / 'hub', weights=str(path))
    fake = mock.Mock()
    fake.return_value.upload_folder.return_value = mock.Mock(commit_url='u')
    monkeypatch.setattr('huggingface_hub.HfApi', fake)
    monkeypatch.setenv('HF_TOKEN', 'hf_env')
    return fake


def test_push_main_constructs_hfapi_with_token(fake_hub, tmp_path):
    assert mexport.push_main(['--model', TINY_MODEL, '--hub-dir', str(tmp_path / 'hub')]) == 0
    fake_hub.assert_called_once_with(token='hf_env')
    assert fake_hub.return_value.create_repo.call_args.kwargs['repo_id'] == f'{zoo.HF_ORG}/{TINY_MODEL}'


def test_push_main_passes_its_options_to_the_hub(fake_hub, tmp_path):
    """--token over $HF_TOKEN, --private, --revision and --commit-message reach HfApi; only the card, config and
    weights are uploaded."""
    assert mexport.push_main(['--model', TINY_MODEL, '--hub-dir', str(tmp_path / 'hub'), '--token', 'hf_flag',
                              '--private', '--revision', 'v2', '--commit-message', 'retrained']) == 0
    fake_hub.assert_called_once_with(token='hf_flag')
    fake_hub.return_value.create_repo.assert_called_once_with(repo_id=f'{zoo.HF_ORG}/{TINY_MODEL}', private=True,
                                                              exist_ok=True, repo_type='model')
    kw = fake_hub.return_value.upload_folder.call_args.kwargs
    assert (kw['revision'], kw['commit_message']) == ('v2', 'retrained')
    assert sorted(kw['allow_patterns']) == ['*.json', '*.md', '*.safetensors']


def test_push_without_token_or_folder_is_refused(weights, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv('HF_TOKEN', raising=False)
    api = mock.Mock()
    with pytest.raises(mexport.UsageError, match='not an mlan-export folder'):
        mexport.push_folder(tmp_path, 'me/x', token='t', api=api)
    _, path = weights
    out = mexport.export_model(TINY_MODEL, tmp_path / 'hub', weights=str(path))
    with pytest.raises(mexport.UsageError, match='No Hugging Face token'):
        mexport.push_folder(out, 'me/x', token=None, api=api)
    api.upload_folder.assert_not_called()
    assert mexport.push_main(['--model', TINY_MODEL, '--hub-dir', str(tmp_path / 'hub')]) == 2
    assert 'No Hugging Face token' in capsys.readouterr().err


def test_ema_export_needs_a_checkpoint(weights, tmp_path, capsys):
    _, path = weights
    assert mexport.main(['--model', TINY_MODEL, '--weights', str(path), '--ema', '--hub-dir', str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith('mlan-export: error: --ema picks the EMA weights')
    assert not (tmp_path / TINY_MODEL).exists()


def test_failed_folder_swap_rolls_back_to_previous_export(weights, tmp_path, monkeypatch):
    """The new folder cannot be renamed into place: the old export is restored, no backup or temp is left."""
    import os
    model, path = weights
    out = mexport.export_model(TINY_MODEL, tmp_path / 'hub', weights=str(path))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_replace = os.replace

    def failing_replace(src, dst):
        if os.path.basename(str(src)).startswith(f'.{TINY_MODEL}.') and '.old-' not in str(src):
            raise OSError('disk full')
        return real_replace(src, dst)
    monkeypatch.setattr(mexport.os, 'replace', failing_replace)
    with pytest.raises(OSError, match='disk full'):
        mexport.export_model(TINY_MODEL, tmp_path / 'hub', weights=str(path))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in (tmp_path / 'hub').iterdir()] == [TINY_MODEL]


def test_export_uses_the_shared_complexity_counters():
    from mlan_timm import complexity
    from mlan_timm.tools.bench import measure
    assert mexport.count_macs is complexity.count_macs is measure.count_macs
    assert mexport.count_params is complexity.count_params is measure.count_params
    lin = torch.nn.Linear(3, 2)
    assert complexity.count_params(lin) == 8 and complexity.count_macs(lin, (3,)) == 6


# ----------------------------------------------------------------------------------------------------------------
# Variants, file modes, unwritable hub dir (issue 11)
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture
def variant_weights(tmp_path):
    torch.manual_seed(4)
    model = timm.create_model(TINY_MODEL, widths=[4, 8, 16]).eval()
    path = tmp_path / 'v.safetensors'
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model, path


def test_variant_gets_its_own_folder_and_repo(weights, variant_weights, tmp_path, capsys):
    _, path = weights
    model, vpath = variant_weights
    hub = tmp_path / 'hub'
    assert mexport.main(['--model', TINY_MODEL, '--weights', str(path), '--hub-dir', str(hub)]) == 0
    default_before = {p.name: p.read_bytes() for p in (hub / TINY_MODEL).iterdir()}
    assert mexport.main(['--model', TINY_MODEL, '--weights', str(vpath), '--hub-dir', str(hub),
                         '--model-kwargs', 'widths=[4,8,16]']) == 0
    name = f'{TINY_MODEL}.widths_4_8_16'
    assert f'-> {hub / name}' in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in (hub / TINY_MODEL).iterdir()} == default_before  # untouched
    card = (hub / name / 'README.md').read_text()
    assert f"hf-hub:{zoo.HF_ORG}/{name}'" in card and f'# Model card for {name}' in card
    cfg = json.loads((hub / name / 'config.json').read_text())
    assert cfg['mlan_timm'] == dict(name=name, model_kwargs={'widths': [4, 8, 16]}, repo_id=f'{zoo.HF_ORG}/{name}')
    loaded = timm.create_model(f'local-dir:{hub / name}', pretrained=True).eval()  # model_args rebuild the variant
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    # an explicit tag; a tag folder holding another variant is not replaced
    assert mexport.main(['--model', TINY_MODEL, '--weights', str(vpath), '--hub-dir', str(hub),
                         '--model-kwargs', 'widths=[4,8,16]', '--tag', 'narrow']) == 0
    assert (hub / f'{TINY_MODEL}.narrow' / 'model.safetensors').is_file()
    assert mexport.main(['--model', TINY_MODEL, '--weights', str(path), '--hub-dir', str(hub), '--tag', 'narrow']) == 2
    assert 'holds an export with model_args' in capsys.readouterr().err
    # the default repo is refused for a variant
    assert mexport.main(['--model', TINY_MODEL, '--weights', str(vpath), '--hub-dir', str(hub),
                         '--model-kwargs', 'widths=[4,8,16]', '--repo-id', f'{zoo.HF_ORG}/{TINY_MODEL}']) == 2
    assert "its repo 'mlan-timm/resnet14_cifar10' is the default model's" in capsys.readouterr().err


def test_push_of_a_variant_goes_to_its_own_repo(variant_weights, tmp_path, monkeypatch, capsys):
    _, vpath = variant_weights
    hub = tmp_path / 'hub'
    mexport.export_model(TINY_MODEL, hub, weights=str(vpath), model_kwargs={'widths': [4, 8, 16]}, tag='narrow')
    fake = mock.Mock()
    fake.return_value.upload_folder.return_value = mock.Mock(commit_url='u')
    monkeypatch.setattr('huggingface_hub.HfApi', fake)
    monkeypatch.setenv('HF_TOKEN', 'hf_env')
    assert mexport.push_main(['--model', TINY_MODEL, '--tag', 'narrow', '--hub-dir', str(hub)]) == 0
    assert fake.return_value.create_repo.call_args.kwargs['repo_id'] == f'{zoo.HF_ORG}/{TINY_MODEL}.narrow'
    # an older export of a variant in the default folder is not pushed to the default repo
    (hub / f'{TINY_MODEL}.narrow').rename(hub / TINY_MODEL)
    fake.reset_mock()
    assert mexport.push_main(['--model', TINY_MODEL, '--hub-dir', str(hub)]) == 2
    assert "is the default model's, which it would replace" in capsys.readouterr().err
    fake.return_value.upload_folder.assert_not_called()
    assert mexport.push_main(['--model', 'resnet20_cifar10', '--hub-dir', str(hub)]) == 2
    assert 'no export folder' in capsys.readouterr().err


def test_export_files_and_folder_honour_the_umask(weights, tmp_path):
    _, path = weights
    for umask, fmode, dmode in ((0o022, 0o644, 0o755), (0o027, 0o640, 0o750)):
        old = os.umask(umask)
        try:
            out = mexport.export_model(TINY_MODEL, tmp_path / f'hub{umask:o}', weights=str(path))
        finally:
            os.umask(old)
        assert out.stat().st_mode & 0o777 == dmode
        assert {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()} == \
            {'README.md': fmode, 'config.json': fmode, 'model.safetensors': fmode}


def test_unwritable_hub_dir_is_a_clear_error(weights, tmp_path, capsys, monkeypatch):
    """Root ignores permission bits: a hub dir below a regular file, and a monkeypatched os.access."""
    _, path = weights
    (tmp_path / 'file').write_text('x')
    bad = tmp_path / 'file' / 'hub'
    assert mexport.main(['--model', TINY_MODEL, '--weights', str(path), '--hub-dir', str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith('mlan-export: error: --hub-dir ') and 'is a file, not a folder' in err
    ro = tmp_path / 'ro'
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, 'access', lambda p, mode, **k: False if str(p) == str(ro) else real_access(p, mode, **k))
    assert mexport.main(['--model', TINY_MODEL, '--weights', str(path), '--hub-dir', str(ro)]) == 2
    err = capsys.readouterr().err
    assert err.startswith('mlan-export: error: --hub-dir ') and 'is not writable' in err and 'Traceback' not in err
    assert list(ro.iterdir()) == []


def test_missing_train_log_is_reported_before_any_work(weights, tmp_path, capsys, monkeypatch):
    _, path = weights
    monkeypatch.setattr(mexport, 'create_model', mock.Mock(side_effect=AssertionError('model built')))
    assert mexport.main(['--model', TINY_MODEL, '--weights', str(path), '--hub-dir', str(tmp_path / 'hub'),
                         '--train-log', 'nope/log.jsonl']) == 2
    assert capsys.readouterr().err == 'mlan-export: error: Training log file not found: nope/log.jsonl\n'


# ----------------------------------------------------------------------------------------------------------------
# Results of another model or other weights, and malformed inputs, are refused with a clear error
# ----------------------------------------------------------------------------------------------------------------
def _export_argv(path, tmp_path, *extra):
    return ['--model', TINY_MODEL, '--weights', str(path), '--hub-dir', str(tmp_path / 'hub'), *extra]


def _refused(capsys, tmp_path, *texts):
    """The export failed with one ``mlan-export: error:`` line holding ``texts``, and wrote nothing."""
    err = capsys.readouterr().err
    assert err.startswith('mlan-export: error: ') and err.count('\n') == 1 and 'Traceback' not in err, err
    assert all(t in err for t in texts), err
    assert not (tmp_path / 'hub' / TINY_MODEL).exists()
    return err


def _eval_json(tmp_path, **fields):
    ev = dict(model=TINY_MODEL, weights='w.safetensors', dataset='cifar10', split='test', images=30, top1=42.5,
              top5=88.75, loss=1.6, model_kwargs={}, subset=None)
    path = tmp_path / 'eval.json'
    path.write_text(json.dumps(dict(ev, **fields)))
    return path


@pytest.mark.parametrize('fields, texts', [
    (dict(model='se_resnet14_cifar10'), ['is for model se_resnet14_cifar10, not resnet14_cifar10']),
    (dict(model='hf-hub:mlan-timm/se_resnet14_cifar10'), ['is for model hf-hub:mlan-timm/se_resnet14_cifar10, not']),
    (dict(model_kwargs={'widths': [4, 8, 16]}), ["with model_kwargs {'widths': [4, 8, 16]}, not {}"]),
    (dict(dataset='cifar100'), ['holds cifar100 results, not cifar10']),
    (dict(weights='model.safetensors'), ['results of weights model.safetensors, not of the exported file '
                                         'w.safetensors']),
    (dict(weights='pretrained'), ['published weights of resnet14_cifar10 (--pretrained), not of the exported file']),
    (dict(weights='w.safetensors (ema)'), ['the EMA weights of w.safetensors, but this export is of its non-EMA']),
])
def test_eval_json_of_another_model_or_other_weights_is_refused(weights, tmp_path, capsys, fields, texts):
    _, path = weights
    ev = _eval_json(tmp_path, **fields)
    assert mexport.main(_export_argv(path, tmp_path, '--eval-json', str(ev))) == 2
    err = _refused(capsys, tmp_path, f'--eval-json {ev} ', *texts)
    assert f'mlan-eval --model {TINY_MODEL} --weights FILE --json' in err


def test_eval_results_are_checked_in_the_python_api(weights, tmp_path):
    _, path = weights
    with pytest.raises(mexport.UsageError, match=r'^eval_results is for model se_resnet14_cifar10, not '
                                                 r'resnet14_cifar10 \(the model exported\)'):
        mexport.export_model(TINY_MODEL, tmp_path / 'hub', weights=str(path),
                             eval_results=dict(model='se_resnet14_cifar10', top1=1.0))
    with pytest.raises(mexport.UsageError, match=r'^eval_results is a JSON list, not an object'):
        mexport.export_model(TINY_MODEL, tmp_path / 'hub', weights=str(path), eval_results=[])
    assert not (tmp_path / 'hub').exists()


@pytest.mark.parametrize('ev', [
    dict(model='resnet14_cifar10.narrow'),  # a pretrained tag: same architecture
    dict(model='hf-hub:mlan-timm/resnet14_cifar10.narrow@main'),
    dict(model=TINY_MODEL, model_kwargs={'num_classes': 10}),  # set by the dataset anyway
    dict(weights='/somewhere/else/w.safetensors'),  # older files: a path; only its file name is compared
    dict(top1=42.5, top5=88.75),  # older files without model, model_kwargs, weights
])
def test_eval_results_of_these_weights_are_accepted(ev, tmp_path):
    assert mexport.check_eval_results(ev, TINY_MODEL, {}, 'cifar10', str(tmp_path / 'w.safetensors')) is ev


def test_eval_of_a_weights_folder_matches_an_export_of_its_file_and_back(tmp_path, cifar_folder, capsys):
    """mlan-eval of ``--weights FOLDER`` records the file it resolves (model.safetensors) and the weights' digest: an
    export of ``FOLDER/model.safetensors`` takes it, and the other way round. The digest decides, not the name: a
    renamed copy of the weights takes the results, other weights under the same name do not; without a digest (an
    older mlan-eval file) the file name is compared."""
    from mlan_timm.tools import eval as meval
    torch.manual_seed(5)
    run = tmp_path / 'run'
    run.mkdir()
    save_file({k: v.contiguous() for k, v in timm.create_model(TINY_MODEL).state_dict().items()},
              str(run / 'model.safetensors'))
    common = ['--model', TINY_MODEL, '--data-dir', str(cifar_folder), '--subset', '6', '--workers', '0', '--json']
    for eval_weights, export_weights in ((run, run / 'model.safetensors'), (run / 'model.safetensors', run)):
        assert meval.main(common + ['--weights', str(eval_weights)]) == 0
        ev = json.loads(capsys.readouterr().out)
        assert ev['weights'] == 'model.safetensors'
        out = mexport.export_model(TINY_MODEL, tmp_path / 'hub', weights=str(export_weights), eval_results=ev)
        card = (out / 'README.md').read_text()
        assert f"| these weights, `mlan-eval` (6 test images) | - | {ev['top1']:.2f} |" in card
    from mlan_timm.pretrained import weights_digest
    assert ev['weights_digest'] == weights_digest(load_file(run / 'model.safetensors'))
    (tmp_path / 'eval.json').write_text(json.dumps(ev))
    renamed = tmp_path / 'w.safetensors'
    renamed.write_bytes((run / 'model.safetensors').read_bytes())
    assert mexport.main(['--model', TINY_MODEL, '--weights', str(renamed), '--hub-dir', str(tmp_path / 'hub2'),
                         '--eval-json', str(tmp_path / 'eval.json')]) == 0
    other = tmp_path / 'other'
    other.mkdir()
    torch.manual_seed(6)
    save_file({k: v.contiguous() for k, v in timm.create_model(TINY_MODEL).state_dict().items()},
              str(other / 'model.safetensors'))
    capsys.readouterr()
    assert mexport.main(['--model', TINY_MODEL, '--weights', str(other), '--hub-dir', str(tmp_path / 'hub3'),
                         '--eval-json', str(tmp_path / 'eval.json')]) == 2
    err = capsys.readouterr().err
    assert 'holds results of other weights than those exported (weights digest' in err
    assert not (tmp_path / 'hub3').exists()
    (tmp_path / 'old.json').write_text(json.dumps({k: v for k, v in ev.items() if k != 'weights_digest'}))
    assert mexport.main(['--model', TINY_MODEL, '--weights', str(renamed), '--hub-dir', str(tmp_path / 'hub4'),
                         '--eval-json', str(tmp_path / 'old.json')]) == 2
    assert 'results of weights model.safetensors, not of the exported file w.safetensors' in capsys.readouterr().err


def test_eval_of_a_runs_checkpoint_matches_an_export_of_its_final_weights(tmp_path, cifar_folder, train_args,
                                                                         capsys):
    """A finished mlan-train run's last.pth ('model' entry) and model.safetensors hold the same weights: the digest
    lets an export of either take an mlan-eval of the other, which file names could not."""
    from mlan_timm.tools import eval as meval
    from mlan_timm.tools import train as mtrain
    run = tmp_path / 'run'
    assert mtrain.main(train_args(cifar_folder, run, epochs=1, extra=['--max-steps', '1'])) == 0
    capsys.readouterr()
    assert meval.main(['--model', TINY_MODEL, '--checkpoint', str(run), '--data-dir', str(cifar_folder),
                       '--workers', '0', '--json']) == 0
    ev = json.loads(capsys.readouterr().out)
    out = mexport.export_model(TINY_MODEL, tmp_path / 'hub', weights=str(run), eval_results=ev)
    card = (out / 'README.md').read_text()
    assert f"| these weights, `mlan-eval` (20 test images) | - | {ev['top1']:.2f} |" in card
    assert f"- **Weights digest:** `{ev['weights_digest']}`" in card


def test_eval_of_an_export_folder_through_local_dir_is_accepted(variant_weights, tmp_path):
    """``mlan-eval --model local-dir:FOLDER --pretrained`` evaluates FOLDER/model.safetensors with the folder's
    model_args: re-exporting that file takes the results; another variant's export is refused."""
    _, vpath = variant_weights
    kwargs = {'widths': [4, 8, 16]}
    folder = mexport.export_model(TINY_MODEL, tmp_path / 'hub', weights=str(vpath), model_kwargs=kwargs)
    ev = dict(model=f'local-dir:{folder}', weights='pretrained', model_kwargs={}, dataset='cifar10', top1=10.0)
    out = mexport.export_model(TINY_MODEL, tmp_path / 'again', weights=str(folder), model_kwargs=kwargs,
                               eval_results=ev)
    assert '| these weights, `mlan-eval` (not available test images) | - | 10.00 |' in (out / 'README.md').read_text()
    with pytest.raises(mexport.UsageError, match=r"with model_kwargs \{'widths': \[4, 8, 16\]\}, not \{\} "
                                                 r"\(this export's --model-kwargs\)"):
        mexport.export_model(TINY_MODEL, tmp_path / 'other', weights=str(folder), eval_results=ev)


def test_checkpoint_ema_must_match_the_evaluated_weights():
    ev = dict(model=TINY_MODEL, weights='last.pth (ema)')
    assert mexport.check_eval_results(ev, TINY_MODEL, {}, 'cifar10', 'run/last.pth', use_ema=True) is ev
    with pytest.raises(mexport.UsageError, match=r'the EMA weights of last\.pth, but this export is of its non-EMA'):
        mexport.check_eval_results(ev, TINY_MODEL, {}, 'cifar10', 'run/last.pth', use_ema=False)
    with pytest.raises(mexport.UsageError, match=r'the non-EMA weights of last\.pth, but this export is of its EMA'):
        mexport.check_eval_results(dict(ev, weights='last.pth'), TINY_MODEL, {}, 'cifar10', 'run/last.pth',
                                   use_ema=True)


@pytest.mark.parametrize('content, text', [
    ('[1, 2]', 'is a JSON list, not an object'),
    ('null', 'is a JSON null, not an object'),
    ('"results"', 'is a JSON string, not an object'),
    (json.dumps(dict(model=TINY_MODEL, top1='42.5')), "top1 is '42.5', not a number"),
    (json.dumps(dict(model=['resnet14_cifar10'])), "model is ['resnet14_cifar10'], not a string"),
    (json.dumps(dict(model=TINY_MODEL, model_kwargs=['widths=[4,8,16]'])), 'model_kwargs is '),
    ('{"top1": 1', 'is not valid JSON'),
])
def test_malformed_eval_json_is_a_clear_error(weights, tmp_path, capsys, content, text):
    _, path = weights
    ev = tmp_path / 'eval.json'
    ev.write_text(content)
    assert mexport.main(_export_argv(path, tmp_path, '--eval-json', str(ev))) == 2
    _refused(capsys, tmp_path, str(ev), text)


def test_binary_eval_json_is_a_clear_error(weights, tmp_path, capsys):
    _, path = weights
    (tmp_path / 'eval.json').write_bytes(b'\xff\xfe\x00garbage')
    assert mexport.main(_export_argv(path, tmp_path, '--eval-json', str(tmp_path / 'eval.json'))) == 2
    _refused(capsys, tmp_path, f"--eval-json file {tmp_path / 'eval.json'} is not valid JSON")


@pytest.mark.parametrize('args, texts', [
    (dict(model='se_resnet14_cifar10', model_kwargs=[]), ['is for model se_resnet14_cifar10, not resnet14_cifar10']),
    (dict(model=TINY_MODEL, model_kwargs=['widths=[4,8,16]']), ["with model_kwargs {'widths': [4, 8, 16]}, not {}"]),
])
def test_train_log_of_another_models_run_is_refused(weights, tmp_path, capsys, args, texts):
    _, path = weights
    log = _log(tmp_path)
    recorded = json.loads((log.parent / 'args.json').read_text())
    (log.parent / 'args.json').write_text(json.dumps(dict(recorded, **args)))
    assert mexport.main(_export_argv(path, tmp_path, '--train-log', str(log))) == 2
    _refused(capsys, tmp_path, f'--train-log {log} ', *texts, f"args.json: {log.parent / 'args.json'}")


def test_train_log_of_a_real_run_is_checked_against_its_args_json(tmp_path, cifar_folder, train_args, capsys):
    """mlan-train's args.json records --model-kwargs as KEY=VALUE strings: its run is taken for the same variant
    only."""
    from mlan_timm.tools import train as mtrain
    run = tmp_path / 'run'
    assert mtrain.main(train_args(cifar_folder, run, epochs=1,
                                  extra=['--max-steps', '1', '--model-kwargs', 'drop_rate=0.5'])) == 0
    capsys.readouterr()
    hub = tmp_path / 'hub'
    out = mexport.export_model(TINY_MODEL, hub, weights=str(run), model_kwargs={'drop_rate': 0.5},
                               train_log=run / 'log.jsonl')
    card = (out / 'README.md').read_text()
    assert '- **Epochs run:** 1 ' in card
    assert "- **Where it trained** (1 session(s), from the run's `args.json`):\n  - epochs 0-0, started 20" in card
    assert f"torch {torch.__version__}" in card.split('Where it trained')[1].split('\n')[1]
    with pytest.raises(mexport.UsageError, match=r"is for resnet14_cifar10 with model_kwargs \{'drop_rate': 0\.5\}, "
                                                 r"not \{\} \(this export's --model-kwargs\)"):
        mexport.export_model(TINY_MODEL, hub, weights=str(run), train_log=run / 'log.jsonl')


def test_card_lists_the_sessions_that_trained_epochs():
    sessions = [dict(first_epoch=e, started=f's{i}', machine=f'm{i}', code='c', mlan_timm='v')
                for i, e in enumerate([0, 2, 2, 5])]
    lines = mexport._session_lines(sessions, 7)
    assert lines == ["- **Where it trained** (3 session(s), from the run's `args.json`):",
                     '  - epochs 0-1, started s0: m0; code c, mlan-timm v',  # s1 stopped before an epoch ended
                     '  - epochs 2-4, started s2: m2; code c, mlan-timm v',
                     '  - epochs 5-6, started s3: m3; code c, mlan-timm v']
    assert mexport._session_lines(sessions, None)[-1].startswith('  - from epoch 5, started s3')
    for bad in (None, [], 'x', [dict(first_epoch='0')], [1]):
        assert mexport._session_lines(bad, 3) == []
    # a run resumed at epoch 4 by a version that records sessions, started by one that did not
    assert mexport._session_lines(sessions[3:], 7) == [
        "- **Where it trained** (2 session(s), from the run's `args.json`):",
        '  - epochs 0-4: not available (trained before mlan-train recorded sessions)',
        '  - epochs 5-6, started s3: m3; code c, mlan-timm v']


@pytest.mark.parametrize('args_json, log_lines, texts', [
    ('{"epochs": 3', None, ["args.json (the run's arguments beside --train-log", 'is not valid JSON']),
    ('["resnet14_cifar10"]', None, ['args.json', 'is a JSON list, not an object']),
    (json.dumps(dict(mean='0.5')), None, ["mean is '0.5', not a list of numbers"]),
    (json.dumps(dict(model_kwargs='widths=[4,8,16]')), None, ['model_kwargs is ', 'not a list of KEY=VALUE strings']),
    (None, ['{"epoch": 0, "test_top1": 1.0}', '', '[0, 1.0]'], ['line 3 is a JSON list, not an object']),
    (None, ['{"epoch": 0, "test_top1": "45.0"}'], ["line 1: test_top1 is '45.0', not a number"]),
])
def test_malformed_train_log_or_args_json_is_a_clear_error(weights, tmp_path, capsys, args_json, log_lines, texts):
    _, path = weights
    log = _log(tmp_path)
    if args_json is not None:
        (log.parent / 'args.json').write_text(args_json)
    if log_lines is not None:
        log.write_text('\n'.join(log_lines) + '\n')
    assert mexport.main(_export_argv(path, tmp_path, '--train-log', str(log))) == 2
    _refused(capsys, tmp_path, str(log), *texts)
