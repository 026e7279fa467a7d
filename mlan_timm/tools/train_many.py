"""mlan-train-many: train several models at once, each exactly as its own ``mlan-train`` run would train it.

``mlan-train-many --models A B C -o runs/DIR [any mlan-train flag]`` gives every model its own run folder
``runs/DIR/<model>/`` with what ``mlan-train --model <model> -o runs/DIR/<model> [the same flags]`` writes there:
the same seed, data order, optimizer, schedule, ``log.jsonl``, atomic ``last.pth`` at every epoch boundary, the
final- and best-epoch test top-1/top-5, ``summary.json`` and ``model.safetensors``. A model's run folder can be
continued by either command. The models share the dataset tensors (``--data-on-device`` holds them once on the
device per dataset).

On CPU the models train one after another, epoch by epoch (model A epoch 0, model B epoch 0, A epoch 1, ...).
On CUDA every model gets its own CUDA stream and one CUDA graph of its whole training step (forward, backward,
optimizer step, the epoch's loss/accuracy sums), and the graphs are replayed round-robin from this one thread,
so the small, launch-bound models overlap on the GPU. The optimizer's learning rate is then a 0-d CUDA tensor
(fused SGD reads it on the device), updated in place at every scheduler step, so the captured graph follows the
schedule. Evaluation, checkpoints and a last batch of another size run eagerly, outside the graphs.

``--time-budget-s S`` stops cleanly at an epoch boundary when the next epoch would end after ``S`` seconds
(counted from the start of the command); ``--resume`` continues every model that has a checkpoint and starts
the others. Besides the model folders, the run folder holds ``many.jsonl`` (one line per epoch of the models
trained together: images/s per model and in aggregate) and ``many.json`` (the state of every model and the last
session's timings). See docs/training.md ("Several models at once").
"""
import argparse
import contextlib
import copy
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch

from .. import data as mdata
from ..atomic import atomic_write_text
from . import train as mtrain
from .common import UsageError, check_model_registered, resolve_dataset, resolve_device, run_cli, unwrap

__all__ = ['ManyHooks', 'build_parser', 'parse_args', 'model_args', 'ModelRun', 'train_many', 'main']

PROG = 'mlan-train-many'
#: The next epoch is started only if ``elapsed + BUDGET_MARGIN * estimated epoch time <= --time-budget-s``.
BUDGET_MARGIN = 1.15


@dataclass
class ManyHooks:
    """Optional callbacks of :func:`train_many`: ``on_step(model, epoch, step)`` after every optimizer step of a
    model and ``on_epoch_end(model, epoch, record)`` after a model's checkpoint and log line are written."""
    on_step: Optional[Callable[[str, int, int], None]] = None
    on_epoch_end: Optional[Callable[[str, int, Dict[str, Any]], None]] = None


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description=__doc__.split('\n\n')[0],
        epilog='Every other flag is an mlan-train flag (see mlan-train --help) and applies to every model, e.g. '
               '--data-dir, --epochs, --batch-size, --seed, --device, --amp bf16, --channels-last, --compile, '
               '--data-on-device, --subset.')
    p.add_argument('--models', '--model', dest='models', nargs='+', action='extend', required=True,
                   metavar='MODEL', help='timm model names (repeat the flag or list several)')
    p.add_argument('--output', '-o', required=True, help='run folder; each model trains in OUTPUT/<model>/')
    p.add_argument('--resume', action='store_true',
                   help='continue every model that has OUTPUT/<model>/last.pth and start the others')
    p.add_argument('--time-budget-s', type=float, default=None, metavar='S',
                   help='stop at an epoch boundary before S seconds (from the start of the command) would be '
                        'exceeded; the epoch time is estimated from the last epoch (this session or the logs)')
    p.add_argument('--cuda-graphs', action=argparse.BooleanOptionalAction, default=None,
                   help='capture each model\'s whole training step in a CUDA graph (default: on for CUDA)')
    p.add_argument('--interleave', action=argparse.BooleanOptionalAction, default=None,
                   help='train the models step by step round-robin, each on its own CUDA stream (default: on for '
                        'CUDA; needs --data-on-device); --no-interleave trains them one after another')
    p.add_argument('--graph-warmup-steps', type=mtrain.positive_int, default=3,
                   help='eager steps on the capture stream before capturing (their effect is undone)')
    return p


