"""What the mlan-timm tools share: model creation, ``k=v`` kwargs, device, dataset, normalisation, weights, evaluation.

One syntax for model keyword arguments everywhere (``--model-kwargs attn=cbam drop_rate=0.1`` in mlan-train /
mlan-eval / mlan-export, and ``name?attn=cbam&drop_rate=0.1`` model specs in mlan-bench): each item is
``key=value`` and the value is parsed by :func:`parse_kwarg_value` (JSON, then a Python literal, else a string).
"""
import argparse
import ast
import contextlib
import ctypes
import errno
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .. import data as mdata
from .. import zoo
from ..atomic import AtomicWriteError
from ..pretrained import PretrainedWeightsError

__all__ = [
    'UsageError', 'positive_int', 'check_model_registered', 'parse_kwarg_value', 'parse_model_kwargs',
    'format_model_kwargs', 'create_model', 'model_kwargs_for_dataset', 'set_threads', 'resolve_device',
    'resolve_dataset', 'norm_stats',
    'load_weights_into', 'read_training_record', 'TRAINING_METADATA_KEY', 'amp_context', 'evaluate', 'unwrap',
    'read_jsonl', 'read_jsonl_numbered', 'run_cli', 'summarize_history', 'HelpFormatter', 'check_writable_dir',
    'resolve_weights_path', 'progress_enabled',
]

#: safetensors metadata key under which mlan-train stores its training record (JSON).
TRAINING_METADATA_KEY = 'mlan_timm.training'


class UsageError(Exception):
    """A problem with the command line or inputs; the CLI prints ``mlan-<cmd>: error: <message>`` and exits 2."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each option's default once: appended as ``(default: X)`` only where the help text does not
    already say it (``(default: ...)`` written by hand) and the default is a value (not None / False / [])."""

    def _get_help_string(self, action):
        text = action.help or ''
        if '(default' in text or '%(default)' in text:
            return text
        if action.default in (None, False, argparse.SUPPRESS) or action.default == []:
            return text
        return super()._get_help_string(action)


def _int_at_least(text: str, low: int) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
    if v < low:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {v}")
    return v


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0 (e.g. DataLoader workers)."""
    return _int_at_least(text, 0)


# ----------------------------------------------------------------------------------------------------------------
# Model kwargs and model creation
# ----------------------------------------------------------------------------------------------------------------
def parse_kwarg_value(text: str) -> Any:
    """``'0.1'`` -> 0.1, ``'true'``/``'True'`` -> True, ``'null'``/``'None'`` -> None, ``'[1, 2]'`` -> [1, 2],
    ``'cbam'`` -> ``'cbam'``: JSON first, then a Python literal, else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_model_kwargs(items: Optional[Iterable[str]], flag: str = '--model-kwargs') -> Dict[str, Any]:
    """``['attn=cbam', 'drop_rate=0.1']`` -> ``{'attn': 'cbam', 'drop_rate': 0.1}``; UsageError without ``=``."""
    out = {}
    for item in items or []:
        if '=' not in item:
            raise UsageError(f"{flag} expects key=value pairs, got {item!r}")
        k, v = item.split('=', 1)
        out[k.strip()] = parse_kwarg_value(v.strip())
    return out


def format_model_kwargs(kwargs: Dict[str, Any]) -> List[str]:
    """Inverse of :func:`parse_model_kwargs`: sorted ``key=value`` items that parse back to ``kwargs``."""
    return [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in sorted(kwargs.items())]


def check_model_registered(name: str):
    """UsageError naming ``name`` and similar registered names when timm does not know the model."""
    import timm

    import mlan_timm  # noqa: F401  (registers the models)
    if name.startswith('local-dir:'):
        _check_local_dir(name)
        return
    base = name.split('.')[0]
    if not base.startswith(('hf-hub:', 'hf_hub:')) and not timm.is_model(base):
        import difflib
        close = difflib.get_close_matches(base, timm.list_models(), n=6, cutoff=0.6)
        hint = f" Similar names: {', '.join(close)}." if close else ''
        raise UsageError(f"Unknown model {name!r}: not registered with timm (after importing mlan_timm).{hint}")


