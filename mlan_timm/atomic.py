"""Atomic file writes: write to a temp file in the target's directory, then ``os.replace`` it into place.

A reader never sees a half-written file, and a crash leaves either the old file or the new one. The temp file
from ``tempfile.mkstemp`` is created with mode 0600; it is chmod-ed to ``0o666 & ~umask`` (what ``open()``
would give) before the rename, so saved checkpoints, logs and weights are readable like any other file. Folders
assembled in a temp directory (``tempfile.mkdtemp`` gives 0700) get ``0o777 & ~umask`` (what ``mkdir`` gives)
through :func:`make_temp_dir` / :func:`honour_umask` before they are renamed into place.
"""
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict

__all__ = ['AtomicWriteError', 'atomic_write', 'atomic_write_bytes', 'atomic_write_text', 'atomic_torch_save',
           'atomic_save_file', 'default_file_mode', 'default_dir_mode', 'make_temp_dir', 'honour_umask']


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def default_file_mode() -> int:
    """``0o666 & ~umask``: the mode ``open(path, 'w')`` gives a new file."""
    return 0o666 & ~_umask()


def default_dir_mode() -> int:
    """``0o777 & ~umask``: the mode ``os.mkdir(path)`` gives a new folder."""
    return 0o777 & ~_umask()


def make_temp_dir(prefix: str, dir: os.PathLike) -> Path:
    """``tempfile.mkdtemp`` in ``dir``, chmod-ed to :func:`default_dir_mode` (mkdtemp's 0700 would survive the
    rename into place and make the final folder private)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=dir))
    os.chmod(tmp, default_dir_mode())
    return tmp


def honour_umask(folder: os.PathLike) -> Path:
    """Give ``folder`` and every file and folder below it the modes a plain ``open``/``mkdir`` would (umask
    applied; executable bits of files kept), undoing the 0600 / 0700 of temp files and ``mkdtemp``."""
    folder = Path(folder)
    fmode, dmode = default_file_mode(), default_dir_mode()
    os.chmod(folder, dmode)
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            os.chmod(os.path.join(root, d), dmode)
        for f in files:
            p = os.path.join(root, f)
            if not os.path.islink(p):
                os.chmod(p, fmode | (os.stat(p).st_mode & 0o111 & dmode))
    return folder


class AtomicWriteError(RuntimeError):
    """A write that failed inside the writer (e.g. torch.save or safetensors on a full disk, whose own messages do not
    name the file); the file it was to replace is unchanged."""


def atomic_write(path: os.PathLike, writer: Callable[[str], None]) -> Path:
    """Call ``writer(tmp_path)`` on a temp file next to ``path``, then move it onto ``path`` atomically.

    A failing writer leaves ``path`` as it was and no temp file; its error names ``path`` (an OSError keeps its
    errno, with ``path`` as the file name; anything else becomes :class:`AtomicWriteError`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    os.close(fd)
    try:
        writer(tmp)
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except OSError as e:
        raise OSError(e.errno, f"{e.strerror or e} (writing {path}, which is unchanged)", str(path)) from e
    except Exception as e:
        lines = str(e).strip().splitlines()
        raise AtomicWriteError(f"cannot write {path} ({path.name} is unchanged): {type(e).__name__}: "
                               f"{lines[0] if lines else ''}") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_bytes(path: os.PathLike, data: bytes) -> Path:
    def _w(tmp):
        with open(tmp, 'wb') as f:
            f.write(data)
    return atomic_write(path, _w)


def atomic_write_text(path: os.PathLike, text: str, encoding: str = 'utf-8') -> Path:
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_torch_save(obj: Any, path: os.PathLike) -> Path:
    import torch
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_save_file(tensors: Dict[str, Any], path: os.PathLike, metadata=None) -> Path:
    """``safetensors.torch.save_file`` written atomically."""
    from safetensors.torch import save_file
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
