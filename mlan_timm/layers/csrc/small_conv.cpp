// Direct 'same' convolutions with few output channels for MLAN's mask convs on CPU (mlan_timm/layers/cpu_kernels.py).
//
// out[n, o, p] (+)= sum_c sum_t w[o, c, t] * x[n, c, p + off(t)], stride 1, odd k x k kernel, zero padding k // 2,
// fp32, NCHW contiguous. The image plane is walked in SIMD vectors of consecutive pixels (a vector may span rows);
// each (vector, tap) pair has a precomputed lane mask, so padding costs masked loads and no copy. Outputs are
// computed in blocks of up to 4 channels with kTileVectors vectors per tile (4 with AVX-512, 2 with AVX2), all
// accumulators in registers: the cost follows the MACs, unlike oneDNN's kernels, which pad the output channels to
// the SIMD width (docs/benchmarks.md).
// Two builds of the same code: AVX-512 (16 lanes, mask registers) and AVX2 + FMA (8 lanes, vmaskmovps), chosen by
// the flags cpu_kernels.py compiles with for the machine; every intrinsic goes through Vec, and the tile sizes
// that must fit the register file (32 vector registers with AVX-512, 16 with AVX2) are per build.
// Only the headers used (not <torch/extension.h>, which pulls in the whole C++ frontend): the build takes about 15 s
// instead of 25 s on the 2-core development machine (README's build-time command, before and after).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/csrc/utils/pybind.h>  // pybind11 with the at::Tensor casters
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <numeric>
#include <type_traits>
#include <vector>

int64_t vector_width();

