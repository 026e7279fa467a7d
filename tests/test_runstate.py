"""mlan-runstate: pack -> unpack is bit-identical, parts respect the size limit, the manifest's sha256 catch
missing and corrupted parts, and unpack swaps the destination atomically."""
import json
import os

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
