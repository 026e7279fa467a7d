#!/usr/bin/env python3
"""Ship a finished training run as a model's pretrained weights (issue 9, items 4 and 5).

``python scripts/ship_weights.py runs/state/<model> --data-dir ../shared/data [--tag paper]``

1. checks the run: finished (``summary.json``, ``model.safetensors``, every epoch of ``args.json`` logged), the
   registered architecture (no ``--model-kwargs``), the whole train and test split, and for the tag ``paper`` the
   paper recipe (every recipe flag at mlan-train's paper default; any seed);
2. evaluates ``model.safetensors`` on the test split with ``mlan-eval`` (in this process);
3. bundles it: ``<weights dir>/<model>.<tag>.safetensors`` and its sha256 under ``<model>.<tag>`` in the weights
   manifest (``mlan_timm/weights/MANIFEST.json``, or ``--weights-dir``), both written atomically; an existing entry
   is replaced only with ``--replace``;
4. exports ``<hub dir>/<model>/`` with ``mlan-export`` (config.json, model.safetensors, model card with the
   evaluation, the run's final- and best-epoch rows, the paper's number, the recipe and where it trained);
5. checks, in a fresh process with ``HF_HUB_OFFLINE=1`` and without ``import mlan_timm`` (the autoload hook
   registers the models), that ``timm.create_model("<model>", pretrained=True)`` loads these weights (same
   logits as the run's file) and that ``timm.list_models(pretrained=True)`` lists ``<model>.<tag>``;
6. regenerates README.md's weights table (``--render-readme`` does only this): ours at the final and the best
   epoch beside the paper's number, and MLAN's gain over its backbone shipped under the same tag.

Then commit the weights, the manifest and the hub folder. Prints one JSON line with the numbers.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mlan_timm import pretrained  # noqa: E402  (after the path set-up, so the repo's package is used)
from mlan_timm.atomic import atomic_write_text  # noqa: E402
from mlan_timm.tools import eval as meval  # noqa: E402
from mlan_timm.tools import export as mexport  # noqa: E402
from mlan_timm.tools import train as mtrain  # noqa: E402
from mlan_timm.tools.common import UsageError, run_cli  # noqa: E402

#: mlan-train flags that are not the recipe: the run's own identity and where its data lay.
NOT_RECIPE = ('model', 'pretrained', 'initial_weights', 'dataset', 'seed')


def check_run(run: Path, tag: str):
    """(args, summary) of a finished run fit to ship under ``tag``; UsageError naming what is missing or off."""
    for name in ('args.json', 'summary.json', 'model.safetensors', 'log.jsonl'):
        if not (run / name).is_file():
            raise UsageError(f"{run}: no {name}: not a finished mlan-train run")
    args = json.loads((run / 'args.json').read_text(encoding='utf-8'))
    summary = json.loads((run / 'summary.json').read_text(encoding='utf-8'))
    epochs = len((run / 'log.jsonl').read_text(encoding='utf-8').splitlines())
    if epochs != args.get('epochs'):
        raise UsageError(f"{run}: {epochs} epochs logged of the {args.get('epochs')} in args.json: not finished")
    if args.get('model_kwargs'):
        raise UsageError(f"{run}: trained with --model-kwargs {args['model_kwargs']}: only registered architectures "
                         "are shipped as pretrained weights")
    partial = {k: args.get(k) for k in ('subset', 'test_subset', 'max_steps') if args.get(k) is not None}
    if partial:
        flags = ', '.join(f"--{k.replace('_', '-')} {v}" for k, v in partial.items())
        raise UsageError(f"{run}: trained with {flags}: shipped weights train on the whole train split and report "
                         "the whole test split")
    if tag == 'paper':
        paper = vars(mtrain.build_parser('paper').parse_args(['--model', args['model']]))
        off = [k for k in mtrain.RESUME_REFUSED_FLAGS if k not in NOT_RECIPE and args.get(k) != paper.get(k)]
        if off or args.get('resume_overrides'):
            what = ', '.join(f"{k}={args.get(k)!r} (paper: {paper.get(k)!r})" for k in off) or \
                f"flags changed at a resume: {args['resume_overrides']}"
            raise UsageError(f"{run}: not the paper recipe: {what}; ship it under another --tag")
    return args, summary


def bundle(run: Path, key: str, weights_dir: Path, replace: bool) -> dict:
    """Copy the run's weights into ``weights_dir`` as ``<key>.safetensors`` and list them in its manifest."""
    manifest_path = weights_dir / pretrained.MANIFEST_NAME
    doc = json.loads(manifest_path.read_text(encoding='utf-8')) if manifest_path.is_file() else \
        dict(format=1, weights={})
    if key in doc['weights'] and not replace:
        raise UsageError(f"{manifest_path} already lists {key}: pass --replace to ship these weights instead")
    file = f'{key}.safetensors'
    weights_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{file}.', dir=weights_dir)
    os.close(fd)
    shutil.copyfile(run / 'model.safetensors', tmp)
    os.replace(tmp, weights_dir / file)
    entry = dict(file=file, sha256=pretrained.sha256_file(weights_dir / file))
    doc['weights'][key] = entry
    atomic_write_text(manifest_path, json.dumps(doc, indent=2) + '\n')
    return entry