def parse_args(argv=None):
    """``(many_args, base_args)``: this command's own flags, and the mlan-train arguments shared by every model."""
    many, rest = build_parser().parse_known_args(argv)

    def parser(recipe='paper'):
        tp = mtrain.build_parser(recipe)
        tp.prog, tp.usage = PROG, f'{PROG} --models MODEL [MODEL ...] -o OUTPUT [mlan-train flags]'
        return tp

    pre, _ = parser().parse_known_args(rest)
    return many, parser(pre.recipe).parse_args(rest)  # bad flags / values: "mlan-train-many: error: ...", exit 2


def model_args(base: argparse.Namespace, model: str, output: Path, resume: bool) -> argparse.Namespace:
    """The mlan-train arguments of one model: ``base`` with ``--model model -o output[/--resume]``."""
    args = copy.deepcopy(base)
    args.model, args.output = model, str(output)
    args.resume = 'auto' if resume else None
    return args


def _check(many, base) -> torch.device:
    dups = sorted({m for m in many.models if many.models.count(m) > 1})
    if dups:
        raise UsageError(f"model(s) given more than once: {', '.join(dups)}; each model trains once per run folder")
    for m in many.models:
        check_model_registered(m)
        if '.' in m or ':' in m:
            raise UsageError(f"{m!r}: give plain model names (each model's run folder is named after it)")
        resolve_dataset(m, base.dataset)
    if base.data_dir is None and not base.download:
        raise UsageError("--data-dir is required (or --download with --data-dir to fetch CIFAR via torchvision)")
    device = resolve_device(base.device)
    graphs = many.cuda_graphs if many.cuda_graphs is not None else device.type == 'cuda'
    if graphs and device.type != 'cuda':
        raise UsageError(f"--cuda-graphs needs a CUDA device (--device is {device})")
    if graphs and base.amp == 'fp16':
        raise UsageError("--cuda-graphs cannot capture fp16's GradScaler (it synchronises); use --amp bf16 or "
                         "--no-cuda-graphs")
    if graphs and base.compile and base.compile_mode in ('reduce-overhead', 'max-autotune'):
        raise UsageError(f"--compile-mode {base.compile_mode} makes CUDA graphs of its own; with --cuda-graphs use "
                         f"the default mode or max-autotune-no-cudagraphs")
    interleave = many.interleave if many.interleave is not None else device.type == 'cuda'
    if interleave and not base.data_on_device:
        raise UsageError("--interleave needs --data-on-device (each model's augmentation then comes from its own "
                         "generator, so the order in which the models step does not change what they see)")
    many.cuda_graphs, many.interleave = graphs, interleave
    return device


