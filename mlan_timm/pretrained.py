"""Pretrained-weight resolution for mlan_timm models.

What is published: the weights manifest ``<weights dir>/MANIFEST.json`` (``mlan_timm/weights/`` or
``$MLAN_TIMM_WEIGHTS_DIR``), ``{"weights": {"<model>[.<tag>]": entry}}`` where an entry is either

* ``{"file": "<name>.safetensors", "sha256": "..."}``: weights bundled with the package (used offline, only after
  the sha256 matches), optionally with ``"hf_hub_id"`` where the same weights are on the Hub; or
* ``{"hf_hub_id": "mlan-timm/<model>"}``: weights published on the Hugging Face Hub only.

:func:`published_tags` / :func:`has_pretrained` answer "which weights exist" from that manifest alone (no
network); the registry gives a model a pretrained tag and an ``hf_hub_id`` only when they say so.

How ``timm.create_model(name, pretrained=True)`` loads: the factory wraps ``build_model_with_cfg`` in
:func:`load_errors_as_clear_messages`. Inside it, timm's ``load_pretrained`` sees the fully resolved pretrained cfg
(registry cfg + ``pretrained_cfg_overlay`` + ``hf-hub:`` / ``local-dir:`` source) and mlan_timm routes it first:

1. an explicit source (``pretrained_cfg_overlay=dict(file=...)``, ``state_dict=...``, ``local-dir:PATH``,
   ``hf-hub:org/repo``, or an ``hf_hub_id`` / ``url`` other than the registry's) is used as given; a missing file
   or folder is reported at once, naming the path;
2. otherwise (the registry's own source) the manifest decides: bundled file -> that file; Hub-only entry -> the
   Hub; **no entry -> :class:`PretrainedWeightsError` at once**, without any network request (no weights are
   published, so there is nothing to download). With ``HF_HUB_OFFLINE=1`` a Hub source that is not in the local
   cache is reported at once too.

Every failure while reading the weights becomes a :class:`PretrainedWeightsError` naming the model and the source
actually read (the file path, the local folder, the bundled file or the Hub repo).
"""
import contextlib
import contextvars
import functools
import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import torch

from .zoo import hub_repo_id

__all__ = [
    'PretrainedWeightsError', 'weights_dir', 'read_manifest', 'sha256_file', 'published_tags', 'has_pretrained',
    'bundled_file', 'pretrained_cfg_overlay', 'load_errors_as_clear_messages', 'read_state_dict',
    'load_state_dict_clearly', 'weights_digest',
]

MANIFEST_NAME = 'MANIFEST.json'
_HUB_FILES = ('model.safetensors', 'pytorch_model.bin')  # what timm's load_state_dict_from_hf looks for


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights for a model are missing, corrupt, or do not fit its architecture."""


def weights_dir() -> Path:
    """Folder of the weights manifest: ``$MLAN_TIMM_WEIGHTS_DIR`` or the package's ``mlan_timm/weights/``."""
    env = os.environ.get('MLAN_TIMM_WEIGHTS_DIR')
    return Path(env) if env else Path(__file__).resolve().parent / 'weights'


def read_manifest(directory: Optional[Path] = None) -> Dict[str, Dict[str, Any]]:
    """``{"<model>[.<tag>]": {'file', 'sha256'} or {'hf_hub_id'}}`` from the weights manifest ({} when absent)."""
    directory = Path(directory) if directory else weights_dir()
    path = directory / MANIFEST_NAME
    if not path.is_file():
        return {}
    try:
        blob = json.loads(path.read_text(encoding='utf-8'))
    except (OSError, ValueError) as e:
        raise PretrainedWeightsError(f"Weights manifest {path} is unreadable: {e}") from e
    weights = blob.get('weights', {}) if isinstance(blob, dict) else None
    if not isinstance(weights, dict):
        raise PretrainedWeightsError(f"Weights manifest {path} has no 'weights' mapping")
    for key, entry in weights.items():
        if not isinstance(entry, dict) or not (entry.get('file') or entry.get('hf_hub_id')):
            raise PretrainedWeightsError(
                f"Weights manifest {path}: entry {key!r} needs 'file' (+ 'sha256') or 'hf_hub_id', got {entry!r}")
    return weights


