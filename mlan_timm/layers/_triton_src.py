"""Triton kernels behind :mod:`.gpu_kernels` (imported only where Triton is installed).

Compiled for CUDA tensors; where Triton was imported with ``TRITON_INTERPRET=1`` (the tests on CPU machines), run
by Triton's interpreter on CPU tensors. Every tensor is addressed through its four NCHW strides, so a channel slice
of a larger buffer (a block attention written straight into its group's concatenation) needs no copy. Each program
handles ``BLOCK`` pixels of one image (grid: pixel blocks x batch [x 2 for the layer-attention pair]).
"""
import triton
import triton.language as tl


@triton.jit
def _pixel_block(H, W, BLOCK: tl.constexpr):
    """This program's image ``b`` (grid axis 1, int64 for the offsets) and its ``BLOCK`` pixels (grid axis 0): the
    in-plane mask, rows and columns."""
    b = tl.program_id(1).to(tl.int64)
    p = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    return b, p < H * W, p // W, p % W


@triton.jit
def _shared_mask_at(x_img, sxc, sxh, sxw, w_ptr, b_ptr, C, H, W, h, w, valid,
                    N: tl.constexpr, NP: tl.constexpr, K: tl.constexpr, CB: tl.constexpr, BLOCK: tl.constexpr):
    """SMA's shared mask (eqs. 1-3) at this program's pixels: ``mean_n sigmoid(conv_n(x) + bias_n)`` over ``N``
    convs ``C -> 1`` (weight (N, C, K, K) contiguous, 'same' zero padding), accumulated in float32 as a
    [NP, CB, BLOCK] product summed over the CB channels of a step (NP: N rounded up to a power of two)."""
    n = tl.arange(0, NP)
    n_valid = n < N
    cc = tl.arange(0, CB)
    acc = tl.zeros([NP, BLOCK], dtype=tl.float32)
    for c0 in range(0, C, CB):
        c = c0 + cc
        c_valid = c < C
        for t in tl.static_range(K * K):
            hh = h + (t // K - K // 2)
            ww = w + (t % K - K // 2)
            inside = valid & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
            xv = tl.load(x_img + c[:, None] * sxc + (hh * sxh + ww * sxw)[None, :],
                         mask=c_valid[:, None] & inside[None, :], other=0.0)
            wv = tl.load(w_ptr + n[:, None] * (C * K * K) + c[None, :] * (K * K) + t,
                         mask=n_valid[:, None] & c_valid[None, :], other=0.0)
            acc += tl.sum(wv[:, :, None] * xv[None, :, :], axis=1)
    bias = tl.load(b_ptr + n, mask=n_valid, other=0.0)
    s = tl.where(n_valid[:, None], tl.sigmoid(acc + bias[:, None]), 0.0)
    return tl.sum(s, axis=0) / N


@triton.jit
def _layer_attention(x_img, sxc, sxh, sxw, w_ptr, b_ptr, out_img, soc, soh, sow, C, H, W, h, w, valid,
                     N: tl.constexpr, NP: tl.constexpr, K: tl.constexpr, CB: tl.constexpr, BLOCK: tl.constexpr):
    """``out = x * M`` at this program's pixels, ``M`` SMA's shared mask of ``x``."""
    m = _shared_mask_at(x_img, sxc, sxh, sxw, w_ptr, b_ptr, C, H, W, h, w, valid, N, NP, K, CB, BLOCK)
    cc = tl.arange(0, CB)
    for c0 in range(0, C, CB):
        c = c0 + cc
        both = (c < C)[:, None] & valid[None, :]
        xv = tl.load(x_img + c[:, None] * sxc + (h * sxh + w * sxw)[None, :], mask=both, other=0.0)
        tl.store(out_img + c[:, None] * soc + (h * soh + w * sow)[None, :], xv * m[None, :], mask=both)


@triton.jit
def layer_attention_pair_kernel(x1_ptr, x2_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, out_ptr, C, H, W,
                                s1b, s1c, s1h, s1w, s2b, s2c, s2h, s2w, sob, soc, soh, sow,
                                N: tl.constexpr, NP: tl.constexpr, K: tl.constexpr, CB: tl.constexpr,
                                BLOCK: tl.constexpr):
    """A block's two layer attentions in one launch (grid axis 2 picks the layer): ``T_1(x1)`` into channels
    ``[0, C)`` of ``out``, ``T_2(x2)`` into ``[C, 2C)`` (LA's input, eq. 4, without a concatenation)."""
    b, valid, h, w = _pixel_block(H, W, BLOCK)
    if tl.program_id(2) == 0:
        _layer_attention(x1_ptr + b * s1b, s1c, s1h, s1w, w1_ptr, b1_ptr, out_ptr + b * sob, soc, soh, sow,
                         C, H, W, h, w, valid, N, NP, K, CB, BLOCK)
    else:
        _layer_attention(x2_ptr + b * s2b, s2c, s2h, s2w, w2_ptr, b2_ptr, out_ptr + b * sob + C * soc, soc, soh,
                         sow, C, H, W, h, w, valid, N, NP, K, CB, BLOCK)


@triton.jit
def attend_project_fuse_kernel(src_ptr, mw_ptr, mb_ptr, pw_ptr, feat_ptr, res_ptr, out_ptr, attn_ptr, KIN, C, H, W,
                               ssb, ssc, ssh, ssw, sfb, sfc, sfh, sfw, rsb, rsc, rsh, rsw, sob, soc, soh, sow,
                               sab, sac, sah, saw,
                               N: tl.constexpr, NP: tl.constexpr, K: tl.constexpr, CB: tl.constexpr,
                               CP: tl.constexpr, KB: tl.constexpr, BLOCK: tl.constexpr, STORE_ATTN: tl.constexpr,
                               PRECISION: tl.constexpr):
    """An aggregation attention (LA, eq. 5, or BA, eq. 7) over ``src`` (KIN channels: the concatenation), its 1x1
    projection ``KIN -> C`` (choice A2, weight (C, KIN)), the plus fusion (eq. 8) and ReLU, per pixel:
    ``out = ReLU(feat + M * (P @ src) + res)`` with ``M`` SMA's shared mask of ``src`` (it commutes with the
    projection). With ``STORE_ATTN`` also ``attn = src * M`` (the block attention, into its slice of BA's input).
    The projection runs as ``tl.dot`` over KB-channel steps (``PRECISION``: "ieee" or "tf32")."""
    b, valid, h, w = _pixel_block(H, W, BLOCK)
    src_img = src_ptr + b * ssb
    m = _shared_mask_at(src_img, ssc, ssh, ssw, mw_ptr, mb_ptr, KIN, H, W, h, w, valid, N, NP, K, CB, BLOCK)
    co = tl.arange(0, CP)
    co_valid = co < C
    kk = tl.arange(0, KB)
    acc = tl.zeros([CP, BLOCK], dtype=tl.float32)
    for k0 in range(0, KIN, KB):
        k = k0 + kk
        k_valid = k < KIN
        both = k_valid[:, None] & valid[None, :]
        s = tl.load(src_img + k[:, None] * ssc + (h * ssh + w * ssw)[None, :], mask=both, other=0.0)
        if STORE_ATTN:
            tl.store(attn_ptr + b * sab + k[:, None] * sac + (h * sah + w * saw)[None, :], s * m[None, :],
                     mask=both)
        a = tl.load(pw_ptr + co[:, None] * KIN + k[None, :], mask=co_valid[:, None] & k_valid[None, :], other=0.0)
        acc += tl.dot(a, s, input_precision=PRECISION)
    out_mask = co_valid[:, None] & valid[None, :]
    f = tl.load(feat_ptr + b * sfb + co[:, None] * sfc + (h * sfh + w * sfw)[None, :], mask=out_mask, other=0.0)
    r = tl.load(res_ptr + b * rsb + co[:, None] * rsc + (h * rsh + w * rsw)[None, :], mask=out_mask, other=0.0)
    y = tl.maximum(f + acc * m[None, :] + r, 0.0)
    tl.store(out_ptr + b * sob + co[:, None] * soc + (h * soh + w * sow)[None, :], y, mask=out_mask)
