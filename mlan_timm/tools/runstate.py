"""mlan-runstate: pack a training run folder into parts of bounded size, and unpack them, checked by sha256.

A training run that spans several short GPU sessions must leave each machine as a few small files (the device
machine hands back at most 8 files of 16 MiB). ``pack`` writes the run folder (every model's ``last.pth`` with
weights, optimizer momentum, scheduler, epoch and RNG state, its logs, and the final weights of finished models)
as one uncompressed tar split into ``<name>.tar.partNN`` files of at most ``--max-part-size`` bytes, plus
``<name>.manifest.json`` with the sha256 and size of every part, of the whole tar and of every file in it.
The new files are written under temp names and swapped in only when complete, manifest last (a failed pack
leaves the previous pack as it was). ``unpack`` checks all of that and replaces the destination folder atomically
(a failed unpack leaves it as it was). Bad input (a malformed manifest, parts that are not a tar, a folder that
cannot be written) is a one-line error and exit status 2::

    mlan-runstate pack runs/many $OUT                 # -> $OUT/state.tar.part00, ..., $OUT/state.manifest.json
    mlan-runstate unpack /path/to/parts runs/state    # verified, then swapped in
    mlan-runstate verify /path/to/parts               # only the checks
"""
import argparse
import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tarfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..atomic import make_temp_dir
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
    """The run folder's regular files, sorted; hidden files (atomic writers' temp files) are left out. OSError when
    a folder cannot be listed (a silently skipped folder would be missing from the pack)."""
    def fail(e: OSError):
        raise e

    out = []
    for root, dirs, names in os.walk(run_dir, onerror=fail):
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


def _why(e: OSError) -> str:
    return e.strerror or _one_line(e)


def _one_line(e: Exception) -> str:
    return ' '.join(str(e).split())


