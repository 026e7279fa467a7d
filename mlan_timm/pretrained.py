"""Pretrained-weight resolution for mlan_timm models.

Order of sources for ``timm.create_model(name, pretrained=True)``:

1. weights bundled with the package: ``<weights dir>/MANIFEST.json`` lists ``{model: {file, sha256}}``; the
   weights dir is ``mlan_timm/weights/`` or ``$MLAN_TIMM_WEIGHTS_DIR``. A listed file is used only after its
   sha256 matches the manifest, so ``pretrained=True`` works offline;
2. otherwise the model's ``hf_hub_id`` (``mlan-timm/<model_name>``) through timm / huggingface_hub.

The model factory calls :func:`pretrained_cfg_overlay` (pretrained=True only) and wraps
``build_model_with_cfg`` in :func:`load_errors_as_clear_messages`, which turns missing / corrupt / mismatched
weights into a :class:`PretrainedWeightsError` naming the model and the file.
"""
import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import torch

__all__ = [
    'PretrainedWeightsError', 'weights_dir', 'read_manifest', 'sha256_file', 'pretrained_cfg_overlay',
    'load_errors_as_clear_messages', 'read_state_dict', 'load_state_dict_clearly',
]

MANIFEST_NAME = 'MANIFEST.json'


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights for a model are missing, corrupt, or do not fit its architecture."""


def weights_dir() -> Path:
    env = os.environ.get('MLAN_TIMM_WEIGHTS_DIR')
    return Path(env) if env else Path(__file__).resolve().parent / 'weights'


def read_manifest(directory: Optional[Path] = None) -> Dict[str, Dict[str, Any]]:
    """``{model_name: {'file': ..., 'sha256': ...}}`` from the weights dir's manifest ({} when absent)."""
    directory = Path(directory) if directory else weights_dir()
    path = directory / MANIFEST_NAME
    if not path.is_file():
        return {}
    try:
        blob = json.loads(path.read_text(encoding='utf-8'))
    except (OSError, json.JSONDecodeError) as e:
        raise PretrainedWeightsError(f"Bundled weights manifest {path} is unreadable: {e}") from e
    weights = blob.get('weights', {}) if isinstance(blob, dict) else None
    if not isinstance(weights, dict):
        raise PretrainedWeightsError(f"Bundled weights manifest {path} has no 'weights' mapping")
    return weights


