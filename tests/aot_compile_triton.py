"""Compile MLAN's Triton kernels ahead of time for sm_90 (H100 / H200) and print one JSON line per configuration.

    python tests/aot_compile_triton.py                 # the installed Triton
    PYTHONPATH=DIR python tests/aot_compile_triton.py  # another: pip install --no-deps --target DIR triton==3.6.0

Triton's own compiler and ptxas run without a GPU: this checks what Triton's interpreter skips (typing, lowering,
register allocation), not values or speed. It loads ``mlan_timm/layers/_triton_src.py`` by path (no torch or
mlan_timm import), so any Triton version can be tried beside the project's torch. ``tests/test_gpu_kernels.py``
runs it (slow test).
"""
import importlib.util
import json
import os
import sys

import triton
from triton.backends.compiler import GPUTarget

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "mlan_timm", "layers", "_triton_src.py")


def load_kernels():
    spec = importlib.util.spec_from_file_location("_triton_src", SRC)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compile_for_hopper(fn, consts):
    """``fn`` compiled for sm_90 with ``consts`` as its constexprs; pointers float32, other arguments int32."""
    sig = {n: "constexpr" if n in consts else "*fp32" if n.endswith("_ptr") else "i32" for n in fn.arg_names}
    src = triton.compiler.ASTSource(fn=fn, signature=sig,
                                    constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32))
    ptx = kernel.asm["ptx"]
    return dict(cubin_bytes=len(kernel.asm.get("cubin", b"")), spills="ld.local" in ptx or "st.local" in ptx)


def main():
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("aot_compile_triton: unset TRITON_INTERPRET (the interpreter compiles nothing)")
    kernels = load_kernels()
    configs = [("layer_attention_pair_kernel", dict(N=3, NP=4, K=3, CB=cb, BLOCK=block))
               for block, cb in ((128, 8), (64, 16))]  # 32x32 and 8x8 planes (gpu_kernels' choice), 3 masks
    configs += [("attend_project_fuse_kernel", dict(N=3, NP=4, K=3, CB=16, CP=cp, KB=16, BLOCK=64, STORE_ATTN=store,
                                                    PRECISION=precision))
                for precision, cp, store in (("ieee", 16, True), ("tf32", 64, False))]
    for name, consts in configs:
        result = compile_for_hopper(getattr(kernels, name), consts)
        print(json.dumps(dict(kernel=name, triton=triton.__version__, **consts, **result)), flush=True)


if __name__ == "__main__":
    main()
