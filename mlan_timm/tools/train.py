"""Train an mlan_timm (or any timm) model on CIFAR-10/100; the paper's recipe is the default (``--recipe paper``).

The paper recipe (the authors' public code, see docs/training.md): ``Pad(4, padding_mode='reflect')`` +
``RandomCrop(32)`` + ``RandomHorizontalFlip``, normalisation with :data:`mlan_timm.zoo.PAPER_MEAN` /
:data:`~mlan_timm.zoo.PAPER_STD` (both datasets), SGD lr 0.1 momentum 0.9 weight decay 5e-4 on all parameters
without Nesterov (timm's ``momentum`` optimizer), batch 128, 200 epochs, lr x0.1 from epochs 50, 100 and 150,
plain cross-entropy, seed 2021. Every flag overrides its recipe value.

Milestone convention: ``--decay-milestones 50 100 150`` means the *0-based epoch index* from which the lower
lr applies (PyTorch ``MultiStepLR`` semantics: epochs 0-49 run at 0.1, epoch 50 is the first at 0.01).
timm's ``MultiStepLRScheduler`` applies milestone ``m`` already at schedule index ``m - 1``, so the values
are passed to ``create_scheduler_v2`` as ``m + 1``; ``tests/test_train.py`` checks the lr of every epoch against
``torch.optim.lr_scheduler.MultiStepLR``.

The paper reports the best test accuracy over all epochs; the log, ``summary.json``, the checkpoint and the
saved weights' metadata record both the final-epoch and the best-epoch test top-1 / top-5 (and the best epoch).

Distributed: under ``torchrun`` (``WORLD_SIZE`` > 1) mlan-train trains with ``DistributedDataParallel`` (nccl on
CUDA, one GPU per process at ``cuda:LOCAL_RANK``; gloo on CPU). ``--batch-size`` stays the *global* batch, split
evenly over the processes, each taking its share of every global batch (:func:`mlan_timm.data.shard_batches`);
train and test metrics are reduced over all processes; rank 0 alone writes the checkpoint, log and weights.

Resume safety: ``--resume`` refuses flags that change what is trained (:data:`RESUME_REFUSED_FLAGS`) unless
``--override-resume-flags`` is given; every accepted change (and a larger ``--epochs``) is printed and recorded in
``args.json`` under ``resume_overrides``; a finished run is left alone ("nothing to do").

Run ``mlan-train --help`` (or ``python -m mlan_timm.tools.train --help``) for every knob; see docs/training.md.
"""
import argparse
import json
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

from .. import data as mdata
from .. import zoo
from ..atomic import atomic_save_file, atomic_torch_save, atomic_write_text
from .common import (
    TRAINING_METADATA_KEY,
    HelpFormatter,
    UsageError,
    amp_context,
    check_writable_dir,
    create_model,
    evaluate,
    load_weights_into,
    model_kwargs_for_dataset,
    non_negative_int,
    norm_stats,
    parse_model_kwargs,
    positive_int,
    resolve_dataset,
    resolve_device,
    run_cli,
    set_threads,
    summarize_history,
    unwrap,
)

__all__ = ['RECIPES', 'TrainHooks', 'NonFiniteLossError', 'build_parser', 'parse_args', 'build_optimizer',
           'build_scheduler', 'train_step', 'train_one_epoch', 'evaluate', 'save_checkpoint', 'load_checkpoint',
           'summarize_history', 'TrainSetup', 'prepare_train', 'begin_epoch', 'finish_epoch', 'finish_train',
           'train', 'main', 'RESUME_REFUSED_FLAGS', 'RESUME_RECORDED_FLAGS']

#: Training recipes: argparse defaults that ``--recipe NAME`` selects; explicit flags override them.
RECIPES: Dict[str, Dict[str, Any]] = {
    'paper': dict(epochs=200, batch_size=128, opt='momentum', lr=0.1, momentum=0.9, weight_decay=5e-4,
                  no_wd_norm_bias=False, sched='multistep', decay_milestones=[50, 100, 150], decay_rate=0.1,
                  warmup_epochs=0, smoothing=0.0, seed=2021, padding_mode='reflect'),
}


#: mlan-train options that define what is trained: ``--resume`` refuses a change of any of them (naming each) unless
#: ``--override-resume-flags`` is given. ``epochs`` may grow (training on), not shrink.
RESUME_REFUSED_FLAGS = (
    'model', 'pretrained', 'initial_weights', 'dataset', 'subset', 'test_subset', 'padding_mode',
    'recipe', 'epochs', 'batch_size', 'opt', 'lr', 'momentum', 'weight_decay', 'no_wd_norm_bias', 'sched',
    'decay_milestones', 'decay_rate', 'decay_epochs', 'min_lr', 'warmup_epochs', 'warmup_lr', 'sched_on_updates',
    'smoothing', 'clip_grad', 'seed', 'max_steps')