# ----------------------------------------------------------------------------------------------------------------
# One model
# ----------------------------------------------------------------------------------------------------------------
class ModelRun:
    """One model's training: an :class:`~mlan_timm.tools.train.TrainSetup` stepped one batch at a time.

    :meth:`step` runs :func:`mlan_timm.tools.train.train_step` plus the epoch's loss / accuracy sums: eagerly, or
    by replaying the CUDA graph that :meth:`capture` recorded of exactly that code. On CUDA all of a model's work
    runs on its own stream (:meth:`context`)."""

    def __init__(self, setup: mtrain.TrainSetup):
        self.s = setup
        self.name = setup.args.model
        dev = setup.device
        self.stream = torch.cuda.Stream(dev) if dev.type == 'cuda' else None
        self.loss_sum = torch.zeros((), device=dev)
        self.correct = torch.zeros((), device=dev, dtype=torch.long)
        self.nonfinite = torch.zeros((), device=dev, dtype=torch.bool)
        self.num_updates = setup.start_epoch * setup.steps_per_epoch
        self.next_epoch = setup.start_epoch
        self.graph = None
        self.lr_tensors: Optional[List[torch.Tensor]] = None
        self._lr_now = float(setup.optimizer.param_groups[0]['lr'])
        self.lr = self._lr_now
        self.n_img = 0
        self._it = None

    @property
    def done(self) -> bool:
        return self.next_epoch >= self.s.num_epochs

    def context(self):
        return torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()

    # -- the step (the code a CUDA graph captures) ------------------------------------------------------------
    def _step(self, x: torch.Tensor, y: torch.Tensor):
        s = self.s
        out, loss = mtrain.train_step(s.model, s.train_model, x, y, s.optimizer, s.criterion, s.device, s.args,
                                      s.scaler)
        loss = loss.detach()
        self.nonfinite |= ~torch.isfinite(loss)
        self.loss_sum += loss.float() * x.shape[0]
        self.correct += (out.detach().argmax(-1) == y).sum()

    def step(self, x: torch.Tensor, y: torch.Tensor):
        """One optimizer step on ``(x, y)``: a graph replay when captured for this shape, else eager."""
        if self.graph is not None and x.shape == self.static_x.shape:
            self.static_x.copy_(x)
            self.static_y.copy_(y)
            self.graph.replay()
        else:
            self._step(x, y)
        self.num_updates += 1
        s = self.s
        if s.ema is not None:
            s.ema.update(s.model, step=self.num_updates)
        s.scheduler.step_update(self.num_updates)
        self._sync_lr()
        self.n_img += x.shape[0]

    # -- learning rate as a device tensor --------------------------------------------------------------------
    def _sync_lr(self):
        """After a scheduler call: note the lr it set and, with device lr tensors, copy it into them in place."""
        groups = self.s.optimizer.param_groups
        if not isinstance(groups[0]['lr'], torch.Tensor):
            self._lr_now = float(groups[0]['lr'])
        if self.lr_tensors is not None:
            for g, t in zip(groups, self.lr_tensors):
                if not isinstance(g['lr'], torch.Tensor):  # the scheduler wrote a new value
                    t.fill_(g['lr'])
                    g['lr'] = t

    def _tensor_lr_optimizer(self):
        """Fused SGD with its lr a 0-d float32 device tensor: the step reads the lr on the device (no host sync),
        so it can be captured, and an in-place ``fill_`` changes the lr of every later replay. Checkpoints keep
        the optimizer's ordinary form (float lr, original fused/foreach flags)."""
        opt = self.s.optimizer
        if type(opt) is not torch.optim.SGD:
            raise UsageError(f"--cuda-graphs supports SGD (--opt momentum or sgd), not {type(opt).__name__}; "
                             f"pass --no-cuda-graphs")
        if any(g['dampening'] != 0 for g in opt.param_groups):
            raise UsageError("--cuda-graphs needs SGD without dampening")
        orig = [dict(fused=g['fused'], foreach=g['foreach']) for g in opt.param_groups]

        def portable(_opt, sd):
            for g, o in zip(sd['param_groups'], orig):
                if isinstance(g['lr'], torch.Tensor):
                    g['lr'] = float(g['lr'])
                g.update(o)
            return sd

        opt.register_state_dict_post_hook(portable)
        self.lr_tensors = []
        for g in opt.param_groups:
            g['fused'], g['foreach'] = True, False
            t = torch.tensor(float(g['lr']), device=self.s.device, dtype=torch.float32)
            g['lr'] = t
            self.lr_tensors.append(t)

    # -- CUDA graph capture ----------------------------------------------------------------------------------
    def capture(self, warmup_steps: int = 3, graph: bool = True):
        """Warm up on this model's stream, capture one whole training step on it, and undo the warm-up.

        As in PyTorch's whole-network capture recipe: eager warm-up steps on a side stream (cuDNN autotuning,
        torch.compile, the optimizer's momentum buffers), ``zero_grad(set_to_none=True)`` so that backward
        allocates the gradients from the graph's private pool, then ``torch.cuda.graph``. Warm-up changed the
        weights, BatchNorm statistics and momentum; they are restored in place (same addresses as captured).
        Momentum buffers that did not exist before start at zero, which equals PyTorch's first-step
        initialisation (buffer = gradient) for SGD without dampening. ``graph=False`` does all but the capture
        (the CPU tests check that it leaves training bit-identical)."""
        s = self.s
        cuda = s.device.type == 'cuda'
        self._tensor_lr_optimizer()
        b = s.args.batch_size
        shape = tuple(getattr(unwrap(s.model), 'pretrained_cfg', {}).get('input_size', (3, 32, 32)))
        params = [p for g in s.optimizer.param_groups for p in g['params']]
        if cuda:
            torch.cuda.synchronize(s.device)
        with self.context():
            saved_model = {k: v.detach().clone() for k, v in s.model.state_dict().items()}
            saved_momentum = [s.optimizer.state.get(p, {}).get('momentum_buffer') for p in params]
            saved_momentum = [None if m is None else m.clone() for m in saved_momentum]
            self.static_x = torch.zeros((b, *shape), device=s.device)
            self.static_y = torch.zeros((b,), device=s.device, dtype=torch.long)
            s.train_model.train()
            for _ in range(warmup_steps):
                self._step(self.static_x, self.static_y)
        if graph:
            torch.cuda.synchronize(s.device)
            s.optimizer.zero_grad(set_to_none=True)  # backward in the capture allocates grads from the graph's pool
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, stream=self.stream):
                self._step(self.static_x, self.static_y)
        with self.context(), torch.no_grad():
            for k, v in s.model.state_dict().items():
                v.copy_(saved_model[k])
            for p, m in zip(params, saved_momentum):
                buf = s.optimizer.state[p]['momentum_buffer']
                buf.copy_(m) if m is not None else buf.zero_()
        if cuda:
            torch.cuda.synchronize(s.device)

    # -- epochs ----------------------------------------------------------------------------------------------
    def begin_epoch(self, epoch: int):
        s = self.s
        mtrain.begin_epoch(s, epoch)  # reseeds everything from (seed, epoch), as mlan-train does
        with self.context():
            s.scheduler.step(epoch)
            self._sync_lr()
            self.lr = self._lr_now  # the lr the epoch starts with, as mlan-train logs it
            s.train_model.train()
            self.loss_sum.zero_()
            self.correct.zero_()
            self.nonfinite.zero_()
        self.n_img = 0
        self._it = iter(s.train_loader)

    def next_batch(self):
        x, y = next(self._it)
        return x.to(self.s.device, non_blocking=True), y.to(self.s.device, non_blocking=True)

    def train_record(self, epoch: int, train_time: float) -> Dict[str, Any]:
        """The epoch's train metrics, as :func:`mlan_timm.tools.train.train_one_epoch` returns them."""
        if self.nonfinite.item():
            raise mtrain.NonFiniteLossError(f"{self.name}: non-finite training loss in epoch {epoch}; lower --lr "
                                            f"or use --clip-grad?")
        n = max(self.n_img, 1)
        return dict(epoch=epoch, lr=self.lr, train_loss=self.loss_sum.item() / n,
                    train_top1=100.0 * self.correct.item() / n,
                    train_img_per_s=self.n_img / train_time if train_time > 0 else None, train_time=train_time)


