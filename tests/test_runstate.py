"""mlan-runstate: pack -> unpack is bit-identical, parts respect the size limit, the manifest's sha256 catch
missing and corrupted parts, and unpack swaps the destination atomically."""
import errno
import hashlib
import io
import json
import os
import stat
import tarfile

import pytest

from mlan_timm.tools import runstate


def _run_folder(root, seed=0):
    """A fake mlan-train-many run folder: binary checkpoints and text logs in model folders."""
    rng = __import__('random').Random(seed)
    files = {
        'many.json': json.dumps(dict(models=dict(a=dict(epochs_done=3, epochs=200)))).encode(),
        'a/last.pth': bytes(rng.getrandbits(8) for _ in range(70_000)),
        'a/log.jsonl': b'{"epoch": 0}\n{"epoch": 1}\n',
        'b/last.pth': bytes(rng.getrandbits(8) for _ in range(30_000)),
        'b/args.json': b'{}',
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / 'a' / '.last.pth.123.tmp').write_bytes(b'half-written')  # an atomic writer's leftover: not packed
    return files


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()}


def test_round_trip_is_bit_identical_in_small_parts(tmp_path, capsys):
    files = _run_folder(tmp_path / 'run')
    assert runstate.main(['pack', str(tmp_path / 'run'), str(tmp_path / 'out'), '--max-part-size', '32K']) == 0
    assert 'a: 3/200 epochs' in capsys.readouterr().out
    parts = sorted((tmp_path / 'out').glob('state.tar.part*'))
    assert len(parts) >= 4 and all(p.stat().st_size <= 32 * 1024 for p in parts)
    manifest = json.loads((tmp_path / 'out' / 'state.manifest.json').read_text())
    assert [p['file'] for p in manifest['parts']] == [p.name for p in parts]
    assert all(len(p['sha256']) == 64 for p in manifest['parts']) and len(manifest['sha256']) == 64
    assert sorted(f['path'] for f in manifest['files']) == sorted(files)
    dest = tmp_path / 'repo' / 'runs' / 'state'
    dest.mkdir(parents=True)
    (dest / 'stale.txt').write_text('from the previous state')  # only the latest state is kept
    assert runstate.main(['unpack', str(tmp_path / 'out'), str(dest)]) == 0
    assert _tree(dest) == files
    assert sorted(os.listdir(dest.parent)) == ['state']  # no temp folders left behind


def test_missing_or_corrupt_part_is_a_clear_error_and_leaves_dest_alone(tmp_path, capsys):
    _run_folder(tmp_path / 'run')
    runstate.pack(tmp_path / 'run', tmp_path / 'out', max_part_size=40_000)
    dest = tmp_path / 'dest'
    dest.mkdir()
    (dest / 'keep.txt').write_text('old state')
    part = tmp_path / 'out' / 'state.tar.part01'
    data = part.read_bytes()
    part.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    assert runstate.main(['unpack', str(tmp_path / 'out'), str(dest)]) == 2
    err = capsys.readouterr().err
    assert err.startswith('mlan-runstate: error: part ') and 'state.tar.part01 is corrupt: sha256' in err
    part.write_bytes(data[:-1])
    assert runstate.main(['verify', str(tmp_path / 'out')]) == 2
    assert 'has 39999 bytes, the manifest says 40000' in capsys.readouterr().err
    part.unlink()
    assert runstate.main(['unpack', str(tmp_path / 'out'), str(dest)]) == 2
    err = capsys.readouterr().err
    assert '1 of 3 parts missing' in err and err.rstrip().endswith('state.tar.part01')
    (tmp_path / 'out' / 'state.manifest.json').unlink()
    assert runstate.main(['verify', str(tmp_path / 'out')]) == 2
    assert 'no manifest' in capsys.readouterr().err
    assert _tree(dest) == {'keep.txt': b'old state'}