#: Options that may change at a resume (runtime choices that still show in the numbers): allowed, printed and
#: recorded in ``args.json``. Every other option (device, workers, threads, output, progress, compile, ...) is free.
#: ``data_dir`` is one of them: the same dataset may live at another path in the next session (the GPU runbook).
RESUME_RECORDED_FLAGS = ('amp', 'model_ema', 'model_ema_decay', 'data_on_device', 'eval_every', 'sync_bn', 'data_dir')


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN/inf; the CLI prints the message and exits with status 1."""


@dataclass
class TrainHooks:
    """Optional callbacks of :func:`train`: ``on_step(epoch, step)`` after every optimizer step and
    ``on_epoch_end(epoch, record)`` after an epoch's checkpoint and log line are written."""
    on_step: Optional[Callable[[int, int], None]] = None
    on_epoch_end: Optional[Callable[[int, Dict[str, Any]], None]] = None


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------
def build_parser(recipe: str = 'paper') -> argparse.ArgumentParser:
    """The mlan-train parser, with the defaults of ``recipe`` (see :data:`RECIPES`)."""
    p = argparse.ArgumentParser(
        prog='mlan-train', description=__doc__.split('\n\n')[0],
        epilog='Distributed: torchrun --nproc_per_node N -m mlan_timm.tools.train ... (see docs/training.md)',
        formatter_class=HelpFormatter)
    g = p.add_argument_group('model')
    g.add_argument('--model', default='mlan_resnet20_cifar10', help='timm model name')
    g.add_argument('--model-kwargs', nargs='*', default=[], metavar='KEY=VALUE',
                   help='extra create_model kwargs, e.g. attn=cbam drop_rate=0.1 (values parsed as JSON / literals)')
    g.add_argument('--pretrained', action='store_true', help='start from pretrained weights')
    g.add_argument('--initial-weights', default=None, help='start from a safetensors file or checkpoint')
    g = p.add_argument_group('data')
    g.add_argument('--data-dir', default=None, help='CIFAR data (torchvision layout, ImageFolder or tarballs)')
    g.add_argument('--dataset', default=None, choices=sorted(zoo.DATASETS),
                   help='dataset (default: from the model name suffix)')
    g.add_argument('--download', action='store_true', help='let torchvision download CIFAR into --data-dir')
    g.add_argument('--cache-dir', default=None,
                   help='where tarballs are extracted / decoded (default: ~/.cache/mlan_timm)')
    g.add_argument('--subset', type=positive_int, default=None, help='train on a fixed random subset of N images')
    g.add_argument('--test-subset', type=positive_int, default=None,
                   help='evaluate on a fixed random subset of N images')
    g.add_argument('--data-on-device', action='store_true',
                   help='hold the dataset as a uint8 tensor on the device, augment there (fast on CUDA)')
    g.add_argument('--workers', type=non_negative_int, default=2,
                   help='DataLoader workers (ignored with --data-on-device)')
    g.add_argument('--padding-mode', choices=mdata.PADDING_MODES,
                   help="padding of the pad-4 random crop: 'reflect' (paper) or 'constant' (zeros)")
    g = p.add_argument_group('recipe')
    g.add_argument('--recipe', default=recipe, choices=sorted(RECIPES),
                   help='defaults of the flags below; explicit flags override them')
    g.add_argument('--epochs', type=positive_int, help='training epochs')
    g.add_argument('--batch-size', '-b', type=positive_int,
                   help='training batch size; under torchrun the global batch, split evenly over the processes')
    g.add_argument('--opt', help="timm optimizer name (create_optimizer_v2): 'momentum' is SGD with momentum, "
                                 "no Nesterov (the paper); timm's 'sgd' is Nesterov")
    g.add_argument('--lr', type=float, help='initial learning rate')
    g.add_argument('--momentum', type=float, help='SGD momentum')
    g.add_argument('--weight-decay', '--wd', type=float, help='weight decay')
    g.add_argument('--no-wd-norm-bias', action='store_true',
                   help='exclude norm/bias parameters from weight decay (the paper decays all)')
    g.add_argument('--sched', help="timm scheduler: multistep, cosine, step, ...")
    g.add_argument('--decay-milestones', type=int, nargs='+',
                   help='0-based epochs from which the lr is multiplied by --decay-rate (multistep)')
    g.add_argument('--decay-rate', type=float, help='lr factor at each milestone / step')
    g.add_argument('--decay-epochs', type=float, default=30, help="step size for --sched step")
    g.add_argument('--min-lr', type=float, default=0.0, help='lr floor (cosine etc.)')
    g.add_argument('--warmup-epochs', type=int, help='linear warm-up epochs')
    g.add_argument('--warmup-lr', type=float, default=1e-5, help='lr at the start of warm-up')
    g.add_argument('--sched-on-updates', action='store_true', help='update the lr every step, not every epoch')
    g.add_argument('--smoothing', type=float, help='label smoothing')
    g.add_argument('--clip-grad', type=float, default=None, help='clip gradient norm to this value')
    g.add_argument('--model-ema', action='store_true', help='keep an EMA of the weights (timm ModelEmaV3)')
    g.add_argument('--model-ema-decay', type=float, default=0.9998, help='EMA decay per step')
    g = p.add_argument_group('runtime')
    g.add_argument('--seed', type=int, help='random seed (every epoch reseeds from seed and epoch)')
    g.add_argument('--device', default='auto', help="'auto', 'cpu', 'cuda', 'cuda:1', ...")
    g.add_argument('--amp', default='none', choices=['none', 'bf16', 'fp16'], help='autocast dtype')
    g.add_argument('--channels-last', action='store_true')
    g.add_argument('--compile', action='store_true', help='torch.compile the model')
    g.add_argument('--compile-mode', default=None,
                   choices=['default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs'],
                   help='torch.compile mode; reduce-overhead (CUDA graphs) suits these launch-bound small models')
    g.add_argument('--deterministic', action='store_true',
                   help='torch.use_deterministic_algorithms (CUDA needs CUBLAS_WORKSPACE_CONFIG=:4096:8)')
    g.add_argument('--threads', type=positive_int, default=None, help='torch.set_num_threads')
    g.add_argument('--sync-bn', action='store_true',
                   help='under torchrun on CUDA: SyncBatchNorm, batch statistics over the global batch')
    g.add_argument('--max-steps', type=positive_int, default=None, help='stop each epoch after N steps (smoke runs)')
    g = p.add_argument_group('output')
    g.add_argument('--output', '-o', default=None, help='run directory (default: runs/<model>-<time>)')
    g.add_argument('--resume', nargs='?', const='auto', default=None,
                   help='resume from a checkpoint: plain --resume needs -o RUN_DIR and uses RUN_DIR/last.pth; '
                        '--resume PATH without -o continues in the folder of PATH')
    g.add_argument('--override-resume-flags', action='store_true',
                   help='let --resume continue with changed data / recipe flags (each change is printed and '
                        'recorded in args.json); without it such a resume is refused')
    g.add_argument('--no-progress', action='store_true', help='no tqdm bars')
    g.add_argument('--eval-every', type=positive_int, default=1, help='evaluate every N epochs (and always the last)')
    p.set_defaults(**RECIPES[recipe])
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """Parse mlan-train arguments: the ``--recipe``'s values are the defaults, explicit flags override them."""
    pre, _ = build_parser().parse_known_args(argv)
    return build_parser(pre.recipe).parse_args(argv)