# ----------------------------------------------------------------------------------------------------------------
# The runs
# ----------------------------------------------------------------------------------------------------------------
def _share_data(setup: mtrain.TrainSetup, seen: List[Any]):
    """Point ``setup``'s on-device loaders at equal image/label tensors already held by an earlier model."""
    for loader in (setup.train_loader, setup.test_loader):
        if not isinstance(loader, mdata.DeviceLoader):
            continue
        for other in seen:
            if (other.images.shape == loader.images.shape and other.images.device == loader.images.device
                    and torch.equal(other.labels, loader.labels) and torch.equal(other.images, loader.images)):
                loader.images, loader.labels = other.images, other.labels
                loader.dataset = loader.labels
                break
        else:
            seen.append(loader)


def _epoch_estimate(runs: List[ModelRun], measured: Optional[float]) -> Optional[float]:
    """Seconds the next epoch of ``runs`` (trained together) takes: the last one measured in this session, else
    from the logs (the longest train time plus every model's eval and checkpoint time); None if unknown."""
    if measured is not None:
        return measured
    last = [r.s.history[-1] for r in runs if r.s.history and r.s.history[-1].get('time') is not None]
    if len(last) < len(runs):
        return None
    train_t = max(rec.get('train_time') or 0.0 for rec in last)
    return train_t + sum(rec['time'] - (rec.get('train_time') or 0.0) for rec in last)


