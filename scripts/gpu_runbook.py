#!/usr/bin/env python3
"""GPU runbook: continue the training of the 16 core models in short GPU sessions (docs/gpu-runbook.md).

Steps of one session (``<here>`` = this machine, ``<gpu>`` = the lent machine, one ``run`` call each):

1. <here> ``plan-data``: cut the wave's dataset tarballs into pieces that fit beside the working tree in one
   call (the tree, committed run state included, travels with every call), one folder ``.gpudata/callK`` each;
2. <gpu>  ``receive .gpudata/callK``, one call per folder, back to back (the machine's /tmp survives only while
   it stays warm);
3. <gpu>  ``session --budget-s S``, in the same call as the last ``receive``: join and check the data, restore
   ``runs/state`` (the committed run state), train the wave with mlan-train-many until it would pass the budget
   (it stops at an epoch boundary), and pack the run state into ``$OUT`` (parts of at most 16 MiB + manifest);
4. <here> ``unpack FILES_AT``: check the parts and replace ``runs/state`` with them; commit it.

``status`` prints every core model's progress; ``dry-run`` runs all of it on CPU with tiny settings.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mlan_timm import zoo  # noqa: E402  (after the path set-up, so the repo's package is used)
from mlan_timm.atomic import atomic_write_text  # noqa: E402
from mlan_timm.pretrained import sha256_file  # noqa: E402
from mlan_timm.tools import runstate  # noqa: E402
from mlan_timm.tools.common import run_cli  # noqa: E402

MiB = 1024 * 1024
#: The core models in issue 9's order: the R20 CIFAR-10 pair, the R20 CIFAR-100 pair, mlan_resnet32_cifar100
#: and its backbone, then the rest.
CORE_ORDER = [zoo.model_name(f, d, ds) for d, ds in ((20, 'cifar10'), (20, 'cifar100'), (32, 'cifar100'))
              for f in ('mlan_', '')]
CORE_ORDER += [zoo.model_name(f, d, ds) for ds in ('cifar10', 'cifar100') for d in (14, 20, 26, 32)
               for f in ('mlan_', '') if zoo.model_name(f, d, ds) not in CORE_ORDER]
#: Waves: one dataset per session (half the data to move), all its models at once (the round-robin CUDA graphs
#: need several models to fill the GPU); in each wave the models keep the order above.
WAVES = {1: [m for m in CORE_ORDER if m.endswith('_cifar10')], 2: [m for m in CORE_ORDER if m.endswith('_cifar100')]}
#: What the device machine takes per call, and what comes back (docs: .library/device/README.md).
CALL_LIMIT = 64 * MiB
PART_LIMIT = 16 * MiB
MAX_BACK_FILES = 8
TRAIN_FLAGS_GPU = ['--data-on-device', '--amp', 'bf16', '--channels-last']
#: ``cpu-session`` trains models on the development machine's CPU instead, in fp32 with the compiled CPU kernels (by
#: default the next pair of issue 9's order, :func:`next_cpu_pair`), and marks their run folders with this file; GPU
#: sessions leave marked models alone (a run keeps one device and precision from start to end).
CPU_MARKER = 'TRAINS_ON_CPU'
TRAIN_FLAGS_CPU = ['--device', 'cpu', '--data-on-device']
CPU_ENV = {'MLAN_TIMM_CPU_KERNELS': '1'}
SPLITS = ('train', 'test')


def _dataset(wave: int) -> str:
    return 'cifar100' if WAVES[wave][0].endswith('_cifar100') else 'cifar10'


def _progress_of(state: Path, model: str) -> int:
    """Epochs done by ``model``'s run in the state folder (lines of its log)."""
    log = state / model / 'log.jsonl'
    return len(log.read_text(encoding='utf-8').splitlines()) if log.is_file() else 0


def _progress(state: Path):
    """{model: epochs done} from each model's log in the run state folder."""
    return {m: _progress_of(state, m) for m in CORE_ORDER}


