"""Train an mlan_timm (or any timm) model on CIFAR-10/100 with the MLAN paper's recipe.

Defaults follow the paper: SGD (momentum 0.9, weight decay 5e-4 on all parameters), lr 0.1, batch 128,
200 epochs, lr x0.1 once 50, 100 and 150 epochs are complete.

Milestone convention: ``--decay-milestones 50 100 150`` means the *0-based epoch index* from which the lower
lr applies (PyTorch ``MultiStepLR`` semantics: epochs 0-49 run at 0.1, epoch 50 is the first at 0.01).
timm's ``MultiStepLRScheduler`` applies milestone ``m`` already at schedule index ``m - 1``, so the values
are passed to ``create_scheduler_v2`` as ``m + 1``; ``tests/test_train.py`` checks the resulting lr per epoch.

Run ``mlan-train --help`` (or ``python -m mlan_timm.train --help``) for every knob; see docs/training.md.
"""
import argparse
import contextlib
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

from . import data as mdata
from .io import atomic_save_file, atomic_torch_save, atomic_write_text  # noqa: F401  (re-exported)
from .pretrained import PretrainedWeightsError

__all__ = ['build_parser', 'main', 'train', 'create_model', 'evaluate', 'parse_model_kwargs', 'atomic_torch_save']


# ----------------------------------------------------------------------------------------------------------
# helpers shared with eval / export
# ----------------------------------------------------------------------------------------------------------