def _write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to the new file ``path`` and flush it to disk (a full disk shows up here, not later)."""
    with open(path, 'wb') as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _swap_in(tmp: Path, out_dir: Path, new_names: List[str], old_names: List[str]) -> None:
    """Move ``old_names`` out of ``out_dir`` (first of them first) and ``new_names`` from ``tmp`` in (last of them
    last); on OSError put everything back as it was, then re-raise. The old files are deleted only on success."""
    backup = make_temp_dir(prefix='.runstate.old-', dir=out_dir)
    moved_old, moved_new = [], []
    try:
        for n in old_names:
            os.replace(out_dir / n, backup / n)
            moved_old.append(n)
        for n in new_names:
            os.replace(tmp / n, out_dir / n)
            moved_new.append(n)
    except OSError as e:
        for src, dst, names in ((out_dir, tmp, moved_new), (backup, out_dir, moved_old)):
            for n in reversed(names):
                with contextlib.suppress(OSError):
                    os.replace(src / n, dst / n)
        try:
            backup.rmdir()  # only when every old file went back: nothing on disk is lost
        except OSError:
            raise UsageError(f"pack: cannot write {out_dir}: {_why(e)}; the earlier pack could not be put back "
                             f"and is kept in {backup}") from e
        raise
    shutil.rmtree(backup, ignore_errors=True)


def pack(run_dir: os.PathLike, out_dir: os.PathLike, name: str = 'state', max_part_size: int = 16 * MiB,
         max_parts: int = 7) -> Dict[str, Any]:
    """Write ``run_dir`` as ``out_dir/<name>.tar.partNN`` (each at most ``max_part_size`` bytes) and
    ``out_dir/<name>.manifest.json``; returns the manifest. UsageError if more than ``max_parts`` parts.

    The new pack is written into a temp folder in ``out_dir`` and swapped in only when complete (manifest last);
    a pack that fails (full disk, unreadable run file) leaves the previous pack in ``out_dir`` as it was."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not name or name in ('.', '..') or '/' in name or os.sep in name:
        raise UsageError(f"pack: --name must be a plain file name prefix, got {name!r}")
    if not run_dir.is_dir():
        raise UsageError(f"pack: run folder not found: {run_dir}")
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"pack: output folder {out_dir} is a file, not a folder")
    try:
        files = _files(run_dir)
    except OSError as e:
        raise UsageError(f"pack: cannot list the run folder {e.filename or run_dir}: {_why(e)}") from e
    if not files:
        raise UsageError(f"pack: {run_dir} holds no files")
    buf = io.BytesIO()
    entries = []
    with tarfile.open(fileobj=buf, mode='w', format=tarfile.PAX_FORMAT) as tf:
        for p in files:
            rel = p.relative_to(run_dir).as_posix()
            try:
                with open(p, 'rb') as f:
                    data = f.read()
                mtime = int(p.stat().st_mtime)
            except OSError as e:
                raise UsageError(f"pack: cannot read {p}: {_why(e)} (nothing was written)") from e
            info = tarfile.TarInfo(rel)
            info.size, info.mode, info.mtime = len(data), 0o644, mtime
            tf.addfile(info, io.BytesIO(data))
            entries.append(dict(path=rel, bytes=len(data), sha256=hashlib.sha256(data).hexdigest()))
    blob = buf.getvalue()
    n_parts = max(1, -(-len(blob) // max_part_size))
    if n_parts > max_parts:
        raise UsageError(f"pack: the state is {len(blob) / MiB:.1f} MiB, {n_parts} parts of at most "
                         f"{max_part_size / MiB:.2f} MiB, but at most {max_parts} parts may be written "
                         f"(--max-parts); raise --max-part-size or pack less")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"pack: cannot create the output folder {out_dir}: {_why(e)}") from e
    manifest_name = f'{name}.manifest.json'
    target, tmp = out_dir, None
    try:
        tmp = make_temp_dir(prefix=f'.{name}.pack-', dir=out_dir)
        parts = []
        for i in range(n_parts):
            chunk = blob[i * max_part_size:(i + 1) * max_part_size]
            fname = f'{name}.tar.part{i:02d}'
            target = out_dir / fname
            _write_file(tmp / fname, chunk)
            parts.append(dict(file=fname, bytes=len(chunk), sha256=hashlib.sha256(chunk).hexdigest()))
        manifest = dict(format=FORMAT, name=name, created=time.strftime('%Y-%m-%dT%H:%M:%S'), source=str(run_dir),
                        bytes=len(blob), sha256=hashlib.sha256(blob).hexdigest(), max_part_size=max_part_size,
                        parts=parts, files=entries, models=_models(run_dir))
        target = out_dir / manifest_name
        _write_file(tmp / manifest_name, json.dumps(manifest, indent=2).encode('utf-8'))
        # the old manifest goes first and the new one comes last, so a manifest never names a mix of parts; parts
        # of an earlier pack would look like ours, so all of them go
        old = [manifest_name] if (out_dir / manifest_name).exists() else []
        old += sorted(n for n in os.listdir(out_dir) if n.startswith(f'{name}.tar.part'))
        target = out_dir
        _swap_in(tmp, out_dir, [p['file'] for p in parts] + [manifest_name], old)
    except OSError as e:
        raise UsageError(f"pack: cannot write {target}: {_why(e)} (any earlier pack in {out_dir} is kept as it "
                         f"was)") from e
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return manifest


_SHA256 = re.compile(r'[0-9a-f]{64}')


def _manifest_problem(manifest: Dict[str, Any]) -> Optional[str]:
    """What is wrong with the fields verify / unpack rely on, or None."""
    def show(d: Dict[str, Any], key: str) -> str:
        return 'it is missing' if key not in d else f"got {json.dumps(d[key])[:60]}"

    def size(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    def digest(v: Any) -> bool:
        return isinstance(v, str) and _SHA256.fullmatch(v) is not None

    for key, ok, what in (('parts', lambda v: isinstance(v, list) and v, 'a non-empty list of parts'),
                          ('files', lambda v: isinstance(v, list), 'a list of files'),
                          ('bytes', size, 'the tar size in bytes'), ('sha256', digest, "the tar's sha256")):
        if not ok(manifest.get(key)):
            return f"'{key}' should be {what}, {show(manifest, key)}"
    for i, p in enumerate(manifest['parts']):
        if not isinstance(p, dict):
            return f"parts[{i}] should be an object with file, bytes and sha256, got {json.dumps(p)[:60]}"
        f = p.get('file')
        if not isinstance(f, str) or f in ('', '.', '..') or '/' in f or '\\' in f:
            return f"parts[{i}].file should be a file name in the parts folder, {show(p, 'file')}"
        if not size(p.get('bytes')) or not digest(p.get('sha256')):
            bad = 'bytes' if not size(p.get('bytes')) else 'sha256'
            return f"parts[{i}].{bad} should be {'a size' if bad == 'bytes' else 'a sha256'}, {show(p, bad)}"
    for i, e in enumerate(manifest['files']):
        path = e.get('path') if isinstance(e, dict) else None
        if not isinstance(path, str) or not path or path.startswith('/') or '..' in path.split('/'):
            return f"files[{i}].path should be a relative path inside the run folder, got {json.dumps(e)[:60]}"
        if not digest(e.get('sha256')):
            return f"files[{i}].sha256 should be a sha256, {show(e, 'sha256')}"
    return None


def _read_manifest(parts_dir: Path, name: str) -> Dict[str, Any]:
    path = parts_dir / f'{name}.manifest.json'
    if not parts_dir.is_dir():
        raise UsageError(f"parts folder not found: {parts_dir}")
    if not path.is_file():
        raise UsageError(f"no manifest {path} (was the pack complete, and is --name right?)")
    try:
        manifest = json.loads(path.read_text(encoding='utf-8'))
    except OSError as e:
        raise UsageError(f"cannot read the manifest {path}: {_why(e)}") from e
    except ValueError as e:
        raise UsageError(f"manifest {path} is not JSON: {e}") from e
    if not isinstance(manifest, dict) or manifest.get('format') != FORMAT:
        raise UsageError(f"manifest {path} is not an {FORMAT} manifest")
    problem = _manifest_problem(manifest)
    if problem:
        raise UsageError(f"manifest {path} is malformed: {problem}")
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
        try:
            size = path.stat().st_size
            digest = sha256_file(path) if size == p['bytes'] else None
        except OSError as e:
            raise UsageError(f"cannot read part {path}: {_why(e)}") from e
        if size != p['bytes']:
            raise UsageError(f"part {path} has {size} bytes, the manifest says {p['bytes']} (truncated or replaced)")
        if digest != p['sha256']:
            raise UsageError(f"part {path} is corrupt: sha256 {digest}, the manifest says {p['sha256']}")
    return manifest


def unpack(parts_dir: os.PathLike, dest: os.PathLike, name: str = 'state') -> Dict[str, Any]:
    """Verify the parts, rebuild the tar, check every file's sha256, and swap the result in as ``dest``."""
    parts_dir, dest = Path(parts_dir), Path(dest)
    if dest.exists() and not dest.is_dir():
        raise UsageError(f"destination {dest} is a file, not a folder")
    manifest = verify(parts_dir, name)
    h = hashlib.sha256()
    blob = bytearray()
    for p in manifest['parts']:
        try:
            chunk = (parts_dir / p['file']).read_bytes()
        except OSError as e:
            raise UsageError(f"cannot read part {parts_dir / p['file']}: {_why(e)}") from e
        h.update(chunk)
        blob += chunk
    if h.hexdigest() != manifest['sha256']:
        raise UsageError(f"the joined parts in {parts_dir} do not give the packed tar (sha256 mismatch)")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = make_temp_dir(prefix=f'.{dest.name}.unpack-', dir=dest.parent)
    except OSError as e:
        raise UsageError(f"cannot write the destination {dest}: {_why(e)}") from e
    try:
        try:
            with tarfile.open(fileobj=io.BytesIO(bytes(blob)), mode='r:') as tf:  # pack writes it uncompressed
                try:
                    tf.extractall(tmp, filter='data')
                except TypeError:  # Python without tarfile filters: the names were checked below anyway
                    tf.extractall(tmp)
        except tarfile.ReadError as e:
            raise UsageError(f"the joined parts in {parts_dir} are not a tar archive ({_one_line(e)}); "
                             f"{dest} is left as it was") from e
        except tarfile.TarError as e:
            raise UsageError(f"the tar in {parts_dir} cannot be unpacked safely ({_one_line(e)}); "
                             f"{dest} is left as it was") from e
        except OSError as e:
            raise UsageError(f"cannot write the destination {dest}: {_why(e)}; {dest} is left as it was") from e
        for e in manifest['files']:
            path = tmp / e['path']
            if not path.is_file() or sha256_file(path) != e['sha256']:
                raise UsageError(f"unpacked file {e['path']} does not match the manifest")
        old = None
        try:
            if dest.exists():
                old = make_temp_dir(prefix=f'.{dest.name}.old-', dir=dest.parent)
                os.replace(dest, old / dest.name)
            os.replace(tmp, dest)
        except OSError as e:
            if old is not None:
                with contextlib.suppress(OSError):
                    if (old / dest.name).exists() and not dest.exists():
                        os.replace(old / dest.name, dest)
                    old.rmdir()  # only when the old destination went back: nothing on disk is lost
            raise UsageError(f"cannot replace the destination {dest}: {_why(e)}") from e
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
        models = m.get('models')
        for model, st in sorted(models.items() if isinstance(models, dict) else []):
            if isinstance(st, dict):
                print(f"  {model}: {st.get('epochs_done')}/{st.get('epochs')} epochs")
        return 0

    def run_or_usage_error():
        try:
            return run()
        except OSError as e:  # one line naming the path, exit 2, whatever the errno (run_cli re-raises some)
            raise UsageError(f"{args.cmd}: {_why(e)}: {e.filename or ''}".rstrip(': ')) from e

    return run_cli(PROG, run_or_usage_error)


if __name__ == '__main__':
    sys.exit(main())
