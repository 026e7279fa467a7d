"""Export trained weights as a Hugging Face Hub model folder, and push such a folder to the Hub.

``mlan-export`` writes ``<hub dir>/<name>/`` with timm's HF format (``config.json`` via timm's
``save_for_hf``: architecture, num_classes, label_names, pretrained_cfg, model_args), ``model.safetensors``
and a ``README.md`` model card built from evaluation results, the training log and the paper's tables
(:mod:`mlan_timm.paper_tables`). The folder is assembled in a temporary directory next to the target and swapped
in, so an existing export is never half-overwritten.

``<name>`` is the model name for the model as registered (default kwargs), and ``<model>.<tag>`` for a variant
built with ``--model-kwargs`` (e.g. ``mlan_resnet20_cifar10.fusion_concat``, see :func:`export_name`), so a variant
never replaces the default model's folder or Hub repo; the Hub repo is ``mlan-timm/<name>`` unless ``--repo-id``
says otherwise. ``--tag`` names the variant explicitly.

``mlan-push`` uploads such a folder with ``huggingface_hub`` (needs a token: ``--token`` or ``$HF_TOKEN``).
"""
import argparse
import datetime
import json
import os
import re
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from .. import paper_tables, zoo
from ..atomic import honour_umask, make_temp_dir
from ..complexity import count_macs, count_params
from ..pretrained import weights_digest
from .common import (
    HelpFormatter,
    UsageError,
    check_writable_dir,
    create_model,
    format_model_kwargs,
    load_weights_into,
    model_kwargs_for_dataset,
    parse_model_kwargs,
    read_jsonl_numbered,
    read_training_record,
    resolve_dataset,
    resolve_weights_path,
    run_cli,
    summarize_history,
)

__all__ = ['count_macs', 'count_params', 'paper_variant_of', 'paper_result', 'export_name', 'export_model',
           'check_eval_results', 'check_eval_digest', 'render_model_card', 'push_folder', 'main', 'push_main']

NOT_AVAILABLE = 'not available'
NOT_IN_PAPER = 'not in the paper'
RECIPE_KEYS = ('recipe', 'epochs', 'batch_size', 'opt', 'lr', 'momentum', 'weight_decay', 'sched', 'decay_milestones',
               'decay_rate', 'warmup_epochs', 'smoothing', 'padding_mode', 'model_ema', 'seed', 'subset',
               'test_subset', 'amp')


# ----------------------------------------------------------------------------------------------------------------
# The paper's number for a model
# ----------------------------------------------------------------------------------------------------------------
def _paper_variants_of(model_name: str, model_kwargs: Optional[Dict[str, Any]] = None) -> List[str]:
    try:
        mid = zoo.parse_model_name(model_name)
    except ValueError:
        return []
    kwargs = {k: v for k, v in (model_kwargs or {}).items() if k != 'num_classes'}
    config = (mid.family, tuple(sorted(kwargs.items())))
    return [key for key, v in zoo.PAPER_VARIANTS.items() if v.config == config]


def paper_variant_of(model_name: str, model_kwargs: Optional[Dict[str, Any]] = None) -> Optional[str]:
    """The :data:`mlan_timm.zoo.PAPER_VARIANTS` key of a model (family + kwargs), or ``None`` if the paper has none.

    ``resnet20_cifar10`` -> ``backbone``, ``mlan_resnet20_cifar10`` -> ``mlan_sma_plus``, ``mlan_v2_...`` ->
    ``multilevel_sma_v2``, ``se_...`` -> ``classic_se``, ``mlan_...`` with ``attn='fma'`` -> ``fma``."""
    keys = _paper_variants_of(model_name, model_kwargs)
    return keys[0] if keys else None


def paper_result(model_name: str, model_kwargs: Optional[Dict[str, Any]] = None,
                 metric: str = 'top1') -> Optional[Tuple[float, str, str]]:
    """``(value, table, variant)`` the paper prints for this model (any variant with its configuration), or None."""
    try:
        mid = zoo.parse_model_name(model_name)
    except ValueError:
        return None
    for variant in _paper_variants_of(model_name, model_kwargs):
        value = paper_tables.paper_value(mid.dataset, variant, mid.depth, metric)
        if value is not None:
            table = paper_tables.records(dataset=mid.dataset, variant=variant, depth=mid.depth, metric=metric)[0].table
            return value, table, variant
    return None


# ----------------------------------------------------------------------------------------------------------------
# Model card
# ----------------------------------------------------------------------------------------------------------------
def _fmt(v, nd=2):
    return NOT_AVAILABLE if v is None else (f'{v:.{nd}f}' if isinstance(v, float) else str(v))


def _table_name(table_id: str) -> str:
    return f"Table {table_id[1:]}" if table_id.startswith('T') else table_id


def _model_kwargs_flag(kwargs: Dict[str, Any]) -> List[str]:
    """``['--model-kwargs', 'k=v', ...]`` for a shell command line (items quoted: ``'widths=[16, 32, 64]'`` stays one
    word), or ``[]`` without kwargs."""
    items = [shlex.quote(k) for k in format_model_kwargs(kwargs)]
    return ['--model-kwargs', *items] if items else []