def _epochs_total(state: Path, model: str, default: int = 200) -> int:
    try:
        return int(json.loads((state / model / 'args.json').read_text(encoding='utf-8'))['epochs'])
    except (OSError, ValueError, KeyError):
        return default


def _on_cpu(state: Path, model: str) -> bool:
    """Whether the model's run in ``state`` belongs to the CPU sessions (``cpu-session`` marked its folder)."""
    return (state / model / CPU_MARKER).is_file()


def _started_on_gpu(state: Path, model: str) -> bool:
    """Whether a GPU session started the model's run in ``state`` (a run folder with ``args.json`` and no
    :data:`CPU_MARKER`): ``cpu-session`` neither picks nor trains it."""
    return (state / model / 'args.json').is_file() and not _on_cpu(state, model)


def next_cpu_pair(state: Path) -> list:
    """What ``cpu-session`` trains without ``--models``: the first pair of issue 9's order (an MLAN model and its
    backbone) with an unfinished run that no GPU session has started; [] when there is none."""
    for i in range(0, len(CORE_ORDER), 2):
        pair = CORE_ORDER[i:i + 2]
        unfinished = any(_progress_of(state, m) < _epochs_total(state, m) for m in pair)
        if unfinished and not any(_started_on_gpu(state, m) for m in pair):
            return pair
    return []


def _gpu_models(state: Path, models) -> list:
    """``models`` without those whose runs train on the CPU (printed)."""
    cpu = [m for m in models if _on_cpu(state, m)]
    if cpu:
        print(f'left to the CPU sessions (cpu-session): {", ".join(cpu)}', flush=True)
    return [m for m in models if m not in cpu]


def _next_wave(state: Path) -> int:
    done = _progress(state)
    for w, models in WAVES.items():
        if any(done[m] < _epochs_total(state, m) for m in models if not _on_cpu(state, m)):
            return w
    return 0


def _tree_bytes() -> int:
    """Bytes of the working tree that travels with every call (tracked + untracked files git does not ignore)."""
    names = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'], cwd=REPO,
                           capture_output=True, check=True).stdout.split(b'\0')
    return sum((REPO / n.decode()).stat().st_size for n in names if n and (REPO / n.decode()).is_file())