CHECK = r"""
import json, sys, timm, torch
from safetensors.torch import load_file
name, tag, run_weights = sys.argv[1:4]
model = timm.create_model(name, pretrained=True).eval()
ref = timm.create_model(name).eval()
ref.load_state_dict(load_file(run_weights))
x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    same = torch.equal(model(x), ref(x))
print(json.dumps(dict(same_logits=same, listed=f'{name}.{tag}' in timm.list_models(pretrained=True))))
"""


def check_loading(model: str, tag: str, run: Path, weights_dir: Path) -> dict:
    """``timm.create_model(model, pretrained=True)`` in a fresh offline process that never imports mlan_timm."""
    env = dict(os.environ, HF_HUB_OFFLINE='1', MLAN_TIMM_WEIGHTS_DIR=str(weights_dir),
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    p = subprocess.run([sys.executable, '-c', CHECK, model, tag, str(run / 'model.safetensors')], env=env,
                       capture_output=True, text=True, cwd=str(weights_dir))
    if p.returncode != 0:
        raise UsageError(f"timm.create_model({model!r}, pretrained=True) failed in a fresh process:\n"
                         f"{p.stderr[-2000:]}")
    got = json.loads(p.stdout.strip().splitlines()[-1])
    if not (got['same_logits'] and got['listed']):
        raise UsageError(f"the shipped weights do not load as {model}.{tag}: {got}")
    return got


TABLE_START, TABLE_END = '<!-- weights-table:start -->', '<!-- weights-table:end -->'


def _pct(v) -> str:
    return 'n/a' if v is None else f'{v:.2f}'


def _diff(a, b) -> str:
    return 'n/a' if a is None or b is None else f'{a - b:+.2f}'


def weights_table(weights_dir: Path) -> str:
    """README's table of the shipped weights: ours (final and best epoch, from each bundled file's training record)
    beside the paper's number and MLAN's gain over its backbone shipped under the same tag."""
    from mlan_timm import zoo
    from mlan_timm.tools.common import read_training_record
    manifest = pretrained.read_manifest(weights_dir)
    records = {k: read_training_record(weights_dir / e['file']) or {} for k, e in manifest.items() if e.get('file')}
    cmd = '`python scripts/ship_weights.py --render-readme`'
    if not records:
        return (f"No weights are shipped yet (the weights manifest `mlan_timm/weights/MANIFEST.json` is empty). "
                f"Table generated by {cmd}.")
    lines = ['| weights | epochs | final-epoch top-1 | best-epoch top-1 (epoch) | paper, best epoch '
             '| ours best - paper | MLAN - backbone, final / best |', '|---|---|---|---|---|---|---|']
    for key, rec in records.items():
        name, _, tag = key.partition('.')
        paper = mexport.paper_result(name, {})
        mid = zoo.parse_model_name(name)
        backbone = records.get(f"{zoo.model_name('', mid.depth, mid.dataset)}.{tag}") if name.startswith('mlan_') \
            else None
        gain = (f"{_diff(rec.get('final_test_top1'), backbone.get('final_test_top1'))} / "
                f"{_diff(rec.get('best_test_top1'), backbone.get('best_test_top1'))}") if backbone else '-'
        paper_cell = f"{paper[0]:.2f} ({mexport._table_name(paper[1])})" if paper else 'not in the paper'
        lines.append(f"| `{key}` | {rec.get('epochs', 'n/a')} | {_pct(rec.get('final_test_top1'))} | "
                     f"{_pct(rec.get('best_test_top1'))} ({rec.get('best_epoch', 'n/a')}) | {paper_cell} | "
                     f"{_diff(rec.get('best_test_top1'), paper[0] if paper else None)} | {gain} |")
    return '\n'.join(lines + ['', f"Test top-1 in % on the whole test split, from the training record in each "
                              f"bundled file (`mlan_timm/weights/`); table generated by {cmd}."])


def render_readme(readme: Path, weights_dir: Path) -> None:
    """Replace the text between README's weights-table markers with :func:`weights_table`."""
    text = readme.read_text(encoding='utf-8')
    if TABLE_START not in text or TABLE_END not in text:
        raise UsageError(f"{readme} has no {TABLE_START} ... {TABLE_END} block")
    head, rest = text.split(TABLE_START, 1)
    tail = rest.split(TABLE_END, 1)[1]
    atomic_write_text(readme, f"{head}{TABLE_START}\n{weights_table(weights_dir)}\n{TABLE_END}{tail}")


def ship(a) -> int:
    if a.render_readme:
        render_readme(Path(a.readme), Path(a.weights_dir))
        return 0
    if not a.run:
        raise UsageError('give the run folder to ship (or --render-readme)')
    run, tag = Path(a.run), a.tag
    args, summary = check_run(run, tag)
    model = args['model']
    key = mexport.export_name(model, None, tag)  # checks the tag's spelling
    ev = meval.run_eval(meval.build_parser().parse_args(
        ['--model', model, '--weights', str(run / 'model.safetensors'), '--data-dir', a.data_dir, '--no-progress',
         *(['--cache-dir', a.cache_dir] if a.cache_dir else [])]))
    weights_dir = Path(a.weights_dir)
    entry = bundle(run, key, weights_dir, a.replace)
    hub = mexport.export_model(model, a.hub_dir, weights=str(run / 'model.safetensors'), eval_results=ev,
                               train_log=run / 'log.jsonl')
    loaded = check_loading(model, tag, run, weights_dir)
    render_readme(Path(a.readme), weights_dir)
    paper = mexport.paper_result(model, {})
    print(json.dumps(dict(model=key, sha256=entry['sha256'], eval_top1=ev['top1'], eval_top5=ev['top5'],
                          final_epoch_top1=summary.get('final_test_top1'),
                          best_epoch_top1=summary.get('best_test_top1'),
                          paper_top1=paper[0] if paper else None, hub=str(hub), **loaded)))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog='ship_weights', description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument('run', nargs='?', help='a finished mlan-train run folder (runs/state/<model>)')
    p.add_argument('--data-dir', default=str(REPO.parent / 'shared' / 'data'), help='the CIFAR data')
    p.add_argument('--cache-dir', default=None)
    p.add_argument('--tag', default='paper', help='pretrained tag (paper: the run must follow the paper recipe)')
    p.add_argument('--weights-dir', default=str(pretrained.weights_dir()))
    p.add_argument('--hub-dir', default=str(REPO / 'hub'))
    p.add_argument('--replace', action='store_true', help='replace weights already shipped under this name')
    p.add_argument('--readme', default=str(REPO / 'README.md'), help='whose weights table to regenerate')
    p.add_argument('--render-readme', action='store_true', help='only regenerate the README weights table')
    a = p.parse_args(argv)
    return run_cli('ship_weights', lambda: ship(a))


if __name__ == '__main__':
    sys.exit(main())