class UsageError(Exception):
    """A problem with the command line or inputs; the CLI prints the message and exits with status 2."""


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN/inf; the CLI prints the message and exits with status 1."""


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {v}")
    return v


def model_kwargs_for_dataset(kwargs: Dict[str, Any], dataset: str) -> Dict[str, Any]:
    """``kwargs`` plus ``num_classes`` of ``dataset``; a conflicting ``num_classes`` kwarg is a UsageError."""
    kwargs = dict(kwargs)
    n = mdata.num_classes_for(dataset)
    if 'num_classes' in kwargs and kwargs['num_classes'] != n:
        raise UsageError(f"--model-kwargs num_classes={kwargs['num_classes']} clashes with dataset {dataset} "
                         f"({n} classes); drop it or pick the matching --dataset")
    kwargs['num_classes'] = n
    return kwargs


def parse_model_kwargs(items: Optional[List[str]]) -> Dict[str, Any]:
    """``['attn=cbam', 'drop_rate=0.1']`` -> ``{'attn': 'cbam', 'drop_rate': 0.1}`` (values parsed as JSON if possible)."""
    out = {}
    for item in items or []:
        if '=' not in item:
            raise UsageError(f"--model-kwargs expects key=value pairs, got {item!r}")
        k, v = item.split('=', 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def create_model(name: str, pretrained: bool = False, **kwargs) -> nn.Module:
    """``timm.create_model`` with mlan_timm registered and a clear error for unknown names."""
    import timm
    import mlan_timm  # noqa: F401  (registers the models)
    try:
        import mlan_timm.models  # noqa: F401
    except ImportError:
        pass
    base = name.split('.')[0]
    if not base.startswith(('hf-hub:', 'hf_hub:', 'local-dir:')) and not timm.is_model(base):
        import difflib
        close = difflib.get_close_matches(base, timm.list_models(), n=6, cutoff=0.6)
        hint = f" Similar names: {', '.join(close)}." if close else ''
        raise UsageError(f"Unknown model {name!r}: not registered with timm (after importing mlan_timm).{hint}")
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except TypeError as e:
        raise UsageError(f"Model {name!r} does not accept these arguments {sorted(kwargs)}: {e}") from e
    except ValueError as e:  # e.g. an unknown attn=... value: the model's own message names the problem
        raise UsageError(f"Model {name!r} with arguments {kwargs}: {e}") from e


def resolve_device(device: str) -> torch.device:
    if device == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    dev = torch.device(device)
    if dev.type == 'cuda' and not torch.cuda.is_available():
        raise UsageError(f"--device {device} requested but CUDA is not available")
    return dev


def amp_context(device: torch.device, amp: str):
    if amp in (None, 'none', ''):
        return contextlib.nullcontext()
    dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16}[amp]
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, amp: str = 'none', channels_last: bool = False,
             progress: bool = False, desc: str = 'eval') -> Dict[str, float]:
    """Top-1 / top-5 (percent), mean cross-entropy loss and images/s over ``loader``."""
    from timm.utils import AverageMeter, accuracy
    from tqdm import tqdm
    model.eval()
    loss_m, top1_m, top5_m = AverageMeter(), AverageMeter(), AverageMeter()
    crit = nn.CrossEntropyLoss()
    n_img = 0
    if device.type == 'cuda':
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for x, y in tqdm(loader, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with amp_context(device, amp):
            out = model(x)
        out = out.float()
        k = min(5, out.shape[-1])
        a1, a5 = accuracy(out, y, topk=(1, k))
        b = x.shape[0]
        loss_m.update(crit(out, y).item(), b)
        top1_m.update(a1.item(), b)
        top5_m.update(a5.item(), b)
        n_img += b
    if device.type == 'cuda':
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return dict(top1=top1_m.avg, top5=top5_m.avg, loss=loss_m.avg, images=n_img,
                img_per_s=n_img / dt if dt > 0 else float('nan'), seconds=dt)


def _rng_state(device: torch.device) -> Dict[str, Any]:
    st = dict(python=random.getstate(), numpy=np.random.get_state(), torch=torch.get_rng_state())
    if device.type == 'cuda':
        st['cuda'] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: Dict[str, Any]):
    random.setstate(st['python'])
    np.random.set_state(st['numpy'])
    torch.set_rng_state(st['torch'])
    if 'cuda' in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st['cuda'])


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='mlan-train', description=__doc__.split('\n\n')[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group('model')
    g.add_argument('--model', default='mlan_resnet20_cifar10', help='timm model name')
    g.add_argument('--model-kwargs', nargs='*', default=[], metavar='KEY=VALUE',
                   help='extra create_model kwargs, e.g. attn=cbam drop_rate=0.1 (values parsed as JSON)')
    g.add_argument('--pretrained', action='store_true', help='start from pretrained weights')
    g.add_argument('--initial-weights', default=None, help='start from a safetensors file or checkpoint')
    g = p.add_argument_group('data')
    g.add_argument('--data-dir', default=None, help='CIFAR data (torchvision layout, ImageFolder or tarballs)')
    g.add_argument('--dataset', default=None, choices=sorted(mdata.CIFAR_STATS),
                   help='dataset (default: from the model name suffix)')
    g.add_argument('--download', action='store_true', help='let torchvision download CIFAR into --data-dir')
    g.add_argument('--cache-dir', default=None, help='where tarballs are extracted / decoded (default ~/.cache/mlan_timm)')
    g.add_argument('--subset', type=int, default=None, help='train on a fixed random subset of N images')
    g.add_argument('--test-subset', type=int, default=None, help='evaluate on a fixed random subset of N images')
    g.add_argument('--data-on-device', action='store_true',
                   help='hold the dataset as a uint8 tensor on the device, augment there (fast on CUDA)')
    g.add_argument('--workers', type=int, default=2, help='DataLoader workers (ignored with --data-on-device)')
    g = p.add_argument_group('recipe')
    g.add_argument('--epochs', type=int, default=200)
    g.add_argument('--batch-size', '-b', type=int, default=128)
    g.add_argument('--opt', default='sgd', help='timm optimizer name (create_optimizer_v2)')
    g.add_argument('--lr', type=float, default=0.1)
    g.add_argument('--momentum', type=float, default=0.9)
    g.add_argument('--weight-decay', '--wd', type=float, default=5e-4)
    g.add_argument('--no-wd-norm-bias', action='store_true',
                   help='exclude norm/bias parameters from weight decay (the paper decays all)')
    g.add_argument('--sched', default='multistep', help="timm scheduler: multistep, cosine, step, ...")
    g.add_argument('--decay-milestones', type=int, nargs='+', default=[50, 100, 150],
                   help='0-based epochs from which the lr is multiplied by --decay-rate (multistep)')
    g.add_argument('--decay-rate', type=float, default=0.1)
    g.add_argument('--decay-epochs', type=float, default=30, help="step size for --sched step")
    g.add_argument('--min-lr', type=float, default=0.0)
    g.add_argument('--warmup-epochs', type=int, default=0)
    g.add_argument('--warmup-lr', type=float, default=1e-5)
    g.add_argument('--sched-on-updates', action='store_true', help='update the lr every step, not every epoch')
    g.add_argument('--smoothing', type=float, default=0.0, help='label smoothing')
    g.add_argument('--clip-grad', type=float, default=None, help='clip gradient norm to this value')
    g.add_argument('--model-ema', action='store_true', help='keep an EMA of the weights (timm ModelEmaV3)')
    g.add_argument('--model-ema-decay', type=float, default=0.9998)
    g = p.add_argument_group('runtime')
    g.add_argument('--seed', type=int, default=42)
    g.add_argument('--device', default='auto', help="'auto', 'cpu', 'cuda', 'cuda:1', ...")
    g.add_argument('--amp', default='none', choices=['none', 'bf16', 'fp16'], help='autocast dtype')
    g.add_argument('--channels-last', action='store_true')
    g.add_argument('--compile', action='store_true', help='torch.compile the model')
    g.add_argument('--compile-mode', default=None,
                   choices=['default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs'],
                   help='torch.compile mode; reduce-overhead (CUDA graphs) suits these launch-bound small models')
    g.add_argument('--deterministic', action='store_true',
                   help='torch.use_deterministic_algorithms (CUDA needs CUBLAS_WORKSPACE_CONFIG=:4096:8)')
    g.add_argument('--threads', type=int, default=None, help='torch.set_num_threads')
    g.add_argument('--max-steps', type=int, default=None, help='stop each epoch after N steps (smoke runs)')
    g = p.add_argument_group('output')
    g.add_argument('--output', '-o', default=None, help='run directory (default runs/<model>-<time>)')
    g.add_argument('--resume', nargs='?', const='auto', default=None,
                   help='resume from a checkpoint: plain --resume needs -o RUN_DIR and uses RUN_DIR/last.pth; '
                        '--resume PATH without -o continues in the folder of PATH')
    g.add_argument('--no-progress', action='store_true', help='no tqdm bars')
    g.add_argument('--eval-every', type=positive_int, default=1, help='evaluate every N epochs (and always the last)')
    return p


def _scheduler(args, optimizer, updates_per_epoch):
    from timm.scheduler import create_scheduler_v2
    # See module docstring: timm applies milestone m at schedule index m - 1, we want it at m.
    milestones = [m + 1 for m in args.decay_milestones]
    sched, num_epochs = create_scheduler_v2(
        optimizer, sched=args.sched, num_epochs=args.epochs, decay_epochs=args.decay_epochs,
        decay_milestones=milestones, cooldown_epochs=0, min_lr=args.min_lr, decay_rate=args.decay_rate,
        warmup_lr=args.warmup_lr, warmup_epochs=args.warmup_epochs, warmup_prefix=False,
        step_on_epochs=not args.sched_on_updates, updates_per_epoch=updates_per_epoch)
    if args.sched_on_updates and args.sched == 'multistep':
        # Per-update stepping: the lr of update k (0-based, set by step_update(k)) is decayed once
        # bisect_right(decay_t, k + 1) counts the milestone, i.e. k >= decay_t - 1. create_scheduler_v2 would use
        # (m + 1) * U, decaying at the *last* update of epoch m; we want the first update of epoch m: k = m * U.
        sched.decay_t = sorted(m * updates_per_epoch + 1 for m in args.decay_milestones)
    return sched, num_epochs


def _unwrap(model):
    return getattr(model, '_orig_mod', model)


def load_weights_into(model: nn.Module, path: os.PathLike, model_name: str = '', use_ema: bool = False):
    """Load a safetensors file or an mlan-train checkpoint into ``model`` with clear errors."""
    from .pretrained import read_state_dict, load_state_dict_clearly
    sd = read_state_dict(path, model_name=model_name, use_ema=use_ema)
    load_state_dict_clearly(model, sd, model_name=model_name, path=path)


def resolve_run(args) -> Tuple[torch.device, str]:
    """Thread count, device and dataset name of a train/eval run (shared by mlan-train and mlan-eval)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dataset = args.dataset or mdata.dataset_for_model(args.model)
    if dataset is None:
        raise UsageError(f"Cannot tell the dataset from model name {args.model!r}; pass --dataset cifar10|cifar100")
    return device, dataset