namespace {

#if defined(__AVX512F__)
#define MLAN_SIMD 1
struct Vec {
  using T = __m512;
  using M = __mmask16;
  static constexpr int L = 16;
  static T zero() { return _mm512_setzero_ps(); }
  static T load(const float* p) { return _mm512_loadu_ps(p); }
  static T mload(M m, const float* p) { return _mm512_maskz_loadu_ps(m, p); }
  static void store(float* p, T v) { _mm512_storeu_ps(p, v); }
  static void stream(float* p, T v) { _mm512_stream_ps(p, v); }  // p 64-byte aligned
  static T fma(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
  static T fnma(T a, T b, T c) { return _mm512_fnmadd_ps(a, b, c); }  // c - a b
  static T add(T a, T b) { return _mm512_add_ps(a, b); }
  static T sub(T a, T b) { return _mm512_sub_ps(a, b); }
  static T mul(T a, T b) { return _mm512_mul_ps(a, b); }
  static T div(T a, T b) { return _mm512_div_ps(a, b); }
  static T max(T a, T b) { return _mm512_max_ps(a, b); }
  static T min(T a, T b) { return _mm512_min_ps(a, b); }
  static T bcast(float v) { return _mm512_set1_ps(v); }
  static M mask(uint32_t bits) { return static_cast<M>(bits); }
  static float hsum(T v) { return _mm512_reduce_add_ps(v); }
  static T round(T v) { return _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static T scale2(T y, T n) { return _mm512_scalef_ps(y, n); }  // y * 2^n, n integral
  static T where_positive(T c, T v) { return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(c, zero(), _CMP_GT_OQ), v); }
};
constexpr int kTileVectors = 4;  // vectors of pixels per conv tile
constexpr int kGradBlock = 3;    // output channels per weight-gradient pass (3 x 9 taps: 27 accumulators)
constexpr int kWideVectors = 4;  // vectors per tile of the projections (forward and input gradient)
#elif defined(__AVX2__) && defined(__FMA__)
#define MLAN_SIMD 1
struct Vec {
  using T = __m256;
  struct M {  // a lane is read where its 32 bits are all ones (a struct: std::vector<__m256i> drops attributes)
    __m256i bits;
  };
  static constexpr int L = 8;
  static T zero() { return _mm256_setzero_ps(); }
  static T load(const float* p) { return _mm256_loadu_ps(p); }
  static T mload(M m, const float* p) { return _mm256_maskload_ps(p, m.bits); }
  static void store(float* p, T v) { _mm256_storeu_ps(p, v); }
  static void stream(float* p, T v) { _mm256_stream_ps(p, v); }  // p 32-byte aligned
  static T fma(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
  static T fnma(T a, T b, T c) { return _mm256_fnmadd_ps(a, b, c); }
  static T add(T a, T b) { return _mm256_add_ps(a, b); }
  static T sub(T a, T b) { return _mm256_sub_ps(a, b); }
  static T mul(T a, T b) { return _mm256_mul_ps(a, b); }
  static T div(T a, T b) { return _mm256_div_ps(a, b); }
  static T max(T a, T b) { return _mm256_max_ps(a, b); }
  static T min(T a, T b) { return _mm256_min_ps(a, b); }
  static T bcast(float v) { return _mm256_set1_ps(v); }
  static M mask(uint32_t bits) {
    alignas(32) int32_t lanes[L];
    for (int l = 0; l < L; ++l) lanes[l] = (bits >> l) & 1 ? -1 : 0;
    return M{_mm256_load_si256(reinterpret_cast<const __m256i*>(lanes))};
  }
  static float hsum(T v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
  }
  static T round(T v) { return _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static T scale2(T y, T n) {  // 2^n from its exponent bits; n in [-127, 127] (exp_ps clamps), 2^-127 as 0
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
  }
  static T where_positive(T c, T v) { return _mm256_and_ps(_mm256_cmp_ps(c, zero(), _CMP_GT_OQ), v); }
};
constexpr int kTileVectors = 2;  // 16 registers: 4 x 2 accumulators, 2 inputs, 2 lane masks, a weight
constexpr int kGradBlock = 1;    // 9 accumulators
constexpr int kWideVectors = 2;
#endif

#if defined(MLAN_SIMD)
constexpr bool kSimd = true;
#else
constexpr bool kSimd = false;
#endif

#if defined(MLAN_SIMD)
#define MLAN_UNROLL _Pragma("GCC unroll 16")  // full unrolling keeps per-tile arrays in registers
constexpr int kOutBlock = 4;     // output channels per block
constexpr int kPlanePad = 16;    // floats between the fused kernel's scratch planes (one 64-byte line)

// Per (vector, tap): the offset of the tap, whether every lane is inside the image, and the lane mask.
struct Taps {
  std::vector<int64_t> offset;
  std::vector<uint8_t> full;
  std::vector<Vec::M> masks;
  int count;

  Taps(int64_t H, int64_t W, int k) : offset(k * k), count(k * k) {
    const int64_t nvec = H * W / Vec::L;
    const int r = k / 2;
    full.resize(nvec * count);
    masks.resize(nvec * count);
    for (int t = 0; t < count; ++t) {
      const int dy = t / k - r, dx = t % k - r;
      offset[t] = dy * W + dx;
      for (int64_t j = 0; j < nvec; ++j) {
        uint32_t bits = 0;
        for (int l = 0; l < Vec::L; ++l) {
          const int64_t p = j * Vec::L + l, h = p / W + dy, w = p % W + dx;
          if (h >= 0 && h < H && w >= 0 && w < W) bits |= 1u << l;
        }
        full[j * count + t] = bits == (1u << Vec::L) - 1;
        masks[j * count + t] = Vec::mask(bits);
      }
    }
  }
  // Pixels p + offset(t) of one channel plane for vector j; zeros outside the image. Masked-off lanes are not read.
  inline Vec::T load(const float* plane, int64_t j, int t) const {
    const float* src = plane + j * Vec::L + offset[t];
    const int64_t m = j * count + t;
    return full[m] ? Vec::load(src) : Vec::mload(masks[m], src);
  }
};

// Input channels per pass of a conv tile over its taps. A tile reads a few cache lines at the same offset in each
// channel plane; planes a multiple of 4 KB apart (32x32 floats) put all of them in the same L1 sets, and more
// lines per set than its ways evict each other between taps. Chunks of channels whose lines share a set at most
// 8 times (L1: 64 sets of 64 bytes) keep a chunk's lines in L1 over its 9 taps; one chunk otherwise (each chunk
// costs its tap loop's setup and exit). xs: the plane stride in floats.
inline int64_t channel_chunk(int64_t C, int64_t xs) {
  const int64_t same_set = xs % 16 == 0 ? std::gcd<int64_t>(xs / 16, 64) : 1;  // planes per 64 sharing a set
  return std::max<int64_t>(C * same_set <= 8 * 64 ? C : 8 * 64 / same_set, 1);
}

// One tile (NV vectors of pixels starting at vector j0) of one block of OB output channels for one image.
// x: the image's C planes; wt: [C][T][O] (O = all output channels); dst: the image's output planes.
template <int OB, int NV>
inline void conv_tile(const float* x, const float* wt, float* dst, int64_t C, int64_t O, int64_t o0, int64_t P,
                      int64_t j0, const Taps& taps, bool accumulate, int64_t xs, int64_t chunk) {
  const int T = taps.count;
  float* out = dst + o0 * P + j0 * Vec::L;
  Vec::T acc[OB][NV];
  MLAN_UNROLL for (int o = 0; o < OB; ++o)
    MLAN_UNROLL for (int v = 0; v < NV; ++v) acc[o][v] = accumulate ? Vec::load(out + o * P + v * Vec::L) : Vec::zero();
  // channel chunks outer (see channel_chunk), then taps, then channels: each tap's lane masks are loaded once per
  // chunk and stay in mask registers
  for (int64_t c0 = 0; c0 < C; c0 += chunk)
  for (int t = 0; t < T; ++t) {
    Vec::M mask[NV];
    MLAN_UNROLL for (int v = 0; v < NV; ++v) mask[v] = taps.masks[(j0 + v) * T + t];
    const float* src = x + j0 * Vec::L + taps.offset[t];
    const float* wtap = wt + t * O + o0;
    for (int64_t c = c0, c_end = std::min(C, c0 + chunk); c < c_end; ++c) {
      Vec::T xv[NV];
      MLAN_UNROLL for (int v = 0; v < NV; ++v) xv[v] = Vec::mload(mask[v], src + c * xs + v * Vec::L);
      const float* wc = wtap + c * T * O;
      MLAN_UNROLL for (int o = 0; o < OB; ++o) {
        const Vec::T wv = Vec::bcast(wc[o]);
        MLAN_UNROLL for (int v = 0; v < NV; ++v) acc[o][v] = Vec::fma(xv[v], wv, acc[o][v]);
      }
    }
  }
  MLAN_UNROLL for (int o = 0; o < OB; ++o)
    MLAN_UNROLL for (int v = 0; v < NV; ++v) Vec::store(out + o * P + v * Vec::L, acc[o][v]);
}

template <int OB, int NV>
void forward_block(const float* x, const float* wt, float* out, int64_t N, int64_t C, int64_t O, int64_t o0,
                   int64_t P, const Taps& taps, bool accumulate) {
  const int64_t tiles = P / Vec::L / NV;
  at::parallel_for(0, N * tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t n = idx / tiles;
      conv_tile<OB, NV>(x + n * C * P, wt, out + n * O * P, C, O, o0, P, (idx % tiles) * NV, taps, accumulate, P,
                        channel_chunk(C, P));
    }
  });
}

// Calls f(std::integral_constant<int, OB>) for a block of ob output channels (1 to kOutBlock): the template
// argument of conv_tile / forward_block.
template <class F>
inline void with_out_block(int64_t ob, F&& f) {
  switch (ob) {
    case 4: f(std::integral_constant<int, 4>()); break;
    case 3: f(std::integral_constant<int, 3>()); break;
    case 2: f(std::integral_constant<int, 2>()); break;
    default: f(std::integral_constant<int, 1>()); break;
  }
}

// Calls f(std::integral_constant<int, OB>, o0) for the weight gradients' blocks of output channels: kGradBlock at a
// time, the remainder as one block of 2 or 1 (only sizes up to kGradBlock are instantiated: with AVX2 every block
// is 1). grad_weight_block and corr_image_block share it.
template <class F>
inline void for_each_grad_block(int64_t O, F&& f) {
  for (int64_t o0 = 0; o0 < O; o0 += kGradBlock) {
    switch (std::min<int64_t>(kGradBlock, O - o0)) {
      case 3: f(std::integral_constant<int, (kGradBlock >= 3 ? 3 : 1)>(), o0); break;
      case 2: f(std::integral_constant<int, (kGradBlock >= 2 ? 2 : 1)>(), o0); break;
      default: f(std::integral_constant<int, 1>(), o0); break;
    }
  }
}

template <int NV>
void forward_all(const float* x, const float* wt, float* out, int64_t N, int64_t C, int64_t O, int64_t P,
                 const Taps& taps, bool accumulate) {
  for (int64_t o0 = 0; o0 < O; o0 += kOutBlock)
    with_out_block(std::min<int64_t>(kOutBlock, O - o0), [&](auto ob) {
      forward_block<decltype(ob)::value, NV>(x, wt, out, N, C, O, o0, P, taps, accumulate);
    });
}

// grad_w[o, c, t] = sum_n sum_p g[n, o, p] * x[n, c, p + off(t)], in blocks of OB output channels; per input
// channel the OB * T accumulators stay in registers (k = 3, kGradBlock outputs: 27 of AVX-512's 32 registers, 9 of
// AVX2's 16) over the
// whole batch: one horizontal sum each, where corr_image (per image) sums once per image, which was up to 1.4x
// slower on 8x8 planes as conv_same_grad_weight (development timing, no project command reproduces it).
template <int OB, int T>
void grad_weight_block(const float* x, const float* g, float* gw, int64_t N, int64_t C, int64_t O, int64_t o0,
                       int64_t P, const Taps& taps) {
  const int64_t nvec = P / Vec::L;
  at::parallel_for(0, C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      Vec::T acc[OB][T];
      MLAN_UNROLL for (int o = 0; o < OB; ++o)
        MLAN_UNROLL for (int t = 0; t < T; ++t) acc[o][t] = Vec::zero();
      for (int64_t n = 0; n < N; ++n) {
        const float* plane = x + (n * C + c) * P;
        const float* gn = g + (n * O + o0) * P;
        for (int64_t j = 0; j < nvec; ++j) {
          Vec::T gv[OB];
          MLAN_UNROLL for (int o = 0; o < OB; ++o) gv[o] = Vec::load(gn + o * P + j * Vec::L);
          MLAN_UNROLL for (int t = 0; t < T; ++t) {
            const Vec::T xv = taps.load(plane, j, t);
            MLAN_UNROLL for (int o = 0; o < OB; ++o) acc[o][t] = Vec::fma(gv[o], xv, acc[o][t]);
          }
        }
      }
      MLAN_UNROLL for (int o = 0; o < OB; ++o)
        MLAN_UNROLL for (int t = 0; t < T; ++t) gw[((o0 + o) * C + c) * T + t] = Vec::hsum(acc[o][t]);
    }
  });
}

