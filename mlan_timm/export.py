"""Export trained weights as a Hugging Face Hub model folder, and push such a folder to the Hub.

``mlan-export`` writes ``<hub dir>/<model_name>/`` with timm's HF format (``config.json`` via timm's
``save_for_hf``: architecture, num_classes, label_names, pretrained_cfg, model_args), ``model.safetensors``
and a ``README.md`` model card built from evaluation results and the training log. The folder is assembled
in a temporary directory next to the target and swapped in, so an existing export is never half-overwritten.

``mlan-push`` uploads such a folder with ``huggingface_hub`` (needs a token: ``--token`` or ``$HF_TOKEN``).
"""
import argparse
import datetime
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from . import data as mdata
from .pretrained import PretrainedWeightsError
from .complexity import count_macs, count_params
from .train import UsageError, create_model, load_weights_into, model_kwargs_for_dataset, parse_model_kwargs

__all__ = ['count_macs', 'export_model', 'render_model_card', 'push_folder', 'main', 'push_main']

PAPER_DOI = '10.1109/ACCESS.2022.3210711'
NOT_AVAILABLE = 'not available'
CITATION = """@article{mlan2022,
  title   = {%s},
  journal = {IEEE Access},
  year    = {2022},
  doi     = {10.1109/ACCESS.2022.3210711},
}"""


def _read_jsonl(path: Path) -> List[Dict[str, Any]]:
    rows = []
    for i, line in enumerate(Path(path).read_text(encoding='utf-8').splitlines()):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise UsageError(f"Training log {path} line {i + 1} is not JSON: {e}") from e
    return rows


def _fmt(v, nd=2):
    return NOT_AVAILABLE if v is None else (f'{v:.{nd}f}' if isinstance(v, float) else str(v))


def render_model_card(info: Dict[str, Any]) -> str:
    """Markdown model card; every number comes from ``info`` (eval results, training log, measurements)."""
    name, ds = info['model_name'], info['dataset']
    ev, log, rec, paper = info.get('eval') or {}, info.get('train_log') or [], info.get('recipe') or {}, \
        info.get('paper') or {}
    last = log[-1] if log else {}
    ds_title = {'cifar10': 'CIFAR-10', 'cifar100': 'CIFAR-100'}[ds]
    lines = [
        '---', 'tags:', '- image-classification', '- timm', '- mlan-timm', 'library_name: timm',
        f"license: {info.get('license', 'apache-2.0')}", 'datasets:', f'- {ds}', '---', '',
        f'# Model card for {name}', '',
        f"A {info.get('description') or 'CIFAR ResNet'} image classifier for {ds_title} (32x32 inputs), from the "
        f'[mlan-timm](https://pypi.org/project/mlan-timm/) package implementing the Multi-Level Attention Network '
        f'(MLAN, IEEE Access 2022, doi:[{PAPER_DOI}](https://doi.org/{PAPER_DOI})).', '',
        '## Model details', '',
        f"- **Model type:** image classification, `{info['architecture']}`",
        f"- **Dataset:** {ds_title} ({info['num_classes']} classes)",
        f"- **Params (M):** {info['params'] / 1e6:.3f} ({info['params']:,})",
        f"- **MACs (M) at 3x32x32:** {info['macs'] / 1e6:.2f} (torch.utils.flop_counter.FlopCounterMode, FLOPs/2)",
        f"- **Model args:** `{json.dumps(info.get('model_args') or {})}`",
        f"- **License:** {info.get('license', 'apache-2.0')}", '',
        '## Results', '',
        '| metric | this checkpoint | paper |', '|---|---|---|',
        f"| {ds_title} test top-1 (%) | {_fmt(ev.get('top1'))} | {paper.get('top1', NOT_AVAILABLE)} |",
        f"| {ds_title} test top-5 (%) | {_fmt(ev.get('top5'))} | {paper.get('top5', NOT_AVAILABLE)} |",
        f"| {ds_title} test loss | {_fmt(ev.get('loss'), 4)} | - |", '',
    ]
    if ev:
        lines += [f"Evaluated with `mlan-eval` on {ev.get('images', NOT_AVAILABLE)} images of the {ds_title} "
                  f"{ev.get('split', 'test')} split ({ev.get('weights', 'exported weights')})."]
    else:
        lines += ['No evaluation results were supplied to the export.']
    if paper.get('source'):
        lines += [f"Paper column: {paper['source']}."]
    else:
        lines += ['Paper column: no paper numbers were supplied to the export.']
    lines += ['']
    if log:
        lines += ['## Training', '',
                  f"- **Epochs run:** {len(log)} (last logged epoch index {last.get('epoch')})",
                  f"- **Final-epoch test top-1 / top-5 (%):** {_fmt(last.get('test_top1'))} / "
                  f"{_fmt(last.get('test_top5'))}"
                  + (f" (on a {rec['test_subset']}-image subset of the test split)" if rec.get('test_subset') else ""),
                  f"- **Final-epoch train loss:** {_fmt(last.get('train_loss'), 4)}",
                  f"- **Total training time (s):** {_fmt(sum(r.get('time', 0.0) for r in log), 0)}"]
        if rec:
            keys = ['epochs', 'batch_size', 'opt', 'lr', 'momentum', 'weight_decay', 'sched', 'decay_milestones',
                    'decay_rate', 'warmup_epochs', 'smoothing', 'model_ema', 'seed', 'subset', 'test_subset', 'amp']
            lines += ['- **Recipe (mlan-train arguments):** ' + ', '.join(
                f"{k}={rec[k]}" for k in keys if k in rec and rec[k] not in (None, False))]
        lines += ['- Recipe: RandomCrop(32, padding=4) + horizontal flip, per-channel CIFAR normalisation; '
                  'milestones are 0-based epochs from which the lower lr applies.', '']
    else:
        lines += ['## Training', '', 'No training log was supplied to the export.', '']
    lines += [
        '## Usage', '', '```python', 'import timm, mlan_timm  # noqa: F401  (registers the architectures)',
        f"model = timm.create_model('hf-hub:{info['repo_id']}', pretrained=True).eval()",
        'cfg = timm.data.resolve_data_config({}, model=model)',
        'transform = timm.data.create_transform(**cfg)', '```', '',
        '## Citation', '', '```bibtex', CITATION % info.get('paper_name', 'Multi-Level Attention Network'), '```', '',
        f"<sub>Generated by mlan-export on {info.get('date')}.</sub>", '']
    return '\n'.join(lines)