def _measurement_lines(info: Dict[str, Any]) -> List[str]:
    """The card's "How the numbers were measured" section: the command behind each figure above it."""
    name, args = info['model_name'].split('.')[0], info.get('model_args') or {}  # no tag: kwargs say it
    ev, training, paper = info.get('eval') or {}, info.get('training') or {}, info.get('paper')
    create = f"timm.create_model('{name}'{''.join(f', {k}={v!r}' for k, v in sorted(args.items()))})"
    lines = ['## How the numbers were measured', '',
             '- **Params and MACs:** `python -c "import timm, mlan_timm; from mlan_timm.complexity import '
             f'count_params, count_macs; m = {create}; print(count_params(m), count_macs(m))"`']
    if ev:
        flags = _model_kwargs_flag(args) + \
            ([f"--split {ev['split']}"] if ev.get('split') not in (None, 'test') else []) + \
            ([f"--subset {ev['subset']}"] if ev.get('subset') else []) + \
            ([f"--amp {ev['amp']}"] if ev.get('amp') not in (None, 'none') else [])
        lines.append(f"- **`mlan-eval` row**, in this repository's folder: `mlan-eval --model {name} "
                     f"{' '.join(flags + [''])}--weights . --data-dir <CIFAR data> --json`")
    if training.get('final_epoch') is not None:
        lines.append('- **Training rows:** the run\'s `summary.json` (and `log.jsonl`), written by `mlan-train` with '
                     'the recipe under Training; the test split is evaluated after every epoch.')
    if paper is not None:
        lines.append(f"- **Paper row:** {_table_name(paper[1])} of the paper, as transcribed in "
                     "`mlan_timm.paper_tables`.")
    return lines + ['']


def _session_lines(sessions: Any, epochs_run: Optional[int]) -> List[str]:
    """The card's lines on where the run trained: one per session of ``args.json``'s ``sessions`` (mlan-train's
    :func:`~mlan_timm.tools.train.session_record`) that trained at least one epoch, with its epoch range."""
    if not isinstance(sessions, list) or not all(isinstance(x, dict) for x in sessions) or not sessions:
        return []
    starts = [x.get('first_epoch') for x in sessions]
    if not all(isinstance(e, int) for e in starts):
        return []
    ends = starts[1:] + [epochs_run]
    rows = [f"  - epochs 0-{starts[0] - 1}: {NOT_AVAILABLE} (trained before mlan-train recorded sessions)"] \
        if starts[0] > 0 else []
    for x, first, end in zip(sessions, starts, ends):
        if end is not None and end <= first:
            continue  # stopped before finishing an epoch (its epoch ran again in the next session)
        span = f"epochs {first}-{end - 1}" if end is not None else f"from epoch {first}"
        rows.append(f"  - {span}, started {x.get('started', NOT_AVAILABLE)}: {x.get('machine', NOT_AVAILABLE)}; "
                    f"code {x.get('code', NOT_AVAILABLE)}, mlan-timm {x.get('mlan_timm', NOT_AVAILABLE)}")
    return [f"- **Where it trained** ({len(rows)} session(s), from the run's `args.json`):", *rows] if rows else []