# ----------------------------------------------------------------------------------------------------------------
def plan_data(a) -> int:
    """<here>: the wave's train/test tarballs as one byte stream cut into pieces of at most the per-call room."""
    wave = a.wave or _next_wave(Path(a.state))
    if not wave:
        print('every core model has finished: nothing to plan')
        return 0
    ds = _dataset(wave)
    files = [Path(a.data_root) / ds / f'{s}.tar.gz' for s in SPLITS]
    for f in files:
        if not f.is_file():
            sys.exit(f'gpu_runbook: error: {f} not found (--data-root)')
    room = a.call_bytes or CALL_LIMIT - _tree_bytes() - a.margin_mib * MiB
    if room < MiB and not a.call_bytes:
        sys.exit(f'gpu_runbook: error: the working tree leaves {room / MiB:.1f} MiB per call for data')
    out = Path(a.out)
    shutil.rmtree(out, ignore_errors=True)
    total = sum(f.stat().st_size for f in files)
    n_calls = -(-total // room)
    plan = dict(wave=wave, dataset=ds, models=WAVES[wave], room_bytes=room, calls=n_calls,
                files=[dict(name=f'{ds}/{f.name}', bytes=f.stat().st_size, sha256=sha256_file(f)) for f in files])
    k, used, fh = 0, 0, None
    for f in files:
        with open(f, 'rb') as src:
            while True:
                full = fh is None or used >= room
                chunk = src.read(min(room if full else room - used, 8 * MiB))
                if not chunk:
                    break
                if full:  # the next call's folder
                    if fh is not None:
                        fh.close()
                    k += 1
                    (out / f'call{k}').mkdir(parents=True)
                    (out / f'call{k}' / 'plan.json').write_text(json.dumps(plan, indent=2))
                    fh, used = open(out / f'call{k}' / f'piece{k:02d}', 'wb'), 0
                fh.write(chunk)
                used += len(chunk)
    fh.close()
    assert k == n_calls, (k, n_calls)
    print(f'wave {wave} ({ds}: {", ".join(WAVES[wave])}): {total / MiB:.1f} MiB of data, {room / MiB:.1f} MiB per '
          f'call beside the working tree -> {k} call(s): {" ".join(f"{out}/call{i}" for i in range(1, k + 1))}')
    return 0


def receive(a) -> int:
    """<gpu>: keep one call's pieces (and the plan) under the machine's /tmp."""
    src, dest = Path(a.call_dir), Path(a.tmp)
    dest.mkdir(parents=True, exist_ok=True)
    for p in sorted(src.iterdir()):
        shutil.copyfile(p, dest / p.name)
    print(f'received {", ".join(sorted(p.name for p in src.iterdir()))} into {dest}')
    return 0


def _join(tmp: Path) -> Path:
    """The received pieces joined back into the tarballs, checked against the plan; returns the data dir."""
    plan_path = tmp / 'plan.json'
    if not plan_path.is_file():
        sys.exit(f'gpu_runbook: error: no plan.json in {tmp}: run receive for every call folder first')
    plan = json.loads(plan_path.read_text())
    pieces = sorted(tmp.glob('piece*'))
    if len(pieces) != plan['calls']:
        sys.exit(f'gpu_runbook: error: {len(pieces)} of {plan["calls"]} data pieces in {tmp} (the machine may '
                 f'have gone cold between calls: receive all of them again, back to back)')
    data = tmp / 'data'
    stream = (open(p, 'rb') for p in pieces)
    cur = next(stream)
    for f in plan['files']:
        target = data / f['name']
        target.parent.mkdir(parents=True, exist_ok=True)
        left = f['bytes']
        with open(target, 'wb') as out:
            while left:
                chunk = cur.read(min(left, 8 * MiB))
                if not chunk:
                    cur.close()
                    cur = next(stream)
                    continue
                out.write(chunk)
                left -= len(chunk)
        if sha256_file(target) != f['sha256']:
            sys.exit(f'gpu_runbook: error: {target} does not match the sha256 in the plan')
    cur.close()
    return data


def _trainer_env(**extra: str) -> dict:
    """The environment of the trainer subprocess: this repository's package first on the path, unbuffered output
    (the log shows every epoch as it ends), plus ``extra``."""
    return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', ''),
                PYTHONUNBUFFERED='1', **extra)


def session(a, passthrough) -> int:
    """<gpu>: join the data, restore the state, train within the budget, pack the state into --out."""
    t0 = time.perf_counter()
    tmp, state, work = Path(a.tmp), Path(a.state), Path(a.work)
    out = Path(a.out or os.environ.get('OUT') or sys.exit('gpu_runbook: error: --out or $OUT is required'))
    data = _join(tmp)
    plan = json.loads((tmp / 'plan.json').read_text())
    models = _gpu_models(state, a.models or plan['models'])
    if not models:
        sys.exit('gpu_runbook: error: every model asked for trains on the CPU (cpu-session); nothing to do here')
    if work.exists():
        shutil.rmtree(work)
    if state.is_dir():
        shutil.copytree(state, work)
    work.mkdir(parents=True, exist_ok=True)
    left = a.budget_s - (time.perf_counter() - t0) - a.reserve_s
    cmd = [sys.executable, '-m', 'mlan_timm.tools.train_many', '--models', *models, '-o', str(work), '--resume',
           '--data-dir', str(data), '--cache-dir', str(tmp / 'cache'), '--no-progress',
           '--time-budget-s', f'{max(left, 0):.0f}', *(TRAIN_FLAGS_GPU if a.gpu_flags else []), *passthrough]
    print('+', ' '.join(cmd), flush=True)
    env = _trainer_env()
    try:  # the trainer stops itself at an epoch boundary; the hard limit only guards against a bad estimate
        rc = subprocess.run(cmd, cwd=REPO, env=env, timeout=max(left, 0) + a.grace_s).returncode
    except subprocess.TimeoutExpired:
        rc = 'killed at the hard limit (the last completed epoch is kept)'
    print(f'trainer: {rc}', flush=True)
    m = runstate.pack(work, out, max_part_size=a.max_part_size, max_parts=MAX_BACK_FILES - 1)
    print(f'packed {m["bytes"] / MiB:.2f} MiB into {len(m["parts"])} part(s) + manifest in {out}; '
          f'session {time.perf_counter() - t0:.0f} s')
    for model, done in _progress(work).items():
        if model in models:
            print(f'  {model}: {done} epochs')
    return 0 if rc == 0 else 1