def sha256_file(path: os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def _split_tag(name: str) -> Tuple[str, str]:
    arch, _, tag = name.partition('.')
    return arch, tag


def published_tags(model_name: str, manifest: Optional[Dict[str, Dict[str, Any]]] = None) -> Tuple[str, ...]:
    """Pretrained tags with published weights for ``model_name``, default first; ``()`` when there are none.

    Read from the weights manifest only (bundled files and Hub-only entries; no network, cheap enough to call once
    per model at registration). A manifest key ``"mlan_resnet20_cifar10.paper"`` gives tag ``'paper'``; an untagged
    key ``"mlan_resnet20_cifar10"`` gives ``''``. Tags come in manifest order, so the first is the default.
    ``model_name`` may carry a tag (ignored) or a ``timm/``-style prefix. ``manifest``: an already read
    :func:`read_manifest` (the registry reads it once for all models).

    The registry should give a cfg an ``hf_hub_id`` and a pretrained tag only for these tags, e.g.
    ``{f"{name}.{tag}" if tag else name: cfg for tag in published_tags(name)}``.
    """
    arch = _split_tag(model_name.split(':')[-1].split('/')[-1])[0]
    tags = []
    for key in (read_manifest() if manifest is None else manifest):
        key_arch, tag = _split_tag(key)
        if key_arch == arch and tag not in tags:
            tags.append(tag)
    return tuple(tags)


def has_pretrained(name: str) -> bool:
    """Whether published weights exist for ``name`` (``'<model>'``: any tag; ``'<model>.<tag>'``: that tag)."""
    arch, tag = _split_tag(name)
    tags = published_tags(arch)
    return tag in tags if tag else bool(tags)


def _manifest_entry(variant: str) -> Tuple[Optional[str], Optional[Dict[str, Any]]]:
    """The manifest key and entry for ``model[.tag]``; an untagged name gets its default (first) tag."""
    manifest = read_manifest()
    if variant in manifest:
        return variant, manifest[variant]
    arch, tag = _split_tag(variant)
    if not tag:
        for key, entry in manifest.items():
            if _split_tag(key)[0] == arch:
                return key, entry
    return None, None


def bundled_file(variant: str) -> Optional[Path]:
    """The bundled weights file of ``model[.tag]`` after checking its sha256; ``None`` when none is bundled."""
    _key, entry = _manifest_entry(variant)
    if not entry or not entry.get('file'):
        return None
    directory = weights_dir()
    path = directory / entry['file']
    if not path.is_file():
        raise PretrainedWeightsError(
            f"Pretrained weights for {variant!r}: manifest {directory / MANIFEST_NAME} lists {path}, "
            f"but the file is missing.")
    expected = str(entry.get('sha256', '')).lower()
    actual = sha256_file(path)
    if not expected or actual != expected:
        raise PretrainedWeightsError(
            f"Pretrained weights for {variant!r}: sha256 of {path} is {actual}, manifest expects "
            f"{expected or '(none)'}; the file is corrupt or was replaced.")
    return path


def pretrained_cfg_overlay(variant: str) -> Dict[str, Any]:
    """Overlay the factory merges under the user's ``pretrained_cfg_overlay`` (pretrained=True only).

    ``{}``: the source is chosen at load time, where the user's overlay and ``local-dir:`` / ``hf-hub:`` sources
    are visible (see the module docstring). Only if timm's loader cannot be hooked does it fall back to
    ``dict(file=<bundled file>)``.
    """
    if _install_load_hook():
        return {}
    path = bundled_file(variant)
    return dict(file=str(path)) if path else {}


# ----------------------------------------------------------------------------------------------------------
# Choosing and naming the source, at load time
# ----------------------------------------------------------------------------------------------------------

class _Load:
    """What is being built (set by :func:`load_errors_as_clear_messages`) and the source it reads."""

    def __init__(self, variant: str):
        self.variant = variant
        self.source: Optional[str] = None  # e.g. "file /x/y.safetensors", set once the source is known
        self.offline_hub = False


_CURRENT: contextvars.ContextVar = contextvars.ContextVar('mlan_timm_pretrained_load', default=None)
_HOOK_LOCK = threading.Lock()


def _hub_offline() -> bool:
    try:
        from huggingface_hub import constants
        if constants.HF_HUB_OFFLINE:
            return True
    except ImportError:
        pass
    return os.environ.get('HF_HUB_OFFLINE', '').strip().upper() in ('1', 'ON', 'YES', 'TRUE')


def _hub_cached(hub_id: str, filename: Optional[str], cache_dir: Optional[os.PathLike]) -> bool:
    from huggingface_hub import try_to_load_from_cache
    repo, _, revision = hub_id.partition('@')
    for name in ((filename,) if filename else _HUB_FILES):
        hit = try_to_load_from_cache(repo, name, cache_dir=cache_dir, revision=revision or None)
        if isinstance(hit, str):
            return True
    return False


def _registry_sources(cfg: Dict[str, Any], variant: str) -> Tuple[set, set]:
    """Hub ids / URLs the registry itself gives this model (vs. ones a user passed)."""
    hub_ids, urls = {hub_repo_id(variant)}, set()
    try:
        from timm.models import get_pretrained_cfg
        name = cfg.get('architecture') or variant
        reg = get_pretrained_cfg(f"{name}.{cfg['tag']}" if cfg.get('tag') else name, allow_unregistered=True)
    except Exception:  # noqa: BLE001 - unregistered / old timm: only the zoo's own repo id counts
        reg = None
    if reg is not None:
        hub_ids.add(reg.hf_hub_id)
        urls.add(reg.url)
    return hub_ids - {None, ''}, urls - {None, ''}


def _route(load: _Load, cfg: Dict[str, Any], cache_dir: Optional[os.PathLike]) -> None:
    """Pick (and check) the weights source for ``cfg`` in place; record it in ``load``; raise at once if none."""
    variant = load.variant
    name = cfg.get('architecture') or _split_tag(variant)[0]
    variant = f"{name}.{cfg['tag']}" if cfg.get('tag') else variant
    load.variant = variant
    source, file, hub_id, url = cfg.get('source'), cfg.get('file'), cfg.get('hf_hub_id'), cfg.get('url')
    if source == 'local-dir':
        folder = Path(file or '')
        load.source = f"local folder {folder}"
        if not folder.is_dir():
            raise PretrainedWeightsError(f"Pretrained weights for {variant!r}: local folder {folder} does not exist")
        found = next((folder / f for f in _HUB_FILES if (folder / f).is_file()), None)
        if found is not None:
            load.source = f"file {found} (local folder {folder})"
        return
    if source == 'hf-hub':
        return _use_hub(load, hub_id, cfg, cache_dir)
    if cfg.get('state_dict') is not None:
        load.source = "the state_dict in pretrained_cfg_overlay"
        return
    if file:
        path = Path(file)
        load.source = f"file {path}"
        if path.is_dir():
            raise PretrainedWeightsError(
                f"Pretrained weights for {variant!r}: {path} is a folder, not a weights file; pass the file "
                f"(pretrained_cfg_overlay=dict(file='{path / 'model.safetensors'}')) or load an exported folder "
                f"with timm.create_model('local-dir:{path}', pretrained=True)")
        if not path.is_file():
            raise PretrainedWeightsError(f"Pretrained weights for {variant!r}: file not found: {path}")
        return
    reg_hub_ids, reg_urls = _registry_sources(cfg, variant)
    if (hub_id and hub_id not in reg_hub_ids) or (url and url not in reg_urls and not hub_id):
        if hub_id:  # a Hub repo the user named
            return _use_hub(load, hub_id, cfg, cache_dir)
        load.source = f"URL {url}"
        return
    # the registry's own source: the manifest says what is published
    key, entry = _manifest_entry(variant)
    if entry is None:
        raise PretrainedWeightsError(
            f"No pretrained weights available for {variant!r}: none are published yet (the weights manifest "
            f"{weights_dir() / MANIFEST_NAME} lists no bundled file and no Hugging Face Hub repo for it; they "
            f"would be at {hub_repo_id(variant)!r}), so nothing was downloaded. Use pretrained=False for random "
            f"init, or load your own weights: timm.create_model({_split_tag(variant)[0]!r}, pretrained=True, "
            f"pretrained_cfg_overlay=dict(file='path/to/model.safetensors')), or "
            f"timm.create_model('local-dir:path/to/exported_folder', pretrained=True).")
    path = bundled_file(key)
    if path is not None:
        cfg['file'] = str(path)
        load.source = f"bundled file {path}"
        return
    cfg['hf_hub_id'] = entry.get('hf_hub_id') or hub_id or hub_repo_id(variant)
    _use_hub(load, cfg['hf_hub_id'], cfg, cache_dir)


def _use_hub(load: _Load, hub_id: str, cfg: Dict[str, Any], cache_dir: Optional[os.PathLike]) -> None:
    load.source = f"Hugging Face Hub repo {hub_id!r}"
    if _hub_offline():
        load.offline_hub = True
        if not _hub_cached(hub_id, cfg.get('hf_hub_filename'), cache_dir):
            from huggingface_hub import constants
            raise PretrainedWeightsError(
                f"Pretrained weights for {load.variant!r}: HF_HUB_OFFLINE is set and Hugging Face Hub repo "
                f"{hub_id!r} is not in the local cache ({cache_dir or constants.HF_HUB_CACHE}); nothing was "
                f"downloaded. Unset HF_HUB_OFFLINE once to download it, or load a local file with "
                f"pretrained_cfg_overlay=dict(file='path/to/model.safetensors').")


def _install_load_hook() -> bool:
    """Route timm's ``load_pretrained`` through :func:`_route` while an mlan_timm model is being built.

    ``build_model_with_cfg`` calls ``timm.models._builder.load_pretrained`` with the resolved pretrained cfg; the
    wrapper is a pass-through unless :func:`load_errors_as_clear_messages` is active in this thread/context, so
    other timm models are unaffected. Returns False (and changes nothing) if this timm has no such function.
    """
    try:
        from timm.models import _builder
    except ImportError:
        return False
    with _HOOK_LOCK:
        original = getattr(_builder, 'load_pretrained', None)
        if original is None:
            return False
        if getattr(original, '_mlan_timm_routed', False):
            return True

        @functools.wraps(original)
        def load_pretrained(model, pretrained_cfg=None, *args, **kwargs):
            load = _CURRENT.get()
            if load is not None:
                cfg = pretrained_cfg if pretrained_cfg is not None else getattr(model, 'pretrained_cfg', None)
                if isinstance(cfg, dict):
                    _route(load, cfg, kwargs.get('cache_dir'))
                    pretrained_cfg = cfg
            return original(model, pretrained_cfg, *args, **kwargs)

        load_pretrained._mlan_timm_routed = True
        _builder.load_pretrained = load_pretrained
        return True


def _fallback_source(variant: str) -> str:
    path = bundled_file(variant)
    if path is not None:
        return f"bundled file {path}"
    return f"Hugging Face Hub repo {hub_repo_id(variant)!r}"


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
    return mod.startswith(('httpx', 'requests', 'urllib', 'huggingface_hub')) or isinstance(e, ConnectionError)


def _is_corrupt_error(e: BaseException) -> bool:
    name = type(e).__name__
    text = str(e)
    return ('SafetensorError' in name or 'HeaderTooLarge' in text or 'InvalidHeader' in text
            or 'invalid load key' in text or 'PytorchStreamReader' in text or 'Error while deserializing' in text
            or isinstance(e, (EOFError,)) or 'unpickling' in text.lower()
            or (isinstance(e, RuntimeError) and 'weights_only' in text))  # torch.load refusing what is not weights


def _is_mismatch_error(e: BaseException) -> bool:
    text = str(e)
    return isinstance(e, RuntimeError) and ('Error(s) in loading state_dict' in text or 'size mismatch' in text)


@contextlib.contextmanager
def load_errors_as_clear_messages(variant: str) -> Iterator[None]:
    """Build a model's pretrained weights inside this block: source routing plus clear errors.

    While active, timm's ``load_pretrained`` is routed as the module docstring describes (fail fast when nothing
    is published, missing files named at once), and any weight-loading failure becomes a
    :class:`PretrainedWeightsError` naming ``variant`` and the source actually read.
    """
    hooked = _install_load_hook()
    load = _Load(variant)
    token = _CURRENT.set(load)
    try:
        yield
    except PretrainedWeightsError:
        raise
    except Exception as e:  # classified below, anything else is re-raised unchanged
        if hooked and load.source is None:
            raise  # not a weight-loading error (the loader was never reached)
        src = load.source or _fallback_source(variant)
        variant = load.variant
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if _is_mismatch_error(e):
            raise PretrainedWeightsError(
                f"Pretrained weights for {variant!r} from {src} do not match the model's architecture "
                f"(wrong model's weights?): {_summarise_mismatch(str(e))}") from e
        if _is_corrupt_error(e):
            if 'weights_only' in first:  # torch's own text ends by advising weights_only=False, unsafe for such a file
                first = "torch.load(weights_only=True) refused it: it holds pickled Python objects, not only tensors"
            raise PretrainedWeightsError(
                f"Pretrained weights for {variant!r} from {src} are corrupt or not a weights file: {first}") from e
        if _is_hub_error(e):
            hint = (" (HF_HUB_OFFLINE is set: only the local cache was searched)" if load.offline_hub else "")
            raise PretrainedWeightsError(
                f"No pretrained weights available for {variant!r}: the download from {src} failed{hint} "
                f"({type(e).__name__}: {first}). Use pretrained=False, or load your own weights with "
                f"pretrained_cfg_overlay=dict(file='path/to/model.safetensors').") from e
        if isinstance(e, (FileNotFoundError, IsADirectoryError, NotADirectoryError)):
            raise PretrainedWeightsError(
                f"Pretrained weights for {variant!r}: cannot read {src}: {type(e).__name__}: {first}") from e
        if isinstance(e, RuntimeError) and 'No suitable checkpoints found' in str(e):
            raise PretrainedWeightsError(
                f"Pretrained weights for {variant!r}: {src} holds no weights file (model.safetensors, "
                f"pytorch_model.bin, ...)") from e
        raise
    finally:
        _CURRENT.reset(token)


def _summarise_mismatch(text: str, limit: int = 600) -> str:
    text = ' '.join(text.replace('\t', ' ').split())
    text = text.replace('Error(s) in loading state_dict for ', 'loading into ')
    return text if len(text) <= limit else text[:limit] + ' ...'


# ----------------------------------------------------------------------------------------------------------
# Reading weights files / checkpoints (used by mlan-eval, mlan-export, mlan-train --initial-weights)
# ----------------------------------------------------------------------------------------------------------

def weights_digest(state_dict: Dict[str, torch.Tensor]) -> str:
    """sha256 (hex) of a state dict's names, dtypes, shapes and values, in name order: the same weights give the
    same digest whatever file held them (a checkpoint's model entry, a safetensors file) and whatever their memory
    layout; mlan-eval reports it, and mlan-export checks the results it prints against the weights it exports."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


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
                raise PretrainedWeightsError(
                    f"Checkpoint{label} {path} has no EMA weights (trained without --model-ema)")
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