def test_too_many_parts_and_bad_sizes(tmp_path, capsys):
    _run_folder(tmp_path / 'run')
    assert runstate.main(['pack', str(tmp_path / 'run'), str(tmp_path / 'out'), '--max-part-size', '10K',
                          '--max-parts', '3']) == 2
    assert 'at most 3 parts may be written' in capsys.readouterr().err
    assert not (tmp_path / 'out' / 'state.manifest.json').exists()
    assert runstate.parse_size('16M') == runstate.parse_size('16MiB') == 16 * 1024 * 1024
    assert runstate.parse_size('512k') == 512 * 1024 and runstate.parse_size('1000') == 1000
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        runstate.main(['pack', 'a', 'b', '--max-part-size', '16 MB please'])
    assert e.value.code == 2 and "expected a size such as 16M, 512K or 1000000, got '16 MB please'" in \
        capsys.readouterr().err
    assert runstate.main(['pack', str(tmp_path / 'nowhere'), str(tmp_path / 'out')]) == 2
    assert 'run folder not found' in capsys.readouterr().err


def _pack_tree(out):
    """Every entry of the pack folder (hidden temp files and folders included) with the bytes of the files."""
    return {p.relative_to(out).as_posix(): p.read_bytes() if p.is_file() else None for p in sorted(out.rglob('*'))}


def _one_line_error(capsys, *fragments):
    err = capsys.readouterr().err
    assert err.startswith('mlan-runstate: error: ') and err.count('\n') == 1 and 'Traceback' not in err, err
    for f in fragments:
        assert f in err, err
    return err


def _old_pack_and_new_run(tmp_path):
    """A pack of run folder ``run`` in ``out`` (4 parts), then the run folder changed, as a later session would."""
    old_files = _run_folder(tmp_path / 'run', seed=0)
    runstate.pack(tmp_path / 'run', tmp_path / 'out', max_part_size=32 * 1024)
    _run_folder(tmp_path / 'run', seed=1)
    return old_files, _pack_tree(tmp_path / 'out')


def test_pack_failing_midway_on_a_full_disk_keeps_the_previous_pack(tmp_path, capsys, monkeypatch):
    old_files, before = _old_pack_and_new_run(tmp_path)
    assert len([n for n in before if '.tar.part' in n]) == 4
    real_open, writes = open, []

    def full_disk_open(path, mode='r', *args, **kwargs):
        if 'w' in mode:
            writes.append(path)
            if len(writes) == 2:  # the second part: created, then the disk is full
                real_open(path, mode).close()
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(runstate, 'open', full_disk_open, raising=False)
    assert runstate.main(['pack', str(tmp_path / 'run'), str(tmp_path / 'out'), '--max-part-size', '32K']) == 2
    _one_line_error(capsys, f"pack: cannot write {tmp_path / 'out' / 'state.tar.part01'}: No space left on device")
    monkeypatch.undo()
    assert len(writes) == 2
    assert _pack_tree(tmp_path / 'out') == before  # byte for byte, and no temp files or folders left
    assert runstate.main(['verify', str(tmp_path / 'out')]) == 0
    assert runstate.main(['unpack', str(tmp_path / 'out'), str(tmp_path / 'dest')]) == 0
    assert _tree(tmp_path / 'dest') == old_files


def test_pack_with_a_run_file_unreadable_midway_keeps_the_previous_pack(tmp_path, capsys, monkeypatch):
    _, before = _old_pack_and_new_run(tmp_path)
    real_open = open

    def open_b_denied(path, mode='r', *args, **kwargs):
        if str(path).endswith(os.path.join('b', 'last.pth')):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(runstate, 'open', open_b_denied, raising=False)
    assert runstate.main(['pack', str(tmp_path / 'run'), str(tmp_path / 'out')]) == 2
    _one_line_error(capsys, f"pack: cannot read {tmp_path / 'run' / 'b' / 'last.pth'}: Permission denied")
    assert _pack_tree(tmp_path / 'out') == before


def test_pack_failing_while_swapping_in_puts_the_previous_pack_back(tmp_path, capsys, monkeypatch):
    old_files, before = _old_pack_and_new_run(tmp_path)
    real_replace = os.replace

    def replace(src, dst):
        if os.path.basename(os.path.dirname(src)).startswith('.state.pack-') and str(dst).endswith('.json'):
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(dst))  # the new manifest cannot be moved in
        return real_replace(src, dst)

    monkeypatch.setattr(os, 'replace', replace)
    assert runstate.main(['pack', str(tmp_path / 'run'), str(tmp_path / 'out'), '--max-part-size', '64K']) == 2
    _one_line_error(capsys, f"pack: cannot write {tmp_path / 'out'}: Input/output error", 'earlier pack')
    monkeypatch.undo()
    assert _pack_tree(tmp_path / 'out') == before
    assert runstate.main(['unpack', str(tmp_path / 'out'), str(tmp_path / 'dest')]) == 0
    assert _tree(tmp_path / 'dest') == old_files


