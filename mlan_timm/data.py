"""CIFAR-10 / CIFAR-100 data for mlan_timm training and evaluation.

``--data-dir`` may hold any of these layouts (checked in this order):

1. torchvision's own layout: ``cifar-10-batches-py/`` or ``cifar-100-python/`` (``download=True`` lets
   torchvision fetch it when absent);
2. an ImageFolder tree: ``<data_dir>/train/<class>/*.png`` and ``<data_dir>/test/...`` (or ``val/``);
3. ImageFolder tarballs ``<split>.tar.gz`` in ``<data_dir>`` or ``<data_dir>/<dataset>/`` (as in the shared
   offline data); they are extracted once into a cache directory.

Two loading paths share the paper's augmentation (``Pad(4, padding_mode='reflect')`` + ``RandomCrop(32)`` +
horizontal flip, then normalisation with the dataset's mean/std from :data:`mlan_timm.zoo.DATASETS`, which are the
paper recipe's constants; the test split is only normalised). ``padding_mode='constant'`` gives the zero padding of
``RandomCrop(32, padding=4)`` instead:

* :func:`build_loader` with ``on_device=False``: a ``torch.utils.data.DataLoader`` with torchvision transforms;
* ``on_device=True``: the whole split as one uint8 tensor on the training device, augmented there in batches
  (:class:`DeviceLoader`) - fast on CUDA, also usable on CPU.

Both shard for distributed training (``rank``, ``world_size``; ``batch_size`` is then the per-process batch):
every process draws the same per-epoch permutation and takes its contiguous share of each *global* batch of
``batch_size * world_size`` images (the permutation is padded by wrapping around to a multiple of
``world_size``, so every process gets the same number of images, as ``DistributedSampler`` does); the test split
is sharded by stride (``rank::world_size``), each image evaluated once. With ``world_size=1`` nothing changes.
"""
import hashlib
import os
import shutil
import tarfile
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from .atomic import AtomicWriteError, atomic_torch_save, make_temp_dir
from .zoo import DATASETS, DatasetInfo

__all__ = [
    'DatasetNotFoundError', 'dataset_info', 'build_transforms', 'PADDING_MODES', 'pad_crop_flip',
    'build_dataset', 'load_uint8', 'DeviceLoader', 'build_loader', 'subset_indices', 'shard_batches',
]

#: Padding of the random-crop augmentation: 'reflect' (the paper recipe) or 'constant' (zeros).
PADDING_MODES = ('reflect', 'constant')

PathLike = Union[str, os.PathLike]


class DatasetNotFoundError(FileNotFoundError):
    """Raised when no usable CIFAR data is found under ``--data-dir``."""


def _check_name(name: str) -> str:
    name = name.lower().replace('-', '')
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; expected one of {sorted(DATASETS)}")
    return name


def dataset_info(name: str) -> DatasetInfo:
    """:data:`mlan_timm.zoo.DATASETS` entry of ``name`` ('cifar10', 'CIFAR-100', ...); ValueError if unknown."""
    return DATASETS[_check_name(name)]


def _check_padding_mode(padding_mode: str) -> str:
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"Unknown padding_mode {padding_mode!r}; expected one of {PADDING_MODES}")
    return padding_mode


def build_transforms(name: str, train: bool, mean=None, std=None, padding_mode: str = 'reflect'):
    """The paper's torchvision transforms for ``name`` ('cifar10' / 'cifar100').

    Train: ``Pad(4, padding_mode)`` + ``RandomCrop(32)`` + ``RandomHorizontalFlip`` + ``ToTensor`` + ``Normalize``;
    test: ``ToTensor`` + ``Normalize``. ``mean``/``std`` default to the dataset's (:data:`mlan_timm.zoo.DATASETS`).
    """
    from torchvision import transforms as T
    info = dataset_info(name)
    norm = [T.ToTensor(), T.Normalize(mean or info.mean, std or info.std)]
    if train:
        _check_padding_mode(padding_mode)
        return T.Compose([T.Pad(4, padding_mode=padding_mode), T.RandomCrop(32), T.RandomHorizontalFlip(), *norm])
    return T.Compose(norm)