def render_model_card(info: Dict[str, Any]) -> str:
    """Markdown model card; every number comes from ``info`` (eval results, training record, measurements, paper)."""
    name, ds = info['model_name'], info['dataset']
    ev, log, rec = info.get('eval') or {}, info.get('train_log') or [], info.get('recipe') or {}
    training = info.get('training') or {}
    paper = info.get('paper')  # (value, table, variant) or None
    ds_title = {'cifar10': 'CIFAR-10', 'cifar100': 'CIFAR-100'}[ds]
    n_test = training.get('test_images') or rec.get('test_subset')
    subset_note = f" (on a {n_test}-image subset of the test split)" if rec.get('test_subset') else ''
    lines = [
        '---', 'tags:', '- image-classification', '- timm', '- mlan-timm', 'library_name: timm',
        f"license: {info.get('license', 'apache-2.0')}", 'datasets:', f'- {ds}', '---', '',
        f'# Model card for {name}', '',
        f"A {info.get('description') or 'CIFAR ResNet'} image classifier for {ds_title} (32x32 inputs), from the "
        f'[mlan-timm]({zoo.REPO_URL}) package implementing the Multi-Level Attention Network '
        f'(MLAN, IEEE Access 2022, doi:[{zoo.DOI}](https://doi.org/{zoo.DOI})).', '',
        '## Model details', '',
        f"- **Model type:** image classification, `{info['architecture']}`",
        f"- **Dataset:** {ds_title} ({info['num_classes']} classes)",
        f"- **Params (M):** {info['params'] / 1e6:.3f} ({info['params']:,})",
        f"- **MACs (M) at 3x32x32:** {info['macs'] / 1e6:.2f} (torch.utils.flop_counter.FlopCounterMode, FLOPs/2)",
        f"- **Model args:** `{json.dumps(info.get('model_args') or {})}`",
        *([f"- **Weights digest:** `{info['weights_digest']}` (`mlan_timm.pretrained.weights_digest`: sha256 of the "
           "state dict's names, dtypes, shapes and values; `mlan-eval --json` reports the digest of the weights it "
           "evaluated)"] if info.get('weights_digest') else []),
        f"- **License:** {info.get('license', 'apache-2.0')}", '',
        '## Results', '',
        f'{ds_title} test accuracy in %. The paper reports the best test top-1 over all training epochs; the '
        'training rows give this run\'s final and best epoch (epochs are 0-based).', '',
        '| source | epoch | top-1 | top-5 |', '|---|---|---|---|',
    ]
    if ev:
        lines.append(f"| these weights, `mlan-eval` ({ev.get('images', NOT_AVAILABLE)} {ev.get('split', 'test')} "
                     f"images) | - | {_fmt(ev.get('top1'))} | {_fmt(ev.get('top5'))} |")
    if training.get('final_epoch') is not None:
        lines += [f"| training run, final epoch{subset_note} | {training['final_epoch']} | "
                  f"{_fmt(training.get('final_test_top1'))} | {_fmt(training.get('final_test_top5'))} |",
                  f"| training run, best epoch{subset_note} | {training.get('best_epoch')} | "
                  f"{_fmt(training.get('best_test_top1'))} | {_fmt(training.get('best_test_top5'))} |"]
    if paper is not None:
        value, table, variant = paper
        lines.append(f"| paper, {_table_name(table)} ({zoo.PAPER_VARIANTS[variant].label}), best epoch | - | "
                     f"{value:.2f} | not reported |")
    else:
        lines.append(f"| paper | - | {NOT_IN_PAPER} | {NOT_IN_PAPER} |")
    lines.append('')
    notes = ([] if ev else ['No evaluation results were supplied to the export.']) + \
        ([] if training.get('final_epoch') is not None else ['No training record was supplied to the export.'])
    lines += notes + ([''] if notes else [])
    if log or rec:
        lines += ['## Training', '']
        if log:
            lines += [f"- **Epochs run:** {len(log)} (last logged epoch index {log[-1].get('epoch')})",
                      f"- **Final-epoch train loss:** {_fmt(log[-1].get('train_loss'), 4)}",
                      f"- **Total training time (s):** {_fmt(float(sum(r.get('time', 0.0) for r in log)), 0)}"]
        if rec:
            lines += ['- **Recipe (mlan-train arguments):** ' + ', '.join(
                f"{k}={rec[k]}" for k in RECIPE_KEYS if k in rec and rec[k] not in (None, False))]
            aug = (f"Pad(4, padding_mode='{rec['padding_mode']}') + RandomCrop(32)" if rec.get('padding_mode')
                   else 'RandomCrop(32, padding=4)')
            norm = (f"mean {tuple(round(m, 4) for m in rec['mean'])}, std {tuple(round(s, 4) for s in rec['std'])}"
                    if rec.get('mean') and rec.get('std') else "the dataset's mean/std")
            lines += [f'- **Augmentation:** {aug} + RandomHorizontalFlip; normalisation {norm}. Milestones are '
                      '0-based epochs from which the lower lr applies.']
        lines += _session_lines(rec.get('sessions'), len(log) if log else None)
        lines += ['']
    else:
        lines += ['## Training', '', 'No training log was supplied to the export.', '']
    lines += _measurement_lines(info)
    lines += [
        '## Usage', '', '```python', 'import timm, mlan_timm  # noqa: F401  (registers the architectures)',
        f"model = timm.create_model('hf-hub:{info['repo_id']}', pretrained=True).eval()",
        'cfg = timm.data.resolve_data_config({}, model=model)',
        'transform = timm.data.create_transform(**cfg)', '```', '',
        '## Citation', '', '```bibtex', zoo.CITATION_BIBTEX, '```', '',
        f"<sub>Generated by mlan-export on {info.get('date')}.</sub>", '']
    return '\n'.join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------------------------
def _load_json_arg(path: Optional[str], what: str):
    if not path:
        return None
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{what} file not found: {p}")
    try:
        return json.loads(p.read_text(encoding='utf-8'))
    except ValueError as e:  # JSONDecodeError, or UnicodeDecodeError for a binary file
        raise UsageError(f"{what} file {p} is not valid JSON: {e}") from e