template <int T>
void grad_weight_all(const float* x, const float* g, float* gw, int64_t N, int64_t C, int64_t O, int64_t P,
                     const Taps& taps) {
  for_each_grad_block(O, [&](auto ob, int64_t o0) {
    grad_weight_block<decltype(ob)::value, T>(x, g, gw, N, C, O, o0, P, taps);
  });
}
// exp and sigmoid per lane: exp by range reduction to [-ln2/2, ln2/2] and Cephes' expf polynomial, times 2^n
// (Vec::scale2); inputs clamped to [-88, 88].
inline Vec::T exp_ps(Vec::T x) {
  x = Vec::max(Vec::min(x, Vec::bcast(88.0f)), Vec::bcast(-88.0f));
  const Vec::T n = Vec::round(Vec::mul(x, Vec::bcast(1.44269504088896341f)));
  Vec::T r = Vec::fnma(n, Vec::bcast(0.693359375f), x);
  r = Vec::fnma(n, Vec::bcast(-2.12194440e-4f), r);
  Vec::T y = Vec::bcast(1.9875691500e-4f);
  y = Vec::fma(y, r, Vec::bcast(1.3981999507e-3f));
  y = Vec::fma(y, r, Vec::bcast(8.3334519073e-3f));
  y = Vec::fma(y, r, Vec::bcast(4.1665795894e-2f));
  y = Vec::fma(y, r, Vec::bcast(1.6666665459e-1f));
  y = Vec::fma(y, r, Vec::bcast(5.0000001201e-1f));
  y = Vec::fma(y, Vec::mul(r, r), Vec::add(r, Vec::bcast(1.0f)));
  return Vec::scale2(y, n);
}

inline Vec::T sigmoid_ps(Vec::T x) {
  const Vec::T one = Vec::bcast(1.0f);
  return Vec::div(one, Vec::add(one, exp_ps(Vec::sub(Vec::zero(), x))));
}

// Software prefetch (to L2) of one or two arrays of ``bytes``, spread over ``steps`` calls of step(): the kernel
// reads its block input and group-projection sum only at the end of an image, and they come from memory
// (the previous calls wrote them, or PyTorch's convs, long before); fetching them a piece per conv tile earlier in
// the image hides that latency behind the convs' arithmetic.
struct Prefetch {
  const char* a;
  const char* b;  // may be null
  int64_t bytes, per_step, at = 0;
  Prefetch(const float* a_, const float* b_, int64_t floats, int64_t steps)
      : a(reinterpret_cast<const char*>(a_)), b(reinterpret_cast<const char*>(b_)), bytes(floats * 4),
        per_step((bytes + 64 * steps - 1) / (64 * steps) * 64) {}
  inline void step() {
    for (const int64_t end = std::min(bytes, at + per_step); at < end; at += 64) {
      _mm_prefetch(a + at, _MM_HINT_T1);
      if (b != nullptr) _mm_prefetch(b + at, _MM_HINT_T1);
    }
  }
};

// Pixel vectors per conv tile on planes of P pixels: kTileVectors where they divide the plane's vectors, else 1.
inline int64_t tile_vectors(int64_t P) {
  return (P / Vec::L) % kTileVectors == 0 ? kTileVectors : 1;
}

// conv(x) for one image, all O outputs (blocks of up to kOutBlock channels), into or onto dst. xs: the stride of
// x's planes (0: P); pf: a prefetch to advance by a step before each tile.
void conv_image(const float* x, const float* wt, float* dst, int64_t C, int64_t O, int64_t P, const Taps& taps,
                bool accumulate, Prefetch* pf = nullptr, int64_t xs = 0) {
  if (xs == 0) xs = P;
  const int64_t chunk = channel_chunk(C, xs);
  const int64_t nvec = P / Vec::L, step = tile_vectors(P);
  const bool tiled = step == kTileVectors;
  for (int64_t o0 = 0; o0 < O; o0 += kOutBlock)
    with_out_block(std::min<int64_t>(kOutBlock, O - o0), [&](auto ob) {
      constexpr int OB = decltype(ob)::value;
      for (int64_t j0 = 0; j0 < nvec; j0 += step) {
        if (pf != nullptr) pf->step();
        if (tiled) conv_tile<OB, kTileVectors>(x, wt, dst, C, O, o0, P, j0, taps, accumulate, xs, chunk);
        else conv_tile<OB, 1>(x, wt, dst, C, O, o0, P, j0, taps, accumulate, xs, chunk);
      }
    });
}

// mask[p] = mean_o sigmoid(logits[o, p] + bias[o]) (eq. 2), for one image; the sigmoids go to sig (O x P) if given.
void shared_mask(const float* logits, int64_t logit_stride, const float* bias, int64_t O, int64_t P, float* mask,
                 float* sig = nullptr) {
  const Vec::T inv = Vec::bcast(1.0f / static_cast<float>(O));
  for (int64_t j = 0; j < P; j += Vec::L) {
    Vec::T m = Vec::zero();
    for (int64_t o = 0; o < O; ++o) {
      const Vec::T s = sigmoid_ps(Vec::add(Vec::load(logits + o * logit_stride + j), Vec::bcast(bias[o])));
      if (sig != nullptr) Vec::store(sig + o * P + j, s);
      m = Vec::add(m, s);
    }
    Vec::store(mask + j, Vec::mul(m, inv));
  }
}