def train(args) -> Dict[str, Any]:
    device, dataset = resolve_run(args)
    num_classes = mdata.num_classes_for(dataset)
    if args.data_dir is None and not args.download:
        raise UsageError("--data-dir is required (or --download with --data-dir to fetch CIFAR via torchvision)")

    resume_from = None
    if args.resume:
        if args.resume == 'auto':
            if not args.output:
                raise UsageError("--resume without a path needs -o/--output RUN_DIR (the default run folder is "
                                 "timestamped, so it cannot be found again); or pass --resume RUN_DIR/last.pth")
            resume_from = Path(args.output) / 'last.pth'
        else:
            resume_from = Path(args.resume)
            if resume_from.is_dir():
                resume_from = resume_from / 'last.pth'
        if not resume_from.is_file():
            raise UsageError(f"--resume: no checkpoint at {resume_from}")
    if args.output:
        out_dir = Path(args.output)
    elif resume_from is not None:
        out_dir = resume_from.parent  # --resume PATH: continue the run in its own folder
    else:
        out_dir = Path(f"runs/{args.model}-{time.strftime('%Y%m%d-%H%M%S')}")
    ckpt_path = out_dir / 'last.pth'
    if args.initial_weights and not Path(args.initial_weights).is_file():
        raise UsageError(f"--initial-weights: file not found: {args.initial_weights}")

    if args.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
    seed_everything(args.seed)

    model_kwargs = parse_model_kwargs(args.model_kwargs)
    if model_kwargs.get('num_classes') == num_classes:
        del model_kwargs['num_classes']  # redundant: the dataset's class count is used anyway
    model = create_model(args.model, pretrained=args.pretrained, **model_kwargs_for_dataset(model_kwargs, dataset))
    if args.initial_weights:
        load_weights_into(model, args.initial_weights, args.model)
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    mean, std = _norm_stats(model, dataset)

    common = dict(device=device, workers=args.workers, download=args.download, cache_dir=args.cache_dir,
                  on_device=args.data_on_device)
    train_loader = mdata.build_loader(dataset, args.data_dir, 'train', args.batch_size, subset=args.subset,
                                      seed=args.seed, mean=mean, std=std, **common)
    test_loader = mdata.build_loader(dataset, args.data_dir, 'test', max(args.batch_size, 256),
                                     subset=args.test_subset, seed=args.seed, mean=mean, std=std, **common)
    steps_per_epoch = len(train_loader) if args.max_steps is None else min(len(train_loader), args.max_steps)

    from timm.optim import create_optimizer_v2
    from timm.utils import ModelEmaV3
    optimizer = create_optimizer_v2(model, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay,
                                    momentum=args.momentum, filter_bias_and_bn=args.no_wd_norm_bias)
    scheduler, num_epochs = _scheduler(args, optimizer, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type) if args.amp == 'fp16' and device.type == 'cuda' else None
    criterion = nn.CrossEntropyLoss(label_smoothing=args.smoothing)

    start_epoch = 0
    if resume_from is not None:
        ckpt = torch.load(resume_from, map_location='cpu', weights_only=False)
        if ckpt.get('args', {}).get('model') != args.model:
            raise UsageError(f"--resume: checkpoint {resume_from} is for model {ckpt.get('args', {}).get('model')!r}, "
                             f"not {args.model!r}")
        ckpt_kwargs = dict(ckpt.get('model_kwargs') or {})
        if ckpt_kwargs.get('num_classes') == num_classes:
            del ckpt_kwargs['num_classes']
        if ckpt_kwargs != model_kwargs:
            raise UsageError(f"--resume: checkpoint {resume_from} was trained with --model-kwargs {ckpt_kwargs}, "
                             f"but this run has {model_kwargs}; pass the same --model-kwargs")
        model.load_state_dict(ckpt['model'])
        optimizer.load_state_dict(ckpt['optimizer'])
        scheduler.load_state_dict(ckpt['scheduler'])
    # created after a resume's model weights are loaded: a checkpoint without EMA starts the EMA from them
    ema = ModelEmaV3(model, decay=args.model_ema_decay) if args.model_ema else None
    if resume_from is not None:
        if ema is not None and ckpt.get('ema') is not None:
            ema.load_state_dict(ckpt['ema'])
        if scaler is not None and ckpt.get('scaler') is not None:
            scaler.load_state_dict(ckpt['scaler'])
        _set_rng_state(ckpt['rng'])
        start_epoch = int(ckpt['epoch'])
        print(f"Resuming from {resume_from}: {start_epoch} epoch(s) done, continuing at epoch {start_epoch}",
              flush=True)

    train_model = torch.compile(model, mode=args.compile_mode) if args.compile else model
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / 'log.jsonl'
    _truncate_log(log_path, start_epoch)
    atomic_write_text(out_dir / 'args.json', json.dumps(vars(args), indent=2, default=str))

    from tqdm import tqdm
    # test hook: seconds to sleep after every step, so tests can interrupt a run mid-epoch reliably
    step_sleep = float(os.environ.get('MLAN_TIMM_DEBUG_STEP_SLEEP', '0') or 0)
    last = {}
    num_updates = start_epoch * steps_per_epoch
    for epoch in range(start_epoch, num_epochs):
        # every source of randomness is a function of (seed, epoch): resumed runs replay the same epochs
        seed_everything(args.seed * 1000 + epoch)
        train_loader.set_epoch(epoch)
        scheduler.step(epoch)
        lr = optimizer.param_groups[0]['lr']
        train_model.train()
        loss_sum = torch.zeros((), device=device)
        nonfinite = torch.zeros((), device=device, dtype=torch.bool)  # checked only when the bar is refreshed
        correct = torch.zeros((), device=device, dtype=torch.long)
        t0 = time.perf_counter()
        n_img = 0
        bar = tqdm(total=steps_per_epoch, desc=f'epoch {epoch + 1}/{num_epochs}', disable=args.no_progress,
                   dynamic_ncols=True, leave=False)
        for step, (x, y) in enumerate(train_loader):
            if step >= steps_per_epoch:
                break
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            if args.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with amp_context(device, args.amp):
                out = train_model(x)
                loss = criterion(out, y)
            nonfinite |= ~torch.isfinite(loss.detach())
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                if args.clip_grad:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                if args.clip_grad:
                    nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
                optimizer.step()
            num_updates += 1
            if ema is not None:
                ema.update(model, step=num_updates)
            scheduler.step_update(num_updates)
            b = x.shape[0]
            n_img += b
            # exact epoch sums kept on the device; synchronised only when the bar is refreshed
            loss_sum += loss.detach().float() * b
            correct += (out.detach().argmax(-1) == y).sum()
            if step % 10 == 0 or step == steps_per_epoch - 1:
                if nonfinite.item():
                    bar.close()
                    raise NonFiniteLossError(
                        f"non-finite training loss in epoch {epoch} (by step {step}, checked every 10 steps); "
                        f"lower --lr or use --clip-grad?")
                bar.set_postfix(loss=f'{loss_sum.item() / n_img:.3f}', acc=f'{100 * correct.item() / n_img:.1f}',
                                img_s=f'{n_img / max(time.perf_counter() - t0, 1e-9):.0f}')
            bar.update(1)
            if step_sleep:
                time.sleep(step_sleep)
        bar.close()
        if device.type == 'cuda':
            torch.cuda.synchronize()
        train_time = time.perf_counter() - t0
        rec = dict(epoch=epoch, lr=lr, train_loss=loss_sum.item() / max(n_img, 1),
                   train_top1=100.0 * correct.item() / max(n_img, 1),
                   train_img_per_s=n_img / train_time if train_time > 0 else None, train_time=train_time)
        if (epoch + 1) % args.eval_every == 0 or epoch + 1 == num_epochs:
            ev = evaluate(train_model, test_loader, device, args.amp, args.channels_last)
            rec.update(test_top1=ev['top1'], test_top5=ev['top5'], test_loss=ev['loss'], eval_time=ev['seconds'])
            if ema is not None:
                ev = evaluate(ema.module, test_loader, device, args.amp, args.channels_last)
                rec.update(ema_test_top1=ev['top1'], ema_test_top5=ev['top5'], ema_test_loss=ev['loss'])
        rec['time'] = time.perf_counter() - t0
        # checkpoint first, then the log line: a logged epoch always has its checkpoint on disk
        atomic_torch_save(dict(
            model=_unwrap(model).state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
            ema=ema.state_dict() if ema is not None else None,
            scaler=scaler.state_dict() if scaler is not None else None,
            epoch=epoch + 1, rng=_rng_state(device), args=vars(args), metrics=rec,
            dataset=dataset, model_kwargs=model_kwargs), ckpt_path)
        with open(log_path, 'a', encoding='utf-8') as f:
            f.write(json.dumps(rec) + '\n')
        msg = ' '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}' for k, v in rec.items())
        print(msg, flush=True)
        last = rec

    _save_final(model, ema, out_dir)
    return dict(output=str(out_dir), last=last, epochs=num_epochs)


