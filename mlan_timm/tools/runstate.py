"""mlan-runstate: pack a training run folder into parts of bounded size, and unpack them, checked by sha256.

A training run that spans several short GPU sessions must leave each machine as a few small files (the device
machine hands back at most 8 files of 16 MiB). ``pack`` writes the run folder (every model's ``last.pth`` with
weights, optimizer momentum, scheduler, epoch and RNG state, its logs, and the final weights of finished models)
as one uncompressed tar split into ``<name>.tar.partNN`` files of at most ``--max-part-size`` bytes, plus
``<name>.manifest.json`` with the sha256 and size of every part, of the whole tar and of every file in it.
``unpack`` checks all of that and replaces the destination folder atomically (a failed unpack leaves it as it
was)::

    mlan-runstate pack runs/many $OUT                 # -> $OUT/state.tar.part00, ..., $OUT/state.manifest.json
    mlan-runstate unpack /path/to/parts runs/state    # verified, then swapped in
    mlan-runstate verify /path/to/parts               # only the checks
"""
import argparse
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

from ..atomic import atomic_write_bytes, atomic_write_text
from ..pretrained import sha256_file
from .common import UsageError, run_cli

__all__ = ['FORMAT', 'parse_size', 'pack', 'verify', 'unpack', 'build_parser', 'main']

PROG = 'mlan-runstate'
FORMAT = 'mlan-runstate/1'
MiB = 1024 * 1024


def parse_size(text: str) -> int:
    """``'16M'``, ``'16MiB'``, ``'512K'``, ``'1G'`` (powers of 1024, as ``split -b``) or a byte count."""
    m = re.fullmatch(r'\s*(\d+)\s*([kKmMgG]?)(i?[bB])?\s*', str(text))
    if not m or int(m.group(1)) < 1:
        raise argparse.ArgumentTypeError(f"expected a size such as 16M, 512K or 1000000, got {text!r}")
    return int(m.group(1)) * {'': 1, 'k': 1024, 'm': MiB, 'g': 1024 * MiB}[m.group(2).lower()]


