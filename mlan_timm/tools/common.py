"""What the mlan-timm tools share: model creation, ``k=v`` kwargs, device, dataset, normalisation, weights, evaluation.

One syntax for model keyword arguments everywhere (``--model-kwargs attn=cbam drop_rate=0.1`` in mlan-train /
mlan-eval / mlan-export, and ``name?attn=cbam&drop_rate=0.1`` model specs in mlan-bench): each item is
``key=value`` and the value is parsed by :func:`parse_kwarg_value` (JSON, then a Python literal, else a string).
"""
import ast
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .. import data as mdata
from .. import zoo
from ..pretrained import PretrainedWeightsError

__all__ = [
    'UsageError', 'positive_int', 'check_model_registered', 'parse_kwarg_value', 'parse_model_kwargs',
    'format_model_kwargs', 'create_model', 'model_kwargs_for_dataset', 'set_threads', 'resolve_device',
    'resolve_dataset', 'norm_stats',
    'load_weights_into', 'read_training_record', 'TRAINING_METADATA_KEY', 'amp_context', 'evaluate', 'unwrap',
    'read_jsonl', 'run_cli', 'summarize_history',
]

#: safetensors metadata key under which mlan-train stores its training record (JSON).
TRAINING_METADATA_KEY = 'mlan_timm.training'


class UsageError(Exception):
    """A problem with the command line or inputs; the CLI prints ``mlan-<cmd>: error: <message>`` and exits 2."""


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    import argparse
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {v}")
    return v


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
    base = name.split('.')[0]
    if not base.startswith(('hf-hub:', 'hf_hub:', 'local-dir:')) and not timm.is_model(base):
        import difflib
        close = difflib.get_close_matches(base, timm.list_models(), n=6, cutoff=0.6)
        hint = f" Similar names: {', '.join(close)}." if close else ''
        raise UsageError(f"Unknown model {name!r}: not registered with timm (after importing mlan_timm).{hint}")


def create_model(name: str, pretrained: bool = False, **kwargs) -> nn.Module:
    """``timm.create_model`` with mlan_timm registered, and a UsageError naming the problem for bad names/kwargs."""
    import timm
    check_model_registered(name)
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except TypeError as e:
        raise UsageError(f"Model {name!r} does not accept these arguments {sorted(kwargs)}: {e}") from e
    except ValueError as e:  # e.g. an unknown attn=... value: the model's own message names the problem
        raise UsageError(f"Model {name!r} with arguments {kwargs}: {e}") from e


def model_kwargs_for_dataset(kwargs: Dict[str, Any], dataset: str) -> Dict[str, Any]:
    """``kwargs`` plus ``num_classes`` of ``dataset``; a conflicting ``num_classes`` kwarg is a UsageError."""
    kwargs = dict(kwargs)
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

    Any process that uses the CPU also gets subnormal floats flushed to zero (:func:`flush_denormals`).
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
    flush_denormals()
    return dev


def flush_denormals() -> bool:
    """Flush subnormal floats to zero on the CPU (``torch.set_flush_denormal``); True where supported.

    MLAN multiplies features by sigmoid masks that, once trained, get as small as 1e-38; their subnormal products
    made a CPU training epoch of mlan_resnet20_cifar10 7x slower (38.7 vs 270.7 img/s, epoch 2 of a 3,000-image
    run; the losses agree to the printed digits). Values below 1.2e-38 become 0.
    """
    return torch.set_flush_denormal(True)


def resolve_dataset(model_name: str, dataset: Optional[str] = None) -> str:
    """``--dataset``, else the dataset in the model name (:func:`mlan_timm.zoo.dataset_of`); UsageError if neither."""
    ds = dataset or zoo.dataset_of(model_name)
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
def read_jsonl(path: os.PathLike, what: str = 'Training log') -> List[Dict[str, Any]]:
    """Rows of a JSON-lines file; UsageError naming the file and line for a missing file or a bad line."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{what} file not found: {path}")
    rows = []
    for i, line in enumerate(path.read_text(encoding='utf-8').splitlines()):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise UsageError(f"{what} {path} line {i + 1} is not JSON: {e}") from e
    return rows


def run_cli(prog: str, fn: Callable[[], int], extra_errors: Sequence[Tuple[type, int]] = ()) -> int:
    """Run ``fn()``; UsageError, missing data and weights errors print ``{prog}: error: ...`` and return 2."""
    errors = tuple(extra_errors) + ((UsageError, 2), (mdata.DatasetNotFoundError, 2), (PretrainedWeightsError, 2))
    try:
        return fn()
    except tuple(e for e, _ in errors) as e:
        code = next(c for t, c in errors if isinstance(e, t))
        print(f"{prog}: error: {e}", file=sys.stderr)
        return code