def train_many(many, base, hooks: Optional[ManyHooks] = None, t_start: Optional[float] = None) -> Dict[str, Any]:
    """Train ``many.models`` with the shared mlan-train arguments ``base``; returns what ``many.json`` holds."""
    hooks = hooks or ManyHooks()
    t_start = time.perf_counter() if t_start is None else t_start
    device = _check(many, base)
    out = Path(many.output)
    runs: List[ModelRun] = []
    seen: List[Any] = []
    resumes = {name: many.resume and (out / name / 'last.pth').is_file() for name in many.models}
    for name, resume in resumes.items():  # every folder checked before any run starts writing
        if not resume:
            mtrain.refuse_to_overwrite_a_run(out / name)
    for name, resume in resumes.items():
        if many.resume and not resume:
            print(f"{PROG}: {name}: no checkpoint in {out / name}, starting it from scratch", flush=True)
        setup = mtrain.prepare_train(model_args(base, name, out / name, resume))
        _share_data(setup, seen)
        runs.append(ModelRun(setup))
    t_setup = time.perf_counter() - t_start
    t0 = time.perf_counter()
    if many.cuda_graphs:
        for r in runs:
            if not r.done:
                r.capture(many.graph_warmup_steps)
    t_capture = time.perf_counter() - t0
    groups = [runs] if many.interleave else [[r] for r in runs]
    measured: Dict[int, float] = {}
    stopped = None
    session = dict(started=time.strftime('%Y-%m-%dT%H:%M:%S'), device=str(device),
                   device_name=torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu',
                   torch=torch.__version__, cuda_graphs=many.cuda_graphs, interleave=many.interleave,
                   compile=bool(base.compile), amp=base.amp, channels_last=bool(base.channels_last),
                   setup_s=t_setup, capture_s=t_capture, epochs=[])
    first = min((r.next_epoch for r in runs), default=0)
    last = max((r.s.num_epochs for r in runs), default=0)
    for epoch in range(first, last):
        for gi, group in enumerate(groups):
            members = [r for r in group if r.next_epoch == epoch and not r.done]
            if not members:
                continue
            if many.time_budget_s is not None:
                est = _epoch_estimate(members, measured.get(gi))
                elapsed = time.perf_counter() - t_start
                if est is not None and elapsed + BUDGET_MARGIN * est > many.time_budget_s:
                    stopped = dict(epoch=epoch, models=[r.name for r in members], elapsed_s=elapsed,
                                   epoch_estimate_s=est)
                    print(f"{PROG}: stopping at an epoch boundary before epoch {epoch} of "
                          f"{', '.join(r.name for r in members)}: {elapsed:.0f} s elapsed, the next epoch takes "
                          f"about {est:.0f} s, --time-budget-s is {many.time_budget_s:g}; continue with --resume",
                          flush=True)
                    break
            measured[gi] = _train_group_epoch(members, epoch, hooks, session)
        if stopped:
            break

    for r in runs:
        if r.done:
            mtrain.finish_train(r.s)
    eps = session.pop('epochs')
    session.update(wall_s=time.perf_counter() - t_start, epochs_trained=len(eps),
                   aggregate_img_per_s_median=_median([e['aggregate_img_per_s'] for e in eps]),
                   img_per_s_median={r.name: _median([e['img_per_s'][r.name] for e in eps if r.name in e['img_per_s']])
                                     for r in runs})
    state = dict(models={r.name: dict(epochs_done=r.next_epoch, epochs=r.s.num_epochs, output=str(r.s.out_dir),
                                      **mtrain.summarize_history(r.s.history)) for r in runs},
                 complete=all(r.done for r in runs), stopped=stopped, session=session)
    atomic_write_text(out / 'many.json', json.dumps(state, indent=2))
    return state