def _check_local_dir(name: str):
    """UsageError unless ``local-dir:FOLDER`` names a folder whose config.json (timm's Hub layout) names an
    architecture timm knows; timm itself stops with a bare FileNotFoundError / JSONDecodeError."""
    import timm
    folder = Path(name[len('local-dir:'):]).expanduser()
    config = folder / 'config.json'
    if not folder.is_dir():
        raise UsageError(f"Model {name!r}: folder {folder} not found (local-dir: takes a folder written by "
                         "mlan-export or timm's save_for_hf)")
    try:
        cfg = json.loads(config.read_text(encoding='utf-8'))
    except FileNotFoundError:
        raise UsageError(f"Model {name!r}: {config} not found (local-dir: takes a folder written by mlan-export or "
                         "timm's save_for_hf)") from None
    except (OSError, ValueError) as e:
        raise UsageError(f"Model {name!r}: {config} is not readable JSON: {e}") from e
    arch = cfg.get('architecture') if isinstance(cfg, dict) else None
    if not isinstance(arch, str) or not timm.is_model(arch):
        raise UsageError(f"Model {name!r}: {config} names no architecture timm knows (architecture: {arch!r})")


_PYTHON_ADVICE = ('pretrained=', 'pretrained_cfg_overlay', 'timm.create_model')


def cli_pretrained_message(message: str, alternative: str) -> str:
    """A weights error of ``create_model(pretrained=True)`` worded for a command line: the sentences giving Python
    advice (``pretrained=False``, ``pretrained_cfg_overlay=...``) are replaced by the CLI's ``alternative``."""
    sentences = [s for s in message.replace('. ', '.\n').split('\n') if s.strip()]
    kept = [s for s in sentences if not any(a in s for a in _PYTHON_ADVICE)]
    text = ' '.join(kept) if kept else sentences[0] if sentences else message
    return f"--pretrained: {text} {alternative}"


def create_model(name: str, pretrained: bool = False, weights_flag: str = '--weights FILE', **kwargs) -> nn.Module:
    """``timm.create_model`` with mlan_timm registered, and a UsageError naming the problem for bad names/kwargs.

    With ``pretrained=True`` a missing / unloadable source is a UsageError worded for the command line (pointing
    to the tool's ``weights_flag``); the Python API (``timm.create_model``) keeps its own message."""
    import timm
    check_model_registered(name)
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except PretrainedWeightsError as e:
        if not pretrained:
            raise
        raise UsageError(cli_pretrained_message(
            str(e), f"Use your own weights with {weights_flag} (e.g. a model.safetensors written by mlan-train or "
                    f"mlan-export) instead of --pretrained.")) from e
    except TypeError as e:
        raise UsageError(f"Model {name!r} does not accept these arguments {sorted(kwargs)}: {e}") from e
    except ValueError as e:  # e.g. an unknown attn=... value: the model's own message names the problem
        raise UsageError(f"Model {name!r} with arguments {kwargs}: {e}") from e
    except Exception as e:
        from ..pretrained import _is_hub_error
        if not (name.startswith(('hf-hub:', 'hf_hub:')) and _is_hub_error(e)):
            raise
        lines = str(e).strip().splitlines()
        from huggingface_hub import constants
        offline = ' (HF_HUB_OFFLINE is set: only the local cache was searched)' if constants.HF_HUB_OFFLINE else ''
        raise UsageError(f"Model {name!r}: its Hugging Face Hub repo could not be read{offline} "
                         f"({type(e).__name__}: {lines[0] if lines else ''})") from e