def _norm_stats(model, dataset):
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    stats = mdata.CIFAR_STATS[dataset]
    mean, std = cfg.get('mean'), cfg.get('std')
    if cfg.get('input_size', (3, 224, 224))[-1] == 32 and mean and std:
        return tuple(mean), tuple(std)
    return stats['mean'], stats['std']


def _truncate_log(log_path: Path, start_epoch: int):
    """Drop log lines of epochs that will be re-run (resume after a crash), atomically."""
    if not log_path.exists():
        return
    keep = []
    for line in log_path.read_text(encoding='utf-8').splitlines():
        try:
            if json.loads(line).get('epoch', -1) < start_epoch:
                keep.append(line)
        except json.JSONDecodeError:
            continue
    atomic_write_text(log_path, ''.join(x + '\n' for x in keep))


def _save_final(model, ema, out_dir: Path):
    for name, m in (('model.safetensors', _unwrap(model)), ('model_ema.safetensors', ema.module if ema else None)):
        if m is None:
            continue
        sd = {k: v.detach().cpu().contiguous() for k, v in m.state_dict().items()}
        atomic_save_file(sd, out_dir / name)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = train(args)
    except (UsageError, mdata.DatasetNotFoundError, PretrainedWeightsError) as e:
        print(f"mlan-train: error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        print(f"mlan-train: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mlan-train: interrupted; resume with --resume", file=sys.stderr)
        return 130
    last = summary['last']
    if last:
        print(f"done: {summary['epochs']} epochs, final test top1={last.get('test_top1', float('nan')):.2f} "
              f"top5={last.get('test_top5', float('nan')):.2f} -> {summary['output']}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
