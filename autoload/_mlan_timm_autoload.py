"""Register the mlan_timm models with timm as soon as ``timm`` is imported.

timm has no plugin discovery: ``timm.create_model("mlan_resnet20_cifar10")``
needs ``import mlan_timm`` first. ``mlan_timm_autoload.pth`` (site-packages
root) imports this module at interpreter start; it only puts a one-shot finder
on ``sys.meta_path`` (torch/timm are NOT imported then). When the program
imports ``timm``, the finder removes itself, lets timm's ``__init__`` run, then
imports ``mlan_timm`` (registering the models). ``MLAN_TIMM_AUTOLOAD=0`` (or
false/no/off) disables it; hook failures only warn, never break ``import timm``.
"""
import os
import sys


class _TimmImportHook:
    """Meta-path finder that fires once, on the import of the ``timm`` package."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "timm":
            return None
        _uninstall()  # one shot: the lookup below and later ones skip this finder
        try:
            import importlib.util
            spec = importlib.util.find_spec("timm")
            loader = getattr(spec, "loader", None)
            exec_timm = getattr(loader, "exec_module", None)
            if exec_timm is not None:
                def exec_module(module):
                    del loader.exec_module  # back to the loader's own method
                    exec_timm(module)  # timm's own errors propagate unchanged
                    _register()

                loader.exec_module = exec_module
            return spec
        except Exception as exc:  # never let the hook break ``import timm``
            _warn(f"could not hook the import of timm ({exc!r})")
            return None


def _register():
    try:
        import mlan_timm  # noqa: F401  (importing it registers the models)
    except Exception as exc:
        _warn(f"`import mlan_timm` failed ({exc!r})")


def _warn(message):
    import warnings
    warnings.warn(f"mlan-timm autoload: {message}; MLAN_TIMM_AUTOLOAD=0 disables it", RuntimeWarning, 3)


def _uninstall():
    sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != "_TimmImportHook"]


if os.environ.get("MLAN_TIMM_AUTOLOAD", "1").strip().lower() not in ("0", "false", "no", "off"):
    _uninstall()  # idempotent if imported twice (e.g. from two site dirs)
    if "timm" not in sys.modules:
        sys.meta_path.insert(0, _TimmImportHook())