# ----------------------------------------------------------------------------------------------------------------
# Optimizer, scheduler
# ----------------------------------------------------------------------------------------------------------------
def build_optimizer(model: nn.Module, args) -> torch.optim.Optimizer:
    """timm's ``create_optimizer_v2`` with the run's optimizer, lr, momentum and weight decay."""
    from timm.optim import create_optimizer_v2
    return create_optimizer_v2(model, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay,
                               momentum=args.momentum, filter_bias_and_bn=args.no_wd_norm_bias)


def build_scheduler(args, optimizer, updates_per_epoch: int):
    """timm's ``create_scheduler_v2``; milestones follow torch's ``MultiStepLR`` (see the module docstring)."""
    from timm.scheduler import create_scheduler_v2
    # timm applies milestone m at schedule index m - 1; we want it at m.
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


# ----------------------------------------------------------------------------------------------------------------
# Randomness
# ----------------------------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------------------------
# One epoch
# ----------------------------------------------------------------------------------------------------------------
def train_step(model: nn.Module, train_model: nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer, criterion,
               device: torch.device, args, scaler=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on the batch ``(x, y)`` (already on ``device``): forward under autocast, backward,
    optional gradient clipping, optimizer step. Returns ``(output, loss)`` without synchronising.

    No host synchronisation and no allocation that outlives the step, so without a GradScaler it can be
    captured in a CUDA graph (mlan-train-many does)."""
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with amp_context(device, args.amp):
        out = train_model(x)
        loss = criterion(out, y)
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
    return out, loss


def train_one_epoch(epoch: int, model: nn.Module, loader, optimizer, scheduler, criterion, device: torch.device,
                    args, num_updates: int, steps_per_epoch: int, num_epochs: int, ema=None, scaler=None,
                    train_model: Optional[nn.Module] = None,
                    on_step: Optional[Callable[[int, int], None]] = None) -> Tuple[Dict[str, Any], int]:
    """Train ``model`` (through ``train_model``, e.g. its compiled wrapper) for one epoch.

    Returns the epoch's train metrics (lr, loss, top-1, images/s, time) and the updated optimizer-step count."""
    from tqdm import tqdm
    train_model = train_model or model
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
    for step, (x, y) in enumerate(loader):
        if step >= steps_per_epoch:
            break
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        out, loss = train_step(model, train_model, x, y, optimizer, criterion, device, args, scaler)
        nonfinite |= ~torch.isfinite(loss.detach())
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
        if on_step is not None:
            on_step(epoch, step)
    bar.close()
    if device.type == 'cuda':
        torch.cuda.synchronize()
    train_time = time.perf_counter() - t0
    rec = dict(epoch=epoch, lr=lr, train_loss=loss_sum.item() / max(n_img, 1),
               train_top1=100.0 * correct.item() / max(n_img, 1),
               train_img_per_s=n_img / train_time if train_time > 0 else None, train_time=train_time,
               train_images=n_img)
    return rec, num_updates


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------------------
def save_checkpoint(path: Path, *, model, optimizer, scheduler, ema, scaler, epoch: int, device: torch.device,
                    args, history: List[Dict[str, Any]], dataset: str, model_kwargs: Dict[str, Any],
                    summary: Dict[str, Any]) -> Path:
    """Write ``last.pth`` atomically: everything a resume needs, plus the run's per-epoch history and summary."""
    return atomic_torch_save(dict(
        model=unwrap(model).state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
        ema=ema.state_dict() if ema is not None else None,
        scaler=scaler.state_dict() if scaler is not None else None,
        epoch=epoch, rng=_rng_state(device), args=vars(args), metrics=history[-1] if history else {},
        history=history, summary=summary, dataset=dataset, model_kwargs=model_kwargs), path)


def load_checkpoint(path: Path, args, model_kwargs: Dict[str, Any], num_classes: int) -> Dict[str, Any]:
    """Read a resume checkpoint and check it belongs to this run; UsageError otherwise.

    The model and its kwargs must be the checkpoint's; so must every flag of :data:`RESUME_REFUSED_FLAGS` unless
    ``args.override_resume_flags`` (``--epochs`` may grow). The changes found (refused ones allowed by the
    override, a larger ``--epochs``, :data:`RESUME_RECORDED_FLAGS`) are returned in ``ckpt['resume_changes']``
    as ``{flag: [old, new]}``."""
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=False)
    except Exception as e:
        raise UsageError(f"--resume: checkpoint {path} is unreadable ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or 'model' not in ckpt or 'epoch' not in ckpt:
        raise UsageError(f"--resume: {path} is not an mlan-train checkpoint")
    if ckpt.get('args', {}).get('model') != args.model:
        raise UsageError(f"--resume: checkpoint {path} is for model {ckpt.get('args', {}).get('model')!r}, "
                         f"not {args.model!r}")
    ckpt_kwargs = dict(ckpt.get('model_kwargs') or {})
    if ckpt_kwargs.get('num_classes') == num_classes:
        del ckpt_kwargs['num_classes']
    if ckpt_kwargs != model_kwargs:
        raise UsageError(f"--resume: checkpoint {path} was trained with --model-kwargs {ckpt_kwargs}, "
                         f"but this run has {model_kwargs}; pass the same --model-kwargs")
    refused, recorded = _resume_changes(ckpt, args)
    if refused and not getattr(args, 'override_resume_flags', False):
        run = Path(path).parent
        raise UsageError(
            f"--resume: this command changes what run {run} trains: {_describe_changes(refused)}. Resume with the "
            f"run's flags (they are in {run / 'args.json'}), or pass --override-resume-flags to continue with the "
            f"new values (recorded in args.json)")
    ckpt['resume_changes'] = dict(refused, **recorded)
    return ckpt


def _flag_name(key: str) -> str:
    return {'batch_size': '--batch-size/-b', 'output': '-o/--output'}.get(key, '--' + key.replace('_', '-'))


def _flag_value(v) -> str:
    if v is None:
        return 'not given'
    if isinstance(v, bool):
        return 'on' if v else 'off'
    if isinstance(v, (list, tuple)):
        return ' '.join(map(str, v))
    return str(v)


def _describe_changes(changes: Dict[str, List[Any]]) -> str:
    return '; '.join(f"{_flag_name(k)} {_flag_value(old)} (run) -> {_flag_value(new)} (now)"
                     for k, (old, new) in changes.items())


def _same_flag(key: str, old, new) -> bool:
    if key in ('data_dir', 'initial_weights') and old and new:
        return os.path.abspath(os.path.expanduser(str(old))) == os.path.abspath(os.path.expanduser(str(new)))
    if isinstance(old, (list, tuple)) or isinstance(new, (list, tuple)):
        return list(old or []) == list(new or [])
    return old == new


def _resume_changes(ckpt: Dict[str, Any], args) -> Tuple[Dict[str, List[Any]], Dict[str, List[Any]]]:
    """``(refused, recorded)`` changes of this command against the checkpoint's arguments, ``{key: [old, new]}``.

    Keys the checkpoint does not hold (older mlan-train versions) are not compared."""
    saved = ckpt.get('args') or {}
    refused, recorded = {}, {}
    for key in RESUME_REFUSED_FLAGS:
        if key not in saved or key == 'dataset':
            continue
        old, new = saved[key], getattr(args, key, None)
        if key == 'epochs' and old is not None and new is not None and new > old:
            recorded[key] = [old, new]  # training on: allowed, recorded
        elif not _same_flag(key, old, new):
            refused[key] = [old, new]
    if ckpt.get('dataset') and args.dataset and ckpt['dataset'] != args.dataset:
        refused['dataset'] = [ckpt['dataset'], args.dataset]
    for key in RESUME_RECORDED_FLAGS:
        if key in saved and saved[key] != getattr(args, key, None):
            recorded[key] = [saved[key], getattr(args, key, None)]
    return refused, recorded


def _resume_path(args) -> Optional[Path]:
    if not args.resume:
        return None
    if args.resume == 'auto':
        if not args.output:
            raise UsageError("--resume without a path needs -o/--output RUN_DIR (the default run folder is "
                             "timestamped, so it cannot be found again); or pass --resume RUN_DIR/last.pth")
        path = Path(args.output) / 'last.pth'
    else:
        path = Path(args.resume)
        if path.is_dir():
            path = path / 'last.pth'
    if not path.is_file():
        raise UsageError(f"--resume: no checkpoint at {path}")
    return path


def _old_log(out_dir: Path, start_epoch: int) -> List[Dict[str, Any]]:
    """Log rows of the completed epochs, for checkpoints written before they carried their history."""
    path = out_dir / 'log.jsonl'
    rows = []
    for line in (path.read_text(encoding='utf-8').splitlines() if path.is_file() else []):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get('epoch', -1) < start_epoch:
            rows.append(row)
    return rows


def _write_log(log_path: Path, history: List[Dict[str, Any]]):
    atomic_write_text(log_path, ''.join(json.dumps(r) + '\n' for r in history))


def _save_final(model, ema, out_dir: Path, summary: Dict[str, Any]):
    meta = {TRAINING_METADATA_KEY: json.dumps(summary)}
    for name, m in (('model.safetensors', unwrap(model)), ('model_ema.safetensors', ema.module if ema else None)):
        if m is None:
            continue
        sd = {k: v.detach().cpu().contiguous() for k, v in m.state_dict().items()}
        atomic_save_file(sd, out_dir / name, metadata=meta)


# ----------------------------------------------------------------------------------------------------------------
# Distributed (torchrun)
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class _Dist:
    """This process's place in a torchrun job (``world == 1``: a plain single-process run)."""
    world: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _dist_from_env() -> _Dist:
    try:
        world = int(os.environ.get('WORLD_SIZE', '1'))
        rank = int(os.environ.get('RANK', '0'))
        local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    except ValueError as e:
        raise UsageError(f"WORLD_SIZE / RANK / LOCAL_RANK are not integers: {e}") from e
    return _Dist(world, rank, local_rank)


def _train_device(spec: str, d: _Dist) -> torch.device:
    """``--device`` for this process: under torchrun a CUDA run uses ``cuda:LOCAL_RANK``."""
    device = resolve_device(spec)
    if d.enabled and device.type == 'cuda':
        if device.index is not None and device.index != d.local_rank:
            raise UsageError(f"--device {spec} under torchrun: each process uses cuda:LOCAL_RANK; pass --device cuda")
        if d.local_rank >= torch.cuda.device_count():
            raise UsageError(f"LOCAL_RANK {d.local_rank} but only {torch.cuda.device_count()} CUDA device(s)")
        device = torch.device('cuda', d.local_rank)
        torch.cuda.set_device(device)
    return device


def _init_process_group(d: _Dist, device: torch.device):
    import torch.distributed as dist
    if d.enabled and not dist.is_initialized():
        dist.init_process_group(backend='nccl' if device.type == 'cuda' else 'gloo')


def _all_reduce_sums(values: List[float], device: torch.device, op: str = 'sum') -> List[float]:
    import torch.distributed as dist
    t = torch.tensor(values, dtype=torch.float64, device=device if device.type == 'cuda' else 'cpu')
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == 'max' else dist.ReduceOp.SUM)
    return t.tolist()


