"""Evaluate a model on a CIFAR test split: top-1 / top-5 accuracy, loss and images/s.

Weights come from ``--pretrained`` (bundled or Hub), ``--weights file.safetensors`` (or a folder holding
``model.safetensors``: an mlan-export folder or an mlan-train run) or ``--checkpoint last.pth`` (an mlan-train
checkpoint, or its run folder; ``--ema`` picks its EMA weights). Prints a table, or JSON with ``--json``.
Weights written by mlan-train carry their training record: the JSON then also holds the run's final-epoch and
best-epoch test top-1 / top-5 (``training``), and the images are normalised with the constants they were trained
with.
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict

import torch

from .. import data as mdata
from .. import zoo
from ..complexity import count_params
from ..pretrained import weights_digest
from .common import (
    HelpFormatter,
    UsageError,
    create_model,
    evaluate,
    load_weights_into,
    model_kwargs_for_dataset,
    non_negative_int,
    norm_stats,
    parse_model_kwargs,
    positive_int,
    progress_enabled,
    read_training_record,
    resolve_dataset,
    resolve_device,
    resolve_weights_path,
    run_cli,
    set_threads,
)

__all__ = ['build_parser', 'run_eval', 'main', 'format_table']


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='mlan-eval', description=__doc__.split('\n\n')[0],
                                formatter_class=HelpFormatter)
    p.add_argument('--model', required=True, help='timm model name, e.g. mlan_resnet20_cifar10')
    p.add_argument('--model-kwargs', nargs='*', default=[], metavar='KEY=VALUE')
    src = p.add_mutually_exclusive_group()
    src.add_argument('--pretrained', action='store_true', help='bundled / Hub weights')
    src.add_argument('--weights', default=None,
                     help='a .safetensors (or state-dict .pth) file, or a folder holding model.safetensors '
                          '(an mlan-export folder or an mlan-train run)')
    src.add_argument('--checkpoint', default=None, help='an mlan-train checkpoint (last.pth) or its run folder')
    p.add_argument('--ema', action='store_true', help="use the checkpoint's EMA weights")
    p.add_argument('--data-dir', default=None, help='CIFAR data (torchvision layout, ImageFolder or tarballs)')
    p.add_argument('--dataset', default=None, choices=sorted(zoo.DATASETS),
                   help='dataset (default: from the model name suffix; must agree with it)')
    p.add_argument('--download', action='store_true', help='let torchvision download CIFAR into --data-dir')
    p.add_argument('--cache-dir', default=None,
                   help='where tarballs are extracted / decoded (default: ~/.cache/mlan_timm or $MLAN_TIMM_CACHE)')
    p.add_argument('--split', default='test', choices=['test', 'train'])
    p.add_argument('--subset', type=positive_int, default=None, help='evaluate on a fixed random subset of N images')
    p.add_argument('--batch-size', '-b', type=positive_int, default=256)
    p.add_argument('--workers', type=non_negative_int, default=2)
    p.add_argument('--data-on-device', action='store_true')
    p.add_argument('--device', default='auto')
    p.add_argument('--amp', default='none', choices=['none', 'bf16', 'fp16'])
    p.add_argument('--channels-last', action='store_true')
    p.add_argument('--threads', type=positive_int, default=None)
    p.add_argument('--json', action='store_true', help='print one JSON object instead of the table')
    p.add_argument('--progress', action=argparse.BooleanOptionalAction, default=None,
                   help='tqdm progress bar on stderr (default: on when stderr is a terminal)')
    return p


def _training_summary(record: Dict[str, Any]) -> Dict[str, Any]:
    keys = ('recipe', 'epochs', 'final_epoch', 'final_test_top1', 'final_test_top5', 'best_epoch', 'best_test_top1',
            'best_test_top5', 'test_images')
    return {k: record.get(k) for k in keys}


def run_eval(args) -> Dict[str, Any]:
    set_threads(args.threads)
    device = resolve_device(args.device)
    dataset = resolve_dataset(args.model, args.dataset)
    if not (args.pretrained or args.weights or args.checkpoint):
        raise UsageError("Give the weights to evaluate: --pretrained, --weights FILE or --checkpoint FILE")
    if args.ema and not args.checkpoint:
        raise UsageError("--ema picks the EMA weights of an mlan-train checkpoint: it needs --checkpoint FILE "
                         f"(not {'--pretrained' if args.pretrained else '--weights'})")
    path = None
    if args.weights:
        path = resolve_weights_path(args.weights, '--weights', 'model.safetensors')
    elif args.checkpoint:
        path = resolve_weights_path(args.checkpoint, '--checkpoint', 'last.pth')
    kwargs = parse_model_kwargs(args.model_kwargs)
    model = create_model(args.model, pretrained=args.pretrained, weights_flag='--weights FILE (or --checkpoint FILE)',
                         **model_kwargs_for_dataset(kwargs, dataset))
    record = None
    if path:
        load_weights_into(model, path, args.model, use_ema=args.ema)
        record = read_training_record(path)
    elif (getattr(model, 'pretrained_cfg', None) or {}).get('input_size', (3, 224, 224))[-1] == 32:
        record = model.pretrained_cfg  # published weights: the constants they were trained with
    mean, std = norm_stats(dataset, record)
    digest = weights_digest(model.state_dict())  # of the weights evaluated: mlan-export checks its card against it
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    loader = mdata.build_loader(dataset, args.data_dir, args.split, args.batch_size, on_device=args.data_on_device,
                                device=device, workers=args.workers, download=args.download,
                                cache_dir=args.cache_dir, subset=args.subset, mean=mean, std=std)
    res = evaluate(model, loader, device, args.amp, args.channels_last, progress=progress_enabled(args.progress))
    source = 'pretrained' if args.pretrained else Path(path).name
    out = dict(model=args.model, weights=source + (' (ema)' if args.ema else ''), dataset=dataset,
               split=args.split, images=res['images'], top1=res['top1'], top5=res['top5'], loss=res['loss'],
               img_per_s=res['img_per_s'], device=str(device), amp=args.amp, params=count_params(model),
               model_kwargs={k: v for k, v in kwargs.items() if k != 'num_classes'}, subset=args.subset,
               weights_digest=digest)
    if path and record:
        out['training'] = _training_summary(record)
    return out


def _fmt(v) -> str:
    return 'n/a' if v is None else f'{v:.2f}'


def format_table(r: Dict[str, Any]) -> str:
    rows = [('model', r['model']), ('weights', r['weights']), ('data', f"{r['dataset']} {r['split']} "
            f"({r['images']} images)"), ('top-1 (%)', f"{r['top1']:.2f}"), ('top-5 (%)', f"{r['top5']:.2f}"),
            ('loss', f"{r['loss']:.4f}"), ('images/s', f"{r['img_per_s']:.0f} ({r['device']}, amp {r['amp']})"),
            ('params', f"{r['params']:,}")]
    t = r.get('training')
    if t:
        rows += [('training: final epoch', f"{t['final_epoch']}: test top-1 {_fmt(t['final_test_top1'])}, "
                                          f"top-5 {_fmt(t['final_test_top5'])}"),
                 ('training: best epoch', f"{t['best_epoch']}: test top-1 {_fmt(t['best_test_top1'])}, "
                                         f"top-5 {_fmt(t['best_test_top5'])}")]
    w = max(len(k) for k, _ in rows)
    return '\n'.join(f"{k:<{w}} | {v}" for k, v in rows)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def run():
        res = run_eval(args)
        print(json.dumps(res) if args.json else format_table(res))
        return 0

    return run_cli('mlan-eval', run)


if __name__ == '__main__':
    sys.exit(main())
