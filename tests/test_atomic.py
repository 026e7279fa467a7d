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
    with pytest.raises(ValueError, match='expected torch.Tensor'):  # safetensors refuses: the old weights stay
        atomic.atomic_save_file({'w': 'not a tensor'}, weights)
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