def _reduce_train_record(rec: Dict[str, Any], d: _Dist, device: torch.device) -> Dict[str, Any]:
    """Train metrics of one epoch over all processes (image-weighted means, summed images, slowest time)."""
    if not d.enabled:
        return rec
    n = rec['train_images']
    tot_n, loss, correct = _all_reduce_sums([n, rec['train_loss'] * n, rec['train_top1'] * n], device)
    (t,) = _all_reduce_sums([rec['train_time']], device, op='max')
    return dict(rec, train_loss=loss / max(tot_n, 1), train_top1=correct / max(tot_n, 1), train_images=int(tot_n),
                train_time=t, train_img_per_s=tot_n / t if t > 0 else None)


def _evaluate_all(model, loader, device, args, d: _Dist) -> Dict[str, float]:
    """:func:`evaluate` on this process's test shard, reduced over the processes (each test image counted once)."""
    ev = evaluate(model, loader, device, args.amp, args.channels_last)
    if not d.enabled:
        return ev
    n = ev['images']
    tot_n, loss, top1, top5 = _all_reduce_sums([n, ev['loss'] * n, ev['top1'] * n, ev['top5'] * n], device)
    (secs,) = _all_reduce_sums([ev['seconds']], device, op='max')
    tot_n = max(tot_n, 1)
    return dict(ev, images=int(tot_n), loss=loss / tot_n, top1=top1 / tot_n, top5=top5 / tot_n, seconds=secs,
                img_per_s=tot_n / secs if secs > 0 else float('nan'))