def sha256_file(path: os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def _base_name(variant: str) -> str:
    return variant.split('.')[0]


# what pretrained_cfg_overlay resolved last, per model, so errors can name the file
_RESOLVED: Dict[str, str] = {}


def pretrained_cfg_overlay(variant: str) -> Dict[str, Any]:
    """``dict(file=<bundled safetensors>)`` after checking its sha256, or ``{}`` to fall through to the Hub."""
    directory = weights_dir()
    manifest = read_manifest(directory)
    entry = manifest.get(variant) or manifest.get(_base_name(variant))
    if not entry:
        _RESOLVED.pop(variant, None)
        return {}
    path = directory / entry['file']
    if not path.is_file():
        raise PretrainedWeightsError(
            f"Pretrained weights for {variant!r}: manifest {directory / MANIFEST_NAME} lists {path}, "
            f"but the file is missing.")
    expected = entry.get('sha256', '').lower()
    actual = sha256_file(path)
    if not expected or actual != expected:
        raise PretrainedWeightsError(
            f"Pretrained weights for {variant!r}: sha256 of {path} is {actual}, manifest expects "
            f"{expected or '(none)'}; the file is corrupt or was replaced.")
    _RESOLVED[variant] = str(path)
    return dict(file=str(path))


def _source_description(variant: str) -> str:
    if variant in _RESOLVED:
        return f"bundled file {_RESOLVED[variant]}"
    hub_id = None
    try:
        from timm.models import get_pretrained_cfg
        cfg = get_pretrained_cfg(variant, allow_unregistered=True)
        hub_id = getattr(cfg, 'hf_hub_id', None) if cfg is not None else None
    except Exception:
        pass
    hub_id = hub_id or f'mlan-timm/{_base_name(variant)}'
    return f"Hugging Face Hub repo {hub_id!r} (model.safetensors; no bundled weights in {weights_dir()})"


def _is_hub_error(e: BaseException) -> bool:
    try:
        from huggingface_hub import errors as hf_errors
        hub_types = tuple(getattr(hf_errors, n) for n in (
            'RepositoryNotFoundError', 'EntryNotFoundError', 'LocalEntryNotFoundError', 'RevisionNotFoundError',
            'HfHubHTTPError', 'OfflineModeIsEnabled') if hasattr(hf_errors, n))
    except ImportError:
        hub_types = ()
    if hub_types and isinstance(e, hub_types):
        return True
    mod = type(e).__module__ or ''
    return mod.startswith(('httpx', 'requests', 'urllib3', 'huggingface_hub')) or isinstance(e, ConnectionError)


def _is_corrupt_error(e: BaseException) -> bool:
    name = type(e).__name__
    text = str(e)
    return ('SafetensorError' in name or 'HeaderTooLarge' in text or 'InvalidHeader' in text
            or 'invalid load key' in text or 'PytorchStreamReader' in text or 'Error while deserializing' in text
            or isinstance(e, (EOFError,)) or 'unpickling' in text.lower())


def _is_mismatch_error(e: BaseException) -> bool:
    text = str(e)
    return isinstance(e, RuntimeError) and ('Error(s) in loading state_dict' in text or 'size mismatch' in text)


@contextlib.contextmanager
def load_errors_as_clear_messages(variant: str) -> Iterator[None]:
    """Turn weight-loading failures inside the block into :class:`PretrainedWeightsError` naming ``variant``."""
    try:
        yield
    except PretrainedWeightsError:
        raise
    except Exception as e:  # noqa: BLE001 - classified below, anything else is re-raised unchanged
        src = _source_description(variant)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if _is_mismatch_error(e):
            raise PretrainedWeightsError(
                f"Pretrained weights for {variant!r} from {src} do not match the model's architecture "
                f"(wrong model's weights?): {_summarise_mismatch(str(e))}") from e
        if _is_corrupt_error(e):
            raise PretrainedWeightsError(
                f"Pretrained weights for {variant!r} from {src} are corrupt or not a weights file: {first}") from e
        if _is_hub_error(e):
            raise PretrainedWeightsError(
                f"No pretrained weights available for {variant!r}: not bundled, and the download from {src} "
                f"failed ({type(e).__name__}: {first}). Real-quality weights may not be published yet; "
                f"use pretrained=False or pass pretrained_cfg_overlay=dict(file='<your .safetensors>').") from e
        if isinstance(e, (FileNotFoundError, IsADirectoryError)):
            raise PretrainedWeightsError(f"Pretrained weights for {variant!r}: file not found: {first}") from e
        raise


def _summarise_mismatch(text: str, limit: int = 600) -> str:
    text = ' '.join(text.replace('\t', ' ').split())
    text = text.replace('Error(s) in loading state_dict for ', 'loading into ')
    return text if len(text) <= limit else text[:limit] + ' ...'


# ----------------------------------------------------------------------------------------------------------
# Reading weights files / checkpoints (used by mlan-eval, mlan-export, mlan-train --initial-weights)
# ----------------------------------------------------------------------------------------------------------

def read_state_dict(path: os.PathLike, model_name: str = '', use_ema: bool = False) -> Dict[str, torch.Tensor]:
    """State dict from a ``.safetensors`` file or a ``.pth`` checkpoint (mlan-train's or a plain state dict)."""
    path = Path(path)
    label = f" for {model_name!r}" if model_name else ''
    if not path.is_file():
        raise PretrainedWeightsError(f"Weights file{label} not found: {path}")
    if use_ema and path.suffix == '.safetensors':
        raise PretrainedWeightsError(f"EMA weights were requested{label} but {path} is a safetensors file, not an "
                                     "mlan-train checkpoint (last.pth) holding EMA weights")
    if path.suffix == '.safetensors':
        from safetensors.torch import load_file
        try:
            return load_file(str(path), device='cpu')
        except Exception as e:  # safetensors raises SafetensorError / OSError on bad headers
            raise PretrainedWeightsError(f"Weights file{label} {path} is corrupt or not safetensors: {e}") from e
    try:
        blob = torch.load(path, map_location='cpu', weights_only=False)
    except Exception as e:
        raise PretrainedWeightsError(f"Checkpoint{label} {path} is corrupt or not a PyTorch file: {e}") from e
    if isinstance(blob, dict) and 'model' in blob and isinstance(blob['model'], dict):
        if use_ema:
            ema = blob.get('ema')
            if not ema:
                raise PretrainedWeightsError(f"Checkpoint{label} {path} has no EMA weights (trained without --model-ema)")
            return {k[len('module.'):] if k.startswith('module.') else k: v for k, v in ema.items()}
        return blob['model']
    if use_ema:
        raise PretrainedWeightsError(f"EMA weights were requested{label} but {path} is not an mlan-train checkpoint "
                                     "(no 'model'/'ema' entries)")
    if isinstance(blob, dict) and 'state_dict' in blob:
        return blob['state_dict']
    if isinstance(blob, dict) and all(isinstance(v, torch.Tensor) for v in blob.values()):
        return blob
    raise PretrainedWeightsError(f"{path} holds no recognisable state dict{label}")


def load_state_dict_clearly(model: torch.nn.Module, state_dict: Dict[str, torch.Tensor], model_name: str = '',
                            path: os.PathLike = ''):
    """``model.load_state_dict(strict=True)`` with an error naming the model and the file on mismatch."""
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        raise PretrainedWeightsError(
            f"Weights {path} do not match model {model_name or type(model).__name__!r}: "
            f"{_summarise_mismatch(str(e))}") from e