def model_kwargs_for_dataset(kwargs: Dict[str, Any], dataset: str) -> Dict[str, Any]:
    """``kwargs`` plus ``num_classes`` of ``dataset``; a conflicting ``num_classes`` kwarg is a UsageError."""
    kwargs = dict(kwargs)
    if kwargs.get('features_only'):
        raise UsageError("--model-kwargs features_only builds a feature extractor without a classifier; the tools "
                         "train, evaluate and export classifiers (use timm.create_model(..., features_only=True) in "
                         "Python)")
    n = mdata.dataset_info(dataset).num_classes
    if 'num_classes' in kwargs and kwargs['num_classes'] != n:
        raise UsageError(f"--model-kwargs num_classes={kwargs['num_classes']} clashes with dataset {dataset} "
                         f"({n} classes); drop it or pick the matching --dataset")
    kwargs['num_classes'] = n
    return kwargs


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``torch.compile`` wrapper (or the module itself)."""
    return getattr(model, '_orig_mod', model)


# ----------------------------------------------------------------------------------------------------------------
# Device, threads, dataset, normalisation
# ----------------------------------------------------------------------------------------------------------------
def set_threads(threads: Optional[int]):
    """``torch.set_num_threads(threads)`` when given."""
    if threads:
        torch.set_num_threads(threads)


def resolve_device(device: str) -> torch.device:
    """``'auto'`` -> cuda when available, else cpu; a CUDA device without CUDA is a UsageError.

    Any process that resolves a device also gets :func:`tune_cpu` (subnormals flushed, large allocations kept in the
    heap).
    """
    if device == 'auto':
        dev = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    else:
        try:
            dev = torch.device(device)
        except RuntimeError as e:
            raise UsageError(f"--device {device!r} is not a device: {e}") from e
        if dev.type == 'cuda' and not torch.cuda.is_available():
            raise UsageError(f"--device {device} requested but CUDA is not available")
    tune_cpu()
    return dev


def tune_cpu() -> bool:
    """What every CPU-using tool does first: :func:`flush_denormals` and :func:`keep_cpu_memory_in_heap`; returns
    whether the allocator setting was applied."""
    flush_denormals()
    return keep_cpu_memory_in_heap()


#: glibc ``mallopt`` parameters (malloc.h) and the values :func:`keep_cpu_memory_in_heap` sets.
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
HEAP_MALLOPT = ((M_MMAP_THRESHOLD, 1 << 30), (M_TRIM_THRESHOLD, 1 << 30), (M_TOP_PAD, 1 << 26))


def keep_cpu_memory_in_heap() -> bool:
    """Have glibc serve large CPU tensors from the process heap and keep freed memory for reuse (``mallopt``); True
    where applied (glibc), False elsewhere (nothing changed).

    PyTorch's CPU allocator does not cache: every activation above glibc's mmap threshold is a fresh ``mmap`` of
    zeroed pages, page-faulted in and unmapped on free. Raising the mmap and trim thresholds to 1 GiB (top pad 64 MiB)
    lets them reuse heap memory: batch-128 CPU inference 0-11% faster for the backbones and MLAN's fast path, up to
    44% for models that build large concatenations (multi-level SE; README, same benchmark command before and
    after). The process keeps its peak heap instead of returning it to the OS. Outside the tools:
    ``MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=1073741824 MALLOC_TOP_PAD_=67108864``, or a caching
    allocator (jemalloc, tcmalloc) via ``LD_PRELOAD``.
    """
    global _cpu_heap_tuned
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    # the mmap threshold first: a raised trim threshold alone fixes the mmap threshold at its 128 KiB default
    for param, value in HEAP_MALLOPT:
        if mallopt(param, value) != 1:
            return False
    _cpu_heap_tuned = True
    return True


_cpu_heap_tuned = False


def cpu_heap_tuned() -> bool:
    """Whether :func:`keep_cpu_memory_in_heap` has been applied in this process (benchmarks record it)."""
    return _cpu_heap_tuned


def flush_denormals() -> bool:
    """Flush subnormal floats to zero on the CPU (``torch.set_flush_denormal``); True where supported.

    MLAN multiplies features by sigmoid masks that, once trained, get as small as 1e-38; their subnormal products
    made a CPU training epoch of mlan_resnet20_cifar10 7x slower (38.7 vs 270.7 img/s, epoch 2 of a 3,000-image
    run; the losses agree to the printed digits). Values below 1.2e-38 become 0.
    """
    return torch.set_flush_denormal(True)


def resolve_dataset(model_name: str, dataset: Optional[str] = None) -> str:
    """``--dataset``, else the dataset in the model name (:func:`mlan_timm.zoo.dataset_of`); UsageError if neither,
    or if ``--dataset`` contradicts the model name (``--dataset cifar10`` with a ``_cifar100`` model)."""
    named = zoo.dataset_of(model_name.split('.')[0])
    if dataset and named:
        given = mdata.dataset_info(dataset).name if dataset.lower().replace('-', '') in zoo.DATASETS else dataset
        if given != named:
            base = model_name.split('.')[0]
            other = f"use {base[:-len(named)] + given} for {given}, or " if base.endswith(named) else ''
            raise UsageError(f"--dataset {given} conflicts with model {model_name!r}, which is built for {named} "
                             f"({mdata.dataset_info(named).num_classes} classes): {other}pass --dataset {named}")
    ds = dataset or named
    if ds is None:
        check_model_registered(model_name)  # an unknown model is the better message
        raise UsageError(f"Cannot tell the dataset from model name {model_name!r}; pass --dataset "
                         f"{'|'.join(sorted(zoo.DATASETS))}")
    try:
        return mdata.dataset_info(ds).name
    except ValueError as e:
        raise UsageError(str(e)) from e


def norm_stats(dataset: str, recorded: Optional[Dict[str, Any]] = None) -> Tuple[tuple, tuple]:
    """Normalisation (mean, std): what the weights were trained with when ``recorded`` says (a training record
    with ``mean``/``std``), else the dataset's constants from :data:`mlan_timm.zoo.DATASETS` (the paper recipe's)."""
    if recorded and recorded.get('mean') and recorded.get('std'):
        return tuple(recorded['mean']), tuple(recorded['std'])
    info = mdata.dataset_info(dataset)
    return tuple(info.mean), tuple(info.std)


# ----------------------------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------------------------
def load_weights_into(model: nn.Module, path: os.PathLike, model_name: str = '', use_ema: bool = False):
    """Load a safetensors file or an mlan-train checkpoint into ``model``; PretrainedWeightsError names the file."""
    from ..pretrained import load_state_dict_clearly, read_state_dict
    sd = read_state_dict(path, model_name=model_name, use_ema=use_ema)
    load_state_dict_clearly(model, sd, model_name=model_name, path=path)


def resolve_weights_path(path: os.PathLike, flag: str = '--weights', file_name: str = 'model.safetensors') -> Path:
    """``path`` itself when it is a file; for a folder (an mlan-export folder or an mlan-train run folder) the
    ``file_name`` inside it; a UsageError naming ``flag`` when neither exists."""
    p = Path(path).expanduser()
    if p.is_dir():
        inner = p / file_name
        if inner.is_file():
            return inner
        raise UsageError(f"{flag} {path} is a folder without {file_name}; pass the weights file itself "
                         f"(e.g. {flag} {inner})")
    if not p.exists():
        raise UsageError(f"{flag}: file not found: {path}")
    return p


def read_training_record(path: Optional[os.PathLike]) -> Optional[Dict[str, Any]]:
    """mlan-train's training record of a weights file (safetensors metadata) or checkpoint (``summary``), or None.

    Keys: dataset, mean, std, recipe, epochs, final_epoch, final_test_top1/top5, best_epoch, best_test_top1/top5,
    test_images. Unreadable files give None (loading them reports the problem)."""
    if not path or not Path(path).is_file():
        return None
    path = Path(path)
    try:
        if path.suffix == '.safetensors':
            from safetensors import safe_open
            with safe_open(str(path), framework='pt') as f:
                meta = f.metadata() or {}
            return json.loads(meta[TRAINING_METADATA_KEY]) if TRAINING_METADATA_KEY in meta else None
        blob = torch.load(path, map_location='cpu', weights_only=False)
    except Exception:
        return None
    return blob.get('summary') if isinstance(blob, dict) and isinstance(blob.get('summary'), dict) else None


# ----------------------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------------------
def amp_context(device: torch.device, amp: Optional[str]):
    """``torch.autocast`` for ``amp`` in ('bf16', 'fp16'); a no-op context for 'none'/None."""
    if amp in (None, 'none', ''):
        return contextlib.nullcontext()
    dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16}[amp]
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, amp: str = 'none', channels_last: bool = False,
             progress: bool = False, desc: str = 'eval') -> Dict[str, float]:
    """Top-1 / top-5 (percent, timm's ``accuracy``), mean cross-entropy loss and images/s over ``loader``."""
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
        a1, a5 = accuracy(out, y, topk=(1, min(5, out.shape[-1])))
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


# ----------------------------------------------------------------------------------------------------------------
def summarize_history(history: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Final-epoch and best-epoch test top-1 / top-5 of a run's per-epoch records (``None`` where not evaluated).

    The best epoch is the one with the highest test top-1 (the earliest on ties), as in the paper's protocol."""
    evaluated = [r for r in history if r.get('test_top1') is not None]
    last = evaluated[-1] if evaluated else {}
    best = max(evaluated, key=lambda r: r['test_top1'], default={})  # max keeps the first of equal values
    return dict(final_epoch=last.get('epoch'), final_test_top1=last.get('test_top1'),
                final_test_top5=last.get('test_top5'), best_epoch=best.get('epoch'),
                best_test_top1=best.get('test_top1'), best_test_top5=best.get('test_top5'))


# ----------------------------------------------------------------------------------------------------------------
# Files and CLI plumbing
# ----------------------------------------------------------------------------------------------------------------
def read_jsonl_numbered(path: os.PathLike, what: str = 'Training log') -> List[Tuple[int, Any]]:
    """``(line number, value)`` of every non-blank line of a JSON-lines file; UsageError naming the file and line
    for a missing file or a bad line."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{what} file not found: {path}")
    rows = []
    for i, line in enumerate(path.read_text(encoding='utf-8').splitlines()):
        if line.strip():
            try:
                rows.append((i + 1, json.loads(line)))
            except json.JSONDecodeError as e:
                raise UsageError(f"{what} {path} line {i + 1} is not JSON: {e}") from e
    return rows


def read_jsonl(path: os.PathLike, what: str = 'Training log') -> List[Dict[str, Any]]:
    """Rows of a JSON-lines file; UsageError naming the file and line for a missing file or a bad line."""
    return [row for _, row in read_jsonl_numbered(path, what)]


def _existing_ancestor(p: Path) -> Path:
    while True:
        try:
            if p.exists() or p.is_symlink() or p.parent == p:
                return p
        except OSError:  # e.g. a parent that is not searchable
            return p
        p = p.parent


def check_writable_dir(path: os.PathLike, flag: str) -> Path:
    """UsageError naming ``flag`` unless folder ``path`` exists and is writable or can be created; creates nothing.

    Checks the nearest existing ancestor: it must be a folder, writable (``os.access``) and a file must really be
    creatable in it (a probe temp file, which catches read-only file systems even for root)."""
    p = Path(path).expanduser()
    anc = _existing_ancestor(p)
    what = f"{flag} {path}"
    if not anc.is_dir():
        if anc == p:
            raise UsageError(f"{what}: {p} is a file, not a folder")
        raise UsageError(f"{what}: cannot create the folder: {anc} is a file, not a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise UsageError(f"{what}: folder {anc} is not writable (permission denied)" +
                         ('' if anc == p else f", so {p} cannot be created"))
    try:
        with tempfile.TemporaryFile(dir=anc):
            pass
    except OSError as e:
        raise UsageError(f"{what}: cannot write in folder {anc}: {e.strerror or e}") from e
    return p


def progress_enabled(flag: Optional[bool], stream=None) -> bool:
    """``--progress`` / ``--no-progress`` when given, else on only when ``stream`` (stderr) is a terminal."""
    if flag is not None:
        return flag
    stream = stream or sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


#: OS errors a CLI reports in one line (exit 1) instead of a traceback: permissions, read-only or full disks, ...
_OS_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.ENOTDIR, errno.EISDIR, errno.EEXIST,
              getattr(errno, 'EDQUOT', -1)}


def run_cli(prog: str, fn: Callable[[], int], extra_errors: Sequence[Tuple[type, int]] = ()) -> int:
    """Run ``fn()``; UsageError, missing data and weights errors print ``{prog}: error: ...`` and return 2; OS errors
    writing files (permissions, read-only or full disk) print ``{prog}: error: ...`` and return 1."""
    errors = tuple(extra_errors) + ((UsageError, 2), (mdata.DatasetNotFoundError, 2), (PretrainedWeightsError, 2),
                                    (AtomicWriteError, 1))
    try:
        return fn()
    except tuple(e for e, _ in errors) as e:
        code = next(c for t, c in errors if isinstance(e, t))
        print(f"{prog}: error: {e}", file=sys.stderr)
        return code
    except OSError as e:
        if e.errno not in _OS_ERRNOS:
            raise
        print(f"{prog}: error: {e.strerror or e}: {e.filename or ''}".rstrip(': '), file=sys.stderr)
        return 1