# ----------------------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class RunStart:
    """What :func:`check_run` settles before anything is built: processes, device, data, run folder, checkpoint."""
    d: _Dist
    device: torch.device
    dataset: str
    model_kwargs: Dict[str, Any]
    out_dir: Path
    resume_from: Optional[Path]
    ckpt: Optional[Dict[str, Any]]


@dataclass
class TrainSetup:
    """A run as :func:`prepare_train` leaves it before its first epoch (mlan-train and mlan-train-many share it).

    ``history`` holds the completed epochs' records and grows as :func:`finish_epoch` runs."""
    args: argparse.Namespace
    device: torch.device
    dataset: str
    model_kwargs: Dict[str, Any]
    model: nn.Module
    train_model: nn.Module  # the model, or its DDP / torch.compile wrapper
    eval_model: nn.Module  # what is evaluated: the train model, or the plain model under torchrun
    train_loader: Any
    test_loader: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    num_epochs: int
    steps_per_epoch: int
    scaler: Optional[torch.amp.GradScaler]
    criterion: nn.Module
    ema: Any
    start_epoch: int
    history: List[Dict[str, Any]]
    out_dir: Path
    log_path: Path
    ckpt_path: Path
    run_info: Dict[str, Any]
    d: _Dist


def session_record(device: torch.device, start_epoch: int) -> Dict[str, Any]:
    """Where and with what one training session (a start or a resume) ran: its first epoch, start time, machine
    (CPU, GPU, whether the compiled CPU / GPU kernels run, python / torch / timm versions), code commit and package
    version. ``args.json`` and the checkpoint keep one per session (``sessions``); mlan-export's card lists them."""
    from ..layers import cpu_kernels
    from ..version import __version__
    from .bench.measure import code_version, cpu_kernels_info, machine_line
    if device.type == 'cpu' and cpu_kernels.cpu_kernels_enabled():
        cpu_kernels_info(load=True)  # build / load them now, so that the machine line says whether they run
    return dict(first_epoch=start_epoch, started=time.strftime('%Y-%m-%dT%H:%M:%S%z'),
                machine=machine_line([device.type]), code=code_version(), mlan_timm=__version__)


def _write_args_json(out_dir: Path, args, mean, std, ckpt: Optional[Dict[str, Any]], start_epoch: int,
                     world: int):
    """``args.json``: written at every start and resume with this session's flags (the recipe flags are the run's,
    see :func:`load_checkpoint`; runtime flags such as ``--workers`` are this session's), ``sessions`` (one record
    per session that trains, :func:`session_record`) and ``resume_overrides`` (a resume's accepted flag changes)."""
    path = out_dir / 'args.json'
    changes = (ckpt or {}).get('resume_changes') or {}
    overrides = list(getattr(args, 'resume_overrides', None) or [])
    if ckpt is not None and changes:
        overrides.append(dict(epoch=start_epoch, changes={_flag_name(k): v for k, v in changes.items()}))
    args.resume_overrides = overrides
    atomic_write_text(path, json.dumps(dict(vars(args), mean=mean, std=std, world_size=world), indent=2,
                                       default=str))