def test_repack_replaces_every_old_part_and_files_get_the_usual_modes(tmp_path, capsys):
    _, before = _old_pack_and_new_run(tmp_path)
    (tmp_path / 'out' / 'notes.txt').write_text('not ours')
    new_files = _tree(tmp_path / 'run')
    del new_files['a/.last.pth.123.tmp']
    assert runstate.main(['pack', str(tmp_path / 'run'), str(tmp_path / 'out')]) == 0
    after = _pack_tree(tmp_path / 'out')
    assert sorted(after) == ['notes.txt', 'state.manifest.json', 'state.tar.part00']  # old part01..03 gone
    assert after['state.tar.part00'] != before['state.tar.part00']
    umask = os.umask(0)
    os.umask(umask)
    assert all(stat.S_IMODE((tmp_path / 'out' / n).stat().st_mode) == 0o666 & ~umask for n in after)
    assert runstate.main(['unpack', str(tmp_path / 'out'), str(tmp_path / 'dest')]) == 0
    assert _tree(tmp_path / 'dest') == new_files
    assert stat.S_IMODE((tmp_path / 'dest').stat().st_mode) == 0o777 & ~umask


def _hand_made_pack(parts_dir, chunks, **fields):
    """Parts ``chunks`` and a manifest naming them with correct sizes and sha256, updated with ``fields``."""
    parts_dir.mkdir(parents=True, exist_ok=True)
    parts = []
    for i, chunk in enumerate(chunks):
        (parts_dir / f'state.tar.part{i:02d}').write_bytes(chunk)
        parts.append(dict(file=f'state.tar.part{i:02d}', bytes=len(chunk), sha256=hashlib.sha256(chunk).hexdigest()))
    blob = b''.join(chunks)
    manifest = dict(format=runstate.FORMAT, bytes=len(blob), sha256=hashlib.sha256(blob).hexdigest(), parts=parts,
                    files=[], models={})
    manifest.update(fields)
    (parts_dir / 'state.manifest.json').write_text(json.dumps(manifest))
    return manifest


SHA = '0' * 64


@pytest.mark.parametrize('fields, fragment', [
    (dict(parts=None), "'parts' should be a non-empty list of parts, got null"),
    (dict(parts='abc'), "'parts' should be a non-empty list of parts, got \"abc\""),
    (dict(parts=[]), "'parts' should be a non-empty list of parts, got []"),
    (dict(parts=['state.tar.part00']), 'parts[0] should be an object with file, bytes and sha256'),
    (dict(parts=[dict(file='../x', bytes=1, sha256=SHA)]), 'parts[0].file should be a file name in the parts folder'),
    (dict(parts=[dict(file='p', bytes='ten', sha256=SHA)]), 'parts[0].bytes should be a size, got "ten"'),
    (dict(parts=[dict(file='p', bytes=1)]), 'parts[0].sha256 should be a sha256, it is missing'),
    (dict(files='abc'), "'files' should be a list of files, got \"abc\""),
    (dict(files=[dict(path='../evil', sha256=SHA)]), 'files[0].path should be a relative path inside the run'),
    (dict(sha256=None), "'sha256' should be the tar's sha256, got null"),
])
def test_malformed_manifest_is_a_clear_error_and_leaves_dest_alone(tmp_path, capsys, fields, fragment):
    _hand_made_pack(tmp_path / 'parts', [b'x' * 10], **fields)
    (tmp_path / 'dest').mkdir()
    (tmp_path / 'dest' / 'keep.txt').write_text('old state')
    path = tmp_path / 'parts' / 'state.manifest.json'
    for argv in (['verify', str(tmp_path / 'parts')], ['unpack', str(tmp_path / 'parts'), str(tmp_path / 'dest')]):
        assert runstate.main(argv) == 2
        _one_line_error(capsys, f"manifest {path} is malformed: ", fragment)
    assert _tree(tmp_path) == {'dest/keep.txt': b'old state', 'parts/state.manifest.json': path.read_bytes(),
                               'parts/state.tar.part00': b'x' * 10}