# ----------------------------------------------------------------------------------------------------------------
# Checks of the results a card prints: same model, same weights, well-formed files
# ----------------------------------------------------------------------------------------------------------------
def _json_type(value: Any) -> str:
    return {dict: 'object', list: 'list', str: 'string', bool: 'boolean', type(None): 'null'}.get(
        type(value), 'number')


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _plain_kwargs(kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """``kwargs`` less ``num_classes`` (the dataset sets it), JSON-normalised (tuples -> lists) for comparisons."""
    return json.loads(json.dumps({k: v for k, v in kwargs.items() if k != 'num_classes'}, default=str))


def _read_config(folder: Path) -> Optional[Dict[str, Any]]:
    """``folder/config.json`` as a dict, None when missing, unreadable or not a JSON object."""
    try:
        cfg = json.loads((folder / 'config.json').read_text(encoding='utf-8'))
    except (OSError, ValueError):
        return None
    return cfg if isinstance(cfg, dict) else None


def _model_identity(name: str, kwargs: Optional[Dict[str, Any]]) -> Tuple[str, Optional[Dict[str, Any]]]:
    """``(architecture, model kwargs)`` that model ``name`` with create_model ``kwargs`` builds; kwargs None if unknown.

    ``<model>.<tag>`` -> ``<model>``; ``local-dir:FOLDER`` -> the architecture and model_args of the folder's
    config.json (without one: the folder name's base, kwargs unknown); ``hf-hub:org/<model>[.<tag>][@rev]`` -> the
    repo name's base (mlan-export's naming), kwargs unknown (the Hub config is not read)."""
    kwargs = None if kwargs is None else _plain_kwargs(kwargs)
    if name.startswith('local-dir:'):
        folder = Path(name[len('local-dir:'):]).expanduser()
        cfg = _read_config(folder)
        if cfg is None or not isinstance(cfg.get('architecture'), str):
            return folder.name.split('.')[0], None
        folder_kwargs = _plain_kwargs(_variant_kwargs(cfg))  # create_model's kwargs come on top
        return cfg['architecture'], None if kwargs is None else dict(folder_kwargs, **kwargs)
    if name.startswith(('hf-hub:', 'hf_hub:')):
        return name.split(':', 1)[1].split('@')[0].rstrip('/').split('/')[-1].split('.')[0], None
    return name.split('.')[0], kwargs


def _check_same_model(what: str, other: str, other_kwargs: Optional[Dict[str, Any]], model_name: str,
                      model_kwargs: Dict[str, Any], advice: str):
    """UsageError naming both when ``other`` (+ kwargs, None: not recorded) is not the model exported."""
    arch, kwargs = _model_identity(other, other_kwargs)
    if arch != model_name.split('.')[0]:
        raise UsageError(f"{what} is for model {other}, not {model_name} (the model exported): {advice}")
    if kwargs is not None and kwargs != _plain_kwargs(model_kwargs):
        raise UsageError(f"{what} is for {other} with model_kwargs {kwargs}, not {_plain_kwargs(model_kwargs)} "
                         f"(this export's --model-kwargs): {advice}")


def check_eval_results(ev: Any, model_name: str, model_kwargs: Optional[Dict[str, Any]], dataset: str,
                       weights_file: Optional[str] = None, use_ema: bool = False,
                       source: str = 'eval_results') -> Dict[str, Any]:
    """``ev`` (``mlan-eval --json`` output) if it holds results of the exported model and weights, else a
    UsageError naming ``source`` and the mismatch.

    Compared where ``ev`` records them (older files lack some keys): ``model`` (base name, tag dropped) and
    ``model_kwargs``, ``dataset``, and ``weights``: its file name against ``weights_file``'s (the resolved file,
    so ``--weights FOLDER`` and ``FOLDER/model.safetensors`` agree) and its ``(ema)`` mark against ``use_ema``.
    Results of ``--pretrained`` weights are refused (except a ``local-dir:`` folder's, its model.safetensors).
    Where ``ev`` has a ``weights_digest`` (mlan-eval writes one), that decides instead of the file name:
    :func:`check_eval_digest` compares it with the loaded weights' once the model is built."""
    model_kwargs = model_kwargs or {}
    flags = _model_kwargs_flag(_plain_kwargs(model_kwargs))
    advice = (f"give the mlan-eval --json output for these weights (mlan-eval --model {model_name.split('.')[0]} "
              f"{' '.join(flags + [''])}--weights FILE --json)")
    if not isinstance(ev, dict):
        raise UsageError(f"{source} is a JSON {_json_type(ev)}, not an object: {advice}")
    bad = [k for k in ('top1', 'top5', 'images') if ev.get(k) is not None and not _is_number(ev[k])]
    if bad:
        raise UsageError(f"{source}: {bad[0]} is {ev[bad[0]]!r}, not a number: {advice}")
    for key, types, kind in (('model', str, 'a string'), ('model_kwargs', dict, 'an object'),
                             ('weights', str, 'a string'), ('dataset', str, 'a string'), ('split', str, 'a string')):
        if ev.get(key) is not None and not isinstance(ev[key], types):
            raise UsageError(f"{source}: {key} is {ev[key]!r}, not {kind}: {advice}")
    if ev.get('model') is not None or ev.get('model_kwargs') is not None:
        _check_same_model(source, ev.get('model') or model_name, ev.get('model_kwargs'), model_name, model_kwargs,
                          advice)
    if ev.get('dataset') is not None and ev['dataset'] != dataset:
        raise UsageError(f"{source} holds {ev['dataset']} results, not {dataset} (the exported model's dataset): "
                         f"{advice}")
    if ev.get('weights_digest') is not None and not isinstance(ev['weights_digest'], str):
        raise UsageError(f"{source}: weights_digest is {ev['weights_digest']!r}, not a string: {advice}")
    recorded = ev.get('weights')
    if ev.get('weights_digest') is None and recorded is not None and weights_file is not None:
        # older mlan-eval files have no digest: the file name and the (ema) mark are all there is to compare
        ema = recorded.endswith(' (ema)')
        file = Path(recorded[:-len(' (ema)')] if ema else recorded).name
        if file == 'pretrained':
            if not str(ev.get('model', '')).startswith('local-dir:'):
                raise UsageError(f"{source} holds results of the published weights of {ev.get('model', model_name)} "
                                 f"(--pretrained), not of the exported file {Path(weights_file).name}: {advice}")
            file = 'model.safetensors'  # what timm loads from a local-dir: folder
        if file != Path(weights_file).name:
            raise UsageError(f"{source} holds results of weights {file}, not of the exported file "
                             f"{Path(weights_file).name}: {advice}")
        if ema != use_ema:
            which = ('the EMA weights', 'its non-EMA weights (add --ema to export the EMA ones)') if ema else \
                ('the non-EMA weights', 'its EMA weights (--ema)')
            raise UsageError(f"{source} holds results of {which[0]} of {file}, but this export is of {which[1]}: "
                             f"{advice}")
    return ev


def check_eval_digest(ev: Optional[Dict[str, Any]], digest: str, source: str = 'eval_results'):
    """UsageError when ``ev`` records a ``weights_digest`` (:func:`mlan_timm.pretrained.weights_digest`) other than
    ``digest``, that of the weights exported: the results are of other weights, whatever their file was called."""
    recorded = (ev or {}).get('weights_digest')
    if recorded is not None and recorded != digest:
        raise UsageError(f"{source} holds results of other weights than those exported (weights digest "
                         f"{recorded[:12]}... against {digest[:12]}...): evaluate the exported weights with mlan-eval "
                         "--json and give that output")


_LOG_NUMBERS = ('epoch', 'train_loss', 'test_top1', 'test_top5', 'time')


def _read_train_log(path: os.PathLike) -> List[Dict[str, Any]]:
    """The epoch records of a run's log.jsonl; UsageError naming the file and line for one that is not an object
    (as mlan-train writes) or has a non-number where the card reads a number."""
    try:
        numbered = read_jsonl_numbered(path)
    except UnicodeDecodeError as e:
        raise UsageError(f"Training log {path} is not a text (JSON lines) file: {e}") from e
    for n, row in numbered:
        if not isinstance(row, dict):
            raise UsageError(f"Training log {path} line {n} is a JSON {_json_type(row)}, not an object (one epoch "
                             "record per line, as mlan-train writes)")
        bad = [k for k in _LOG_NUMBERS if row.get(k) is not None and not _is_number(row[k])]
        if bad:
            raise UsageError(f"Training log {path} line {n}: {bad[0]} is {row[bad[0]]!r}, not a number")
    return [row for _, row in numbered]


def _run_args(train_log: os.PathLike, model_name: str, model_kwargs: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The ``args.json`` mlan-train writes beside ``train_log`` (None without one), checked: a JSON object, of the
    model exported (``model`` and ``model_kwargs`` where recorded), with numeric ``mean``/``std``."""
    path = Path(train_log).parent / 'args.json'
    if not path.is_file():
        return None
    what = f"{path} (the run's arguments beside --train-log {train_log})"
    try:
        args = json.loads(path.read_text(encoding='utf-8'))
    except ValueError as e:
        raise UsageError(f"{what} is not valid JSON: {e}") from e
    if not isinstance(args, dict):
        raise UsageError(f"{what} is a JSON {_json_type(args)}, not an object")
    if args.get('model') is not None and not isinstance(args['model'], str):
        raise UsageError(f"{what}: model is {args['model']!r}, not a string")
    kwargs = args.get('model_kwargs')
    if isinstance(kwargs, list) and all(isinstance(k, str) for k in kwargs):
        kwargs = parse_model_kwargs(kwargs, flag=f"{path}: model_kwargs")
    elif kwargs is not None and not isinstance(kwargs, dict):
        raise UsageError(f"{what}: model_kwargs is {kwargs!r}, not a list of KEY=VALUE strings")
    for key in ('mean', 'std'):
        value = args.get(key)
        if value is not None and not (isinstance(value, list) and value and all(_is_number(v) for v in value)):
            raise UsageError(f"{what}: {key} is {value!r}, not a list of numbers")
    if args.get('model') is not None or kwargs is not None:
        _check_same_model(f"--train-log {train_log}", args.get('model') or model_name, kwargs, model_name,
                          model_kwargs, f"give the log of the run that trained these weights (this run's "
                          f"args.json: {path})")
    return args


# ----------------------------------------------------------------------------------------------------------------
# Names of exports: one folder / Hub repo per variant
# ----------------------------------------------------------------------------------------------------------------
_TAG_RE = re.compile(r'^[A-Za-z0-9_]+(?:-[A-Za-z0-9_]+)*$')
_MAX_TAG = 60


def _tag_token(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(',', ':'))
    return re.sub(r'[^A-Za-z0-9]+', '_', text).strip('_') or 'x'


def variant_tag(model_kwargs: Optional[Dict[str, Any]]) -> str:
    """The pretrained tag of a variant: ``{'fusion': 'concat'}`` -> ``'fusion_concat'``, ``{'attn': 'cbam',
    'widths': [16, 32, 64]}`` -> ``'attn_cbam-widths_16_32_64'`` (sorted keys; ``''`` for no kwargs)."""
    kwargs = {k: v for k, v in (model_kwargs or {}).items() if k != 'num_classes'}
    return '-'.join(f"{_tag_token(k)}_{_tag_token(v)}" for k, v in sorted(kwargs.items()))


def export_name(model_name: str, model_kwargs: Optional[Dict[str, Any]] = None, tag: Optional[str] = None) -> str:
    """Folder name under ``--hub-dir`` and Hub repo name of an export: the architecture name for the registered
    model, ``<architecture>.<tag>`` for a variant. The tag is ``tag`` when given, else the tag of ``model_name``
    (``mlan_resnet20_cifar10.mytag``), else :func:`variant_tag` of ``model_kwargs`` (``fusion_concat``).

    A name is a valid timm pretrained tag and Hugging Face repo name (letters, digits, ``_``, single ``-``)."""
    base, _, name_tag = model_name.partition('.')
    tag = tag or name_tag or variant_tag(model_kwargs)
    if not tag:
        return base
    if not _TAG_RE.match(tag):
        raise UsageError(f"--tag {tag!r}: use letters, digits, '_' and single '-' (a timm pretrained tag that is also "
                         "a valid Hugging Face repo name)")
    if len(tag) > _MAX_TAG:
        raise UsageError(f"the variant tag {tag!r} derived from --model-kwargs is longer than {_MAX_TAG} characters; "
                         "name the variant with --tag NAME")
    return f"{base}.{tag}"


#: config.json key where mlan-export records the variant (``{'model_kwargs': {...}, 'name': ...}``); timm ignores it
CONFIG_KEY = 'mlan_timm'
_TIMM_EXPORT_ARGS = ('num_classes', 'in_chans', 'global_pool', 'img_size')  # save_for_hf adds these itself


def _config_model_args(folder: Path) -> Optional[Dict[str, Any]]:
    """The variant kwargs of an export folder ({} for the registered model), None without a readable config.json.

    From the ``mlan_timm`` record mlan-export writes, else (older exports) timm's ``model_args`` less the
    arguments timm's ``save_for_hf`` records for every model."""
    cfg = _read_config(folder)
    return None if cfg is None else _variant_kwargs(cfg)


def _variant_kwargs(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """:func:`_config_model_args` of an already read config.json."""
    if isinstance(cfg.get(CONFIG_KEY), dict):
        return dict(cfg[CONFIG_KEY].get('model_kwargs') or {})
    return {k: v for k, v in (cfg.get('model_args') or {}).items() if k not in _TIMM_EXPORT_ARGS}


def _check_default_repo(repo_id: str, architecture: str, model_args: Dict[str, Any], what: str):
    """A variant (non-empty model_args) must not go to the default model's repo ``mlan-timm/<architecture>``."""
    if model_args and repo_id == f"{zoo.HF_ORG}/{architecture}":
        raise UsageError(
            f"{what} is a variant of {architecture} (model_args {model_args}); its repo {repo_id!r} is the default "
            f"model's, which it would replace: use --repo-id {zoo.HF_ORG}/{export_name(architecture, model_args)} "
            f"(the default for this variant)")


def _recipe_of(run_args: Optional[Dict[str, Any]], checkpoint: Optional[str]) -> Dict[str, Any]:
    if run_args is not None:
        return run_args
    if checkpoint:
        try:
            return torch.load(checkpoint, map_location='cpu', weights_only=False).get('args', {}) or {}
        except Exception:
            return {}
    return {}


def export_model(model_name: str, hub_dir: os.PathLike = 'hub', weights: Optional[str] = None,
                 checkpoint: Optional[str] = None, use_ema: bool = False, model_kwargs: Optional[dict] = None,
                 eval_results: Optional[Dict[str, Any]] = None, train_log: Optional[os.PathLike] = None,
                 repo_id: Optional[str] = None, model: Optional[torch.nn.Module] = None,
                 tag: Optional[str] = None, eval_source: str = 'eval_results') -> Path:
    """Write ``<hub_dir>/<name>/`` (config.json, model.safetensors, README.md); returns that path.

    ``<name>`` is :func:`export_name` (``<model>`` or, for a variant, ``<model>.<tag>``); the Hub repo defaults to
    ``mlan-timm/<name>``. An existing folder holding another variant is not replaced. The card's training rows
    come from ``train_log`` (a run's log.jsonl) or else from the training record mlan-train stores in its weights;
    the paper row from :func:`paper_result`. ``eval_results`` and the run of ``train_log`` (its args.json) must be
    of this model and these weights (:func:`check_eval_results`, named ``eval_source`` in errors)."""
    from timm.models import save_for_hf
    base = model_name.split('.')[0]
    model_kwargs = {k: v for k, v in (model_kwargs or {}).items() if k != 'num_classes'}
    name = export_name(model_name, model_kwargs, tag)
    repo_id = repo_id or f"{zoo.HF_ORG}/{name}"
    _check_default_repo(repo_id, base, model_kwargs, f"This export ({name})")
    hub_root = check_writable_dir(hub_dir, '--hub-dir')
    target = hub_root / name
    if target.exists():
        old_args = _config_model_args(target)
        if old_args is not None and json.loads(json.dumps(old_args)) != json.loads(json.dumps(model_kwargs)):
            raise UsageError(f"{target} holds an export with model_args {old_args}, not {model_kwargs}; it is not "
                             f"replaced: name this variant with --tag NAME (or remove {target})")
    if use_ema and not checkpoint:
        raise UsageError("--ema picks the EMA weights of an mlan-train checkpoint: it needs --checkpoint FILE, "
                         "not --weights")
    if train_log and not Path(train_log).is_file():
        raise UsageError(f"Training log file not found: {train_log}")
    if model is None:
        dataset = resolve_dataset(base)
        if not (weights or checkpoint):
            raise UsageError("Nothing to export: give --weights FILE or --checkpoint FILE")
        if weights:
            weights = str(resolve_weights_path(weights, '--weights', 'model.safetensors'))
        else:
            checkpoint = str(resolve_weights_path(checkpoint, '--checkpoint', 'last.pth'))
        exported_file = weights or checkpoint
    else:
        dataset = zoo.dataset_of(base) or ('cifar100' if model.num_classes == 100 else 'cifar10')
        exported_file = None  # a module: which file it came from is not known
    if eval_results is not None:
        check_eval_results(eval_results, model_name, model_kwargs, dataset, exported_file, use_ema, eval_source)
    log_rows = _read_train_log(train_log) if train_log else []
    run_args = _run_args(train_log, model_name, model_kwargs) if train_log else None
    if exported_file is not None:
        model = create_model(base, **model_kwargs_for_dataset(model_kwargs, dataset))
        load_weights_into(model, exported_file, base, use_ema=use_ema)
    model = model.cpu().eval()
    digest = weights_digest(model.state_dict())
    check_eval_digest(eval_results, digest, eval_source)

    recipe = _recipe_of(run_args, checkpoint)
    record = read_training_record(weights or checkpoint) or {}
    training = dict(record, **summarize_history(log_rows)) if log_rows else record
    if not recipe.get('mean') and record.get('mean'):
        recipe = dict(recipe, mean=record['mean'], std=record['std'])

    pcfg = dict(getattr(model, 'pretrained_cfg', {}) or {})
    if recipe.get('mean') and recipe.get('std'):
        # the exported pretrained_cfg must carry the normalisation these weights were trained with
        pcfg.update(mean=tuple(recipe['mean']), std=tuple(recipe['std']))
        model.pretrained_cfg = pcfg
    model_config = {}
    if pcfg.get('label_names') and len(pcfg['label_names']) == model.num_classes:
        model_config['label_names'] = list(pcfg['label_names'])
    hub_root.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(f'.{name}.', hub_root)
    try:
        save_for_hf(model, str(tmp), model_config=model_config, model_args=model_kwargs or None,
                    safe_serialization=True)
        cfg = json.loads((tmp / 'config.json').read_text(encoding='utf-8'))
        cfg.setdefault('model_args', dict(model_kwargs))  # timm < 1.0.31 writes it only for non-empty kwargs
        cfg[CONFIG_KEY] = dict(name=name, model_kwargs=model_kwargs, repo_id=repo_id)
        (tmp / 'config.json').write_text(json.dumps(cfg, indent=2), encoding='utf-8')
        ev = dict(eval_results or {})
        if ev.get('weights'):
            ev['weights'] = Path(str(ev['weights']).replace(' (ema)', '')).name  # no local paths in the card
        info = dict(model_name=name, dataset=dataset, num_classes=model.num_classes,
                    architecture=cfg.get('architecture', base), params=count_params(model),
                    macs=count_macs(model, tuple(pcfg.get('input_size', (3, 32, 32)))),
                    model_args=cfg.get('model_args'), license=pcfg.get('license', 'apache-2.0'),
                    eval=ev, train_log=log_rows, training=training, recipe=recipe,
                    paper=paper_result(base, model_kwargs), repo_id=repo_id, weights_digest=digest,
                    date=datetime.date.today().isoformat())
        (tmp / 'README.md').write_text(render_model_card(info), encoding='utf-8')
        honour_umask(tmp)  # mkdtemp's 0700 and the 0600 of files written through temp files
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
                                formatter_class=HelpFormatter)
    p.add_argument('--model', required=True, help='model name, e.g. mlan_resnet20_cifar10')
    p.add_argument('--model-kwargs', nargs='*', default=[], metavar='KEY=VALUE',
                   help='create_model kwargs of a variant, e.g. fusion=concat: exported as <model>.<tag> '
                        '(e.g. mlan_resnet20_cifar10.fusion_concat), never over the default model')
    p.add_argument('--tag', default=None,
                   help='name of the variant: export to <hub dir>/<model>.<tag>, repo mlan-timm/<model>.<tag> '
                        '(default: derived from --model-kwargs, e.g. fusion_concat)')
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument('--weights', help='a .safetensors file (e.g. <run>/model.safetensors), or a folder holding '
                                       'model.safetensors')
    src.add_argument('--checkpoint', help='an mlan-train checkpoint (<run>/last.pth), or its run folder')
    p.add_argument('--ema', action='store_true', help="export the checkpoint's EMA weights")
    p.add_argument('--hub-dir', default='hub', help='parent folder of the export')
    p.add_argument('--repo-id', default=None,
                   help=f'Hub repo id for the usage snippet (default: {zoo.HF_ORG}/<model>, or '
                        f'{zoo.HF_ORG}/<model>.<tag> for a variant)')
    p.add_argument('--eval-json', default=None, help='output of `mlan-eval --json` for these weights')
    p.add_argument('--train-log', default=None, help="the run's log.jsonl")
    p.add_argument('--paper-results', default=None,
                   help='ignored (kept for old command lines): the paper column comes from mlan_timm.paper_tables')
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def run():
        if args.paper_results:
            print("mlan-export: warning: --paper-results is ignored; the paper's numbers come from "
                  "mlan_timm.paper_tables", file=sys.stderr)
        ev = _load_json_arg(args.eval_json, '--eval-json')
        if args.eval_json and ev is None:
            raise UsageError(f"--eval-json {args.eval_json} is a JSON null, not an object: give the mlan-eval --json "
                             "output for these weights")
        out = export_model(args.model, args.hub_dir, weights=args.weights, checkpoint=args.checkpoint,
                           use_ema=args.ema, model_kwargs=parse_model_kwargs(args.model_kwargs), eval_results=ev,
                           train_log=args.train_log, repo_id=args.repo_id, tag=args.tag,
                           eval_source=f'--eval-json {args.eval_json}')
        print(f"exported {out.name} -> {out} (push with: mlan-push --model {out.name}"
              f"{'' if out.parent == Path('hub') else f' --hub-dir {out.parent}'})")
        return 0

    return run_cli('mlan-export', run)


# ----------------------------------------------------------------------------------------------------------------
# Push
# ----------------------------------------------------------------------------------------------------------------
REQUIRED_FILES = ('config.json', 'model.safetensors', 'README.md')


def push_folder(folder: os.PathLike, repo_id: str, token: Optional[str], private: bool = False,
                revision: Optional[str] = None, commit_message: Optional[str] = None, api=None) -> str:
    """Upload an exported folder to ``repo_id``; returns the commit URL. ``api`` defaults to ``HfApi(token)``."""
    folder = Path(folder)
    missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
    if missing:
        raise UsageError(f"{folder} is not an mlan-export folder: missing {', '.join(missing)}")
    _check_default_repo(repo_id, folder.name.split('.')[0], _config_model_args(folder) or {}, f"Folder {folder}")
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
    p = argparse.ArgumentParser(prog='mlan-push', description='Upload hub/<model>/ to the Hugging Face Hub.',
                                formatter_class=HelpFormatter)
    p.add_argument('--model', required=True,
                   help='folder name under --hub-dir: <model>, or <model>.<tag> for a variant (what mlan-export '
                        'printed)')
    p.add_argument('--tag', default=None, help='variant tag: pushes <hub dir>/<model>.<tag>')
    p.add_argument('--hub-dir', default='hub', help='parent folder of the export')
    p.add_argument('--repo-id', default=None, help=f'(default: {zoo.HF_ORG}/<folder name>)')
    p.add_argument('--token', default=None, help='(default: $HF_TOKEN)')
    p.add_argument('--private', action='store_true')
    p.add_argument('--revision', default=None)
    p.add_argument('--commit-message', default=None)
    return p


def push_main(argv=None) -> int:
    args = build_push_parser().parse_args(argv)

    def run():
        name = export_name(args.model, tag=args.tag)
        folder = Path(args.hub_dir) / name
        if not folder.is_dir():
            variants = sorted(p.name for p in Path(args.hub_dir).glob(f"{args.model.split('.')[0]}.*") if p.is_dir())
            hint = f" (variants there: {', '.join(variants)})" if variants else ''
            raise UsageError(f"no export folder {folder}{hint}; run mlan-export first")
        url = push_folder(folder, args.repo_id or f'{zoo.HF_ORG}/{name}',
                          args.token or os.environ.get('HF_TOKEN'), private=args.private, revision=args.revision,
                          commit_message=args.commit_message)
        print(f"pushed {name} -> {url}")
        return 0

    return run_cli('mlan-push', run)


if __name__ == '__main__':
    sys.exit(main())