def _nothing_to_do(ckpt: Dict[str, Any], out_dir: Path) -> Dict[str, Any]:
    return dict(ckpt.get('summary') or {}, output=str(out_dir), nothing_to_do=True, completed_epochs=ckpt['epoch'])


def check_optimizer_and_schedule(args):
    """UsageError for an optimizer or schedule timm refuses (unknown ``--opt`` / ``--sched``, a negative lr, ...):
    both are built for a one-parameter model first, so the error comes before any data or model is loaded."""
    probe = nn.Linear(1, 1)
    try:
        optimizer = build_optimizer(probe, args)
    except (ValueError, KeyError, TypeError) as e:
        raise UsageError(f"optimizer --opt {args.opt} (--lr {args.lr}, --momentum {args.momentum}, --weight-decay "
                         f"{args.weight_decay}): {e}") from e
    try:
        scheduler, _ = build_scheduler(args, optimizer, updates_per_epoch=1)
    except (ValueError, KeyError, TypeError, AssertionError) as e:
        raise UsageError(f"schedule --sched {args.sched}: {e}") from e
    if scheduler is None:  # older timm returns None for a name it does not know
        raise UsageError(f"schedule --sched {args.sched}: Unknown scheduler {args.sched!r}.")


#: What a run folder holds once a run has trained (args.json alone, or an empty log, is a run that never did).
RUN_FILES = ('last.pth', 'model.safetensors', 'summary.json', 'log.jsonl')


def refuse_to_overwrite_a_run(out_dir: Path):
    """UsageError if ``out_dir`` holds a run's checkpoint, weights or log: without --resume a new run would
    replace them."""
    found = [n for n in RUN_FILES if (out_dir / n).is_file() and (out_dir / n).stat().st_size > 0]
    if found:
        raise UsageError(f"-o/--output {out_dir} already holds a run ({', '.join(found)}): pass --resume to continue "
                         "it, or choose another folder (or remove this one) to start a new run")


def check_run(args) -> RunStart:
    """mlan-train's checks before anything is built: flags, torchrun world, a writable run folder, and the
    checkpoint to resume (whose flags must match, see :data:`RESUME_REFUSED_FLAGS`)."""
    set_threads(args.threads)
    d = _dist_from_env()
    device = _train_device(args.device, d)
    dataset = resolve_dataset(args.model, args.dataset)
    num_classes = mdata.dataset_info(dataset).num_classes
    if args.data_dir is None and not args.download:
        raise UsageError("--data-dir is required (or --download with --data-dir to fetch CIFAR via torchvision)")
    if d.enabled and args.batch_size % d.world:
        raise UsageError(f"--batch-size {args.batch_size} is the global batch: it must be a multiple of the "
                         f"{d.world} torchrun processes")
    if args.sync_bn and not (d.enabled and device.type == 'cuda'):
        raise UsageError("--sync-bn needs a torchrun job on CUDA (PyTorch's SyncBatchNorm has no CPU support)")
    resume_from = _resume_path(args)
    if args.output:
        out_dir = Path(args.output)
    elif resume_from is not None:
        out_dir = resume_from.parent  # --resume PATH: continue the run in its own folder
    else:
        out_dir = Path(f"runs/{args.model}-{time.strftime('%Y%m%d-%H%M%S')}")
    check_writable_dir(out_dir, '-o/--output')  # before any model or data is loaded
    check_optimizer_and_schedule(args)
    if resume_from is None:
        refuse_to_overwrite_a_run(out_dir)
    if args.initial_weights and not Path(args.initial_weights).is_file():
        raise UsageError(f"--initial-weights: file not found: {args.initial_weights}")

    model_kwargs = parse_model_kwargs(args.model_kwargs)
    if model_kwargs.get('num_classes') == num_classes:
        del model_kwargs['num_classes']  # redundant: the dataset's class count is used anyway
    ckpt = None
    if resume_from is not None:
        ckpt = load_checkpoint(resume_from, args, model_kwargs, num_classes)
        if ckpt.get('dataset') and ckpt['dataset'] != dataset and 'dataset' not in ckpt['resume_changes']:
            changes = {'dataset': [ckpt['dataset'], dataset]}
            if not args.override_resume_flags:
                raise UsageError(f"--resume: this command changes what run {out_dir} trains: "
                                 f"{_describe_changes(changes)}; pass the run's --dataset")
            ckpt['resume_changes'].update(changes)

    return RunStart(d, device, dataset, model_kwargs, out_dir, resume_from, ckpt)


def is_finished(start: RunStart, args) -> bool:
    """A resumed run whose epochs are all done and whose final files exist: nothing to train."""
    ckpt, out_dir = start.ckpt, start.out_dir
    return (ckpt is not None and int(ckpt['epoch']) >= args.epochs and (out_dir / 'model.safetensors').is_file()
            and (out_dir / 'summary.json').is_file())