def _median(values: List[Optional[float]]) -> Optional[float]:
    import statistics
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _train_group_epoch(members: List[ModelRun], epoch: int, hooks: ManyHooks, session: Dict[str, Any]) -> float:
    """One epoch of ``members``, step by step round-robin (one member: plainly); returns its wall time."""
    device = members[0].s.device
    cuda = device.type == 'cuda'
    if cuda:
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for r in members:
        r.begin_epoch(epoch)
    for step in range(max(r.s.steps_per_epoch for r in members)):
        for r in members:
            if step >= r.s.steps_per_epoch:
                continue
            with r.context():
                x, y = r.next_batch()
                r.step(x, y)
            if hooks.on_step is not None:
                hooks.on_step(r.name, epoch, step)
    if cuda:
        torch.cuda.synchronize(device)
    train_time = time.perf_counter() - t0
    recs = [r.train_record(epoch, train_time) for r in members]  # raises on a non-finite loss before any checkpoint
    agg = sum(r.n_img for r in members) / train_time if train_time > 0 else None
    for r, rec in zip(members, recs):
        rec.update(models_together=len(members), aggregate_img_per_s=agg)
        on_end = hooks.on_epoch_end
        print(f'{r.name}:', end=' ')  # finish_epoch prints the epoch's record on the rest of the line
        mtrain.finish_epoch(r.s, epoch, rec, time.perf_counter() - train_time,
                            mtrain.TrainHooks(on_epoch_end=(lambda e, rc, n=r.name: on_end(n, e, rc))
                                              if on_end is not None else None))
        r.next_epoch = epoch + 1
    wall = time.perf_counter() - t0
    line = dict(epoch=epoch, models=[r.name for r in members], train_time=train_time, time=wall,
                aggregate_img_per_s=agg, img_per_s={r.name: rec['train_img_per_s'] for r, rec in zip(members, recs)},
                session=session['started'])
    session['epochs'].append(line)
    out = members[0].s.out_dir.parent
    with open(out / 'many.jsonl', 'a', encoding='utf-8') as f:
        f.write(json.dumps(line) + '\n')
    return wall


def main(argv=None, hooks: Optional[ManyHooks] = None) -> int:
    t_start = time.perf_counter()
    many, base = parse_args(argv)
    state = {}

    def run():
        state.update(train_many(many, base, hooks, t_start))
        return 0

    try:
        rc = run_cli(PROG, run, extra_errors=[(mtrain.NonFiniteLossError, 1)])
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; continue with --resume", file=sys.stderr)
        return 130
    if rc == 0 and state:
        for name, m in state['models'].items():
            top1 = m.get('final_test_top1')
            print(f"{name}: {m['epochs_done']}/{m['epochs']} epochs"
                  + (f", test top-1 final {top1:.2f} best {m['best_test_top1']:.2f} (epoch {m['best_epoch']})"
                     if top1 is not None else ''))
        print(f"{'done' if state['complete'] else 'stopped'} -> {many.output}", flush=True)
    return rc


if __name__ == '__main__':
    sys.exit(main())