def _load_json_arg(path: Optional[str], what: str):
    if not path:
        return None
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{what} file not found: {p}")
    try:
        return json.loads(p.read_text(encoding='utf-8'))
    except json.JSONDecodeError as e:
        raise UsageError(f"{what} file {p} is not valid JSON: {e}") from e


def export_model(model_name: str, hub_dir: os.PathLike = 'hub', weights: Optional[str] = None,
                 checkpoint: Optional[str] = None, use_ema: bool = False, model_kwargs: Optional[dict] = None,
                 eval_results: Optional[Dict[str, Any]] = None, train_log: Optional[os.PathLike] = None,
                 paper: Optional[Dict[str, Any]] = None, repo_id: Optional[str] = None,
                 model: Optional[torch.nn.Module] = None) -> Path:
    """Write ``<hub_dir>/<model_name>/`` (config.json, model.safetensors, README.md); returns that path.

    ``paper`` is ``{'top1': ..., 'top5': ..., 'source': 'Table N of the paper'}`` or ``None`` ("not available").
    """
    from timm.models import save_for_hf
    base = model_name.split('.')[0]
    model_kwargs = dict(model_kwargs or {})
    if use_ema and not checkpoint:
        raise UsageError("--ema picks the EMA weights of an mlan-train checkpoint: it needs --checkpoint FILE, "
                         "not --weights")
    dataset = mdata.dataset_for_model(base)
    if model is None:
        if dataset is None:
            raise UsageError(f"Cannot tell the dataset from model name {model_name!r}")
        model = create_model(model_name, **model_kwargs_for_dataset(model_kwargs, dataset))
        if weights or checkpoint:
            load_weights_into(model, weights or checkpoint, model_name, use_ema=use_ema)
        else:
            raise UsageError("Nothing to export: give --weights FILE or --checkpoint FILE")
    model = model.cpu().eval()
    dataset = dataset or ('cifar100' if model.num_classes == 100 else 'cifar10')
    repo_id = repo_id or f"mlan-timm/{base}"

    log_rows = _read_jsonl(Path(train_log)) if train_log else []
    recipe = {}
    if train_log and (Path(train_log).parent / 'args.json').is_file():
        recipe = json.loads((Path(train_log).parent / 'args.json').read_text(encoding='utf-8'))
    elif checkpoint:
        try:
            recipe = torch.load(checkpoint, map_location='cpu', weights_only=False).get('args', {}) or {}
        except Exception:
            recipe = {}

    pcfg = dict(getattr(model, 'pretrained_cfg', {}) or {})
    model_config = {}
    if pcfg.get('label_names') and len(pcfg['label_names']) == model.num_classes:
        model_config['label_names'] = list(pcfg['label_names'])
    hub_root = Path(hub_dir)
    hub_root.mkdir(parents=True, exist_ok=True)
    target = hub_root / base
    tmp = Path(tempfile.mkdtemp(prefix=f'.{base}.', dir=hub_root))
    try:
        save_for_hf(model, str(tmp), model_config=model_config, model_args=model_kwargs or None,
                    safe_serialization=True)
        cfg = json.loads((tmp / 'config.json').read_text(encoding='utf-8'))
        info = dict(model_name=base, dataset=dataset, num_classes=model.num_classes,
                    architecture=cfg.get('architecture', base), params=count_params(model),
                    macs=count_macs(model, tuple(pcfg.get('input_size', (3, 32, 32)))),
                    model_args=cfg.get('model_args'), license=pcfg.get('license', 'apache-2.0'),
                    paper_name=pcfg.get('paper_name') or 'Multi-Level Attention Network',
                    eval=eval_results, train_log=log_rows, recipe=recipe, paper=paper, repo_id=repo_id,
                    date=datetime.date.today().isoformat())
        (tmp / 'README.md').write_text(render_model_card(info), encoding='utf-8')
        os.chmod(tmp, 0o755)
        _swap_in(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _swap_in(new: Path, target: Path):
    """Move folder ``new`` onto ``target``: old -> backup, new -> target, backup back on failure.

    The backup is deleted only once the new folder is in place, so a failure at any step leaves the previous
    export where it was."""
    backup = None
    if target.exists():
        backup = target.parent / f'.{target.name}.old-{os.getpid()}'
        if backup.exists():
            shutil.rmtree(backup)
        os.replace(target, backup)
    try:
        os.replace(new, target)
    except BaseException:
        if backup is not None:
            os.replace(backup, target)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='mlan-export', description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--model', required=True)
    p.add_argument('--model-kwargs', nargs='*', default=[], metavar='KEY=VALUE')
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument('--weights', help='a .safetensors file (e.g. <run>/model.safetensors)')
    src.add_argument('--checkpoint', help='an mlan-train checkpoint (<run>/last.pth)')
    p.add_argument('--ema', action='store_true', help="export the checkpoint's EMA weights")
    p.add_argument('--hub-dir', default='hub', help='parent folder of the export')
    p.add_argument('--repo-id', default=None, help='Hub repo id for the usage snippet (default mlan-timm/<model>)')
    p.add_argument('--eval-json', default=None, help='output of `mlan-eval --json` for these weights')
    p.add_argument('--train-log', default=None, help="the run's log.jsonl")
    p.add_argument('--paper-results', default=None,
                   help='JSON {model_name: {"top1": ..., "top5": ..., "source": "..."}}; without it the paper '
                        "column reads 'not available'")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        ev = _load_json_arg(args.eval_json, '--eval-json')
        paper_all = _load_json_arg(args.paper_results, '--paper-results') or {}
        paper = paper_all.get(args.model.split('.')[0])
        out = export_model(args.model, args.hub_dir, weights=args.weights, checkpoint=args.checkpoint,
                           use_ema=args.ema, model_kwargs=parse_model_kwargs(args.model_kwargs), eval_results=ev,
                           train_log=args.train_log, paper=paper, repo_id=args.repo_id)
    except (UsageError, PretrainedWeightsError) as e:
        print(f"mlan-export: error: {e}", file=sys.stderr)
        return 2
    print(f"exported {args.model} -> {out}")
    return 0


# ----------------------------------------------------------------------------------------------------------
# push
# ----------------------------------------------------------------------------------------------------------

REQUIRED_FILES = ('config.json', 'model.safetensors', 'README.md')


def push_folder(folder: os.PathLike, repo_id: str, token: Optional[str], private: bool = False,
                revision: Optional[str] = None, commit_message: Optional[str] = None, api=None) -> str:
    """Upload an exported folder to ``repo_id``; returns the commit URL. ``api`` defaults to ``HfApi(token)``."""
    folder = Path(folder)
    missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
    if missing:
        raise UsageError(f"{folder} is not an mlan-export folder: missing {', '.join(missing)}")
    if not token:
        raise UsageError("No Hugging Face token: pass --token or set HF_TOKEN (nothing was uploaded)")
    if api is None:
        from huggingface_hub import HfApi
        api = HfApi(token=token)
    api.create_repo(repo_id=repo_id, private=private, exist_ok=True, repo_type='model')
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type='model', revision=revision,
                             commit_message=commit_message or f'Upload {folder.name} (mlan-timm)',
                             allow_patterns=['*.json', '*.safetensors', '*.md'])
    return str(getattr(info, 'commit_url', info))


def build_push_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='mlan-push', description='Upload hub/<model>/ to the Hugging Face Hub.')
    p.add_argument('--model', required=True, help='model name = folder name under --hub-dir')
    p.add_argument('--hub-dir', default='hub')
    p.add_argument('--repo-id', default=None, help='default mlan-timm/<model>')
    p.add_argument('--token', default=None, help='default $HF_TOKEN')
    p.add_argument('--private', action='store_true')
    p.add_argument('--revision', default=None)
    p.add_argument('--commit-message', default=None)
    return p


def push_main(argv=None) -> int:
    args = build_push_parser().parse_args(argv)
    try:
        url = push_folder(Path(args.hub_dir) / args.model, args.repo_id or f'mlan-timm/{args.model}',
                          args.token or os.environ.get('HF_TOKEN'), private=args.private, revision=args.revision,
                          commit_message=args.commit_message)
    except UsageError as e:
        print(f"mlan-push: error: {e}", file=sys.stderr)
        return 2
    print(f"pushed {args.model} -> {url}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