// dst[c, p] = src[c, p] * mask[p] (a shared mask, broadcast over channels); dst may be src. ss, ds: the plane
// strides of src and dst (0: P).
void apply_mask(const float* src, const float* mask, float* dst, int64_t C, int64_t P, int64_t ss = 0,
                int64_t ds = 0) {
  if (ss == 0) ss = P;
  if (ds == 0) ds = P;
  for (int64_t c = 0; c < C; ++c)
    for (int64_t j = 0; j < P; j += Vec::L)
      Vec::store(dst + c * ds + j, Vec::mul(Vec::load(src + c * ss + j), Vec::load(mask + j)));
}
constexpr int64_t kStreamBytes = int64_t(8) << 20;

// A vector store; ``stream``: non-temporal (the address is 64-byte aligned: PyTorch's CPU allocations are, and
// every plane offset is a multiple of 16 floats), for outputs that no code reads again while they are in cache.
inline void store(float* p, Vec::T v, bool stream) {
  if (stream) Vec::stream(p, v);
  else Vec::store(p, v);
}

// For output channels [co0, co0 + CB) at NV pixel vectors from pixel j: the block projection P_block b and the
// group projection's share P_group b (b = cat(b1, b2); P rows of 2C), then out = ReLU(out2 + P_block b + x) and
// group_proj (+)= P_group b. Each weight broadcast serves NV vectors, each load of b serves CB channels. bs: the
// stride of b's planes.
constexpr int kProjBlock = 2;
template <int CB, int NV>
inline void project_and_fuse(const float* b1, const float* b2, const float* pw, const float* gw, const float* o2,
                             const float* xn, float* out, float* gp, int64_t C, int64_t P, int64_t bs, int64_t co0,
                             int64_t j, bool first, bool stream) {
  Vec::T ab[CB][NV], ag[CB][NV];
  MLAN_UNROLL for (int q = 0; q < CB; ++q)
    MLAN_UNROLL for (int v = 0; v < NV; ++v) {
      ab[q][v] = Vec::zero();
      ag[q][v] = first ? Vec::zero() : Vec::load(gp + (co0 + q) * P + j + v * Vec::L);
    }
  for (int64_t ci = 0; ci < C; ++ci) {
    Vec::T v1[NV], v2[NV];
    MLAN_UNROLL for (int v = 0; v < NV; ++v) {
      v1[v] = Vec::load(b1 + ci * bs + j + v * Vec::L);
      v2[v] = Vec::load(b2 + ci * bs + j + v * Vec::L);
    }
    MLAN_UNROLL for (int q = 0; q < CB; ++q) {
      const float *pr = pw + (co0 + q) * 2 * C, *gr = gw + (co0 + q) * 2 * C;
      const Vec::T p1 = Vec::bcast(pr[ci]), p2 = Vec::bcast(pr[C + ci]), g1 = Vec::bcast(gr[ci]),
                   g2 = Vec::bcast(gr[C + ci]);
      MLAN_UNROLL for (int v = 0; v < NV; ++v) {
        ab[q][v] = Vec::fma(v2[v], p2, Vec::fma(v1[v], p1, ab[q][v]));
        ag[q][v] = Vec::fma(v2[v], g2, Vec::fma(v1[v], g1, ag[q][v]));
      }
    }
  }
  MLAN_UNROLL for (int q = 0; q < CB; ++q)
    MLAN_UNROLL for (int v = 0; v < NV; ++v) {
      const int64_t at = (co0 + q) * P + j + v * Vec::L;
      const Vec::T fused = Vec::add(Vec::add(Vec::load(o2 + at), ab[q][v]), Vec::load(xn + at));
      store(out + at, Vec::max(fused, Vec::zero()), stream);
      store(gp + at, ag[q][v], stream);
    }
}

template <int NV>
inline void project_and_fuse_all(const float* b1, const float* b2, const float* pw, const float* gw, const float* o2,
                                 const float* xn, float* out, float* gp, int64_t C, int64_t P, int64_t bs, bool first,
                                 bool stream) {
  for (int64_t j = 0; j < P; j += NV * Vec::L) {
    int64_t co = 0;
    for (; co + kProjBlock <= C; co += kProjBlock)
      project_and_fuse<kProjBlock, NV>(b1, b2, pw, gw, o2, xn, out, gp, C, P, bs, co, j, first, stream);
    for (; co < C; ++co) project_and_fuse<1, NV>(b1, b2, pw, gw, o2, xn, out, gp, C, P, bs, co, j, first, stream);
  }
}
// acc[o, c, t] += sum_p g[o, p] * x[c, p + off(t)] for one image (a conv's weight gradient), OB output channels at
// a time with their T accumulators per input channel in registers.
template <int OB, int T>
void corr_image_block(const float* x, int64_t Cx, const float* g, int64_t o0, int64_t P, const Taps& taps,
                      float* acc) {
  const int64_t nvec = P / Vec::L;
  for (int64_t c = 0; c < Cx; ++c) {
    const float* plane = x + c * P;
    Vec::T a[OB][T];
    MLAN_UNROLL for (int o = 0; o < OB; ++o)
      MLAN_UNROLL for (int t = 0; t < T; ++t) a[o][t] = Vec::zero();
    for (int64_t j = 0; j < nvec; ++j) {
      Vec::T gv[OB];
      MLAN_UNROLL for (int o = 0; o < OB; ++o) gv[o] = Vec::load(g + (o0 + o) * P + j * Vec::L);
      MLAN_UNROLL for (int t = 0; t < T; ++t) {
        const Vec::T xv = taps.load(plane, j, t);
        MLAN_UNROLL for (int o = 0; o < OB; ++o) a[o][t] = Vec::fma(gv[o], xv, a[o][t]);
      }
    }
    MLAN_UNROLL for (int o = 0; o < OB; ++o)
      MLAN_UNROLL for (int t = 0; t < T; ++t) acc[((o0 + o) * Cx + c) * T + t] += Vec::hsum(a[o][t]);
  }
}

template <int T>
void corr_image_all(const float* x, int64_t Cx, const float* g, int64_t O, int64_t P, const Taps& taps, float* acc) {
  for_each_grad_block(O, [&](auto ob, int64_t o0) {
    corr_image_block<decltype(ob)::value, T>(x, Cx, g, o0, P, taps, acc);
  });
}

void corr_image(const float* x, int64_t Cx, const float* g, int64_t O, int64_t P, const Taps& taps, float* acc) {
  switch (taps.count) {
    case 1: corr_image_all<1>(x, Cx, g, O, P, taps, acc); break;
    case 9: corr_image_all<9>(x, Cx, g, O, P, taps, acc); break;
    case 25: corr_image_all<25>(x, Cx, g, O, P, taps, acc); break;
    default: corr_image_all<49>(x, Cx, g, O, P, taps, acc); break;
  }
}