def prepare_train(args, start: Optional[RunStart] = None) -> TrainSetup:
    """Everything mlan-train does before its first epoch: checks (:func:`check_run`, unless ``start`` is given),
    seeding, model, data, optimizer, scheduler, resume from a checkpoint, run folder, ``args.json`` and the log
    rewritten from the checkpoint's history. Under torchrun the process group must be initialised first."""
    start = start if start is not None else check_run(args)
    d, device, dataset, model_kwargs = start.d, start.device, start.dataset, start.model_kwargs
    out_dir, resume_from, ckpt = start.out_dir, start.resume_from, start.ckpt
    if args.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
    seed_everything(args.seed)
    if not d.main:
        args.no_progress = True  # one progress bar: rank 0's

    model = create_model(args.model, pretrained=args.pretrained, weights_flag='--initial-weights FILE',
                         **model_kwargs_for_dataset(model_kwargs, dataset))
    if args.initial_weights:
        load_weights_into(model, args.initial_weights, args.model)
    if args.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    mean, std = norm_stats(dataset)

    common = dict(device=device, workers=args.workers, download=args.download, cache_dir=args.cache_dir,
                  on_device=args.data_on_device, mean=mean, std=std, seed=args.seed, rank=d.rank,
                  world_size=d.world)
    train_loader = mdata.build_loader(dataset, args.data_dir, 'train', args.batch_size // d.world,
                                      subset=args.subset, padding_mode=args.padding_mode, **common)
    test_loader = mdata.build_loader(dataset, args.data_dir, 'test', max(args.batch_size // d.world, 256),
                                     subset=args.test_subset, **common)
    steps_per_epoch = len(train_loader) if args.max_steps is None else min(len(train_loader), args.max_steps)

    from timm.utils import ModelEmaV3
    optimizer = build_optimizer(model, args)
    scheduler, num_epochs = build_scheduler(args, optimizer, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type) if args.amp == 'fp16' and device.type == 'cuda' else None
    criterion = nn.CrossEntropyLoss(label_smoothing=args.smoothing)

    start_epoch, history = 0, []
    if ckpt is not None:
        model.load_state_dict(ckpt['model'])
        changed = ckpt.get('resume_changes') or {}
        fresh = [{k: v for k, v in g.items() if k != 'params'} for g in optimizer.param_groups]
        try:
            optimizer.load_state_dict(ckpt['optimizer'])
        except ValueError as e:  # e.g. --no-wd-norm-bias changed the parameter groups (only with the override)
            if not changed:
                raise
            print(f"mlan-train: note: the optimizer state of the checkpoint does not fit the new flags ({e}); "
                  "the optimizer restarts (momentum buffers reset)", file=sys.stderr, flush=True)
        else:
            if changed:  # the new lr / momentum / weight decay apply from here on
                for g, f in zip(optimizer.param_groups, fresh):
                    g.update(f)
        if not changed:
            # timm schedulers hold only what their flags give; with changed flags the new schedule applies
            scheduler.load_state_dict(ckpt['scheduler'])
    # created after a resume's model weights are loaded: a checkpoint without EMA starts the EMA from them
    ema = ModelEmaV3(model, decay=args.model_ema_decay) if args.model_ema else None
    if ckpt is not None:
        if ema is not None and ckpt.get('ema') is not None:
            ema.load_state_dict(ckpt['ema'])
        if scaler is not None and ckpt.get('scaler') is not None:
            scaler.load_state_dict(ckpt['scaler'])
        _set_rng_state(ckpt['rng'])
        start_epoch = int(ckpt['epoch'])
        history = list(ckpt['history'])[:start_epoch] if 'history' in ckpt else _old_log(out_dir, start_epoch)
        args.resume_overrides = list((ckpt.get('args') or {}).get('resume_overrides') or [])
        if d.main:
            print(f"Resuming from {resume_from}: {start_epoch} epoch(s) done, continuing at epoch {start_epoch}",
                  flush=True)
            if ckpt['resume_changes']:
                print(f"mlan-train: {'warning: --override-resume-flags: ' if args.override_resume_flags else ''}"
                      f"continuing with changed flags (recorded in {out_dir / 'args.json'}): "
                      f"{_describe_changes(ckpt['resume_changes'])}", file=sys.stderr, flush=True)

    trains = start_epoch < num_epochs  # a finished run resumed again adds no session and keeps its args.json
    args.sessions = list(((ckpt or {}).get('args') or {}).get('sessions') or [])
    if trains:
        args.sessions.append(session_record(device, start_epoch))
    ddp_model = model
    if d.enabled:
        from torch.nn.parallel import DistributedDataParallel
        ddp_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == 'cuda' else None)
    train_model = torch.compile(ddp_model, mode=args.compile_mode) if args.compile else ddp_model
    # evaluation needs no gradient sync: the plain model (compiled only in single-process runs)
    eval_model = model if d.enabled else train_model
    log_path = out_dir / 'log.jsonl'
    if d.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_log(log_path, history)  # the log always equals the checkpoint's history (drops re-run epochs)
        if trains or not (out_dir / 'args.json').is_file():
            _write_args_json(out_dir, args, mean, std, ckpt, start_epoch, d.world)

    test_images = len(test_loader.dataset)
    run_info = dict(model=args.model, model_kwargs=model_kwargs, dataset=dataset, recipe=args.recipe,
                    epochs=num_epochs, test_images=test_images, mean=list(mean), std=list(std))
    if d.enabled:
        run_info['world_size'] = d.world
    ckpt_path = out_dir / 'last.pth'
    return TrainSetup(args=args, device=device, dataset=dataset, model_kwargs=model_kwargs, model=model,
                      train_model=train_model, eval_model=eval_model, train_loader=train_loader,
                      test_loader=test_loader, optimizer=optimizer, scheduler=scheduler, num_epochs=num_epochs,
                      steps_per_epoch=steps_per_epoch, scaler=scaler, criterion=criterion, ema=ema,
                      start_epoch=start_epoch, history=history, out_dir=out_dir, log_path=log_path,
                      ckpt_path=ckpt_path, run_info=run_info, d=d)


def begin_epoch(s: TrainSetup, epoch: int):
    """Reseed for ``epoch``: every source of randomness is a function of (seed, epoch, rank), so resumed runs
    replay the same epochs."""
    seed_everything(s.args.seed * 1000 + epoch + (1_000_003 * s.d.rank if s.d.enabled else 0))
    s.train_loader.set_epoch(epoch)