def _padded_index(size: int, pad: int, padding_mode: str, device) -> torch.Tensor:
    """Source index of each position of a ``pad``-padded axis of length ``size`` (-1 marks a zero pixel).

    'reflect' mirrors without repeating the edge pixel, as ``torch.nn.functional.pad(mode='reflect')`` and
    torchvision's ``Pad(padding_mode='reflect')`` do: index -1 -> 1, size -> size - 2."""
    i = torch.arange(-pad, size + pad, device=device)
    if padding_mode == 'reflect':
        i = i.abs()
        return torch.where(i > size - 1, 2 * (size - 1) - i, i)
    return torch.where((i < 0) | (i > size - 1), torch.full_like(i, -1), i)


def pad_crop_flip(x: torch.Tensor, offsets: torch.Tensor, flip: torch.Tensor, padding_mode: str = 'reflect',
                  pad: int = 4) -> torch.Tensor:
    """Batched ``Pad(pad, padding_mode)`` + crop at ``offsets`` + horizontal flip where ``flip``, on any dtype.

    ``x``: [B, C, H, W]; ``offsets``: [2, B] (row, column) offsets into the padded image, in ``[0, 2 * pad]``;
    ``flip``: [B] bool. Done by gathering source indices, so uint8 images never leave their dtype.
    """
    _check_padding_mode(padding_mode)
    b, _, h, w = x.shape
    rows_src = _padded_index(h, pad, padding_mode, x.device)[offsets[0][:, None] + torch.arange(h, device=x.device)]
    cols_src = _padded_index(w, pad, padding_mode, x.device)[offsets[1][:, None] + torch.arange(w, device=x.device)]
    cols_src = torch.where(flip[:, None], cols_src.flip(1), cols_src)
    valid = (rows_src >= 0)[:, :, None] & (cols_src >= 0)[:, None, :]  # [B, H, W]; all True for 'reflect'
    bidx = torch.arange(b, device=x.device)[:, None, None]
    out = x[bidx, :, rows_src.clamp(min=0)[:, :, None], cols_src.clamp(min=0)[:, None, :]]  # [B, H, W, C]
    out = out * valid[..., None].to(out.dtype)
    return out.permute(0, 3, 1, 2)


def _default_cache_dir() -> Path:
    env = os.environ.get('MLAN_TIMM_CACHE')
    if env:
        return Path(env)
    return Path(os.environ.get('XDG_CACHE_HOME', Path.home() / '.cache')) / 'mlan_timm'


def _split_names(split: str) -> Tuple[str, ...]:
    if split == 'train':
        return ('train',)
    if split in ('test', 'val'):
        return ('test', 'val')
    raise ValueError(f"Unknown split {split!r}; expected 'train' or 'test'")


def _find_tarball(data_dir: Path, name: str, split: str) -> Optional[Path]:
    for folder in (data_dir, data_dir / name):
        for s in _split_names(split):
            p = folder / f'{s}.tar.gz'
            if p.is_file():
                return p
    return None


def _file_key(path: Path) -> str:
    st = path.stat()
    return hashlib.sha256(f'{path.resolve()}|{st.st_size}|{st.st_mtime_ns}'.encode()).hexdigest()[:16]