// db[ci, p] = sum_co pw[co, ci] dpre[co, p] + gw[co, ci] dgp[co, p] (ci < 2C): the projections' input gradient.
// Tiles of 4 input channels x NV pixel vectors keep 4 NV accumulators in registers (independent FMA chains), each
// load of dpre / dgp serves 4 channels and each weight broadcast NV vectors.
template <int NV>
void project_transpose_tiles(const float* dpre, const float* dgp, const float* pw, const float* gw, float* db,
                             int64_t C, int64_t P) {
  const int64_t C2 = 2 * C;
  for (int64_t j = 0; j < P; j += NV * Vec::L) {
    for (int64_t ci = 0; ci < C2; ci += 4) {
      const int nb = static_cast<int>(std::min<int64_t>(4, C2 - ci));
      Vec::T a[4][NV];
      MLAN_UNROLL for (int q = 0; q < 4; ++q)
        MLAN_UNROLL for (int v = 0; v < NV; ++v) a[q][v] = Vec::zero();
      for (int64_t co = 0; co < C; ++co) {
        Vec::T dp[NV], dg[NV];
        MLAN_UNROLL for (int v = 0; v < NV; ++v) {
          dp[v] = Vec::load(dpre + co * P + j + v * Vec::L);
          dg[v] = Vec::load(dgp + co * P + j + v * Vec::L);
        }
        MLAN_UNROLL for (int q = 0; q < 4; ++q)
          if (q < nb) {
            const Vec::T bp = Vec::bcast(pw[co * C2 + ci + q]), bg = Vec::bcast(gw[co * C2 + ci + q]);
            MLAN_UNROLL for (int v = 0; v < NV; ++v) a[q][v] = Vec::fma(dg[v], bg, Vec::fma(dp[v], bp, a[q][v]));
          }
      }
      MLAN_UNROLL for (int q = 0; q < 4; ++q)
        if (q < nb)
          MLAN_UNROLL for (int v = 0; v < NV; ++v) Vec::store(db + (ci + q) * P + j + v * Vec::L, a[q][v]);
    }
  }
}

void project_transpose(const float* dpre, const float* dgp, const float* pw, const float* gw, float* db, int64_t C,
                       int64_t P) {
  if ((P / Vec::L) % kWideVectors == 0) project_transpose_tiles<kWideVectors>(dpre, dgp, pw, gw, db, C, P);
  else project_transpose_tiles<1>(dpre, dgp, pw, gw, db, C, P);
}

// dpw[co, ci] += sum_p dpre[co, p] b[ci, p], dgw[co, ci] += sum_p dgp[co, p] b[ci, p]: the projections' weight
// gradients for one image.
void project_weight_grad(const float* dpre, const float* dgp, const float* b, float* dpw, float* dgw, int64_t C,
                         int64_t P) {
  const int64_t C2 = 2 * C;
  for (int64_t co = 0; co < C; ++co)
    for (int64_t ci = 0; ci < C2; ci += 4) {
      const int nb = static_cast<int>(std::min<int64_t>(4, C2 - ci));
      Vec::T ap[4], ag[4];
      MLAN_UNROLL for (int q = 0; q < 4; ++q) ap[q] = ag[q] = Vec::zero();
      for (int64_t j = 0; j < P; j += Vec::L) {
        const Vec::T dp = Vec::load(dpre + co * P + j), dg = Vec::load(dgp + co * P + j);
        MLAN_UNROLL for (int q = 0; q < 4; ++q)
          if (q < nb) {
            const Vec::T bv = Vec::load(b + (ci + q) * P + j);
            ap[q] = Vec::fma(dp, bv, ap[q]);
            ag[q] = Vec::fma(dg, bv, ag[q]);
          }
      }
      MLAN_UNROLL for (int q = 0; q < 4; ++q)
        if (q < nb) {
          dpw[co * C2 + ci + q] += Vec::hsum(ap[q]);
          dgw[co * C2 + ci + q] += Vec::hsum(ag[q]);
        }
    }
}

// Backward of one SMA, x * M with M = mean_o sigmoid(z_o) (sig: the O sigmoids), for one image, given dy:
// dx = dy * M (into dx, or added when accumulate), dz[o, p] = (sum_c dy[c, p] x[c, p]) / O * s_o (1 - s_o).
void sma_backward(const float* x, const float* dy, const float* mask, const float* sig, int64_t C, int64_t O,
                  int64_t P, float* dx, bool accumulate, float* dz) {
  const Vec::T inv = Vec::bcast(1.0f / static_cast<float>(O)), one = Vec::bcast(1.0f);
  for (int64_t j = 0; j < P; j += Vec::L) {
    const Vec::T m = Vec::load(mask + j);
    Vec::T dm = Vec::zero();
    for (int64_t c = 0; c < C; ++c) {
      const Vec::T d = Vec::load(dy + c * P + j);
      dm = Vec::fma(d, Vec::load(x + c * P + j), dm);
      const Vec::T v = Vec::mul(d, m);
      Vec::store(dx + c * P + j, accumulate ? Vec::add(Vec::load(dx + c * P + j), v) : v);
    }
    dm = Vec::mul(dm, inv);
    for (int64_t o = 0; o < O; ++o) {
      const Vec::T sg = Vec::load(sig + o * P + j);
      Vec::store(dz + o * P + j, Vec::mul(dm, Vec::mul(sg, Vec::sub(one, sg))));
    }
  }
}

void add_sums(const float* dz, int64_t O, int64_t P, float* db) {
  for (int64_t o = 0; o < O; ++o) {
    Vec::T s = Vec::zero();
    for (int64_t j = 0; j < P; j += Vec::L) s = Vec::add(s, Vec::load(dz + o * P + j));
    db[o] += Vec::hsum(s);
  }
}
#endif

void check_args(const at::Tensor& x, const at::Tensor& w) {
  TORCH_CHECK(kSimd, "mlan_timm small_conv: built without AVX-512 or AVX2");
  TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu(), "small_conv: CPU tensors only");
  TORCH_CHECK(x.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat, "small_conv: float32 only");
  TORCH_CHECK(x.dim() == 4 && w.dim() == 4, "small_conv: x (N, C, H, W) and w (O, C, k, k)");
  TORCH_CHECK(w.size(1) == x.size(1), "small_conv: weight has ", w.size(1), " input channels, x has ", x.size(1));
  TORCH_CHECK(w.size(2) == w.size(3) && w.size(2) % 2 == 1, "small_conv: odd square kernels only");
  TORCH_CHECK((x.size(2) * x.size(3)) % vector_width() == 0, "small_conv: H * W must be a multiple of ",
              vector_width());
}

}  // namespace

int64_t vector_width() {
#if defined(MLAN_SIMD)
  return Vec::L;
#else
  return 0;
#endif
}

