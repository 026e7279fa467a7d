"""The autoload hook: ``import timm`` alone registers the mlan_timm models.

Every check runs in a fresh interpreter (subprocess), because the hook acts at
interpreter start (``mlan_timm_autoload.pth``) and on the first ``import timm``.
The ``installed`` tests use the current environment's (editable) install; the
wheel test builds a real wheel and installs it into a throwaway venv.
"""
import json
import os
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HOOK_SRC = REPO / "autoload" / "_mlan_timm_autoload.py"
# A few names of the zoo contract: {prefix}resnet{14,20,26,32}_cifar{10,100}.
ZOO_SAMPLE = {"mlan_resnet20_cifar10", "mlan_resnet14_cifar100", "mlan_v2_resnet32_cifar10"}

# Prints, as JSON, what a fresh interpreter saw at start and after a bare ``import timm``.
PROBE = textwrap.dedent("""
    import json, sys
    start = {"torch": "torch" in sys.modules, "timm": "timm" in sys.modules,
             "hook": any(type(f).__name__ == "_TimmImportHook" for f in sys.meta_path)}
    import timm
    hook = sys.modules.get("_mlan_timm_autoload")
    print(json.dumps({"start": start, "mlan_timm_loaded": "mlan_timm" in sys.modules,
        "hook_left": any(type(f).__name__ == "_TimmImportHook" for f in sys.meta_path),
        "hook_file": getattr(hook, "__file__", None),
        "mlan_timm_file": getattr(sys.modules.get("mlan_timm"), "__file__", None),
        "models": timm.list_models("mlan_*")}))
""")


def run_python(code, python=sys.executable, env_extra=None, cwd=None, flags=()):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLAN_TIMM_AUTOLOAD")}
    env.update(env_extra or {})
    proc = subprocess.run([str(python), *flags, "-c", code], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)
    assert proc.returncode == 0, f"subprocess failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return proc


def probe(extra="", **kwargs):
    """Run PROBE (then ``extra`` code, whose output comes first) and return its JSON and stderr."""
    proc = run_python(PROBE.replace("print(json.dumps(", extra + "\nprint(json.dumps(", 1), **kwargs)
    *extra_out, last = proc.stdout.strip().splitlines()
    return json.loads(last), proc.stderr, extra_out


@pytest.fixture(scope="module")
def installed_hook():
    """The hook module of the current environment; it must be the repo's version."""
    proc = run_python("import _mlan_timm_autoload as m; print(m.__file__)")
    path = Path(proc.stdout.strip())
    if path.read_bytes() != HOOK_SRC.read_bytes():
        pytest.fail(f"{path} differs from {HOOK_SRC}: the install is stale, re-run `pip install -e .`")
    return path


def test_import_timm_alone_registers_models(installed_hook, tmp_path):
    out, _, _ = probe(cwd=tmp_path)
    assert out["start"] == {"torch": False, "timm": False, "hook": True}  # nothing heavy at start
    assert out["mlan_timm_loaded"] and not out["hook_left"]  # fired once, then removed itself
    assert ZOO_SAMPLE <= set(out["models"]), out["models"]


def test_off_switch(installed_hook, tmp_path):
    out, _, _ = probe(cwd=tmp_path, env_extra={"MLAN_TIMM_AUTOLOAD": "0"})
    assert out["start"]["hook"] is False
    assert out["mlan_timm_loaded"] is False and out["models"] == []
    check = "import sys; print([type(f).__name__ for f in sys.meta_path])"
    for value, active in (("Off", False), ("false", False), ("1", True), ("", True)):
        finders = run_python(check, env_extra={"MLAN_TIMM_AUTOLOAD": value}).stdout
        assert ("_TimmImportHook" in finders) is active, (value, finders)


def fake_mlan_timm(tmp_path, body):
    """A stand-in ``mlan_timm`` package put ahead of the real one via PYTHONPATH."""
    pkg = tmp_path / "fake" / "mlan_timm"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent(body))
    return {"PYTHONPATH": str(pkg.parent)}


def test_registration_and_explicit_import_do_not_clash(installed_hook, tmp_path):
    env = fake_mlan_timm(tmp_path, """
        import timm  # importing mlan_timm first triggers the hook from inside mlan_timm
        from timm.models import register_model

        @register_model
        def mlan_fake_probe(**kwargs):
            return None
    """)
    code = "import mlan_timm, timm; print(timm.list_models('mlan_fake*'))"
    proc = run_python(code, env_extra=env, cwd=tmp_path, flags=("-W", "error"))  # no re-registration warning
    assert proc.stdout.strip() == "['mlan_fake_probe']"  # registered exactly once


def test_broken_mlan_timm_only_warns(installed_hook, tmp_path):
    env = fake_mlan_timm(tmp_path, "raise RuntimeError('simulated breakage')\n")
    out, stderr, _ = probe(env_extra=env, cwd=tmp_path)  # `import timm` still succeeds
    assert out["models"] == [] and not out["hook_left"]
    assert "mlan-timm autoload" in stderr and "simulated breakage" in stderr
    assert "MLAN_TIMM_AUTOLOAD=0" in stderr  # the warning says how to turn it off


def test_wheel_install_registers_models(tmp_path):
    """Build a real wheel, install it in a throwaway venv, ``import timm`` lists the zoo."""
    dist = tmp_path / "dist"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
             str(REPO)]
    subprocess.run(build, check=True, timeout=300, capture_output=True)
    (wheel,) = dist.glob("mlan_timm-*.whl")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    pip = [sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", "--no-index", str(wheel)]
    subprocess.run(pip, check=True, timeout=300, capture_output=True)
    purelib = Path(run_python("import sysconfig; print(sysconfig.get_paths()['purelib'])", python=py).stdout.strip())
    # torch/timm come from this environment's site-packages, added as plain paths: its .pth files
    # (e.g. the editable mlan_timm) are NOT processed, so mlan_timm must come from the wheel.
    (purelib / "_parent.pth").write_text("\n".join(site.getsitepackages()) + "\n")

    create = ("import torch; m = timm.create_model('mlan_resnet20_cifar10').eval()\n"
              "with torch.no_grad(): print(tuple(m(torch.zeros(2, 3, 32, 32)).shape))")
    out, _, printed = probe(create, python=py, cwd=tmp_path)
    assert Path(out["mlan_timm_file"]).is_relative_to(venv), out["mlan_timm_file"]
    assert Path(out["hook_file"]).is_relative_to(venv), out["hook_file"]
    assert out["start"] == {"torch": False, "timm": False, "hook": True}
    assert ZOO_SAMPLE <= set(out["models"]), out["models"]
    assert printed == ["(2, 10)"]  # timm.create_model builds a working mlan model
