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
   logits as the run's file) and that ``timm.list_models(pretrained=True)`` lists ``<model>.<tag>``.

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


def ship(a) -> int:
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
    paper = mexport.paper_result(model, {})
    print(json.dumps(dict(model=key, sha256=entry['sha256'], eval_top1=ev['top1'], eval_top5=ev['top5'],
                          final_epoch_top1=summary.get('final_test_top1'),
                          best_epoch_top1=summary.get('best_test_top1'),
                          paper_top1=paper[0] if paper else None, hub=str(hub), **loaded)))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog='ship_weights', description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument('run', help='a finished mlan-train run folder (runs/state/<model>)')
    p.add_argument('--data-dir', required=True, help='the CIFAR data (../shared/data)')
    p.add_argument('--cache-dir', default=None)
    p.add_argument('--tag', default='paper', help='pretrained tag (paper: the run must follow the paper recipe)')
    p.add_argument('--weights-dir', default=str(pretrained.weights_dir()))
    p.add_argument('--hub-dir', default=str(REPO / 'hub'))
    p.add_argument('--replace', action='store_true', help='replace weights already shipped under this name')
    a = p.parse_args(argv)
    return run_cli('ship_weights', lambda: ship(a))


if __name__ == '__main__':
    sys.exit(main())