def _files(run_dir: Path) -> List[Path]:
    """The run folder's regular files, sorted; hidden files (atomic writers' temp files) are left out."""
    out = []
    for root, dirs, names in os.walk(run_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
        for n in sorted(names):
            p = Path(root) / n
            if not n.startswith('.') and p.is_file() and not p.is_symlink():
                out.append(p)
    return out


def _models(run_dir: Path) -> Dict[str, Any]:
    """Each model's progress, from mlan-train-many's ``many.json`` when there is one (informational)."""
    try:
        state = json.loads((run_dir / 'many.json').read_text(encoding='utf-8'))
        return {k: dict(epochs_done=v.get('epochs_done'), epochs=v.get('epochs'))
                for k, v in state.get('models', {}).items()}
    except (OSError, ValueError, AttributeError):
        return {}


def pack(run_dir: os.PathLike, out_dir: os.PathLike, name: str = 'state', max_part_size: int = 16 * MiB,
         max_parts: int = 7) -> Dict[str, Any]:
    """Write ``run_dir`` as ``out_dir/<name>.tar.partNN`` (each at most ``max_part_size`` bytes) and
    ``out_dir/<name>.manifest.json``; returns the manifest. UsageError if more than ``max_parts`` parts."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not run_dir.is_dir():
        raise UsageError(f"pack: run folder not found: {run_dir}")
    files = _files(run_dir)
    if not files:
        raise UsageError(f"pack: {run_dir} holds no files")
    buf = io.BytesIO()
    entries = []
    with tarfile.open(fileobj=buf, mode='w', format=tarfile.PAX_FORMAT) as tf:
        for p in files:
            rel = p.relative_to(run_dir).as_posix()
            data = p.read_bytes()
            info = tarfile.TarInfo(rel)
            info.size, info.mode, info.mtime = len(data), 0o644, int(p.stat().st_mtime)
            tf.addfile(info, io.BytesIO(data))
            entries.append(dict(path=rel, bytes=len(data), sha256=hashlib.sha256(data).hexdigest()))
    blob = buf.getvalue()
    n_parts = max(1, -(-len(blob) // max_part_size))
    if n_parts > max_parts:
        raise UsageError(f"pack: the state is {len(blob) / MiB:.1f} MiB, {n_parts} parts of at most "
                         f"{max_part_size / MiB:.2f} MiB, but at most {max_parts} parts may be written "
                         f"(--max-parts); raise --max-part-size or pack less")
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob(f'{name}.tar.part*'):
        old.unlink()  # parts of an earlier pack would look like ours
    parts = []
    for i in range(n_parts):
        chunk = blob[i * max_part_size:(i + 1) * max_part_size]
        fname = f'{name}.tar.part{i:02d}'
        atomic_write_bytes(out_dir / fname, chunk)
        parts.append(dict(file=fname, bytes=len(chunk), sha256=hashlib.sha256(chunk).hexdigest()))
    manifest = dict(format=FORMAT, name=name, created=time.strftime('%Y-%m-%dT%H:%M:%S'), source=str(run_dir),
                    bytes=len(blob), sha256=hashlib.sha256(blob).hexdigest(), max_part_size=max_part_size,
                    parts=parts, files=entries, models=_models(run_dir))
    atomic_write_text(out_dir / f'{name}.manifest.json', json.dumps(manifest, indent=2))  # last: marks completion
    return manifest


def _read_manifest(parts_dir: Path, name: str) -> Dict[str, Any]:
    path = parts_dir / f'{name}.manifest.json'
    if not path.is_file():
        raise UsageError(f"no manifest {path} (was the pack complete, and is --name right?)")
    try:
        manifest = json.loads(path.read_text(encoding='utf-8'))
    except ValueError as e:
        raise UsageError(f"manifest {path} is not JSON: {e}") from e
    if not isinstance(manifest, dict) or manifest.get('format') != FORMAT:
        raise UsageError(f"manifest {path} is not an {FORMAT} manifest")
    return manifest


def verify(parts_dir: os.PathLike, name: str = 'state') -> Dict[str, Any]:
    """Check that every part named by the manifest is there with its size and sha256; returns the manifest."""
    parts_dir = Path(parts_dir)
    manifest = _read_manifest(parts_dir, name)
    missing = [p['file'] for p in manifest['parts'] if not (parts_dir / p['file']).is_file()]
    if missing:
        raise UsageError(f"{len(missing)} of {len(manifest['parts'])} parts missing in {parts_dir}: "
                         f"{', '.join(missing)}")
    for p in manifest['parts']:
        path = parts_dir / p['file']
        size = path.stat().st_size
        if size != p['bytes']:
            raise UsageError(f"part {path} has {size} bytes, the manifest says {p['bytes']} (truncated or replaced)")
        digest = sha256_file(path)
        if digest != p['sha256']:
            raise UsageError(f"part {path} is corrupt: sha256 {digest}, the manifest says {p['sha256']}")
    return manifest


def unpack(parts_dir: os.PathLike, dest: os.PathLike, name: str = 'state') -> Dict[str, Any]:
    """Verify the parts, rebuild the tar, check every file's sha256, and swap the result in as ``dest``."""
    parts_dir, dest = Path(parts_dir), Path(dest)
    manifest = verify(parts_dir, name)
    h = hashlib.sha256()
    blob = bytearray()
    for p in manifest['parts']:
        chunk = (parts_dir / p['file']).read_bytes()
        h.update(chunk)
        blob += chunk
    if h.hexdigest() != manifest['sha256']:
        raise UsageError(f"the joined parts in {parts_dir} do not give the packed tar (sha256 mismatch)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{dest.name}.unpack-', dir=dest.parent))
    try:
        with tarfile.open(fileobj=io.BytesIO(bytes(blob)), mode='r') as tf:
            try:
                tf.extractall(tmp, filter='data')
            except TypeError:  # Python without tarfile filters: the names were checked below anyway
                tf.extractall(tmp)
        for e in manifest['files']:
            path = tmp / e['path']
            if not path.is_file() or sha256_file(path) != e['sha256']:
                raise UsageError(f"unpacked file {e['path']} does not match the manifest")
        old = None
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f'.{dest.name}.old-', dir=dest.parent))
            os.replace(dest, old / dest.name)
        os.replace(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return manifest


# ----------------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split('\n\n')[0])
    sub = p.add_subparsers(dest='cmd', required=True)
    sp = sub.add_parser('pack', help='write RUN_DIR as parts + manifest into OUT_DIR')
    sp.add_argument('run_dir')
    sp.add_argument('out_dir')
    sp.add_argument('--max-part-size', type=parse_size, default=16 * MiB, help='bytes per part (16M, 512K, ...)')
    sp.add_argument('--max-parts', type=int, default=7, help='refuse to write more parts than this')
    sp.add_argument('--name', default='state', help='file name prefix')
    sp = sub.add_parser('unpack', help='verify the parts in PARTS_DIR and replace DEST with their content')
    sp.add_argument('parts_dir')
    sp.add_argument('dest')
    sp.add_argument('--name', default='state')
    sp = sub.add_parser('verify', help='only check the parts in PARTS_DIR against their manifest')
    sp.add_argument('parts_dir')
    sp.add_argument('--name', default='state')
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def run():
        if args.cmd == 'pack':
            m = pack(args.run_dir, args.out_dir, args.name, args.max_part_size, args.max_parts)
            print(f"packed {len(m['files'])} files, {m['bytes'] / MiB:.2f} MiB, into {len(m['parts'])} part(s) "
                  f"+ {args.name}.manifest.json in {args.out_dir}")
        elif args.cmd == 'unpack':
            m = unpack(args.parts_dir, args.dest, args.name)
            print(f"unpacked {len(m['files'])} files ({m['bytes'] / MiB:.2f} MiB, sha256 checked) into {args.dest}")
        else:
            m = verify(args.parts_dir, args.name)
            print(f"{len(m['parts'])} part(s) OK: {m['bytes'] / MiB:.2f} MiB, {len(m['files'])} files")
        for model, st in sorted(m.get('models', {}).items()):
            print(f"  {model}: {st.get('epochs_done')}/{st.get('epochs')} epochs")
        return 0

    return run_cli(PROG, run)


if __name__ == '__main__':
    sys.exit(main())
