"""Evaluate a model on a CIFAR test split: top-1 / top-5 accuracy, loss and images/s.

Weights come from ``--pretrained`` (bundled or Hub), ``--weights file.safetensors`` or ``--checkpoint
last.pth`` (an mlan-train checkpoint; ``--ema`` picks its EMA weights). Prints a table, or JSON with ``--json``.
"""
import argparse
import json
import sys
import time
from typing import Any, Dict, Optional

import torch

from . import data as mdata
from .complexity import count_params
from .pretrained import PretrainedWeightsError
from .train import UsageError, create_model, evaluate, load_weights_into, model_kwargs_for_dataset, \
    parse_model_kwargs, resolve_run, _norm_stats

__all__ = ['build_parser', 'run_eval', 'main', 'format_table']


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='mlan-eval', description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--model', required=True, help='timm model name, e.g. mlan_resnet20_cifar10')
    p.add_argument('--model-kwargs', nargs='*', default=[], metavar='KEY=VALUE')
    src = p.add_mutually_exclusive_group()
    src.add_argument('--pretrained', action='store_true', help='bundled / Hub weights')
    src.add_argument('--weights', default=None, help='a .safetensors (or state-dict .pth) file')
    src.add_argument('--checkpoint', default=None, help='an mlan-train checkpoint (last.pth)')
    p.add_argument('--ema', action='store_true', help="use the checkpoint's EMA weights")
    p.add_argument('--data-dir', default=None)
    p.add_argument('--dataset', default=None, choices=sorted(mdata.CIFAR_STATS))
    p.add_argument('--download', action='store_true')
    p.add_argument('--cache-dir', default=None)
    p.add_argument('--split', default='test', choices=['test', 'train'])
    p.add_argument('--subset', type=int, default=None, help='evaluate on a fixed random subset of N images')
    p.add_argument('--batch-size', '-b', type=int, default=256)
    p.add_argument('--workers', type=int, default=2)
    p.add_argument('--data-on-device', action='store_true')
    p.add_argument('--device', default='auto')
    p.add_argument('--amp', default='none', choices=['none', 'bf16', 'fp16'])
    p.add_argument('--channels-last', action='store_true')
    p.add_argument('--threads', type=int, default=None)
    p.add_argument('--json', action='store_true', help='print one JSON object instead of the table')
    p.add_argument('--progress', action='store_true')
    return p


def run_eval(args) -> Dict[str, Any]:
    device, dataset = resolve_run(args)
    if not (args.pretrained or args.weights or args.checkpoint):
        raise UsageError("Give the weights to evaluate: --pretrained, --weights FILE or --checkpoint FILE")
    if args.ema and not args.checkpoint:
        raise UsageError("--ema picks the EMA weights of an mlan-train checkpoint: it needs --checkpoint FILE "
                         f"(not {'--pretrained' if args.pretrained else '--weights'})")
    kwargs = parse_model_kwargs(args.model_kwargs)
    model = create_model(args.model, pretrained=args.pretrained, **model_kwargs_for_dataset(kwargs, dataset))
    source = 'pretrained' if args.pretrained else str(args.weights or args.checkpoint)
    if args.weights or args.checkpoint:
        load_weights_into(model, args.weights or args.checkpoint, args.model, use_ema=args.ema)
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    mean, std = _norm_stats(model, dataset)
    loader = mdata.build_loader(dataset, args.data_dir, args.split, args.batch_size, on_device=args.data_on_device,
                                device=device, workers=args.workers, download=args.download,
                                cache_dir=args.cache_dir, subset=args.subset, mean=mean, std=std)
    res = evaluate(model, loader, device, args.amp, args.channels_last, progress=args.progress)
    return dict(model=args.model, weights=source + (' (ema)' if args.ema else ''), dataset=dataset,
                split=args.split, images=res['images'], top1=res['top1'], top5=res['top5'], loss=res['loss'],
                img_per_s=res['img_per_s'], device=str(device), amp=args.amp,
                params=count_params(model), model_kwargs={k: v for k, v in kwargs.items() if k != 'num_classes'}, subset=args.subset)


def format_table(r: Dict[str, Any]) -> str:
    rows = [('model', r['model']), ('weights', r['weights']), ('data', f"{r['dataset']} {r['split']} "
            f"({r['images']} images)"), ('top-1 (%)', f"{r['top1']:.2f}"), ('top-5 (%)', f"{r['top5']:.2f}"),
            ('loss', f"{r['loss']:.4f}"), ('images/s', f"{r['img_per_s']:.0f} ({r['device']}, amp {r['amp']})"),
            ('params', f"{r['params']:,}")]
    w = max(len(k) for k, _ in rows)
    return '\n'.join(f"{k:<{w}} | {v}" for k, v in rows)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        res = run_eval(args)
    except (UsageError, mdata.DatasetNotFoundError, PretrainedWeightsError) as e:
        print(f"mlan-eval: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(res) if args.json else format_table(res))
    return 0


if __name__ == '__main__':
    sys.exit(main())