// F.conv2d(x, w, padding=k // 2) added to ``out`` when given (in place), else into a new tensor.
at::Tensor conv_same(at::Tensor x, at::Tensor w, c10::optional<at::Tensor> out) {
  check_args(x, w);
  x = x.contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), O = w.size(0), P = H * W;
  const int k = static_cast<int>(w.size(2));
  const bool accumulate = out.has_value();
  at::Tensor result = accumulate ? *out : at::empty({N, O, H, W}, x.options());
  if (accumulate) {
    TORCH_CHECK(result.is_contiguous() && result.scalar_type() == at::kFloat &&
                result.sizes() == at::IntArrayRef({N, O, H, W}), "small_conv: out must be a contiguous float32 (N, O, H, W)");
  }
#if defined(MLAN_SIMD)
  const at::Tensor wt = w.permute({1, 2, 3, 0}).contiguous();  // [C][ky][kx][O]
  const Taps taps(H, W, k);
  if (tile_vectors(P) == kTileVectors)
    forward_all<kTileVectors>(x.data_ptr<float>(), wt.data_ptr<float>(), result.data_ptr<float>(), N, C, O, P, taps, accumulate);
  else
    forward_all<1>(x.data_ptr<float>(), wt.data_ptr<float>(), result.data_ptr<float>(), N, C, O, P, taps, accumulate);
#endif
  return result;
}

// torch.nn.grad.conv2d_weight(x, w_shape, grad, padding=k // 2) for a k x k kernel.
at::Tensor conv_same_grad_weight(at::Tensor x, at::Tensor grad, int64_t k) {
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == x.size(0) && grad.size(2) == x.size(2) && grad.size(3) == x.size(3),
              "small_conv: grad must be (N, O, H, W) with x's N, H, W");
  TORCH_CHECK(grad.scalar_type() == at::kFloat, "small_conv: float32 only");
  check_args(x, at::empty({grad.size(1), x.size(1), k, k}, x.options()));
  x = x.contiguous();
  grad = grad.contiguous();
  const int64_t N = x.size(0), C = x.size(1), O = grad.size(1), P = x.size(2) * x.size(3);
  at::Tensor gw = at::empty({O, C, k, k}, x.options());
#if defined(MLAN_SIMD)
  const Taps taps(x.size(2), x.size(3), static_cast<int>(k));
  const float *xp = x.data_ptr<float>(), *gp = grad.data_ptr<float>();
  float* out = gw.data_ptr<float>();
  switch (k) {
    case 1: grad_weight_all<1>(xp, gp, out, N, C, O, P, taps); break;
    case 3: grad_weight_all<9>(xp, gp, out, N, C, O, P, taps); break;
    case 5: grad_weight_all<25>(xp, gp, out, N, C, O, P, taps); break;
    case 7: grad_weight_all<49>(xp, gp, out, N, C, O, P, taps); break;
    default: TORCH_CHECK(false, "small_conv: grad_weight for kernel sizes 1, 3, 5, 7 only, got ", k);
  }
#endif
  return gw;
}