def finish_epoch(s: TrainSetup, epoch: int, rec: Dict[str, Any], t0: float,
                 hooks: Optional[TrainHooks] = None) -> Dict[str, Any]:
    """After epoch ``epoch``'s training (``rec``: this process's train metrics; ``t0``: when it began): metrics
    reduced over processes, evaluation when due, the running best, ``rec['time']``, then (rank 0) the checkpoint,
    the log line and the printed line."""
    args, device, history, ema, d = s.args, s.device, s.history, s.ema, s.d
    rec = _reduce_train_record(rec, d, device)
    if (epoch + 1) % args.eval_every == 0 or epoch + 1 == s.num_epochs:
        ev = _evaluate_all(s.eval_model, s.test_loader, device, args, d)
        rec.update(test_top1=ev['top1'], test_top5=ev['top5'], test_loss=ev['loss'], eval_time=ev['seconds'])
        if ema is not None:
            ev = _evaluate_all(ema.module, s.test_loader, device, args, d)
            rec.update(ema_test_top1=ev['top1'], ema_test_top5=ev['top5'], ema_test_loss=ev['loss'])
    best = summarize_history(history + [rec])
    rec.update(best_epoch=best['best_epoch'], best_test_top1=best['best_test_top1'],
               best_test_top5=best['best_test_top5'])
    rec['time'] = time.perf_counter() - t0
    history.append(rec)
    summary = dict(s.run_info, **summarize_history(history))
    if d.main:
        # checkpoint first, then the log: a logged epoch always has its checkpoint on disk, and a resume rewrites
        # the log from the checkpoint's history
        save_checkpoint(s.ckpt_path, model=s.model, optimizer=s.optimizer, scheduler=s.scheduler, ema=ema,
                        scaler=s.scaler, epoch=epoch + 1, device=device, args=args, history=history,
                        dataset=s.dataset, model_kwargs=s.model_kwargs, summary=summary)
        with open(s.log_path, 'a', encoding='utf-8') as f:
            f.write(json.dumps(rec) + '\n')
        print(' '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}' for k, v in rec.items()), flush=True)
    if hooks is not None and hooks.on_epoch_end is not None:
        hooks.on_epoch_end(epoch, rec)
    return rec


def finish_train(s: TrainSetup) -> Dict[str, Any]:
    """After the last epoch: (rank 0) ``model.safetensors`` (and the EMA's) and ``summary.json``; returns the
    summary."""
    summary = dict(s.run_info, **summarize_history(s.history))
    if s.d.main:
        _save_final(s.model, s.ema, s.out_dir, summary)
        atomic_write_text(s.out_dir / 'summary.json', json.dumps(summary, indent=2))
    if s.d.enabled:
        import torch.distributed as dist
        dist.barrier()  # every rank returns once rank 0's files are on disk
    return dict(summary, output=str(s.out_dir))


def train(args, hooks: Optional[TrainHooks] = None) -> Dict[str, Any]:
    """Run mlan-train with parsed ``args``; returns the run summary (also written to ``<run dir>/summary.json``).

    Under torchrun (``WORLD_SIZE`` > 1) this is one process of a DistributedDataParallel job (see the module
    docstring); every process returns the summary, rank 0 writes the files."""
    hooks = hooks or TrainHooks()
    start = check_run(args)
    if is_finished(start, args):
        return _nothing_to_do(start.ckpt, start.out_dir)
    _init_process_group(start.d, start.device)
    try:
        s = prepare_train(args, start)
        num_updates = s.start_epoch * s.steps_per_epoch
        for epoch in range(s.start_epoch, s.num_epochs):
            begin_epoch(s, epoch)
            t0 = time.perf_counter()
            rec, num_updates = train_one_epoch(
                epoch, s.model, s.train_loader, s.optimizer, s.scheduler, s.criterion, s.device, args, num_updates,
                s.steps_per_epoch, s.num_epochs, ema=s.ema, scaler=s.scaler, train_model=s.train_model,
                on_step=hooks.on_step)
            finish_epoch(s, epoch, rec, t0, hooks)
        return finish_train(s)
    finally:
        if start.d.enabled:
            import torch.distributed as dist
            if dist.is_initialized():
                dist.destroy_process_group()


def main(argv=None, hooks: Optional[TrainHooks] = None) -> int:
    args = parse_args(argv)
    summary = {}

    def run():
        summary.update(train(args, hooks))
        return 0

    try:
        rc = run_cli('mlan-train', run, extra_errors=[(NonFiniteLossError, 1)])
    except KeyboardInterrupt:
        print("mlan-train: interrupted; resume with --resume", file=sys.stderr)
        return 130
    if int(os.environ.get('RANK', '0')) != 0:
        return rc  # under torchrun, rank 0 reports
    if rc == 0 and summary.get('nothing_to_do'):
        print(f"mlan-train: nothing to do: {summary['output']} has completed all {summary['completed_epochs']} "
              f"epochs (final epoch {summary.get('final_epoch')}, best epoch {summary.get('best_epoch')}: test "
              f"top-1 {summary.get('best_test_top1')}); pass a larger --epochs to train on", flush=True)
    elif rc == 0 and summary.get('final_epoch') is not None:
        def fmt(v):
            return 'n/a' if v is None else f'{v:.2f}'
        print(f"done: {summary['epochs']} epochs; test top-1 / top-5: final epoch {summary['final_epoch']} "
              f"{fmt(summary['final_test_top1'])} / {fmt(summary['final_test_top5'])}, best epoch "
              f"{summary['best_epoch']} {fmt(summary['best_test_top1'])} / {fmt(summary['best_test_top5'])} "
              f"-> {summary['output']}")
    return rc


if __name__ == '__main__':
    sys.exit(main())
