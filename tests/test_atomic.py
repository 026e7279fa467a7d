"""mlan_timm.atomic: a failed write leaves the old file and no temp file; a good one replaces it whole."""
import os

import pytest
import torch
from safetensors.torch import load_file

from mlan_timm import atomic


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith('.tmp'))


def test_a_writer_that_fails_halfway_leaves_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / 'last.pth'
    atomic.atomic_torch_save({'epoch': 3}, path)
    before = path.read_bytes()

    def half_then_crash(tmp):
        with open(tmp, 'wb') as f:
            f.write(b'half a checkpoint')
        raise KeyboardInterrupt  # e.g. Ctrl-C while torch.save writes

    with pytest.raises(KeyboardInterrupt):
        atomic.atomic_write(path, half_then_crash)
    assert path.read_bytes() == before and torch.load(path)['epoch'] == 3
    assert _leftovers(tmp_path) == []
    weights = tmp_path / 'model.safetensors'
    atomic.atomic_save_file({'w': torch.ones(2)}, weights)
    with pytest.raises(atomic.AtomicWriteError, match=r"\(model.safetensors is unchanged\): "
                                                      r"ValueError: Key `w` is invalid, expected torch.Tensor"):
        atomic.atomic_save_file({'w': 'not a tensor'}, weights)  # safetensors refuses: the old weights stay
    assert torch.equal(load_file(weights)['w'], torch.ones(2)) and _leftovers(tmp_path) == []


def test_a_good_write_replaces_the_file_whole_with_a_plain_files_mode(tmp_path):
    path = tmp_path / 'sub' / 'model.safetensors'  # the folder is created
    atomic.atomic_save_file({'w': torch.ones(2)}, path, metadata={'k': 'v'})
    atomic.atomic_save_file({'w': torch.zeros(3)}, path)
    assert torch.equal(load_file(path)['w'], torch.zeros(3))
    atomic.atomic_write_text(tmp_path / 'log.txt', 'a\n')
    assert (tmp_path / 'log.txt').read_text() == 'a\n'
    old = os.umask(0o027)
    try:
        atomic.atomic_write_bytes(tmp_path / 'b.bin', b'x')
    finally:
        os.umask(old)
    assert (tmp_path / 'b.bin').stat().st_mode & 0o777 == 0o640  # 0o666 & ~umask, not mkstemp's 0o600
    assert _leftovers(tmp_path) == [] and _leftovers(tmp_path / 'sub') == []


def test_honour_umask_gives_temp_folders_plain_modes(tmp_path):
    old = os.umask(0o022)
    try:
        folder = atomic.make_temp_dir('.x.', tmp_path)
        (folder / 'd').mkdir(mode=0o700)
        (folder / 'd' / 'f').write_bytes(b'')
        os.chmod(folder / 'd' / 'f', 0o600)
        (folder / 'run.sh').write_bytes(b'')
        os.chmod(folder / 'run.sh', 0o700)
        atomic.honour_umask(folder)
    finally:
        os.umask(old)
    assert folder.stat().st_mode & 0o777 == 0o755 and (folder / 'd').stat().st_mode & 0o777 == 0o755
    assert (folder / 'd' / 'f').stat().st_mode & 0o777 == 0o644
    assert (folder / 'run.sh').stat().st_mode & 0o777 == 0o744  # its executable bit kept


def test_a_full_disk_names_the_file_it_was_writing(tmp_path):
    """torch.save and safetensors say 'unexpected pos' / 'os error 28' without a file name; an OSError from the
    writer keeps its errno and names the target, not the temp file."""
    import errno
    path = tmp_path / 'last.pth'
    atomic.atomic_write_text(path, 'old')

    def disk_full(tmp):
        raise OSError(errno.ENOSPC, 'No space left on device', tmp)

    def torch_on_a_full_disk(tmp):
        raise RuntimeError('[enforce fail at inline_container.cc:672] . unexpected pos 142912 vs 142808\nmore')

    with pytest.raises(OSError) as e:
        atomic.atomic_write(path, disk_full)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(path)
    assert str(e.value) == f"[Errno 28] No space left on device (writing {path}, which is unchanged): '{path}'"
    with pytest.raises(atomic.AtomicWriteError) as e:
        atomic.atomic_write(path, torch_on_a_full_disk)
    assert str(e.value) == (f"cannot write {path} (last.pth is unchanged): RuntimeError: [enforce fail at "
                            "inline_container.cc:672] . unexpected pos 142912 vs 142808")
    assert path.read_text() == 'old' and _leftovers(tmp_path) == []


def test_the_tools_report_a_failed_write_in_one_line(tmp_path, capsys):
    from mlan_timm.tools.common import run_cli

    def save():
        atomic.atomic_write(tmp_path / 'model.safetensors', lambda tmp: (_ for _ in ()).throw(RuntimeError('boom')))
    assert run_cli('mlan-export', save) == 1
    err = capsys.readouterr().err
    assert err == f"mlan-export: error: cannot write {tmp_path / 'model.safetensors'} (model.safetensors is " \
                  "unchanged): RuntimeError: boom\n"