// Inference forward of one MLAN block's attention with shared-mask attentions and plus fusion, one image at a
// time so that every intermediate stays in cache (MLANBlock.forward_streaming computes the same in PyTorch ops):
//   m1 = SMA mask of out1 (T_1), m2 = SMA mask of out2 (T_2),
//   a1 = out1 m1, a2 = out2 m2, M = LA's mask of cat(a1, a2), b = cat(a1, a2) M (the block attention),
//   returns ReLU(out2 + P_block b + x) (eq. 8) and adds BA's partial logits of b to group_logits and the group
//   projection's share P_group b to group_proj (both set instead of added for the group's first block).
//   For the group's last block with plus fusion (``last``), returns the group output instead:
//   ReLU(y + M_g P_group g + group_input) with y the block output and M_g BA's mask (bias ba_b), eq. 8 at group level.
at::Tensor mlan_block_forward(at::Tensor out1, at::Tensor out2, at::Tensor x, at::Tensor t1_w,
                                 at::Tensor t1_b, at::Tensor t2_w, at::Tensor t2_b, at::Tensor la_w,
                                 at::Tensor la_b, at::Tensor ba_w, at::Tensor proj_w, at::Tensor gproj_w,
                                 at::Tensor group_logits, at::Tensor group_proj, bool first, bool last,
                                 at::Tensor group_input, at::Tensor ba_b, c10::optional<at::Tensor> saved) {
  check_args(out1, t2_w);
  out1 = out1.contiguous();
  out2 = out2.contiguous();
  x = x.contiguous();
  const int64_t N = out1.size(0), C = out1.size(1), H = out1.size(2), W = out1.size(3), P = H * W, O = t2_w.size(0);
  const int k = static_cast<int>(t2_w.size(2));
  for (const auto* t : {&out2, &x})
    TORCH_CHECK(t->sizes() == out1.sizes() && t->scalar_type() == at::kFloat, "mlan_block_forward: out2 and x must match out1");
  TORCH_CHECK(t1_w.sizes() == t2_w.sizes(), "mlan_block_forward: T_1 and T_2 weights must have the same shape");
  TORCH_CHECK(la_w.size(0) == O && la_w.size(1) == 2 * C && ba_w.size(0) == O && ba_w.size(1) == 2 * C &&
              la_w.size(2) == k && ba_w.size(2) == k, "mlan_block_forward: LA/BA weights must be (O, 2C, k, k)");
  TORCH_CHECK(proj_w.size(0) == C && proj_w.size(1) == 2 * C && gproj_w.sizes() == proj_w.sizes(),
              "mlan_block_forward: projections must be (C, 2C)");
  TORCH_CHECK(group_logits.is_contiguous() && group_logits.size(0) == N && group_logits.size(1) == O &&
              group_proj.is_contiguous() && group_proj.sizes() == out1.sizes(),
              "mlan_block_forward: group buffers must be contiguous (N, O, H, W) and (N, C, H, W)");
  if (last) {
    TORCH_CHECK(group_input.sizes() == out1.sizes() && group_input.scalar_type() == at::kFloat && ba_b.numel() == O,
                "mlan_block_forward: group_input must match out1 and ba_b have O values");
    TORCH_CHECK(!saved.has_value(), "mlan_block_forward: last (the group's fusion) is for inference, without saved");
    group_input = group_input.contiguous();
  }
  if (saved.has_value())
    TORCH_CHECK(saved->is_contiguous() && saved->scalar_type() == at::kFloat && saved->size(0) == N &&
                saved->size(1) == 3 + 3 * O && saved->size(2) == H && saved->size(3) == W,
                "mlan_block_forward: saved must be a contiguous float32 (N, 3 + 3 O, H, W)");
  at::Tensor out = at::empty_like(out1);
#if defined(MLAN_SIMD)
  auto tr = [](const at::Tensor& w) { return w.permute({1, 2, 3, 0}).contiguous(); };  // [C][ky][kx][O]
  float* savedp = saved.has_value() ? saved->data_ptr<float>() : nullptr;
  const at::Tensor t1t = tr(t1_w), t2t = tr(t2_w), la1 = tr(la_w.narrow(1, 0, C)), la2 = tr(la_w.narrow(1, C, C)),
                      ba1 = tr(ba_w.narrow(1, 0, C)), ba2 = tr(ba_w.narrow(1, C, C));
  const at::Tensor pw = proj_w.contiguous(), gw = gproj_w.contiguous(), t1b = t1_b.contiguous(),
                      t2b = t2_b.contiguous(), lab = la_b.contiguous(), bab = ba_b.contiguous();
  const float* gip = last ? group_input.data_ptr<float>() : nullptr;
  const Taps taps(H, W, k);
  const float *o1p = out1.data_ptr<float>(), *o2p = out2.data_ptr<float>(), *xp = x.data_ptr<float>(),
              *pwp = pw.data_ptr<float>(), *gwp = gw.data_ptr<float>();
  float *outp = out.data_ptr<float>(), *glp = group_logits.data_ptr<float>(), *gpp = group_proj.data_ptr<float>();
  // Non-temporal stores for the block output and the group projection (no read for ownership) pay off when those
  // tensors are too large to be read back from the last-level cache: from kStreamBytes each (an interleaved A/B of
  // both builds during development, 32 MB L3, no project command reproduces it: 6% faster at 16 channels x 32x32 x
  // batch 128 (8 MB), 2-5% slower at 4 MB and below).
  const bool aligned = reinterpret_cast<uintptr_t>(outp) % 64 == 0 && reinterpret_cast<uintptr_t>(gpp) % 64 == 0 &&
                       N * C * P * static_cast<int64_t>(sizeof(float)) >= kStreamBytes;
  const int64_t S = P + kPlanePad;  // the scratch planes' stride: padded, so that no two share L1 sets (channel_chunk)
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch(2 * C * S + O * P + 3 * P);
    float *a1 = scratch.data(), *a2 = a1 + C * S, *logits = a2 + C * S, *m1 = logits + O * P, *m2 = m1 + P,
          *mask = m2 + P;
    float *m1s = m1, *m2s = m2, *masks = mask;
    for (int64_t n = begin; n < end; ++n) {
      m1 = m1s, m2 = m2s, mask = masks;
      const float *o1 = o1p + n * C * P, *o2 = o2p + n * C * P, *xn = xp + n * C * P;
      // for training: the three masks and the 3 O sigmoids (T_1, T_2, LA) of this image, for the backward
      float* sv = savedp != nullptr ? savedp + n * (3 + 3 * O) * P : nullptr;
      if (sv != nullptr) m1 = sv, m2 = sv + P, mask = sv + 2 * P;
      // x and (after the group's first block) the group-projection sum, read by project_and_fuse, prefetched over
      // the tiles of T_1's and T_2's convs (with O <= kOutBlock, one pass of tiles each)
      Prefetch pf(xn, first ? nullptr : gpp + n * C * P, C * P, 2 * (P / Vec::L / tile_vectors(P)));
      conv_image(o1, t1t.data_ptr<float>(), logits, C, O, P, taps, false, &pf);
      shared_mask(logits, P, t1b.data_ptr<float>(), O, P, m1, sv != nullptr ? sv + 3 * P : nullptr);
      conv_image(o2, t2t.data_ptr<float>(), logits, C, O, P, taps, false, &pf);
      shared_mask(logits, P, t2b.data_ptr<float>(), O, P, m2, sv != nullptr ? sv + (3 + O) * P : nullptr);
      apply_mask(o1, m1, a1, C, P, P, S);
      apply_mask(o2, m2, a2, C, P, P, S);
      conv_image(a1, la1.data_ptr<float>(), logits, C, O, P, taps, false, nullptr, S);
      conv_image(a2, la2.data_ptr<float>(), logits, C, O, P, taps, true, nullptr, S);
      shared_mask(logits, P, lab.data_ptr<float>(), O, P, mask, sv != nullptr ? sv + (3 + 2 * O) * P : nullptr);
      apply_mask(a1, mask, a1, C, P, S, S);  // b1
      apply_mask(a2, mask, a2, C, P, S, S);  // b2
      float* gl = glp + n * O * P;
      conv_image(a1, ba1.data_ptr<float>(), gl, C, O, P, taps, !first, nullptr, S);
      conv_image(a2, ba2.data_ptr<float>(), gl, C, O, P, taps, true, nullptr, S);
      float *on = outp + n * C * P, *gp = gpp + n * C * P;
      // outputs read back only by later calls go around the cache (non-temporal stores: no read for ownership)
      const bool stream = !last && aligned;
      if ((P / Vec::L) % kWideVectors == 0)
        project_and_fuse_all<kWideVectors>(a1, a2, pwp, gwp, o2, xn, on, gp, C, P, S, first, stream);
      else if ((P / Vec::L) % 2 == 0) project_and_fuse_all<2>(a1, a2, pwp, gwp, o2, xn, on, gp, C, P, S, first, stream);
      else project_and_fuse_all<1>(a1, a2, pwp, gwp, o2, xn, on, gp, C, P, S, first, stream);
      if (last) {  // the group's fusion for this image while it is in cache: ReLU(y + M_g gp + group_input)
        shared_mask(gl, P, bab.data_ptr<float>(), O, P, mask);  // (inference only: saved is not given then)
        const float* gin = gip + n * C * P;
        for (int64_t co = 0; co < C; ++co)
          for (int64_t j = 0; j < P; j += Vec::L) {
            const int64_t at = co * P + j;
            const Vec::T g = Vec::fma(Vec::load(mask + j), Vec::load(gp + at),
                                      Vec::add(Vec::load(on + at), Vec::load(gin + at)));
            store(on + at, Vec::max(g, Vec::zero()), true);
          }
      }
    }
    _mm_sfence();  // the non-temporal stores are visible before the call returns
  });
#endif
  return out;
}