def test_manifest_with_only_a_format_is_a_clear_error(tmp_path, capsys):
    (tmp_path / 'state.manifest.json').write_text(json.dumps(dict(format=runstate.FORMAT)))
    assert runstate.main(['verify', str(tmp_path)]) == 2
    _one_line_error(capsys, "is malformed: 'parts' should be a non-empty list of parts, it is missing")


def test_parts_that_are_not_a_tar_or_unsafe_are_refused_and_dest_kept(tmp_path, capsys):
    dest = tmp_path / 'runs' / 'state'
    dest.mkdir(parents=True)
    (dest / 'keep.txt').write_text('old state')
    _hand_made_pack(tmp_path / 'junk', [b'not a tar at all, ' * 100, b'really'])
    assert runstate.main(['verify', str(tmp_path / 'junk')]) == 0  # the parts are the ones the manifest names
    assert runstate.main(['unpack', str(tmp_path / 'junk'), str(dest)]) == 2
    _one_line_error(capsys, f"the joined parts in {tmp_path / 'junk'} are not a tar archive", f'{dest} is left as')
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w') as tf:
        info = tarfile.TarInfo('../escaped.txt')
        info.size = 4
        tf.addfile(info, io.BytesIO(b'evil'))
    _hand_made_pack(tmp_path / 'evil', [buf.getvalue()])
    assert runstate.main(['unpack', str(tmp_path / 'evil'), str(dest)]) == 2
    _one_line_error(capsys, f"the tar in {tmp_path / 'evil'} cannot be unpacked safely")
    assert _tree(dest) == {'keep.txt': b'old state'} and not (dest.parent / 'escaped.txt').exists()
    assert os.listdir(dest.parent) == ['state']  # no temp folders left behind


def test_unwritable_or_wrong_folders_are_clear_errors(tmp_path, capsys):
    _run_folder(tmp_path / 'run')
    runstate.pack(tmp_path / 'run', tmp_path / 'out')
    (tmp_path / 'file').write_bytes(b'a file')
    assert runstate.main(['pack', str(tmp_path / 'run'), str(tmp_path / 'file')]) == 2
    _one_line_error(capsys, f"pack: output folder {tmp_path / 'file'} is a file, not a folder")
    assert runstate.main(['pack', str(tmp_path / 'run'), str(tmp_path / 'file' / 'sub')]) == 2
    _one_line_error(capsys, f"pack: cannot create the output folder {tmp_path / 'file' / 'sub'}: Not a directory")
    assert runstate.main(['unpack', str(tmp_path / 'out'), str(tmp_path / 'file')]) == 2
    _one_line_error(capsys, f"destination {tmp_path / 'file'} is a file, not a folder")
    assert runstate.main(['unpack', str(tmp_path / 'out'), str(tmp_path / 'file' / 'sub' / 'state')]) == 2
    _one_line_error(capsys, f"cannot write the destination {tmp_path / 'file' / 'sub' / 'state'}: Not a directory")
    assert (tmp_path / 'file').read_bytes() == b'a file'
    assert runstate.main(['verify', str(tmp_path / 'nowhere')]) == 2
    _one_line_error(capsys, f"parts folder not found: {tmp_path / 'nowhere'}")
    assert runstate.main(['pack', str(tmp_path / 'run'), str(tmp_path / 'out'), '--name', '../x']) == 2
    _one_line_error(capsys, "pack: --name must be a plain file name prefix, got '../x'")


@pytest.mark.skipif(not os.path.isdir('/proc/self'), reason='needs Linux /proc')
def test_folders_under_proc_are_clear_errors(tmp_path, capsys):
    _run_folder(tmp_path / 'run')
    runstate.pack(tmp_path / 'run', tmp_path / 'out')
    assert runstate.main(['pack', str(tmp_path / 'run'), '/proc/xx']) == 2
    _one_line_error(capsys, 'pack: cannot create the output folder /proc/xx: ')
    assert runstate.main(['unpack', str(tmp_path / 'out'), '/proc/zz']) == 2
    _one_line_error(capsys, 'cannot write the destination /proc/zz: ')
