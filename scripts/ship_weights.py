#!/usr/bin/env python3
"""Ship a finished training run as a model's pretrained weights (issue 9, items 4 and 5).

``python scripts/ship_weights.py runs/state/<model> --data-dir ../shared/data [--tag paper]``

1. checks the run: finished (``summary.json``, ``model.safetensors``, every epoch of ``args.json`` logged), the
   registered architecture (no ``--model-kwargs``), the whole train and test split, and for the tag ``paper`` the
   paper recipe (every recipe flag at mlan-train's paper default, none changed at a resume; any seed); and that the
   weights manifest does not list ``<model>.<tag>`` yet (``--replace`` to replace it);
2. evaluates ``model.safetensors`` on the test split with ``mlan-eval`` (in this process);
3. stages the bundle in a temporary weights folder and checks, in a fresh process with ``HF_HUB_OFFLINE=1`` and
   without ``import mlan_timm`` (the autoload hook registers the models), that ``timm.create_model("<model>",
   pretrained=True)`` loads these weights (same logits as the run's file) and that
   ``timm.list_models(pretrained=True)`` lists ``<model>.<tag>``;
4. exports ``<hub dir>/<model>/`` with ``mlan-export`` (config.json, model.safetensors, model card with the
   evaluation, the run's final- and best-epoch rows, the paper's number, the recipe and where it trained);
5. bundles it: ``<weights dir>/<model>.<tag>.safetensors`` and its sha256 under ``<model>.<tag>`` in the weights
   manifest (``mlan_timm/weights/MANIFEST.json``, or ``--weights-dir``), both written atomically, the manifest last;
6. regenerates README.md's weights table (``--render-readme`` does only this): ours at the final and the best
   epoch beside the paper's number, and MLAN's gain over its backbone shipped under the same tag.

Nothing in the package changes before step 5 (the hub folder at step 4). Then commit the weights, the manifest,
the hub folder and README.md. Prints one JSON line with the numbers.
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

from mlan_timm import pretrained, zoo  # noqa: E402  (after the path set-up, so the repo's package is used)
from mlan_timm.atomic import atomic_write, atomic_write_text  # noqa: E402
from mlan_timm.tools import eval as meval  # noqa: E402
from mlan_timm.tools import export as mexport  # noqa: E402
from mlan_timm.tools import train as mtrain  # noqa: E402
from mlan_timm.tools.common import UsageError, read_training_record, run_cli  # noqa: E402
from mlan_timm.tools.tables import update_file  # noqa: E402

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
        recipe = [k for k in mtrain.RESUME_REFUSED_FLAGS if k not in NOT_RECIPE]
        off = [f"{k}={args.get(k)!r} (paper: {paper.get(k)!r})" for k in recipe if args.get(k) != paper.get(k)]
        # a recipe flag changed at a resume (--override-resume-flags); --epochs may grow to the paper's
        changed = sorted({flag for o in args.get('resume_overrides') or [] for flag in (o.get('changes') or {})
                          if flag != '--epochs' and flag.lstrip('-').replace('-', '_') in recipe})
        off += [f"{flag} changed at a resume (args.json resume_overrides)" for flag in changed]
        if off:
            raise UsageError(f"{run}: not the paper recipe: {', '.join(off)}; ship it under another --tag")
    return args, summary


def _manifest_doc(weights_dir: Path) -> dict:
    """The manifest file as a whole (format, comment, weights), checked by :func:`pretrained.read_manifest`."""
    pretrained.read_manifest(weights_dir)  # PretrainedWeightsError naming the file if it is malformed
    path = weights_dir / pretrained.MANIFEST_NAME
    return json.loads(path.read_text(encoding='utf-8')) if path.is_file() else dict(format=1, weights={})


def bundle(run: Path, key: str, weights_dir: Path, doc: dict) -> dict:
    """Copy the run's weights into ``weights_dir`` as ``<key>.safetensors`` and write ``doc`` (the manifest) with
    their entry added; both atomically, the manifest last. Returns the entry."""
    file = f'{key}.safetensors'
    atomic_write(weights_dir / file, lambda tmp: shutil.copyfile(run / 'model.safetensors', tmp))
    entry = dict(file=file, sha256=pretrained.sha256_file(weights_dir / file))
    doc = dict(doc, weights=dict(doc.get('weights') or {}, **{key: entry}))
    atomic_write_text(weights_dir / pretrained.MANIFEST_NAME, json.dumps(doc, indent=2) + '\n')
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
    manifest = pretrained.read_manifest(weights_dir)
    records = {k: read_training_record(weights_dir / e['file']) or {} for k, e in manifest.items() if e.get('file')}
    cmd = '`python scripts/ship_weights.py --render-readme`'
    if not records:
        return (f"No weights are shipped yet (the weights manifest `mlan_timm/weights/MANIFEST.json` lists no bundled "
                f"file). Table generated by {cmd}.")
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
    try:
        update_file(readme, weights_table(weights_dir), TABLE_START, TABLE_END)
    except (OSError, ValueError) as e:
        raise UsageError(str(e)) from e


def ship(a) -> int:
    if a.render_readme:
        render_readme(Path(a.readme), Path(a.weights_dir))
        return 0
    if not a.run:
        raise UsageError('give the run folder to ship (or --render-readme)')
    run, tag = Path(a.run).resolve(), a.tag  # absolute: the load check runs in another working directory
    args, summary = check_run(run, tag)
    model = args['model']
    key = mexport.export_name(model, None, tag)  # checks the tag's spelling
    weights_dir = Path(a.weights_dir)
    doc = _manifest_doc(weights_dir)
    if key in doc['weights'] and not a.replace:
        raise UsageError(f"{weights_dir / pretrained.MANIFEST_NAME} already lists {key}: pass --replace to ship "
                         "these weights instead")
    ev = meval.run_eval(meval.build_parser().parse_args(
        ['--model', model, '--weights', str(run / 'model.safetensors'), '--data-dir', a.data_dir, '--no-progress',
         *(['--cache-dir', a.cache_dir] if a.cache_dir else [])]))
    # staged first: the package's weights, manifest, hub folder and README change only once the weights load
    with tempfile.TemporaryDirectory(prefix='ship-') as staging:
        bundle(run, key, Path(staging), doc)
        loaded = check_loading(model, tag, run, Path(staging))
    hub = mexport.export_model(model, a.hub_dir, weights=str(run / 'model.safetensors'), eval_results=ev,
                               train_log=run / 'log.jsonl')
    entry = bundle(run, key, weights_dir, doc)
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