// Backward of mlan_block_forward (first block semantics: group_logits and group_proj of this block alone), given
// the forward's inputs, its output, the saved masks and sigmoids, and the gradients of the output (d_out), of the
// block's BA logits (d_gl) and of its group-projection share (d_gp). Returns the gradients of out1, out2, x and of
// the weights and biases in mlan_block_forward's order: t1_w, t1_b, t2_w, t2_b, la_w, la_b, ba_w, proj_w, gproj_w.
std::vector<at::Tensor> mlan_block_backward(at::Tensor out1, at::Tensor out2, at::Tensor out,
                                               at::Tensor saved, at::Tensor d_out, at::Tensor d_gl,
                                               at::Tensor d_gp, at::Tensor t1_w, at::Tensor t2_w,
                                               at::Tensor la_w, at::Tensor ba_w, at::Tensor proj_w,
                                               at::Tensor gproj_w) {
  check_args(out1, t2_w);
  out1 = out1.contiguous(); out2 = out2.contiguous(); out = out.contiguous(); saved = saved.contiguous();
  d_out = d_out.contiguous(); d_gl = d_gl.contiguous(); d_gp = d_gp.contiguous();
  const int64_t N = out1.size(0), C = out1.size(1), H = out1.size(2), W = out1.size(3), P = H * W, O = t2_w.size(0);
  const int k = static_cast<int>(t2_w.size(2));
  TORCH_CHECK(saved.size(1) == 3 + 3 * O && d_gl.size(1) == O && d_gp.sizes() == out1.sizes() &&
              d_out.sizes() == out1.sizes(), "mlan_block_backward: shapes do not match the forward");
  auto opts = out1.options();
  at::Tensor d_o1 = at::empty_like(out1), d_o2 = at::empty_like(out1), d_x = at::empty_like(out1);
  at::Tensor g_t1w = at::zeros({O, C, k, k}, opts), g_t1b = at::zeros({O}, opts),
                g_t2w = at::zeros({O, C, k, k}, opts), g_t2b = at::zeros({O}, opts),
                g_law = at::zeros({O, 2 * C, k, k}, opts), g_lab = at::zeros({O}, opts),
                g_baw = at::zeros({O, 2 * C, k, k}, opts), g_pw = at::zeros({C, 2 * C}, opts),
                g_gw = at::zeros({C, 2 * C}, opts);
#if defined(MLAN_SIMD)
  // transposed convs (input gradients) as convs of the O-channel gradient with the flipped kernel: [O][ky][kx][Cin]
  auto trT = [](const at::Tensor& w) { return w.flip({2, 3}).permute({0, 2, 3, 1}).contiguous(); };
  const at::Tensor t1T = trT(t1_w), t2T = trT(t2_w), laT = trT(la_w), baT = trT(ba_w);
  const at::Tensor pw = proj_w.contiguous(), gw = gproj_w.contiguous();
  const Taps taps(H, W, k);
  std::mutex lock;
  std::vector<at::Tensor> grads = {g_t1w, g_t1b, g_t2w, g_t2b, g_law, g_lab, g_baw, g_pw, g_gw};
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    std::vector<std::vector<float>> local;  // this thread's partial weight gradients
    for (const auto& g : grads) local.emplace_back(g.numel(), 0.0f);
    std::vector<float> scratch(6 * C * P + O * P);
    float *a = scratch.data(), *b = a + 2 * C * P, *db = b + 2 * C * P, *dz = db + 2 * C * P;
    for (int64_t n = begin; n < end; ++n) {
      const float *o1 = out1.data_ptr<float>() + n * C * P, *o2 = out2.data_ptr<float>() + n * C * P,
                  *on = out.data_ptr<float>() + n * C * P, *sv = saved.data_ptr<float>() + n * (3 + 3 * O) * P,
                  *dout = d_out.data_ptr<float>() + n * C * P, *dgl = d_gl.data_ptr<float>() + n * O * P,
                  *dgp = d_gp.data_ptr<float>() + n * C * P;
      const float *m1 = sv, *m2 = sv + P, *M = sv + 2 * P, *s1 = sv + 3 * P, *s2 = s1 + O * P, *sla = s2 + O * P;
      float *do1 = d_o1.data_ptr<float>() + n * C * P, *do2 = d_o2.data_ptr<float>() + n * C * P,
            *dx = d_x.data_ptr<float>() + n * C * P;
      apply_mask(o1, m1, a, C, P);
      apply_mask(o2, m2, a + C * P, C, P);
      apply_mask(a, M, b, 2 * C, P);
      // out = ReLU(out2 + P_block b + x): the pre-activation gradient goes to out2, x and P_block; x's gradient is
      // final, so the projections read it there (dpre)
      for (int64_t i = 0; i < C * P; i += Vec::L) {
        const Vec::T d = Vec::where_positive(Vec::load(on + i), Vec::load(dout + i));
        Vec::store(dx + i, d);
        Vec::store(do2 + i, d);
      }
      const float* dpre = dx;
      project_transpose(dpre, dgp, pw.data_ptr<float>(), gw.data_ptr<float>(), db, C, P);
      project_weight_grad(dpre, dgp, b, local[7].data(), local[8].data(), C, P);
      conv_image(dgl, baT.data_ptr<float>(), db, O, 2 * C, P, taps, true);  // + BA's input gradient
      corr_image(b, 2 * C, dgl, O, P, taps, local[6].data());
      // b = a * M (LA): da = db * M (in place), dz = LA's logit gradient
      sma_backward(a, db, M, sla, 2 * C, O, P, db, false, dz);
      add_sums(dz, O, P, local[5].data());
      corr_image(a, 2 * C, dz, O, P, taps, local[4].data());
      conv_image(dz, laT.data_ptr<float>(), db, O, 2 * C, P, taps, true);  // da += LA's input gradient
      // a1 = out1 * m1 (T_1) and a2 = out2 * m2 (T_2)
      sma_backward(o1, db, m1, s1, C, O, P, do1, false, dz);
      add_sums(dz, O, P, local[1].data());
      corr_image(o1, C, dz, O, P, taps, local[0].data());
      conv_image(dz, t1T.data_ptr<float>(), do1, O, C, P, taps, true);
      sma_backward(o2, db + C * P, m2, s2, C, O, P, do2, true, dz);
      add_sums(dz, O, P, local[3].data());
      corr_image(o2, C, dz, O, P, taps, local[2].data());
      conv_image(dz, t2T.data_ptr<float>(), do2, O, C, P, taps, true);
    }
    std::lock_guard<std::mutex> guard(lock);
    for (size_t i = 0; i < grads.size(); ++i) {
      float* g = grads[i].data_ptr<float>();
      for (size_t e = 0; e < local[i].size(); ++e) g[e] += local[i][e];
    }
  });
#endif
  return {d_o1, d_o2, d_x, g_t1w, g_t1b, g_t2w, g_t2b, g_law, g_lab, g_baw, g_pw, g_gw};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("vector_width", &vector_width, "SIMD lanes: 16 with AVX-512, 8 with AVX2, 0 without (unsupported)");
  m.def("conv_same", &conv_same, "'same' conv, stride 1, optional in-place accumulation",
        py::arg("x"), py::arg("w"), py::arg("out") = py::none());
  m.def("conv_same_grad_weight", &conv_same_grad_weight, "weight gradient of conv_same");
  m.def("mlan_block_forward", &mlan_block_forward, "forward of an MLAN block's attention (SMA, plus fusion)");
  m.def("mlan_block_backward", &mlan_block_backward, "backward of mlan_block_forward (training)");
}