def _extract_tarball(tarball: Path, cache_dir: Path, name: str) -> Path:
    """Extract ``tarball`` once into ``cache_dir``; returns the extracted root (atomic: temp dir + rename)."""
    target = cache_dir / f'{name}-{tarball.name[:-len(".tar.gz")]}-{_file_key(tarball)}'
    if target.is_dir():
        return target
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = make_temp_dir('.extract-', cache_dir)
    except OSError as e:
        raise DatasetNotFoundError(
            f"Cannot extract dataset tarball {tarball}: cache folder {cache_dir} is not writable "
            f"({e.strerror or e}); pass a writable --cache-dir (or set MLAN_TIMM_CACHE)") from e
    try:
        with tarfile.open(tarball, 'r:gz') as tf:
            try:
                tf.extractall(tmp, filter='data')
            except TypeError:  # Python without tarfile filters
                tf.extractall(tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            if not target.is_dir():  # a concurrent extraction may have won the race
                raise
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DatasetNotFoundError(f"Could not extract dataset tarball {tarball}: {e}") from e
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _image_folder_root(root: Path, split: str) -> Optional[Path]:
    for s in _split_names(split):
        if (root / s).is_dir():
            return root / s
    return None


def _check_classes(classes: Sequence[str], name: str, where: Path):
    expected = dataset_info(name).num_classes
    if len(classes) != expected:
        raise DatasetNotFoundError(
            f"ImageFolder {where} has {len(classes)} class folders, but {name} has {expected} classes. "
            f"Pass the matching --dataset or --data-dir.")


def _read_image(path: str):
    """The loader of the ImageFolder datasets (both loading paths): ``path`` as a 32x32 RGB PIL image.

    Grayscale, RGBA and palette images are converted to RGB. DatasetNotFoundError naming the file for an unreadable
    image or another size; the size check is free (PIL reads the header at open, the pixels only when needed)."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as img:
            size = img.size
            if size == (32, 32):
                return img.convert('RGB')
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        if isinstance(e, UnidentifiedImageError):
            reason = 'cannot identify image file'  # PIL's message repeats the path
        else:
            reason = (e.strerror if isinstance(e, OSError) else None) or str(e) or type(e).__name__
        raise DatasetNotFoundError(f"{path}: not a readable image ({reason})") from e
    raise DatasetNotFoundError(f"{path}: expected a 32x32 RGB image, got {size[0]}x{size[1]}")


def _image_folder(name: str, root: Path, transform=None):
    """``root`` as an ImageFolder read by :func:`_read_image`; DatasetNotFoundError for a wrong number of class
    folders or a class folder without images."""
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS
    try:
        ds = ImageFolder(str(root), transform=transform, loader=_read_image, allow_empty=True)
    except FileNotFoundError as e:  # torchvision: "Couldn't find any class folder in ..."
        if e.errno is not None:
            raise
        _check_classes([], name, root)
        raise
    _check_classes(ds.classes, name, root)
    counts = np.bincount(np.asarray(ds.targets, dtype=np.int64), minlength=len(ds.classes))
    empty = [c for c, n in zip(ds.classes, counts) if n == 0]
    if empty:
        also = f"; also empty: {', '.join(empty[1:])}" if len(empty) > 1 else ''
        raise DatasetNotFoundError(f"{root / empty[0]}: class folder holds no images (looked for "
                                   f"{', '.join(IMG_EXTENSIONS)}){also}")
    return ds


def _resolve(name: str, data_dir: Optional[PathLike], split: str, download: bool, cache_dir: Optional[PathLike]):
    """Returns ('torchvision', root) or ('folder', split_root)."""
    name = _check_name(name)
    if data_dir is None:
        raise DatasetNotFoundError(f"No --data-dir given for {name}.")
    data_dir = Path(data_dir).expanduser()
    tv_folder = DATASETS[name].tv_folder
    if (data_dir / tv_folder).is_dir():
        return 'torchvision', data_dir
    if data_dir.name == tv_folder and data_dir.is_dir():
        return 'torchvision', data_dir.parent
    for root in (data_dir, data_dir / name):
        folder = _image_folder_root(root, split)
        if folder is not None:
            return 'folder', folder
    tarball = _find_tarball(data_dir, name, split)
    if tarball is not None:
        extracted = _extract_tarball(tarball, Path(cache_dir) if cache_dir else _default_cache_dir(), name)
        folder = _image_folder_root(extracted, split)
        if folder is None:
            raise DatasetNotFoundError(
                f"Tarball {tarball} does not contain a '{'/'.join(_split_names(split))}/' ImageFolder tree.")
        return 'folder', folder
    if download:
        data_dir.mkdir(parents=True, exist_ok=True)
        return 'torchvision', data_dir
    what = 'does not exist' if not data_dir.exists() else 'holds no usable data'
    raise DatasetNotFoundError(
        f"{name} {split} split not found: data dir '{data_dir}' {what}. Expected one of: "
        f"'{data_dir / tv_folder}' (torchvision layout; add --download to fetch it), "
        f"an ImageFolder tree '{data_dir}/{'|'.join(_split_names(split))}/<class>/*.png', "
        f"or a tarball '{data_dir}/[{name}/]{_split_names(split)[0]}.tar.gz'.")


def _torchvision_cls(name):
    from torchvision import datasets
    return datasets.CIFAR10 if name == 'cifar10' else datasets.CIFAR100


def subset_indices(n: int, subset: Optional[int], seed: int = 0) -> Optional[List[int]]:
    """A fixed random subset of ``subset`` indices out of ``n`` (``None`` = all)."""
    if not subset or subset >= n:
        return None
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n, generator=g)[:subset].tolist())


def build_dataset(name: str, data_dir: Optional[PathLike], split: str = 'train', download: bool = False,
                  cache_dir: Optional[PathLike] = None, transform=None, subset: Optional[int] = None,
                  subset_seed: int = 0) -> Dataset:
    """A map-style dataset of (PIL image -> ``transform``, label); ``transform`` defaults to the paper's."""
    name = _check_name(name)
    if transform is None:
        transform = build_transforms(name, train=split == 'train')
    kind, root = _resolve(name, data_dir, split, download, cache_dir)
    if kind == 'torchvision':
        try:
            ds = _torchvision_cls(name)(str(root), train=split == 'train', transform=transform, download=download)
        except RuntimeError as e:  # torchvision's "Dataset not found or corrupted"
            raise DatasetNotFoundError(f"{name} in torchvision layout under '{root}': {e}") from e
    else:
        ds = _image_folder(name, root, transform)
    idx = subset_indices(len(ds), subset, subset_seed)
    if idx is not None:
        ds = Subset(ds, idx)
    return ds


def load_uint8(name: str, data_dir: Optional[PathLike], split: str = 'train', download: bool = False,
               cache_dir: Optional[PathLike] = None, subset: Optional[int] = None,
               subset_seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """The whole split as ``(images uint8 [N,3,32,32], labels int64 [N])`` on CPU.

    Decoded ImageFolder trees are cached (``.pt``) in the cache dir so later runs start fast.
    """
    name = _check_name(name)
    kind, root = _resolve(name, data_dir, split, download, cache_dir)
    if kind == 'torchvision':
        try:
            ds = _torchvision_cls(name)(str(root), train=split == 'train', download=download)
        except RuntimeError as e:
            raise DatasetNotFoundError(f"{name} in torchvision layout under '{root}': {e}") from e
        x = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        y = torch.as_tensor(ds.targets, dtype=torch.int64)
    else:
        x, y = _load_folder_uint8(name, root, cache_dir)
    idx = subset_indices(len(y), subset, subset_seed)
    if idx is not None:
        idx_t = torch.as_tensor(idx)
        x, y = x[idx_t], y[idx_t]
    return x, y


def _load_folder_uint8(name: str, root: Path, cache_dir: Optional[PathLike]):
    folder = _image_folder(name, root)
    # the key covers each file's path, class, size and mtime: replacing or editing an image rebuilds the cache
    stats = []
    for p, c in folder.samples:
        st = os.stat(p)
        stats.append((p, c, st.st_size, st.st_mtime_ns))
    key = hashlib.sha256(repr(stats).encode()).hexdigest()[:16]
    cache = Path(cache_dir) if cache_dir else _default_cache_dir()
    cache_file = cache / f'{name}-{root.name}-{key}.pt'
    if cache_file.is_file():
        try:
            blob = torch.load(cache_file, map_location='cpu', weights_only=True)
            return blob['x'], blob['y']
        except Exception:
            pass  # unreadable cache: rebuild it
    xs = np.empty((len(folder.samples), 32, 32, 3), dtype=np.uint8)
    for i, (path, _) in enumerate(folder.samples):
        xs[i] = np.asarray(_read_image(path))
    x = torch.from_numpy(xs).permute(0, 3, 1, 2).contiguous()
    y = torch.as_tensor([c for _, c in folder.samples], dtype=torch.int64)
    try:
        atomic_torch_save({'x': x, 'y': y}, cache_file)
    except (OSError, AtomicWriteError):  # e.g. a full disk: torch.save's error is not an OSError
        pass  # caching is an optimisation only
    return x, y


class DeviceLoader:
    """Iterates over a uint8 image tensor held on ``device``, with the paper's augmentation done there.

    :func:`pad_crop_flip` with uniformly drawn offsets and a fair coin per image: the same distribution as
    torchvision's ``Pad(4, padding_mode)`` + ``RandomCrop(32)`` + ``RandomHorizontalFlip``; outputs are float32
    normalised with the dataset's mean/std. Randomness comes from a generator reseeded by :meth:`set_epoch`, so
    epochs are reproducible. With ``world_size > 1`` the crop offsets and flips are drawn for the whole global
    batch on every process and each takes its share, so the images a step trains on are those of one process
    with the global batch (see :func:`shard_batches`).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, name: str,
                 train: bool, device: Union[str, torch.device] = 'cpu', drop_last: bool = False, seed: int = 0,
                 mean=None, std=None, padding_mode: str = 'reflect', rank: int = 0, world_size: int = 1):
        info = dataset_info(name)
        self.rank, self.world_size = rank, world_size
        self.padding_mode = _check_padding_mode(padding_mode)
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)
        self.batch_size = batch_size
        self.train = train
        self.drop_last = drop_last
        self.seed = seed
        self.mean = torch.tensor(mean or info.mean, device=self.device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std or info.std, device=self.device).view(1, 3, 1, 1) * 255
        self.generator = torch.Generator(device=self.device)
        self.set_epoch(0)
        self.dataset = self.labels  # len(loader.dataset) works as for DataLoader

    def set_epoch(self, epoch: int):
        self.generator.manual_seed(self.seed * 1_000_003 + epoch)

    def __len__(self):
        return _num_batches(len(self.labels), self.batch_size, self.train, self.drop_last, self.rank,
                            self.world_size)

    def _draw_augmentation(self, b: int) -> Tuple[torch.Tensor, torch.Tensor]:
        off = torch.randint(0, 9, (2, b), device=self.device, generator=self.generator)
        flip = torch.rand(b, device=self.device, generator=self.generator) < 0.5
        return off, flip

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        off, flip = self._draw_augmentation(x.shape[0])
        return pad_crop_flip(x, off, flip, self.padding_mode)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        if self.train:
            order = torch.randperm(n, device=self.device, generator=self.generator)
        else:
            order = torch.arange(n, device=self.device)
        for gidx, part in shard_batches(order, self.batch_size, self.train, self.drop_last, self.rank,
                                        self.world_size):
            idx = gidx[part]
            x = self.images[idx]
            if self.train:
                off, flip = self._draw_augmentation(len(gidx))  # drawn for the global batch: same on every rank
                x = pad_crop_flip(x, off[:, part], flip[part], self.padding_mode)
            x = (x.float() - self.mean) / self.std
            yield x.contiguous(), self.labels[idx]


def _pad_to_multiple(order: torch.Tensor, k: int) -> torch.Tensor:
    extra = (-len(order)) % k
    if extra == 0:
        return order
    reps = (extra + len(order) - 1) // len(order)
    return torch.cat([order, order.repeat(reps)[:extra]])


def shard_batches(order: torch.Tensor, batch_size: int, train: bool, drop_last: bool = False, rank: int = 0,
                  world_size: int = 1) -> Iterator[Tuple[torch.Tensor, slice]]:
    """``(global_batch_indices, this_rank_part)`` for each step over ``order`` (indices into the dataset).

    Train: global batches of ``batch_size * world_size`` from ``order`` padded (wrapping around) to a multiple of
    ``world_size``; rank ``r`` takes the ``r``-th of ``world_size`` equal contiguous parts. Test: the strided shard
    ``order[rank::world_size]`` in batches of ``batch_size`` (the part is then the whole batch).
    With ``world_size=1`` these are plain consecutive batches of ``order``."""
    if not train:
        mine = order[rank::world_size]
        for i in range(0, len(mine), batch_size):
            b = mine[i:i + batch_size]
            yield b, slice(0, len(b))
        return
    order = _pad_to_multiple(order, world_size) if world_size > 1 else order
    g = batch_size * world_size
    for i in range(0, len(order), g):
        gidx = order[i:i + g]
        if drop_last and len(gidx) < g:
            return
        per = len(gidx) // world_size
        yield gidx, slice(rank * per, (rank + 1) * per)


def _num_batches(n: int, batch_size: int, train: bool, drop_last: bool, rank: int, world_size: int) -> int:
    if not train:
        mine = len(range(rank, n, world_size))
        return (mine + batch_size - 1) // batch_size
    n = n + (-n) % world_size if world_size > 1 else n
    g = batch_size * world_size
    return n // g if drop_last else (n + g - 1) // g


class _ShardedBatchSampler:
    """Batch sampler of one process of a distributed run: :func:`shard_batches` over a permutation drawn from
    ``generator`` (seeded identically on every process), so the processes split each global batch."""

    def __init__(self, n: int, batch_size: int, train: bool, drop_last: bool, rank: int, world_size: int,
                 generator: torch.Generator):
        self.n, self.batch_size, self.train, self.drop_last = n, batch_size, train, drop_last
        self.rank, self.world_size, self.generator = rank, world_size, generator

    def __len__(self):
        return _num_batches(self.n, self.batch_size, self.train, self.drop_last, self.rank, self.world_size)

    def __iter__(self):
        order = torch.randperm(self.n, generator=self.generator) if self.train else torch.arange(self.n)
        for gidx, part in shard_batches(order, self.batch_size, self.train, self.drop_last, self.rank,
                                        self.world_size):
            yield gidx[part].tolist()


class _EpochSeededLoader:
    """A DataLoader whose shuffling / augmentation is reseeded per epoch (reproducible, resumable)."""

    def __init__(self, dataset, batch_size, train, workers, pin_memory, drop_last, seed, rank=0, world_size=1):
        self.dataset = dataset
        self.seed = seed
        self.train = train
        self.rank, self.world_size = rank, world_size
        self.generator = torch.Generator()
        if world_size > 1:
            # the sampler's permutation is the same on every rank; the workers' seeds (augmentation) are per rank
            self.worker_generator = torch.Generator()
            sampler = _ShardedBatchSampler(len(dataset), batch_size, train, drop_last, rank, world_size,
                                           self.generator)
            self.loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers, pin_memory=pin_memory,
                                     generator=self.worker_generator, persistent_workers=False)
        else:
            self.loader = DataLoader(dataset, batch_size=batch_size, shuffle=train, num_workers=workers,
                                     pin_memory=pin_memory, drop_last=drop_last, generator=self.generator,
                                     persistent_workers=False)
        self.set_epoch(0)

    def _rank_offset(self) -> int:
        return 0 if self.world_size == 1 else 7_777_777 * (self.rank + 1)

    def set_epoch(self, epoch: int):
        self.generator.manual_seed(self.seed * 1_000_003 + epoch)
        if self.world_size > 1:
            self.worker_generator.manual_seed(self.seed * 1_000_003 + epoch + self._rank_offset())
        self._epoch = epoch

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        if self.loader.num_workers == 0 and self.train:
            # augmentation then draws from the global RNG in this process: seed it for this epoch too
            torch.manual_seed(self.seed * 1_000_003 + self._epoch + 7919 + self._rank_offset())
        return _unwrap_worker_errors(iter(self.loader))


def _unwrap_worker_errors(it: Iterator) -> Iterator:
    """Iterates ``it``; a DatasetNotFoundError of a DataLoader worker, which torch re-raises with the worker's whole
    traceback as its message, is raised again with the worker's one-line message."""
    try:
        yield from it
    except DatasetNotFoundError as e:
        # stop the workers now: left to the garbage collector, the iterator (kept alive by the traceback) takes
        # torch's 5 s worker-join timeout to shut down
        getattr(it, '_shutdown_workers', lambda: None)()
        msg, tag = str(e), 'DatasetNotFoundError: '
        if msg.startswith('Caught DatasetNotFoundError') and tag in msg:
            raise DatasetNotFoundError(msg.rsplit(tag, 1)[1].strip()) from None
        raise


def build_loader(name: str, data_dir: Optional[PathLike], split: str, batch_size: int, *,
                 on_device: bool = False, device: Union[str, torch.device] = 'cpu', workers: int = 2,
                 download: bool = False, cache_dir: Optional[PathLike] = None, subset: Optional[int] = None,
                 seed: int = 0, drop_last: Optional[bool] = None, mean=None, std=None, padding_mode: str = 'reflect',
                 rank: int = 0, world_size: int = 1):
    """A train (augmented, shuffled) or test loader; both have ``set_epoch(epoch)`` and ``len()``.

    ``rank`` / ``world_size``: this process's shard in a distributed run (``batch_size`` per process; see the
    module docstring); ``len(loader.dataset)`` is always the whole split."""
    train = split == 'train'
    if drop_last is None:
        drop_last = False
    if on_device:
        x, y = load_uint8(name, data_dir, split, download=download, cache_dir=cache_dir, subset=subset)
        return DeviceLoader(x, y, batch_size, name, train=train, device=device, drop_last=drop_last, seed=seed,
                            mean=mean, std=std, padding_mode=padding_mode, rank=rank, world_size=world_size)
    ds = build_dataset(name, data_dir, split, download=download, cache_dir=cache_dir, subset=subset,
                       transform=build_transforms(name, train, mean, std, padding_mode))
    pin = torch.device(device).type == 'cuda'
    return _EpochSeededLoader(ds, batch_size, train, workers, pin, drop_last, seed, rank, world_size)