def _lock_path(state: Path) -> Path:
    """Held by a running ``cpu-session`` (its pid), beside the state folder (git ignores it)."""
    return state.parent / '.cpu-session.lock'


def _running_cpu_session(state: Path) -> Optional[int]:
    """The pid of a ``cpu-session`` training in ``state`` now, else None (a stale lock is ignored)."""
    try:
        pid = int(_lock_path(state).read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def cpu_session(a, passthrough) -> int:
    """<here>: train the CPU models in ``runs/state`` itself for ``--budget-s`` seconds (fp32, the compiled CPU
    kernels, the dataset held in memory); stops at an epoch boundary. Commit ``runs/state`` afterwards."""
    state = Path(a.state)
    models = a.models or next_cpu_pair(state)
    if not models:
        sys.exit(f'gpu_runbook: error: every pair of the core models in {state} is finished or trains in GPU sessions')
    gpu_runs = [m for m in models if _started_on_gpu(state, m)]
    if gpu_runs:
        sys.exit(f'gpu_runbook: error: {", ".join(gpu_runs)}: already training in GPU sessions (no {CPU_MARKER} in '
                 f'{state}/<model>/); a run keeps one device from start to end')
    pid = _running_cpu_session(state)
    if pid is not None:
        sys.exit(f'gpu_runbook: error: a cpu-session (pid {pid}) is training in {state} already')
    state.mkdir(parents=True, exist_ok=True)
    _lock_path(state).write_text(f'{os.getpid()}\n')
    try:
        for m in models:
            (state / m).mkdir(parents=True, exist_ok=True)
            (state / m / CPU_MARKER).write_text('This run trains in CPU sessions (scripts/gpu_runbook.py '
                                                'cpu-session, fp32, compiled CPU kernels); GPU sessions leave it '
                                                'alone.\n')
        cmd = [sys.executable, '-m', 'mlan_timm.tools.train_many', '--models', *models, '-o', str(state),
               '--resume', '--data-dir', a.data_root, '--no-progress', '--time-budget-s', f'{a.budget_s:.0f}',
               *TRAIN_FLAGS_CPU, *passthrough]
        print('+', ' '.join(f'{k}={v}' for k, v in CPU_ENV.items()), ' '.join(cmd), flush=True)
        env = _trainer_env(**CPU_ENV)
        rc = subprocess.run(cmd, cwd=REPO, env=env).returncode
    finally:
        for m in models:  # a run that never trained an epoch is no CPU run: GPU sessions may take the model
            if not _progress_of(state, m):
                (state / m / CPU_MARKER).unlink(missing_ok=True)
        _lock_path(state).unlink(missing_ok=True)
    print(f'trainer: {rc}', flush=True)
    status(a)
    return 0 if rc == 0 else 1


def _read_jsonl(path: Path) -> list:
    """The JSON objects of a JSON-lines file; a line cut short (a killed writer) or not an object is skipped."""
    rows = []
    for line in (path.read_text(encoding='utf-8').splitlines() if path.is_file() else []):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def unpack(a) -> int:
    """<here>: the parts that came back -> runs/state (checked), replacing the previous state; the runs of the CPU
    sessions (``TRAINS_ON_CPU``) keep their local folders and ``many.jsonl`` rows, which may have trained on here
    meanwhile. Refused while a ``cpu-session`` runs."""
    state = Path(a.state)
    pid = _running_cpu_session(state)
    if pid is not None:
        sys.exit(f'gpu_runbook: error: a cpu-session (pid {pid}) is training in {state}: unpack after it ends')
    cpu_runs = [m for m in CORE_ORDER if _on_cpu(state, m)]
    keep = Path(tempfile.mkdtemp(prefix='.cpu-runs-', dir=state.parent)) if cpu_runs else None
    for model in cpu_runs:  # moved aside (not copied): put back below, or left in `keep` if anything fails
        os.replace(state / model, keep / model)
    local_rows = _read_jsonl(state / 'many.jsonl')
    try:
        m = runstate.unpack(a.files_at, a.state)
    except BaseException:
        for model in cpu_runs:  # runs/state is as it was (unpack swaps only a complete, checked state in)
            os.replace(keep / model, state / model)
        if keep:
            keep.rmdir()
        raise
    for model in cpu_runs:
        shutil.rmtree(state / model, ignore_errors=True)
        os.replace(keep / model, state / model)
    if keep:
        keep.rmdir()
        gpu_rows = _read_jsonl(state / 'many.jsonl')
        sessions = {r.get('session') for r in gpu_rows}
        extra = [r for r in local_rows if r.get('session') not in sessions]
        if extra:  # this machine's CPU epochs since the state the GPU session started from
            atomic_write_text(state / 'many.jsonl', ''.join(json.dumps(r) + '\n' for r in gpu_rows + extra))
        print(f'kept the local runs of the CPU sessions: {", ".join(cpu_runs)}')
    print(f'runs state: {len(m["files"])} files, {m["bytes"] / MiB:.2f} MiB -> {a.state}')
    return status(a)


def _last_session_speed(state: Path) -> dict:
    """``{'session': start, 'models': {model: (median train images/s, median seconds per epoch incl. evaluation,
    epochs)}}`` over the last session of ``state/many.jsonl`` (mlan-train-many's per-epoch record); ``{}``
    without one."""
    import statistics
    rows = _read_jsonl(state / 'many.jsonl')
    if not rows:
        return {}
    last = [r for r in rows if r.get('session') == rows[-1].get('session')]
    out = {}
    for m in dict.fromkeys(m for r in last for m in r.get('models', [])):
        mine = [r for r in last if r.get('models') == [m]]  # one model per record: CPU, one after another
        if mine:
            out[m] = (statistics.median(r['img_per_s'][m] for r in mine), statistics.median(r['time'] for r in mine),
                      len(mine))
    return dict(session=rows[-1].get('session'), models=out)


def status(a) -> int:
    state = Path(a.state)
    for model, done in _progress(state).items():
        print(f'{model:26s} {done:4d}/{_epochs_total(state, model)} epochs{" (CPU)" if _on_cpu(state, model) else ""}')
    speed = _last_session_speed(state)
    if speed.get('models'):
        left = 0.0
        print(f"last session ({speed['session']}), medians over its epochs:")
        for m, (ips, sec, n) in speed['models'].items():
            todo = _epochs_total(state, m) - _progress_of(state, m)
            left += todo * sec
            print(f'  {m}: {ips:,.0f} train images/s, {sec:.1f} s per epoch with evaluation ({n} epochs); '
                  f'{todo} epochs left')
        print(f'  at these speeds, one model after another: {left / 3600:.1f} h of training left')
    w = _next_wave(state)
    print(f'next wave: {w} ({_dataset(w)})' if w else 'all core models finished')
    return 0


def dry_run(a) -> int:
    """Everything above on CPU in a temp folder: tiny synthetic data, two tiny models, two sessions."""
    sys.path.insert(0, str(REPO / 'tests'))
    from conftest import _make_image_folder, _make_tarballs  # the tests' synthetic CIFAR fixtures
    root = Path(a.workdir or tempfile.mkdtemp(prefix='gpu_runbook_dry_'))
    _make_tarballs(_make_image_folder(root / 'synth', train_per_class=2, test_per_class=1), root / 'shared' / 'cifar10')
    repo_state = root / 'repo' / 'runs' / 'state'
    models = ['resnet14_cifar10', 'mlan_resnet14_cifar10']
    trainer = ['--device', 'cpu', '--threads', '1', '--workers', '0', '--data-on-device', '--epochs', '2',
               '--batch-size', '8', '--seed', '3']
    for n, budget in ((1, 0), (2, 10_000)):  # budget 0: one epoch (no estimate yet), then a clean stop
        common = ['--state', str(repo_state), '--tmp', str(root / f'gpu{n}' / 'tmp')]
        plan_args = ['plan-data', '--wave', '1', '--data-root', str(root / 'shared'), '--out', str(root / '.gpudata'),
                     '--call-bytes', '40000', '--state', str(repo_state)]
        assert main(plan_args) == 0
        calls = sorted((root / '.gpudata').iterdir())
        assert len(calls) >= 2, calls
        for c in calls:
            assert main(['receive', str(c), *common]) == 0
        out = root / f'out{n}'
        rc = main(['session', *common, '--work', str(root / f'gpu{n}' / 'runs'), '--out', str(out),
                   '--budget-s', str(budget), '--reserve-s', '0', '--models', *models, '--no-gpu-flags',
                   '--max-part-size', '256K', '--', *trainer])
        assert rc == 0, rc
        back = sorted(out.iterdir())
        assert len(back) <= MAX_BACK_FILES and all(p.stat().st_size <= 256 * 1024 for p in back), back
        assert main(['unpack', str(out), '--state', str(repo_state)]) == 0
        done = _progress(repo_state)
        assert [done[m] for m in models] == [n, n], done
    assert all((repo_state / m / 'model.safetensors').is_file() for m in models)
    # a CPU session trains its model in the state folder itself; GPU sessions and the wave plan leave it alone
    cpu_model = 'resnet20_cifar10'
    assert main(['cpu-session', '--budget-s', '10000', '--models', cpu_model, '--data-root', str(root / 'shared'),
                 '--state', str(repo_state), '--', *[t for t in trainer if t not in ('--device', 'cpu')],
                 '--epochs', '1', '--cache-dir', str(root / 'cpu-cache')]) == 0
    assert _progress(repo_state)[cpu_model] == 1 and _on_cpu(repo_state, cpu_model)
    assert _gpu_models(repo_state, [cpu_model, *models]) == models
    # a GPU session's state coming back (here: the last one again) keeps the CPU run and its many.jsonl rows, but
    # not while a cpu-session runs
    before = (repo_state / cpu_model / 'log.jsonl').read_bytes()
    cpu_rows = [r for r in _read_jsonl(repo_state / 'many.jsonl') if r.get('models') == [cpu_model]]
    _lock_path(repo_state).write_text(f'{os.getpid()}\n')
    try:
        main(['unpack', str(root / 'out2'), '--state', str(repo_state)])
        raise AssertionError('unpack ran while a cpu-session held the lock')
    except SystemExit as e:
        assert 'unpack after it ends' in str(e), e
    _lock_path(repo_state).unlink()
    assert main(['unpack', str(root / 'out2'), '--state', str(repo_state)]) == 0
    assert (repo_state / cpu_model / 'log.jsonl').read_bytes() == before and _on_cpu(repo_state, cpu_model)
    assert cpu_rows and all(r in _read_jsonl(repo_state / 'many.jsonl') for r in cpu_rows)
    print(f'dry run OK in {root}')
    return 0


# ----------------------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough = []
    if '--' in argv:
        i = argv.index('--')
        argv, passthrough = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(prog='gpu_runbook', description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = p.add_subparsers(dest='cmd', required=True)
    state_default = str(REPO / 'runs' / 'state')
    sp = sub.add_parser('plan-data', help='<here>: cut the next wave\'s data into per-call folders')
    sp.add_argument('--wave', type=int, choices=sorted(WAVES), help='default: the first unfinished wave')
    sp.add_argument('--data-root', default=str(REPO.parent / 'shared' / 'data'))
    sp.add_argument('--out', default=str(REPO / '.gpudata'))
    sp.add_argument('--margin-mib', type=int, default=2, help='room left free in every call')
    sp.add_argument('--call-bytes', type=int, default=None, help='data bytes per call (default: from the tree)')
    sp.add_argument('--state', default=state_default)
    sp = sub.add_parser('receive', help='<gpu>: keep one call folder\'s data under --tmp')
    sp.add_argument('call_dir')
    sp.add_argument('--tmp', default='/tmp/gpudata')
    sp.add_argument('--state', default=state_default)
    sp = sub.add_parser('session', help='<gpu>: join data, restore state, train within --budget-s, pack to $OUT',
                        description='Flags after -- go to mlan-train-many (e.g. -- --compile).')
    sp.add_argument('--budget-s', type=float, required=True, help='wall time of this whole command')
    sp.add_argument('--reserve-s', type=float, default=20, help='kept for packing the state at the end')
    sp.add_argument('--grace-s', type=float, default=60, help='hard kill of the trainer this long past its budget')
    sp.add_argument('--models', nargs='+', help='default: the planned wave')
    sp.add_argument('--tmp', default='/tmp/gpudata')
    sp.add_argument('--state', default=state_default)
    sp.add_argument('--work', default='/tmp/runs/state')
    sp.add_argument('--out', default=None, help='default: $OUT')
    sp.add_argument('--max-part-size', type=runstate.parse_size, default=PART_LIMIT)
    sp.add_argument('--gpu-flags', action=argparse.BooleanOptionalAction, default=True,
                    help=f'pass {" ".join(TRAIN_FLAGS_GPU)} to the trainer')
    sp = sub.add_parser('cpu-session', help='<here>: train the CPU models in runs/state within --budget-s',
                        description='Flags after -- go to mlan-train-many.')
    sp.add_argument('--budget-s', type=float, required=True, help='stop at the last epoch boundary before this')
    sp.add_argument('--models', nargs='+', default=None,
                    help='default: the next unfinished pair of the core order that no GPU session started')
    sp.add_argument('--data-root', default=str(REPO.parent / 'shared' / 'data'))
    sp.add_argument('--state', default=state_default)
    sp = sub.add_parser('unpack', help='<here>: check the parts that came back and replace runs/state with them')
    sp.add_argument('files_at')
    sp.add_argument('--state', default=state_default)
    sp = sub.add_parser('status', help='progress of every core model in runs/state')
    sp.add_argument('--state', default=state_default)
    sp = sub.add_parser('dry-run', help='the whole runbook on CPU with tiny settings')
    sp.add_argument('--workdir', default=None)
    a = p.parse_args(argv)
    if passthrough and a.cmd not in ('session', 'cpu-session'):
        p.error('flags after -- are only for session and cpu-session')
    fn = dict(session=lambda: session(a, passthrough), unpack=lambda: unpack(a), status=lambda: status(a),
              receive=lambda: receive(a), **{'plan-data': lambda: plan_data(a), 'dry-run': lambda: dry_run(a),
                                             'cpu-session': lambda: cpu_session(a, passthrough)})
    return run_cli('gpu_runbook', fn[a.cmd])


if __name__ == '__main__':
    sys.exit(main())
