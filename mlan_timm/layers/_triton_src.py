"""Triton kernel bodies behind :mod:`.gpu_kernels` (imported only where Triton is installed).

They are plain functions here; :mod:`.gpu_kernels` wraps them with ``triton.jit`` (compiled for CUDA tensors, or
in Triton's interpreter for CPU tensors, which the tests use). Every tensor is addressed through its four NCHW
strides, so a channel slice of a larger buffer (a block attention written straight into its group's
concatenation) needs no copy. Each program handles ``BLOCK`` pixels of one image (grid: pixel blocks x batch).
"""
import triton.language as tl


def sma_kernel(x_ptr, w_ptr, b_ptr, mask_ptr, out_ptr, C, H, W,
               sxb, sxc, sxh, sxw, sob, soc, soh, sow,
               N: tl.constexpr, NP: tl.constexpr, K: tl.constexpr, CB: tl.constexpr, BLOCK: tl.constexpr,
               APPLY: tl.constexpr):
    """SMA, eqs. 1-3: ``mask = mean_n sigmoid(conv_n(x) + bias_n)`` over ``N`` convs ``C -> 1`` (k x k, 'same'
    zero padding) into ``mask`` (B, 1, H, W) contiguous; with ``APPLY`` also ``out = x * mask``.

    The convs accumulate in float32 as a [NP, CB, BLOCK] product summed over the CB channels of a step (NP: N
    rounded up to a power of two, the extra rows masked out)."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    hw = H * W
    p = pid * BLOCK + tl.arange(0, BLOCK)
    valid = p < hw
    h = p // W
    w = p % W
    n = tl.arange(0, NP)
    n_valid = n < N
    cc = tl.arange(0, CB)
    x_img = x_ptr + b * sxb
    acc = tl.zeros([NP, BLOCK], dtype=tl.float32)
    for c0 in range(0, C, CB):
        c = c0 + cc
        c_valid = c < C
        for t in tl.static_range(K * K):
            hh = h + (t // K - K // 2)
            ww = w + (t % K - K // 2)
            inside = valid & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
            xv = tl.load(x_img + c[:, None] * sxc + (hh * sxh + ww * sxw)[None, :],
                         mask=c_valid[:, None] & inside[None, :], other=0.0).to(tl.float32)
            wv = tl.load(w_ptr + n[:, None] * (C * K * K) + c[None, :] * (K * K) + t,
                         mask=n_valid[:, None] & c_valid[None, :], other=0.0)
            acc += tl.sum(wv[:, :, None] * xv[None, :, :], axis=1)
    bias = tl.load(b_ptr + n, mask=n_valid, other=0.0)
    s = tl.where(n_valid[:, None], tl.sigmoid(acc + bias[:, None]), 0.0)
    m = tl.sum(s, axis=0) / N
    tl.store(mask_ptr + b * hw + p, m, mask=valid)
    if APPLY:
        out_img = out_ptr + b * sob
        for c0 in range(0, C, CB):
            c = c0 + cc
            both = (c < C)[:, None] & valid[None, :]
            xv = tl.load(x_img + c[:, None] * sxc + (h * sxh + w * sxw)[None, :], mask=both, other=0.0)
            tl.store(out_img + c[:, None] * soc + (h * soh + w * sow)[None, :], xv * m[None, :], mask=both)


def project_fuse_kernel(src_ptr, w_ptr, mask_ptr, feat_ptr, res_ptr, out_ptr, KIN, C, H, W,
                        ssb, ssc, ssh, ssw, sfb, sfc, sfh, sfw, rsb, rsc, rsh, rsw, sob, soc, soh, sow,
                        CP: tl.constexpr, KB: tl.constexpr, BLOCK: tl.constexpr, HAS_MASK: tl.constexpr,
                        PRECISION: tl.constexpr):
    """A 1x1 projection ``KIN -> C`` (weight (C, KIN)) with plus fusion (eq. 8) and the block's ReLU:
    ``out = ReLU(feat + [mask *] (W @ src) + res)`` per pixel; ``mask`` (B, 1, H, W) is a shared mask applied after
    the projection (``W @ (M * g) = M * (W @ g)`` for a mask shared over channels). The projection runs as
    ``tl.dot`` over KB-channel steps (``PRECISION``: "ieee" or "tf32", as PyTorch's cuDNN convs are allowed)."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    hw = H * W
    p = pid * BLOCK + tl.arange(0, BLOCK)
    valid = p < hw
    h = p // W
    w = p % W
    co = tl.arange(0, CP)
    co_valid = co < C
    kk = tl.arange(0, KB)
    src_img = src_ptr + b * ssb
    acc = tl.zeros([CP, BLOCK], dtype=tl.float32)
    for k0 in range(0, KIN, KB):
        k = k0 + kk
        k_valid = k < KIN
        a = tl.load(w_ptr + co[:, None] * KIN + k[None, :], mask=co_valid[:, None] & k_valid[None, :], other=0.0)
        s = tl.load(src_img + k[:, None] * ssc + (h * ssh + w * ssw)[None, :],
                    mask=k_valid[:, None] & valid[None, :], other=0.0)
        acc += tl.dot(a, s, input_precision=PRECISION)
    if HAS_MASK:
        acc = acc * tl.load(mask_ptr + b * hw + p, mask=valid, other=0.0)[None, :]
    both = co_valid[:, None] & valid[None, :]
    f = tl.load(feat_ptr + b * sfb + co[:, None] * sfc + (h * sfh + w * sfw)[None, :], mask=both, other=0.0)
    r = tl.load(res_ptr + b * rsb + co[:, None] * rsc + (h * rsh + w * rsw)[None, :], mask=both, other=0.0)
    y = tl.maximum(f + acc + r, 0.0)
    tl.store(out_ptr + b * sob + co[:, None] * soc + (h * soh + w * sow)[None, :], y, mask=both)
