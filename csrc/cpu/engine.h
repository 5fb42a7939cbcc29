// The CPU vector engine. No include guard and no includes: engine.cpp includes this file once per
// instruction set, inside namespace cnnfast::cpu::<isa>, with CNNFAST_V (floats per vector) and
// CNNFAST_ACC (vector accumulators the register file holds) defined. Everything here has internal
// linkage, so the copies built for different instruction sets never meet at link time.
//
// Direct convolution, vectorised along the output row. A work item (image n, group g, a chunk of
// output rows) first packs the input rows it needs into a zero-padded float32 scratch
// P[c][hp][wp] (this absorbs padding, any strides and layout, and the zero-upsampling the input
// gradient needs), so the inner loop has no bounds checks. One output row of KB channels is then
// computed as KB x NV vector accumulators held in registers: per input channel c and tap (r, s), NV
// vector loads of P (shared by the KB channels) and KB weight broadcasts (from weights packed as
// [c][r][s][KB]) feed KB * NV FMAs. Rows land in a small row buffer; the conv op adds bias and
// stores, the fused op rounds, applies ReLU and max-pools the rows of each pool window straight
// from that buffer, so the conv output is never stored. Where the output channels per group are a
// multiple of V, conv and fused forward vectorise across channels instead (cvec_taps: TB pixels x KV
// channel vectors per tile), which wastes no lanes on short rows and reads strided input as scalars.
// The weight gradient is the same packing with a reduction over output pixels: per (c, r, s), KB
// vector accumulators over dy rows.

constexpr int V = CNNFAST_V;
typedef float vf __attribute__((vector_size(CNNFAST_V * 4)));
typedef int32_t vi __attribute__((vector_size(CNNFAST_V * 4)));

static inline vf vload(const float* p) {
  vf v;
  __builtin_memcpy(&v, p, sizeof(vf));
  return v;
}
static inline void vstore(float* p, vf v) { __builtin_memcpy(p, &v, sizeof(vf)); }
static inline vf vsplat(float x) {
  vf v = {};
  return v + x;
}
// *p in every lane: one broadcast load. (GCC 12 turns a splat written with vector extensions into a
// scalar add plus a register shuffle, or worse; the intrinsic gives vbroadcastss from memory.)
static inline vf vbcast(const float* p) {
#if CNNFAST_AVX2
  return (vf)_mm256_broadcast_ss(p);
#else
  return vsplat(*p);
#endif
}
static inline vf vload_strided(const float* p, int64_t st) {
  vf v;
  for (int i = 0; i < V; ++i) v[i] = p[i * st];
  return v;
}
// p[0], p[2], ..., p[2V-2]: the even elements of 2V floats (a stride-2 load).
static inline vf vload_even(const float* p) {
  const vf lo = vload(p), hi = vload(p + V);
#if CNNFAST_V == 8 && (defined(__clang__) || __GNUC__ >= 12)
  return __builtin_shufflevector(lo, hi, 0, 2, 4, 6, 8, 10, 12, 14);
#else
  vf v;
  for (int l = 0; l < V / 2; ++l) v[l] = lo[2 * l], v[l + V / 2] = hi[2 * l];
  return v;
#endif
}
static inline float vsum(vf v) {
  float s = 0.f;
  for (int i = 0; i < V; ++i) s += v[i];
  return s;
}
static inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }
static inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
static inline int64_t floordiv(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
static inline int64_t roundup(int64_t a, int64_t b) { return cdiv(a, b) * b; }

// Scratch memory of one work item (64-byte aligned, freed on scope exit).
struct Scratch {
  void* p;
  explicit Scratch(int64_t bytes) : p(aligned_alloc(64, (size_t)roundup(bytes > 0 ? bytes : 1, 64))) {}
  ~Scratch() { free(p); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  float* f() const { return static_cast<float*>(p); }
};

// P[c][hp][wp] as pack() below, for the Unpooled u: zeros, then each pooled cell's gradient added at
// the cell its window chose, visiting windows in ascending (ph, pw) order so that every element sums
// as pool_gather would. One pass over the pooled cells, into a cache-resident scratch.
template <class PosT>
static void pack_unpooled(const Unpooled& u, int64_t n, int64_t c0, int64_t Cn, int64_t uh, int64_t uw,
                          int64_t h_org, int64_t w_org, int64_t HP, int64_t WP, float* P) {
  __builtin_memset(P, 0, sizeof(float) * Cn * HP * WP);
  const PoolGeom& p = u.p;
  const bool disjoint = p.kh == p.sh && p.kw == p.sw && p.dh == 1 && p.dw == 1 && p.ph == 0 && p.pw == 0;
  if (disjoint && uh == 1 && uw == 1 && h_org <= 0 && w_org <= 0 && h_org + HP >= p.OH * p.sh &&
      w_org + WP >= p.OW * p.sw && p.kh * p.kw <= 64) {
    // Windows tile the image and P holds all of it (the Net's 2x2 / 2): each cell of dy is written by
    // at most one window, so a store per pooled cell at a tabled offset, no bounds checks.
    int64_t off[64];
    for (int64_t t = 0; t < p.kh * p.kw; ++t) off[t] = (t / p.kw) * WP + t % p.kw;
    for (int64_t c = 0; c < Cn; ++c) {
      const float* g = u.grad.p + n * u.grad.s0 + (c0 + c) * u.grad.s1;
      const PosT* q = static_cast<const PosT*>(u.pos) + n * u.ps0 + (c0 + c) * u.ps1;
      float* dst = P + c * HP * WP - h_org * WP - w_org;
      for (int64_t ph = 0; ph < p.OH; ++ph) {
        const float* grow = g + ph * u.grad.s2;
        const PosT* qrow = q + ph * u.ps2;
        float* drow = dst + ph * p.sh * WP;
        for (int64_t pw = 0; pw < p.OW; ++pw) {
          const int64_t t0 = (int64_t)qrow[pw * u.ps3];
          const bool keep = t0 >= 0;  // a dropped cell writes its zero at tap 0 (all its cells are 0)
          drow[pw * p.sw + off[keep ? t0 : 0]] = keep ? grow[pw * u.grad.s3] : 0.f;
        }
      }
    }
    return;
  }
  // The pooled rows whose windows can reach dy rows [oh_lo, oh_hi], the rows these P rows show.
  const int64_t oh_lo = h_org > 0 ? cdiv(h_org, uh) : 0, oh_hi = floordiv(h_org + HP - 1, uh);
  const int64_t ph_lo = imax(0, floordiv(oh_lo + p.ph - (p.kh - 1) * p.dh, p.sh));
  const int64_t ph_hi = imin(p.OH - 1, floordiv(oh_hi + p.ph, p.sh));
  for (int64_t c = 0; c < Cn; ++c) {
    const float* g = u.grad.p + n * u.grad.s0 + (c0 + c) * u.grad.s1;
    const PosT* q = static_cast<const PosT*>(u.pos) + n * u.ps0 + (c0 + c) * u.ps1;
    float* dst = P + c * HP * WP;
    for (int64_t ph = ph_lo; ph <= ph_hi; ++ph)
      for (int64_t pw = 0; pw < p.OW; ++pw) {
        // Branch-free (ReLU drops cells at random): a dropped cell (pos -1) adds its zero at tap 0.
        const int64_t t0 = (int64_t)q[ph * u.ps2 + pw * u.ps3];
        const bool keep = t0 >= 0;
        const int64_t t = keep ? t0 : 0;
        const float v = keep ? g[ph * u.grad.s2 + pw * u.grad.s3] : 0.f;
        const int64_t hp = (ph * p.sh + u.tap_h[t]) * uh - h_org, wp = (pw * p.sw + u.tap_w[t]) * uw - w_org;
        if (hp >= 0 && hp < HP && wp >= 0 && wp < WP) dst[hp * WP + wp] += v;
      }
  }
}

// P[c][hp][wp] = xs(n, c0 + c, hp + h_org, wp + w_org), 0 outside the image, where xs is x (or the
// Unpooled u, when given) zero-upsampled by (uh, uw): xs(t_h, t_w) = x(t_h / uh, t_w / uw) when both
// divide, else 0.
static void pack(const View4& x, const Unpooled* u, int64_t n, int64_t c0, int64_t Cn, int64_t Hx, int64_t Wx,
                 int64_t uh, int64_t uw, int64_t h_org, int64_t w_org, int64_t HP, int64_t WP, float* P) {
  if (u) {
    switch (u->pos_bytes) {
      case 1: return pack_unpooled<int8_t>(*u, n, c0, Cn, uh, uw, h_org, w_org, HP, WP, P);
      case 2: return pack_unpooled<int16_t>(*u, n, c0, Cn, uh, uw, h_org, w_org, HP, WP, P);
      default: return pack_unpooled<int32_t>(*u, n, c0, Cn, uh, uw, h_org, w_org, HP, WP, P);
    }
  }
  for (int64_t c = 0; c < Cn; ++c) {
    for (int64_t hp = 0; hp < HP; ++hp) {
      float* dst = P + (c * HP + hp) * WP;
      const int64_t t = hp + h_org;
      if (t < 0 || t % uh != 0 || t / uh >= Hx) {
        __builtin_memset(dst, 0, sizeof(float) * WP);
        continue;
      }
      const float* src = x.p + n * x.s0 + (c0 + c) * x.s1 + (t / uh) * x.s2;
      if (uw == 1) {
        const int64_t lo = imin(imax(-w_org, 0), WP), hi = imin(imax(Wx - w_org, lo), WP);
        for (int64_t wp = 0; wp < lo; ++wp) dst[wp] = 0.f;
        if (x.s3 == 1) {
          __builtin_memcpy(dst + lo, src + (lo + w_org), sizeof(float) * (hi - lo));
        } else {
          for (int64_t wp = lo; wp < hi; ++wp) dst[wp] = src[(wp + w_org) * x.s3];
        }
        for (int64_t wp = hi; wp < WP; ++wp) dst[wp] = 0.f;
      } else {
        for (int64_t wp = 0; wp < WP; ++wp) {
          const int64_t tw = wp + w_org;
          dst[wp] = (tw >= 0 && tw % uw == 0 && tw / uw < Wx) ? src[(tw / uw) * x.s3] : 0.f;
        }
      }
    }
  }
}

// Weights of every group, in blocks of up to 8 output channels, as [g][block][c][r][s][kb].
struct PackedWeights {
  Scratch mem;
  int64_t Kg, crs, nblk;
  PackedWeights(const float* w, int64_t G, int64_t Kg_, int64_t crs_)
      : mem(G * cdiv(Kg_, 8) * crs_ * 8 * (int64_t)sizeof(float)), Kg(Kg_), crs(crs_), nblk(cdiv(Kg_, 8)) {
    for (int64_t g = 0; g < G; ++g)
      for (int64_t b = 0; b < nblk; ++b) {
        const int64_t k0 = b * 8, kb = imin(8, Kg - k0);
        float* dst = block(g, b);
        for (int64_t i = 0; i < crs; ++i)
          for (int64_t k = 0; k < kb; ++k) dst[i * kb + k] = w[(g * Kg + k0 + k) * crs + i];
      }
  }
  float* block(int64_t g, int64_t b) const { return mem.f() + (g * nblk + b) * crs * 8; }
};

// One output row of KB channels: out[k * ostride + ow] for ow < OWc (a multiple of NV * V) =
// sum over c, r, s of Wk[((c*R + r)*S + s)*KB + k] * P[c][hp0 + r*dh][ow*sw + s*dw].
template <int KB, int NV, bool UNIT>
static void conv_row(const float* P, int64_t HP, int64_t WP, int64_t Cn, int64_t R, int64_t S, int64_t dh,
                     int64_t dw, int64_t sw, int64_t hp0, const float* Wk, int64_t OWc, float* out,
                     int64_t ostride) {
  for (int64_t ow0 = 0; ow0 < OWc; ow0 += NV * V) {
    vf acc[KB][NV];
#pragma GCC unroll 8
    for (int k = 0; k < KB; ++k)
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[k][j] = vsplat(0.f);
    for (int64_t c = 0; c < Cn; ++c) {
      for (int64_t r = 0; r < R; ++r) {
        const float* prow = P + (c * HP + hp0 + r * dh) * WP + ow0 * sw;
        const float* wk = Wk + (c * R + r) * S * KB;
        for (int64_t s = 0; s < S; ++s) {
          const float* px = prow + s * dw;
          vf xv[NV];
#pragma GCC unroll 4
          for (int j = 0; j < NV; ++j) xv[j] = UNIT ? vload(px + j * V) : vload_strided(px + j * V * sw, sw);
#pragma GCC unroll 8
          for (int k = 0; k < KB; ++k) {
            const vf wv = vbcast(wk + s * KB + k);
#pragma GCC unroll 4
            for (int j = 0; j < NV; ++j) acc[k][j] += wv * xv[j];
          }
        }
      }
    }
#pragma GCC unroll 8
    for (int k = 0; k < KB; ++k)
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) vstore(out + k * ostride + ow0 + j * V, acc[k][j]);
  }
}

using RowFn = void (*)(const float*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                       int64_t, const float*, int64_t, float*, int64_t);

// Vector count per row block for KB channels: as many as the accumulator budget allows (1, 2 or 4,
// so that OWpad, a multiple of 4 * V, is a multiple of every block), no wider than the row needs.
static int pick_nv(int kb, int64_t OW) {
  int nv = CNNFAST_ACC / kb;
  nv = nv >= 4 ? 4 : nv >= 2 ? 2 : 1;
  while (nv > 1 && (nv / 2) * V >= OW) nv /= 2;
  return nv;
}

template <int KB, bool UNIT>
static RowFn row_fn_nv(int nv) {
  return nv == 4 ? conv_row<KB, 4, UNIT> : nv == 2 ? conv_row<KB, 2, UNIT> : conv_row<KB, 1, UNIT>;
}

template <bool UNIT>
static RowFn row_fn_u(int kb, int nv) {
  switch (kb) {
    case 1: return row_fn_nv<1, UNIT>(nv);
    case 2: return row_fn_nv<2, UNIT>(nv);
    case 3: return row_fn_nv<3, UNIT>(nv);
    case 4: return row_fn_nv<4, UNIT>(nv);
    case 5: return row_fn_nv<5, UNIT>(nv);
    case 6: return row_fn_nv<6, UNIT>(nv);
    case 7: return row_fn_nv<7, UNIT>(nv);
    default: return row_fn_nv<8, UNIT>(nv);
  }
}

// Everything a work item of the conv / fused forward needs, fixed per call.
struct RowPlan {
  const ConvFwdArgs* a;
  PackedWeights* wp;
  int64_t G, Cg, Kg, OWpad, WP;
  RowFn fn[2];   // per block kind: full blocks of 8, the remainder
  int64_t nv[2];
};

static void make_plan(RowPlan& pl, const ConvFwdArgs& a, PackedWeights* wp) {
  const ConvGeom& g = a.g;
  pl.a = &a;
  pl.wp = wp;
  pl.G = g.groups;
  pl.Cg = g.Cg();
  pl.Kg = g.Kg();
  pl.OWpad = roundup(g.OW, 4 * V);
  pl.WP = roundup((pl.OWpad - 1) * g.sw + (g.S - 1) * g.dw + 1, V);
  const int kb_full = (int)imin(8, pl.Kg), kb_rem = (int)(pl.Kg % 8 == 0 ? kb_full : pl.Kg % 8);
  const int kbs[2] = {kb_full, kb_rem};
  for (int i = 0; i < 2; ++i) {
    const int nv = pick_nv(kbs[i], g.OW);
    pl.nv[i] = nv;
    pl.fn[i] = g.sw == 1 ? row_fn_u<true>(kbs[i], nv) : row_fn_u<false>(kbs[i], nv);
  }
}

// Conv rows [oh_lo, oh_hi] of image n, group g: packs the input, then calls row(oh, rows) with
// rows[k * OWpad + ow] for every k < Kg (bias not added).
template <class RowSink>
static void conv_rows_range(const RowPlan& pl, int64_t n, int64_t g_, int64_t oh_lo, int64_t oh_hi, float* P,
                            float* rows, RowSink sink) {
  const ConvFwdArgs& a = *pl.a;
  const ConvGeom& g = a.g;
  const int64_t h_org = oh_lo * g.sh - g.ph;
  const int64_t HP = (oh_hi - oh_lo) * g.sh + (g.R - 1) * g.dh + 1;
  pack(a.x, a.x_unpool, n, g_ * pl.Cg, pl.Cg, a.Hx, a.Wx, a.up_h, a.up_w, h_org, -g.pw, HP, pl.WP, P);
  for (int64_t oh = oh_lo; oh <= oh_hi; ++oh) {
    for (int64_t b = 0; b < pl.wp->nblk; ++b) {
      const int64_t k0 = b * 8;
      const int kind = (k0 + 8 <= pl.Kg) ? 0 : 1;
      pl.fn[kind](P, HP, pl.WP, pl.Cg, g.R, g.S, g.dh, g.dw, g.sw, (oh - oh_lo) * g.sh, pl.wp->block(g_, b),
                  roundup(g.OW, pl.nv[kind] * V), rows + k0 * pl.OWpad, pl.OWpad);
    }
    sink(oh, rows);
  }
}

// ---- a channel-vectorised register tile -----------------------------------------------------------
// The GEMM view of a convolution: M = output pixels, N = output channels (in vectors), K = Cg*R*S.
// acc[t][v] = sum over i < crs of w[i * Kg + v * V + lane] * P[pix[t] + toff[i]], t < TB, v < KV: per
// reduction index, KV weight vectors and TB input broadcasts feed KV * TB FMAs, in index order (one
// chain per output element, as conv_row sums). Weights packed as [crs][Kg] (cvec_weights). With `init`,
// the sums continue from init[t * KV + v] (which may be `out`): a reduction split into blocks of
// indices gives the same bits as one pass.
template <int KV, int TB>
static void cvec_taps(const float* P, const int64_t* pix, const int64_t* toff, int64_t crs, const float* w,
                      int64_t Kg, const vf* init, vf* out) {
  vf acc[TB][KV];
#pragma GCC unroll 8
  for (int t = 0; t < TB; ++t)
#pragma GCC unroll 4
    for (int v = 0; v < KV; ++v) acc[t][v] = init ? init[t * KV + v] : vsplat(0.f);
  const float* pt[TB];
#pragma GCC unroll 8
  for (int t = 0; t < TB; ++t) pt[t] = P + pix[t];
  for (int64_t i = 0; i < crs; ++i) {
    const int64_t o = toff[i];
    vf wv[KV];
#pragma GCC unroll 4
    for (int v = 0; v < KV; ++v) wv[v] = vload(w + i * Kg + v * V);
#pragma GCC unroll 8
    for (int t = 0; t < TB; ++t) {
      const vf xb = vbcast(pt[t] + o);
#pragma GCC unroll 4
      for (int v = 0; v < KV; ++v) acc[t][v] += wv[v] * xb;
    }
  }
#pragma GCC unroll 8
  for (int t = 0; t < TB; ++t)
#pragma GCC unroll 4
    for (int v = 0; v < KV; ++v) out[t * KV + v] = acc[t][v];
}

using CvecFn = void (*)(const float*, const int64_t*, const int64_t*, int64_t, const float*, int64_t, const vf*,
                        vf*);

// Tiles of KV * TB <= CNNFAST_ACC accumulators only (anything larger would spill).
template <int KV>
static CvecFn cvec_fn_tb(int tb) {
  constexpr int M = CNNFAST_ACC / KV < 8 ? CNNFAST_ACC / KV : 8;
  switch (tb < M ? tb : M) {
    case 8: return cvec_taps<KV, (M >= 8 ? 8 : 1)>;
    case 7: return cvec_taps<KV, (M >= 7 ? 7 : 1)>;
    case 6: return cvec_taps<KV, (M >= 6 ? 6 : 1)>;
    case 5: return cvec_taps<KV, (M >= 5 ? 5 : 1)>;
    case 4: return cvec_taps<KV, (M >= 4 ? 4 : 1)>;
    case 3: return cvec_taps<KV, (M >= 3 ? 3 : 1)>;
    case 2: return cvec_taps<KV, (M >= 2 ? 2 : 1)>;
    default: return cvec_taps<KV, 1>;
  }
}

static CvecFn cvec_fn(int kv, int tb) {
  return kv >= 4 ? cvec_fn_tb<4>(tb) : kv == 3 ? cvec_fn_tb<3>(tb) : kv == 2 ? cvec_fn_tb<2>(tb) : cvec_fn_tb<1>(tb);
}

// Channel vectors per tile for Kg = nkv * V channels: 4, 3, 2 or 1 (a divisor of nkv), leaving room
// for at least 2 pixels (taps).
static int cvec_kv(int64_t nkv) {
  int kv = nkv % 4 == 0 ? 4 : nkv % 3 == 0 ? 3 : nkv % 2 == 0 ? 2 : 1;
  while (kv > 1 && 2 * kv > CNNFAST_ACC) kv /= 2;  // (never for the AVX2 build)
  return kv;
}

// Weights of every group as [g][j][Kg] (channels fastest, for cvec_taps' vector loads), row j holding
// reduction index perm[j] (j itself without perm).
static void cvec_weights(const float* w, int64_t G, int64_t Kg, int64_t crs, const int64_t* perm, float* dst) {
  for (int64_t gi = 0; gi < G; ++gi)
    for (int64_t k = 0; k < Kg; ++k)
      for (int64_t j = 0; j < crs; ++j) dst[(gi * crs + j) * Kg + k] = w[(gi * Kg + k) * crs + (perm ? perm[j] : j)];
}

// Offsets into P[c][HP][WP] of the reduction indices (c, r, s): to[j] for index perm[j] (j without perm).
static void cvec_tap_offsets(const ConvGeom& g, int64_t Cg, int64_t HP, int64_t WP, const int64_t* perm,
                             int64_t* to) {
  for (int64_t j = 0; j < Cg * g.R * g.S; ++j) {
    const int64_t i = perm ? perm[j] : j, c = i / (g.R * g.S), r = (i / g.S) % g.R, s = i % g.S;
    to[j] = (c * HP + r * g.dh) * WP + s * g.dw;
  }
}

// Channel blocks per work item: enough items (runs x splits) for the threads, want_items at least
// where the blocks allow.
static void split_channel_blocks(int64_t kv_blocks, int64_t runs, int64_t want_items, int64_t* per_split,
                                 int64_t* splits) {
  *per_split = cdiv(kv_blocks, imin(kv_blocks, cdiv(want_items, runs)));
  *splits = cdiv(kv_blocks, *per_split);
}

// ---- conv forward ---------------------------------------------------------------------------------

struct ConvCtx {
  RowPlan pl;
  int64_t chunks, rows_per_chunk;
};

static void conv_body(void* vctx, int64_t begin, int64_t end) {
  const ConvCtx& cx = *static_cast<ConvCtx*>(vctx);
  const RowPlan& pl = cx.pl;
  const ConvFwdArgs& a = *pl.a;
  const ConvGeom& g = a.g;
  const int64_t HPmax = (cx.rows_per_chunk - 1) * g.sh + (g.R - 1) * g.dh + 1;
  Scratch P(pl.Cg * HPmax * pl.WP * 4), rows(pl.Kg * pl.OWpad * 4);
  for (int64_t item = begin; item < end; ++item) {
    const int64_t ch = item % cx.chunks, g_ = (item / cx.chunks) % pl.G, n = item / (cx.chunks * pl.G);
    const int64_t oh_lo = ch * cx.rows_per_chunk, oh_hi = imin(g.OH, oh_lo + cx.rows_per_chunk) - 1;
    conv_rows_range(pl, n, g_, oh_lo, oh_hi, P.f(), rows.f(), [&](int64_t oh, const float* rw) {
      for (int64_t k = 0; k < pl.Kg; ++k) {
        const int64_t kk = g_ * pl.Kg + k;
        const float b = a.bias ? a.bias[kk] : 0.f;
        const float* src = rw + k * pl.OWpad;
        float* dst = a.y.p + n * a.y.s0 + kk * a.y.s1 + oh * a.y.s2;
        if (a.y.s3 == 1) {
          for (int64_t ow = 0; ow < g.OW; ++ow) dst[ow] = src[ow] + b;
        } else {
          for (int64_t ow = 0; ow < g.OW; ++ow) dst[ow * a.y.s3] = src[ow] + b;
        }
      }
    });
  }
}

// Chunks of rows per image and group: enough work items to keep every thread busy.
static int64_t row_chunks(int64_t images, int64_t rows) {
  const int64_t want = 32;
  return images >= want ? 1 : imin(rows, cdiv(want, images > 0 ? images : 1));
}

// ---- conv forward, vectorised over output channels --------------------------------------------------
// For Kg a multiple of V (the Net's second conv, 6 -> 16 channels with 13-wide rows, and the wide
// layers of converted models, where conv_row's row blocks would waste lanes or gather strided input).
// A work item is (a run of B images or a chunk of one image's output rows, group g, a run of channel
// blocks). It packs its input rows (skipped when the previous item packed the same), then per block of
// KV channel vectors and per block of reduction indices whose weights fit the L1 cache, tiles of TB
// output pixels (row-major, across the item's images) run cvec_taps into per-pixel sums; bias is added
// and each pixel's channel vector is stored (one vector store where the output's channels are
// contiguous, channels_last; else lane by lane). Small images are taken B at a time so that a block of
// weights serves enough pixels; deep layers with few items split their channel blocks.

struct ConvCvecCtx {
  const ConvFwdArgs* a;
  const float* w;         // [g][crs][Kg], the reduction indices in phase order (perm)
  const int64_t* perm;    // the reduction indices (c, r, s), phase by phase
  const int64_t* istart;  // phase q's indices: perm[istart[q] .. istart[q + 1])
  int64_t Cg, Kg, G, WP, B, chunks, rows_per_chunk, kv_per_split, splits;
  int KV, TB;
};

// The input gradient reads dy zero-upsampled by (up_h, up_w): an output pixel of phase
// q = (floormod(oh*sh - ph, up_h), floormod(ow*sw - pw, up_w)) meets nonzero input only at the taps
// (r, s) with (q_h + r*dh) % up_h == 0 and (q_w + s*dw) % up_w == 0. Pixels are taken phase by phase,
// each over its own taps: a stride-2 gradient does a quarter of the multiply-adds. (One phase, every
// tap, when nothing is upsampled.)
static int64_t conv_phase(const ConvFwdArgs& a, int64_t oh, int64_t ow) {
  const ConvGeom& g = a.g;
  const int64_t qh = oh * g.sh - g.ph - floordiv(oh * g.sh - g.ph, a.up_h) * a.up_h;
  const int64_t qw = ow * g.sw - g.pw - floordiv(ow * g.sw - g.pw, a.up_w) * a.up_w;
  return qh * a.up_w + qw;
}

static void conv_cvec_body(void* vctx, int64_t begin, int64_t end) {
  const ConvCvecCtx& cx = *static_cast<ConvCvecCtx*>(vctx);
  const ConvFwdArgs& a = *cx.a;
  const ConvGeom& g = a.g;
  const View4& y = a.y;
  const int64_t crs = cx.Cg * g.R * g.S, nkv = cx.Kg / V, nph = a.up_h * a.up_w;
  const int64_t HPmax = (cx.rows_per_chunk - 1) * g.sh + (g.R - 1) * g.dh + 1;
  const int64_t img_floats = cx.Cg * HPmax * cx.WP, Mmax = cx.B * cx.rows_per_chunk * g.OW;
  // The reduction in blocks of KC indices, whose weights (KC x KV vectors, 16 KiB) stay in the L1 cache
  // while every pixel of the item passes; the pixels' sums carry over from block to block.
  const int64_t KC = imax(1, 16384 / (cx.KV * V * 4));
  Scratch P(cx.B * img_floats * 4), toff(crs * 8), pix(Mmax * 8), dst(Mmax * 8), mph(Mmax * 8),
      sums(Mmax * cx.KV * V * 4), mstart((nph + 1) * 8);
  int64_t* to = static_cast<int64_t*>(toff.p);
  int64_t* px = static_cast<int64_t*>(pix.p);
  int64_t* yo = static_cast<int64_t*>(dst.p);
  int64_t* ph_of = static_cast<int64_t*>(mph.p);
  int64_t* ms = static_cast<int64_t*>(mstart.p);
  vf* sm = static_cast<vf*>(sums.p);
  const CvecFn fn_full = cvec_fn(cx.KV, cx.TB);
  int64_t packed = -1, M = 0;
  for (int64_t item = begin; item < end; ++item) {
    const int64_t split = item % cx.splits, rest = item / cx.splits;  // splits fastest: packs are shared
    if (rest != packed) {
      const int64_t ch = rest % cx.chunks, g_ = (rest / cx.chunks) % cx.G, n0 = rest / (cx.chunks * cx.G) * cx.B;
      const int64_t n1 = imin(g.N, n0 + cx.B);
      const int64_t oh_lo = ch * cx.rows_per_chunk, oh_hi = imin(g.OH, oh_lo + cx.rows_per_chunk);
      const int64_t HP = (oh_hi - 1 - oh_lo) * g.sh + (g.R - 1) * g.dh + 1, Mi = (oh_hi - oh_lo) * g.OW;
      for (int64_t n = n0; n < n1; ++n)
        pack(a.x, a.x_unpool, n, g_ * cx.Cg, cx.Cg, a.Hx, a.Wx, a.up_h, a.up_w, oh_lo * g.sh - g.ph, -g.pw, HP,
             cx.WP, P.f() + (n - n0) * img_floats);
      cvec_tap_offsets(g, cx.Cg, HP, cx.WP, cx.perm, to);
      M = (n1 - n0) * Mi;
      // The item's pixels, phase by phase (a counting sort; row-major within a phase).
      for (int64_t q = 0; q <= nph; ++q) ms[q] = 0;
      for (int64_t m = 0; m < M; ++m) {
        ph_of[m] = conv_phase(a, oh_lo + (m % Mi) / g.OW, m % g.OW);
        ++ms[ph_of[m] + 1];
      }
      for (int64_t q = 0; q < nph; ++q) ms[q + 1] += ms[q];
      for (int64_t m = 0; m < M; ++m) {
        const int64_t b = m / Mi, oh = oh_lo + (m % Mi) / g.OW, ow = m % g.OW, at = ms[ph_of[m]]++;
        px[at] = b * img_floats + (oh - oh_lo) * g.sh * cx.WP + ow * g.sw;
        yo[at] = (n0 + b) * y.s0 + oh * y.s2 + ow * y.s3;
      }
      for (int64_t q = nph; q > 0; --q) ms[q] = ms[q - 1];  // back to phase starts
      ms[0] = 0;
      packed = rest;
    }
    const int64_t g_ = (rest / cx.chunks) % cx.G;
    const int64_t kv_lo = split * cx.kv_per_split * cx.KV, kv_hi = imin(nkv, kv_lo + cx.kv_per_split * cx.KV);
    for (int64_t kv0 = kv_lo; kv0 < kv_hi; kv0 += cx.KV) {
      const int64_t k0 = g_ * cx.Kg + kv0 * V;
      const float* wk = cx.w + g_ * crs * cx.Kg + kv0 * V;
      for (int64_t q = 0; q < nph; ++q) {
        const int64_t m_lo = ms[q], m_hi = ms[q + 1], i_lo = cx.istart[q], i_hi = cx.istart[q + 1];
        if (i_lo == i_hi)  // no tap of this phase meets the input
          for (int64_t m = m_lo * cx.KV; m < m_hi * cx.KV; ++m) sm[m] = vsplat(0.f);
        for (int64_t i0 = i_lo; i0 < i_hi; i0 += KC) {
          const int64_t kc = imin(KC, i_hi - i0);
          for (int64_t m0 = m_lo; m0 < m_hi; m0 += cx.TB) {
            const int tb = (int)imin(cx.TB, m_hi - m0);
            vf* s_m = sm + m0 * cx.KV;
            (tb == cx.TB ? fn_full : cvec_fn(cx.KV, tb))(P.f(), px + m0, to + i0, kc, wk + i0 * cx.Kg, cx.Kg,
                                                          i0 == i_lo ? nullptr : s_m, s_m);
          }
        }
      }
      vf bias[4];
      for (int v = 0; v < cx.KV; ++v) bias[v] = a.bias ? vload(a.bias + k0 + v * V) : vsplat(0.f);
      for (int64_t m = 0; m < M; ++m)
        for (int v = 0; v < cx.KV; ++v) {
          const vf r = sm[m * cx.KV + v] + bias[v];
          float* d = y.p + yo[m] + (k0 + v * V) * y.s1;
          if (y.s1 == 1) {
            vstore(d, r);
          } else {
            for (int l = 0; l < V; ++l) d[l * y.s1] = r[l];
          }
        }
    }
  }
}

static void conv_cvec_forward(const ConvFwdArgs& a, ParallelFn parallel) {
  const ConvGeom& g = a.g;
  const int64_t G = g.groups, Kg = g.Kg(), Cg = g.Cg(), crs = Cg * g.R * g.S, nph = a.up_h * a.up_w;
  // The reduction indices phase by phase, and the weights in that order.
  Scratch perm(crs * 8), istart((nph + 1) * 8), w(G * crs * Kg * 4);
  int64_t* pm = static_cast<int64_t*>(perm.p);
  int64_t* is = static_cast<int64_t*>(istart.p);
  int64_t j = 0;
  for (int64_t q = 0; q < nph; ++q) {
    const int64_t qh = q / a.up_w, qw = q % a.up_w;
    is[q] = j;
    for (int64_t i = 0; i < crs; ++i) {
      const int64_t r = (i / g.S) % g.R, s_ = i % g.S;
      if ((qh + r * g.dh) % a.up_h == 0 && (qw + s_ * g.dw) % a.up_w == 0) pm[j++] = i;
    }
  }
  is[nph] = j;  // == crs: every tap belongs to exactly one phase
  cvec_weights(a.w, G, Kg, crs, pm, w.f());
  ConvCvecCtx cx;
  cx.a = &a;
  cx.w = w.f();
  cx.perm = pm;
  cx.istart = is;
  cx.Cg = Cg, cx.Kg = Kg, cx.G = G;
  cx.KV = cvec_kv(Kg / V);
  cx.TB = (int)imin(8, CNNFAST_ACC / cx.KV);
  cx.WP = (g.OW - 1) * g.sw + (g.S - 1) * g.dw + 1;
  // Images of fewer than 256 output pixels go B at a time (whole images); larger ones one at a time,
  // in row chunks when there are few.
  const int64_t want_pixels = 256, want_items = 32;
  cx.B = imin(g.N, cdiv(want_pixels, g.OH * g.OW));
  if (cx.B > 1) {
    cx.rows_per_chunk = g.OH, cx.chunks = 1;
  } else {
    const int64_t chunks = row_chunks(g.N * G, g.OH);
    cx.rows_per_chunk = cdiv(g.OH, chunks);
    cx.chunks = cdiv(g.OH, cx.rows_per_chunk);
  }
  const int64_t runs = cdiv(g.N, cx.B) * G * cx.chunks, kv_blocks = cdiv(Kg / V, cx.KV);
  split_channel_blocks(kv_blocks, runs, want_items, &cx.kv_per_split, &cx.splits);
  parallel(runs * cx.splits, &cx, conv_cvec_body);
}

static void conv_forward_impl(const ConvFwdArgs& a, ParallelFn parallel) {
  const ConvGeom& g = a.g;
  if (g.Kg() % V == 0 && g.OH > 0 && g.OW > 0) return conv_cvec_forward(a, parallel);
  PackedWeights wp(a.w, g.groups, g.Kg(), g.Cg() * g.R * g.S);
  ConvCtx cx;
  make_plan(cx.pl, a, &wp);
  const int64_t chunks = row_chunks(g.N * g.groups, g.OH);
  cx.rows_per_chunk = cdiv(g.OH, chunks);
  cx.chunks = cdiv(g.OH, cx.rows_per_chunk);
  parallel(g.N * g.groups * cx.chunks, &cx, conv_body);
}

// ---- fused conv + bias + ReLU + max_pool2d forward -------------------------------------------------

// One pooled row of channel k: the values, and the window positions (q, or -1 where the value is
// <= 0; `final_q`: q holds the final positions already).
template <class PosT>
static void store_pooled(const FusedFwdArgs& a, int64_t n, int64_t k, int64_t ph, const float* best,
                         const int32_t* q, int64_t PW, bool final_q = false) {
  const View4& o = a.conv.y;
  float* dst = o.p + n * o.s0 + k * o.s1 + ph * o.s2;
  if (o.s3 == 1) {
    __builtin_memcpy(dst, best, sizeof(float) * PW);
  } else {
    for (int64_t pw = 0; pw < PW; ++pw) dst[pw * o.s3] = best[pw];
  }
  if (a.pos) {
    PosT* pdst = static_cast<PosT*>(a.pos) + n * a.ps0 + k * a.ps1 + ph * a.ps2;
    if (final_q && a.ps3 == 1) {
      for (int64_t pw = 0; pw < PW; ++pw) pdst[pw] = (PosT)q[pw];
    } else if (final_q) {
      for (int64_t pw = 0; pw < PW; ++pw) pdst[pw * a.ps3] = (PosT)q[pw];
    } else {
      for (int64_t pw = 0; pw < PW; ++pw) pdst[pw * a.ps3] = (PosT)(best[pw] <= 0.f ? -1 : q[pw]);
    }
  }
}

// r[ow] = relu(round(r[ow] + bias)) for ow < OW and -inf for OW <= ow < OWpad (a multiple of V), so
// that a window tap landing past the row is never taken; ReLU keeps NaN, as torch.relu does.
static void bias_relu_row(float* r, float bias, int64_t OW, int64_t OWpad, int round_mode) {
  const vf vb = vsplat(bias), zero = vsplat(0.f), ninf = vsplat(-__builtin_huge_valf());
  vi lane;
  for (int l = 0; l < V; ++l) lane[l] = l;
  for (int64_t ow0 = 0; ow0 < OWpad; ow0 += V) {
    vf y = vload(r + ow0) + vb;
    if (round_mode != kRoundNone)
      for (int l = 0; l < V; ++l) y[l] = round_to(y[l], round_mode);
    y = (vf)((vi)y & ~(vi)(y < zero));
    const vi in = (vi)(lane + (int32_t)ow0 < (vi){} + (int32_t)OW);
    vstore(r + ow0, (vf)(((vi)y & in) | ((vi)ninf & ~in)));
  }
}

// pool_tap over all E cells (a multiple of V) of the flat layout, in vectors: cell e reads
// row[e * PSW + off] (PSW 1 or 2; reads up to off floats past the last cell's row, which the row
// buffer has room for).
template <int PSW>
static void pool_tap_flat(const float* row, int64_t off, int64_t E, int32_t tap, float* best, int32_t* q) {
  static_assert(PSW == 1 || PSW == 2, "flat pooling has stride 1 or 2");
  const vi vt = (vi){} + tap;
  for (int64_t e0 = 0; e0 < E; e0 += V) {
    vf v;
    if (PSW == 1) {
      v = vload(row + e0 + off);
    } else {
      v = vload_even(row + 2 * e0 + off);
    }
    const vf b = vload(best + e0);
    vi qv;
    __builtin_memcpy(&qv, q + e0, sizeof(vi));
    const vi take = (vi)(v > b) | (vi)(v != v);
    vstore(best + e0, (vf)(((vi)v & take) | ((vi)b & ~take)));
    qv = (vt & take) | (qv & ~take);
    __builtin_memcpy(q + e0, &qv, sizeof(vi));
  }
}

// The running max over tap j of window row i for every pooled column, PyTorch's rule, branch-free
// so it vectorises; PSW is the pool stride when it is a compile-time 1 or 2, else 0 (runtime psw).
template <int PSW>
static void pool_tap(const float* row, int64_t col_off, int64_t psw_rt, int64_t lo, int64_t hi, int32_t tap,
                     float* best, int32_t* q) {
  const int64_t psw = PSW ? PSW : psw_rt;
  for (int64_t pw = lo; pw < hi; ++pw) {
    const float v = row[pw * psw + col_off];
    const float b = best[pw];
    const bool take = (v > b) | (v != v);
    best[pw] = take ? v : b;
    q[pw] = take ? tap : q[pw];
  }
}

struct FusedCtx {
  RowPlan pl;
  const FusedFwdArgs* f;
  int64_t chunks, rows_per_chunk;
};

static void fused_body(void* vctx, int64_t begin, int64_t end) {
  const FusedCtx& cx = *static_cast<FusedCtx*>(vctx);
  const RowPlan& pl = cx.pl;
  const FusedFwdArgs& f = *cx.f;
  const ConvFwdArgs& a = f.conv;
  const ConvGeom& g = a.g;
  const PoolGeom& p = f.pool;
  const int64_t PH = p.OH, PW = p.OW;
  const int64_t conv_rows_max = (cx.rows_per_chunk - 1) * p.sh + (p.kh - 1) * p.dh + 1;
  const int64_t HPmax = (conv_rows_max - 1) * g.sh + (g.R - 1) * g.dh + 1;
  // rows: one slot of Kg x OWpad per window row, and one row of slack for pool_tap_flat's reads
  Scratch P(pl.Cg * HPmax * pl.WP * 4), rows((p.kh * pl.Kg + 1) * pl.OWpad * 4);
  Scratch best(imax(PW, pl.Kg * pl.OWpad) * 4), q(imax(PW, pl.Kg * pl.OWpad) * 4);
  // Flat pooling (all channels in one loop) when windows start at column 0 with stride 1 or 2 and
  // stay inside the row buffer; otherwise per channel with explicit column bounds.
  const bool flat = (p.sw == 1 || p.sw == 2) && p.pw == 0 && pl.OWpad % p.sw == 0 && pl.OWpad / p.sw >= PW &&
                    (PW - 1) * p.sw + (p.kw - 1) * p.dw < pl.OWpad;
  for (int64_t item = begin; item < end; ++item) {
    const int64_t ch = item % cx.chunks, g_ = (item / cx.chunks) % pl.G, n = item / (cx.chunks * pl.G);
    const int64_t ph_lo = ch * cx.rows_per_chunk, ph_hi = imin(PH, ph_lo + cx.rows_per_chunk);
    for (int64_t ph = ph_lo; ph < ph_hi; ++ph) {
      // The conv rows of this pooled row's windows that exist: [lo, hi], each computed into slot i.
      const int64_t oh0 = ph * p.sh - p.ph;
      int64_t lo = -1, hi = -1;
      for (int64_t i = 0; i < p.kh; ++i) {
        const int64_t oh = oh0 + i * p.dh;
        if (oh >= 0 && oh < p.H) {
          if (lo < 0) lo = oh;
          hi = oh;
        }
      }
      float* bst = best.f();
      int32_t* qq = static_cast<int32_t*>(q.p);
      // Pack once per pooled row for the rows [lo, hi]; compute only the window rows.
      const int64_t h_org = lo * g.sh - g.ph;
      const int64_t HP = (hi - lo) * g.sh + (g.R - 1) * g.dh + 1;
      pack(a.x, a.x_unpool, n, g_ * pl.Cg, pl.Cg, a.Hx, a.Wx, a.up_h, a.up_w, h_org, -g.pw, HP, pl.WP, P.f());
      for (int64_t i = 0; i < p.kh; ++i) {
        const int64_t oh = oh0 + i * p.dh;
        if (oh < 0 || oh >= p.H) continue;
        float* rw = rows.f() + i * pl.Kg * pl.OWpad;
        for (int64_t b = 0; b < pl.wp->nblk; ++b) {
          const int64_t k0 = b * 8;
          const int kind = (k0 + 8 <= pl.Kg) ? 0 : 1;
          pl.fn[kind](P.f(), HP, pl.WP, pl.Cg, g.R, g.S, g.dh, g.dw, g.sw, (oh - lo) * g.sh,
                      pl.wp->block(g_, b), roundup(g.OW, pl.nv[kind] * V), rw + k0 * pl.OWpad, pl.OWpad);
        }
        for (int64_t k = 0; k < pl.Kg; ++k)
          bias_relu_row(rw + k * pl.OWpad, a.bias ? a.bias[g_ * pl.Kg + k] : 0.f, g.OW, pl.OWpad, f.round_mode);
      }
      if (flat) {
        // Every channel's pooled row at once: pooled cell e = k * PWs + pw reads row column
        // e * psw + j * dw, since OWpad = PWs * psw; long, branch-free vector loops.
        const int64_t PWs = pl.OWpad / p.sw, E = pl.Kg * PWs;
        for (int64_t e = 0; e < E; ++e) {
          bst[e] = -__builtin_huge_valf();
          qq[e] = 0;
        }
        for (int64_t i = 0; i < p.kh; ++i) {
          const int64_t oh = oh0 + i * p.dh;
          if (oh < 0 || oh >= p.H) continue;
          const float* r = rows.f() + i * pl.Kg * pl.OWpad;
          for (int64_t j = 0; j < p.kw; ++j) {
            const int32_t tap = (int32_t)(i * p.kw + j);
            if (p.sw == 2)
              pool_tap_flat<2>(r, j * p.dw, E, tap, bst, qq);
            else
              pool_tap_flat<1>(r, j * p.dw, E, tap, bst, qq);
          }
        }
        // The window positions (-1 where the pooled value is <= 0), all cells in one vector loop.
        for (int64_t e = 0; e < E; ++e) qq[e] = bst[e] <= 0.f ? -1 : qq[e];
        for (int64_t k = 0; k < pl.Kg; ++k) {
          const int64_t kk = g_ * pl.Kg + k;
          switch (f.pos_bytes) {
            case 1: store_pooled<int8_t>(f, n, kk, ph, bst + k * PWs, qq + k * PWs, PW, true); break;
            case 2: store_pooled<int16_t>(f, n, kk, ph, bst + k * PWs, qq + k * PWs, PW, true); break;
            default: store_pooled<int32_t>(f, n, kk, ph, bst + k * PWs, qq + k * PWs, PW, true); break;
          }
        }
        continue;
      }
      for (int64_t k = 0; k < pl.Kg; ++k) {
        for (int64_t pw = 0; pw < PW; ++pw) {
          bst[pw] = -__builtin_huge_valf();
          qq[pw] = 0;
        }
        for (int64_t i = 0; i < p.kh; ++i) {
          const int64_t oh = oh0 + i * p.dh;
          if (oh < 0 || oh >= p.H) continue;
          const float* r = rows.f() + (i * pl.Kg + k) * pl.OWpad;
          for (int64_t j = 0; j < p.kw; ++j) {
            const int64_t col_off = j * p.dw - p.pw;
            // pooled columns whose tap j lands in [0, OW): 0 <= pw*sw + col_off < OW
            const int64_t plo = col_off >= 0 ? 0 : cdiv(-col_off, p.sw);
            const int64_t phi = g.OW - 1 - col_off >= 0 ? imin(PW, (g.OW - 1 - col_off) / p.sw + 1) : 0;
            const int32_t tap = (int32_t)(i * p.kw + j);
            if (p.sw == 2)
              pool_tap<2>(r, col_off, 2, plo, phi, tap, bst, qq);
            else if (p.sw == 1)
              pool_tap<1>(r, col_off, 1, plo, phi, tap, bst, qq);
            else
              pool_tap<0>(r, col_off, p.sw, plo, phi, tap, bst, qq);
          }
        }
        const int64_t kk = g_ * pl.Kg + k;
        switch (f.pos_bytes) {
          case 1: store_pooled<int8_t>(f, n, kk, ph, bst, qq, PW); break;
          case 2: store_pooled<int16_t>(f, n, kk, ph, bst, qq, PW); break;
          default: store_pooled<int32_t>(f, n, kk, ph, bst, qq, PW); break;
        }
      }
    }
  }
}

// ---- fused forward, vectorised over output channels ------------------------------------------------
// For Kg a multiple of V (the Net's second block: 6 -> 16 channels on 15x15, whose 13-wide conv rows
// would fill 16-lane row blocks poorly), with pool windows inside the conv output. GEMM view per image:
// M = pooled pixels x window taps, N = Kg, K = Cg*R*S. A work item (n, g, a chunk of pooled rows) packs
// its input rows once (pack()); then, per pooled pixel, TB window taps x KV channel vectors are held
// in registers: per (c, r, s), KV weight vectors (weights packed as [g][c][r][s][Kg]) and TB input
// broadcasts feed KV * TB FMAs. Bias, rounding, ReLU and the max-pool rule run on the vectors (taps in
// window order, so ties and NaN go as in pool_tap); only the pooled output and pos are written.

struct CvecCtx {
  const FusedFwdArgs* f;
  const float* w;  // [g][crs][Kg]
  int64_t Cg, Kg, G, WP, chunks, rows_per_chunk;
  int KV, TB;
};

template <class PosT>
static void cvec_store(const FusedFwdArgs& f, int64_t n, int64_t k0, int64_t ph, int64_t pw, vf best, vi q) {
  const View4& o = f.conv.y;
  float* dst = o.p + n * o.s0 + k0 * o.s1 + ph * o.s2 + pw * o.s3;
  for (int l = 0; l < V; ++l) dst[l * o.s1] = best[l];
  if (f.pos) {
    PosT* pd = static_cast<PosT*>(f.pos) + n * f.ps0 + k0 * f.ps1 + ph * f.ps2 + pw * f.ps3;
    for (int l = 0; l < V; ++l) pd[l * f.ps1] = (PosT)(best[l] <= 0.f ? -1 : q[l]);
  }
}

static void cvec_body(void* vctx, int64_t begin, int64_t end) {
  const CvecCtx& cx = *static_cast<CvecCtx*>(vctx);
  const FusedFwdArgs& f = *cx.f;
  const ConvFwdArgs& a = f.conv;
  const ConvGeom& g = a.g;
  const PoolGeom& p = f.pool;
  const int64_t crs = cx.Cg * g.R * g.S, NT = p.kh * p.kw, nkv = cx.Kg / V;
  const int64_t conv_rows_max = (cx.rows_per_chunk - 1) * p.sh + (p.kh - 1) * p.dh + 1;
  const int64_t HPmax = (conv_rows_max - 1) * g.sh + (g.R - 1) * g.dh + 1;
  Scratch P(cx.Cg * HPmax * cx.WP * 4), toff(crs * 8), pix(NT * 8), acc(4 * 4 * V * 4);
  int64_t* to = static_cast<int64_t*>(toff.p);
  int64_t* px = static_cast<int64_t*>(pix.p);
  vf* ac = static_cast<vf*>(acc.p);
  const CvecFn fn_full = cvec_fn(cx.KV, cx.TB), fn_rem = cvec_fn(cx.KV, (int)(NT % cx.TB));
  const vf ninf = vsplat(-__builtin_huge_valf()), zero = vsplat(0.f);
  for (int64_t item = begin; item < end; ++item) {
    const int64_t ch = item % cx.chunks, g_ = (item / cx.chunks) % cx.G, n = item / (cx.chunks * cx.G);
    const int64_t ph_lo = ch * cx.rows_per_chunk, ph_hi = imin(p.OH, ph_lo + cx.rows_per_chunk);
    const int64_t oh_lo = ph_lo * p.sh, oh_hi = (ph_hi - 1) * p.sh + (p.kh - 1) * p.dh;
    const int64_t HP = (oh_hi - oh_lo) * g.sh + (g.R - 1) * g.dh + 1;
    pack(a.x, a.x_unpool, n, g_ * cx.Cg, cx.Cg, a.Hx, a.Wx, a.up_h, a.up_w, oh_lo * g.sh - g.ph, -g.pw, HP, cx.WP,
         P.f());
    cvec_tap_offsets(g, cx.Cg, HP, cx.WP, nullptr, to);
    for (int64_t ph = ph_lo; ph < ph_hi; ++ph)
      for (int64_t pw = 0; pw < p.OW; ++pw) {
        for (int64_t i = 0; i < p.kh; ++i)
          for (int64_t j = 0; j < p.kw; ++j) {
            const int64_t oh = ph * p.sh + i * p.dh, ow = pw * p.sw + j * p.dw;
            px[i * p.kw + j] = (oh - oh_lo) * g.sh * cx.WP + ow * g.sw;
          }
        for (int64_t kv0 = 0; kv0 < nkv; kv0 += cx.KV) {
          const int64_t k0 = g_ * cx.Kg + kv0 * V;
          const float* wk = cx.w + g_ * crs * cx.Kg + kv0 * V;
          vf best[4], bias[4];
          vi q[4];
          for (int v = 0; v < cx.KV; ++v) {
            best[v] = ninf;
            q[v] = (vi){} + 0;
            if (a.bias) {
              bias[v] = vload(a.bias + k0 + v * V);
            } else {
              bias[v] = zero;
            }
          }
          for (int64_t t0 = 0; t0 < NT; t0 += cx.TB) {
            const int tb = (int)imin(cx.TB, NT - t0);
            (tb == cx.TB ? fn_full : fn_rem)(P.f(), px + t0, to, crs, wk, cx.Kg, nullptr, ac);
            for (int t = 0; t < tb; ++t)
              for (int v = 0; v < cx.KV; ++v) {
                vf y = ac[t * cx.KV + v] + bias[v];
                if (f.round_mode != kRoundNone)
                  for (int l = 0; l < V; ++l) y[l] = round_to(y[l], f.round_mode);
                y = (vf)((vi)y & ~(vi)(y < zero));  // ReLU keeping NaN (NaN < 0 is false)
                const vi take = (vi)(y > best[v]) | (vi)(y != y);
                best[v] = (vf)(((vi)y & take) | ((vi)best[v] & ~take));
                q[v] = (((vi){} + (int32_t)(t0 + t)) & take) | (q[v] & ~take);
              }
          }
          for (int v = 0; v < cx.KV; ++v) {
            switch (f.pos_bytes) {
              case 1: cvec_store<int8_t>(f, n, k0 + v * V, ph, pw, best[v], q[v]); break;
              case 2: cvec_store<int16_t>(f, n, k0 + v * V, ph, pw, best[v], q[v]); break;
              default: cvec_store<int32_t>(f, n, k0 + v * V, ph, pw, best[v], q[v]); break;
            }
          }
        }
      }
  }
}

// Whether the channel-vectorised path takes this call: Kg a multiple of V, no pool padding, every
// pool window inside the conv output, and a register tile of at least 2 taps x the channel vectors.
static bool cvec_fits(const FusedFwdArgs& f) {
  const ConvGeom& g = f.conv.g;
  const PoolGeom& p = f.pool;
  const int64_t Kg = g.Kg();
  if (Kg % V != 0 || p.ph != 0 || p.pw != 0 || p.OH <= 0 || p.OW <= 0) return false;
  if ((p.OH - 1) * p.sh + (p.kh - 1) * p.dh >= p.H || (p.OW - 1) * p.sw + (p.kw - 1) * p.dw >= p.W) return false;
  return 2 * imin(Kg / V, 4) <= CNNFAST_ACC && p.kh * p.kw >= 2;
}

static void cvec_forward(const FusedFwdArgs& f, ParallelFn parallel) {
  const ConvGeom& g = f.conv.g;
  const int64_t G = g.groups, Kg = g.Kg(), Cg = g.Cg(), crs = Cg * g.R * g.S;
  Scratch w(G * crs * Kg * 4);
  cvec_weights(f.conv.w, G, Kg, crs, nullptr, w.f());
  CvecCtx cx;
  cx.f = &f;
  cx.w = w.f();
  cx.Cg = Cg, cx.Kg = Kg, cx.G = G;
  cx.KV = cvec_kv(Kg / V);
  cx.TB = (int)imin(imin(4, CNNFAST_ACC / cx.KV), f.pool.kh * f.pool.kw);
  cx.WP = (f.pool.W - 1) * g.sw + (g.S - 1) * g.dw + 1;
  const int64_t chunks = row_chunks(g.N * G, f.pool.OH);
  cx.rows_per_chunk = cdiv(f.pool.OH, chunks);
  cx.chunks = cdiv(f.pool.OH, cx.rows_per_chunk);
  parallel(g.N * G * cx.chunks, &cx, cvec_body);
}

static void fused_forward_impl(const FusedFwdArgs& f, ParallelFn parallel) {
  if (cvec_fits(f)) return cvec_forward(f, parallel);
  const ConvFwdArgs& a = f.conv;
  const ConvGeom& g = a.g;
  PackedWeights wp(a.w, g.groups, g.Kg(), g.Cg() * g.R * g.S);
  FusedCtx cx;
  make_plan(cx.pl, a, &wp);
  cx.f = &f;
  const int64_t chunks = row_chunks(g.N * g.groups, f.pool.OH);
  cx.rows_per_chunk = cdiv(f.pool.OH, chunks);
  cx.chunks = cdiv(f.pool.OH, cx.rows_per_chunk);
  parallel(g.N * g.groups * cx.chunks, &cx, fused_body);
}

// ---- weight gradient -------------------------------------------------------------------------------

// acc_out[k * crs + (c*R + r)*S + s] += sum over oh, ow of D[k][oh][ow] * P[c][oh*sh + r*dh][ow*sw + s*dw].
// NS consecutive taps s share each load of D: KB * NS vector accumulators. Every weight element keeps
// its own chain (lanes over ow, rows in order, then vsum), so the result does not depend on KB or NS.
template <int KB, int NS>
static void wgrad_block(const float* P, int64_t HP, int64_t WP, const float* D, int64_t OH, int64_t OWp,
                        int64_t OW, int64_t Cn, int64_t R, int64_t S, int64_t sh, int64_t sw, int64_t dh,
                        int64_t dw, float* acc_out, int64_t crs) {
  vi lane;
  for (int i = 0; i < V; ++i) lane[i] = i;
  const int64_t ow_full = (OW / V) * V;
  const vi tail_mask = lane < (vi){} + (int32_t)(OW - ow_full);
  for (int64_t c = 0; c < Cn; ++c)
    for (int64_t r = 0; r < R; ++r)
      for (int64_t s0 = 0; s0 < S; s0 += NS) {
        const int ns = (int)imin(NS, S - s0);  // taps past S: computed on s0, never stored
        vf acc[NS][KB];
#pragma GCC unroll 4
        for (int t = 0; t < NS; ++t)
#pragma GCC unroll 8
          for (int k = 0; k < KB; ++k) acc[t][k] = vsplat(0.f);
        for (int64_t oh = 0; oh < OH; ++oh) {
          const float* prow = P + (c * HP + oh * sh + r * dh) * WP;
          const float* px[NS];
#pragma GCC unroll 4
          for (int t = 0; t < NS; ++t) px[t] = prow + (t < ns ? s0 + t : s0) * dw;
          const float* d = D + oh * OWp;
          for (int64_t ow0 = 0; ow0 < OWp; ow0 += V) {
            vf xv[NS];
#pragma GCC unroll 4
            for (int t = 0; t < NS; ++t) {
              xv[t] = sw == 1 ? vload(px[t] + ow0) : vload_strided(px[t] + ow0 * sw, sw);
              if (ow0 >= ow_full) xv[t] = (vf)((vi)xv[t] & tail_mask);  // lanes past OW: exactly 0, even for inf
            }
#pragma GCC unroll 8
            for (int k = 0; k < KB; ++k) {
              const vf dv = vload(d + k * OH * OWp + ow0);
#pragma GCC unroll 4
              for (int t = 0; t < NS; ++t) acc[t][k] += dv * xv[t];
            }
          }
        }
        for (int t = 0; t < ns; ++t)
#pragma GCC unroll 8
          for (int k = 0; k < KB; ++k) acc_out[k * crs + (c * R + r) * S + s0 + t] += vsum(acc[t][k]);
      }
}

using WgradFn = void (*)(const float*, int64_t, int64_t, const float*, int64_t, int64_t, int64_t, int64_t,
                         int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, float*, int64_t);

// Channel block for the weight gradient: KB * NS accumulators within the register budget, with NS
// covering the kernel's row (S <= 3) so that no tap group computes a dummy tap and every load of dy
// serves S taps; blocks of equal size (Kg = 6, S = 3: two blocks of 3 rather than 6 with NS = 2).
static int64_t wgrad_kb(int64_t Kg, int64_t S) {
  const int64_t ns = imin(3, S);
  const int64_t widest = imax(1, imin(8, CNNFAST_ACC / ns));
  return cdiv(Kg, cdiv(Kg, widest));
}

static int wgrad_ns(int64_t kb, int64_t S) {
  int ns = (int)imax(1, imin(3, CNNFAST_ACC / kb));
  return (int)imin(ns, S);
}

template <int KB>
static WgradFn wgrad_fn_ns(int ns) {
  return ns >= 3 ? wgrad_block<KB, 3> : ns == 2 ? wgrad_block<KB, 2> : wgrad_block<KB, 1>;
}

static WgradFn wgrad_fn(int64_t kb, int ns) {
  switch (kb) {
    case 1: return wgrad_fn_ns<1>(ns);
    case 2: return wgrad_fn_ns<2>(ns);
    case 3: return wgrad_fn_ns<3>(ns);
    case 4: return wgrad_fn_ns<4>(ns);
    case 5: return wgrad_fn_ns<5>(ns);
    case 6: return wgrad_fn_ns<6>(ns);
    case 7: return wgrad_fn_ns<7>(ns);
    default: return wgrad_fn_ns<8>(ns);
  }
}

struct WgradCtx {
  const WeightGradArgs* a;
  float* ws;  // [chunk][K][crs]
  int64_t chunks, per_chunk;
};

static void wgrad_body(void* vctx, int64_t begin, int64_t end) {
  const WgradCtx& cx = *static_cast<WgradCtx*>(vctx);
  const WeightGradArgs& a = *cx.a;
  const ConvGeom& g = a.g;
  const int64_t Cg = g.Cg(), Kg = g.Kg(), G = g.groups, crs = Cg * g.R * g.S;
  const int64_t OWp = roundup(g.OW, V);
  const int64_t WP = roundup((OWp - 1) * g.sw + (g.S - 1) * g.dw + 1, V);
  const int64_t HP = (g.OH - 1) * g.sh + (g.R - 1) * g.dh + 1;
  Scratch P(Cg * HP * WP * 4), D(Kg * g.OH * OWp * 4);
  for (int64_t item = begin; item < end; ++item) {
    const int64_t chunk = item / G, g_ = item % G;
    float* out = cx.ws + (chunk * g.K + g_ * Kg) * crs;
    for (int64_t i = 0; i < Kg * crs; ++i) out[i] = 0.f;
    const int64_t n_end = imin(g.N, (chunk + 1) * cx.per_chunk);
    for (int64_t n = chunk * cx.per_chunk; n < n_end; ++n) {
      pack(a.x, nullptr, n, g_ * Cg, Cg, g.H, g.W, 1, 1, -g.ph, -g.pw, HP, WP, P.f());
      pack(a.dy, a.dy_unpool, n, g_ * Kg, Kg, g.OH, g.OW, 1, 1, 0, 0, g.OH, OWp, D.f());
      const int64_t kbmax = wgrad_kb(Kg, g.S);
      for (int64_t k0 = 0; k0 < Kg; k0 += kbmax) {
        const int64_t kb = imin(kbmax, Kg - k0);
        wgrad_fn(kb, wgrad_ns(kb, g.S))(P.f(), HP, WP, D.f() + k0 * g.OH * OWp, g.OH, OWp, g.OW, Cg, g.R, g.S, g.sh, g.sw, g.dh,
                     g.dw, out + k0 * crs, crs);
      }
    }
  }
}

struct ReduceCtx {
  const float* ws;
  float* out;
  int64_t chunks, total;
};

static void reduce_body(void* vctx, int64_t begin, int64_t end) {
  const ReduceCtx& cx = *static_cast<ReduceCtx*>(vctx);
  const int64_t block = 4096;
  for (int64_t b = begin; b < end; ++b) {
    const int64_t lo = b * block, hi = imin(cx.total, lo + block);
    for (int64_t i = lo; i < hi; ++i) cx.out[i] = cx.ws[i];
    for (int64_t c = 1; c < cx.chunks; ++c) {
      const float* src = cx.ws + c * cx.total;
      for (int64_t i = lo; i < hi; ++i) cx.out[i] += src[i];
    }
  }
}

// ---- weight gradient, vectorised over output channels -----------------------------------------------
// For Kg a multiple of V: the GEMM view M = Kg (channel vectors), N = crs, K = the chunk's output pixels.
// cvec_taps with the roles of pixels and taps swapped: a tile is TB reduction indices (c, r, s) x KV
// channel vectors, summed over the pixels of every image of the batch chunk (dy transposed to
// pixel-major rows of Kg channels), in blocks of pixels whose dy rows stay in the L1 cache; each
// weight element keeps one chain over the chunk's pixels in order, whatever the blocking or threads.
// No horizontal sums: short rows (7x7, 14x14 feature maps) waste nothing.

struct WgradCvecCtx {
  const WeightGradArgs* a;
  float* ws;  // [chunk][K][crs]
  int64_t chunks, per_chunk, HP, WP, splits, kv_per_split;
  int KV, TB;
};

static void wgrad_cvec_body(void* vctx, int64_t begin, int64_t end) {
  const WgradCvecCtx& cx = *static_cast<WgradCvecCtx*>(vctx);
  const WeightGradArgs& a = *cx.a;
  const ConvGeom& g = a.g;
  const int64_t Cg = g.Cg(), Kg = g.Kg(), G = g.groups, crs = Cg * g.R * g.S, nkv = Kg / V;
  const int64_t img_floats = Cg * cx.HP * cx.WP, Mi = g.OH * g.OW, Mmax = cx.per_chunk * Mi;
  const int64_t ntiles = cdiv(crs, cx.TB);
  // Pixel blocks whose dy rows (MB x KV vectors) fill at most 16 KiB of the L1 cache.
  const int64_t MB = imax(1, 16384 / (cx.KV * V * 4));
  Scratch P(cx.per_chunk * img_floats * 4), D(Kg * Mi * 4), Dt(Mmax * Kg * 4), pix(Mmax * 8), toff(crs * 8),
      sums(ntiles * cx.TB * cx.KV * V * 4);
  int64_t* px = static_cast<int64_t*>(pix.p);
  int64_t* to = static_cast<int64_t*>(toff.p);
  vf* sm = static_cast<vf*>(sums.p);
  const CvecFn fn_full = cvec_fn(cx.KV, cx.TB), fn_rem = cvec_fn(cx.KV, (int)(crs - (ntiles - 1) * cx.TB));
  int64_t packed = -1, M = 0;
  for (int64_t item = begin; item < end; ++item) {
    const int64_t split = item % cx.splits, rest = item / cx.splits, chunk = rest / G, g_ = rest % G;
    if (rest != packed) {
      const int64_t n0 = chunk * cx.per_chunk, n1 = imin(g.N, n0 + cx.per_chunk);
      for (int64_t n = n0; n < n1; ++n) {
        const int64_t b = n - n0;
        pack(a.x, nullptr, n, g_ * Cg, Cg, g.H, g.W, 1, 1, -g.ph, -g.pw, cx.HP, cx.WP, P.f() + b * img_floats);
        pack(a.dy, a.dy_unpool, n, g_ * Kg, Kg, g.OH, g.OW, 1, 1, 0, 0, g.OH, g.OW, D.f());
        float* dt = Dt.f() + b * Mi * Kg;
        for (int64_t k = 0; k < Kg; ++k)
          for (int64_t m = 0; m < Mi; ++m) dt[m * Kg + k] = D.f()[k * Mi + m];
        for (int64_t m = 0; m < Mi; ++m)
          px[b * Mi + m] = b * img_floats + (m / g.OW) * g.sh * cx.WP + (m % g.OW) * g.sw;
      }
      cvec_tap_offsets(g, Cg, cx.HP, cx.WP, nullptr, to);
      M = (n1 - n0) * Mi;
      packed = rest;
    }
    float* out = cx.ws + (chunk * g.K + g_ * Kg) * crs;
    const int64_t kv_lo = split * cx.kv_per_split * cx.KV, kv_hi = imin(nkv, kv_lo + cx.kv_per_split * cx.KV);
    for (int64_t kv0 = kv_lo; kv0 < kv_hi; kv0 += cx.KV) {
      for (int64_t m0 = 0; m0 < M; m0 += MB) {
        const int64_t mb = imin(MB, M - m0);
        for (int64_t tile = 0; tile < ntiles; ++tile) {
          vf* s_t = sm + tile * cx.TB * cx.KV;
          (tile + 1 < ntiles ? fn_full : fn_rem)(P.f(), to + tile * cx.TB, px + m0, mb, Dt.f() + m0 * Kg + kv0 * V, Kg,
                                                 m0 == 0 ? nullptr : s_t, s_t);
        }
      }
      for (int64_t i = 0; i < crs; ++i)
        for (int v = 0; v < cx.KV; ++v) {
          const vf r = sm[(i / cx.TB * cx.TB) * cx.KV + (i % cx.TB) * cx.KV + v];
          for (int l = 0; l < V; ++l) out[(kv0 * V + v * V + l) * crs + i] = r[l];
        }
    }
  }
}

static void weight_grad_impl(const WeightGradArgs& a, ParallelFn parallel) {
  const ConvGeom& g = a.g;
  const int64_t total = g.K * g.Cg() * g.R * g.S;
  // Batch chunks, summed separately and then in chunk order: a function of the shape only, so the
  // summation order never depends on the threads. At most 16; for the channel-vectorised path at least
  // 256 output pixels each (short reductions would make the partial sums the bulk of the work).
  const bool cvec = g.Kg() % V == 0;
  const int64_t per_chunk = imin(g.N, imax(cdiv(g.N, 16), cvec ? cdiv(256, g.OH * g.OW) : 1));
  Scratch ws(cdiv(g.N, per_chunk) * total * 4);
  if (cvec) {
    WgradCvecCtx cx;
    cx.a = &a;
    cx.ws = ws.f();
    cx.per_chunk = per_chunk;
    cx.chunks = cdiv(g.N, per_chunk);
    cx.HP = (g.OH - 1) * g.sh + (g.R - 1) * g.dh + 1;
    cx.WP = (g.OW - 1) * g.sw + (g.S - 1) * g.dw + 1;
    cx.KV = cvec_kv(g.Kg() / V);
    cx.TB = (int)imin(8, CNNFAST_ACC / cx.KV);
    const int64_t runs = cx.chunks * g.groups, kv_blocks = cdiv(g.Kg() / V, cx.KV);
    split_channel_blocks(kv_blocks, runs, 32, &cx.kv_per_split, &cx.splits);
    parallel(runs * cx.splits, &cx, wgrad_cvec_body);
    ReduceCtx rc{ws.f(), a.gw, cx.chunks, total};
    parallel(cdiv(total, 4096), &rc, reduce_body);
    return;
  }
  WgradCtx cx;
  cx.a = &a;
  cx.per_chunk = per_chunk;
  cx.chunks = cdiv(g.N, per_chunk);
  cx.ws = ws.f();
  parallel(cx.chunks * g.groups, &cx, wgrad_body);
  ReduceCtx rc{ws.f(), a.gw, cx.chunks, total};
  parallel(cdiv(total, 4096), &rc, reduce_body);
}

// ---- max_pool2d forward ------------------------------------------------------------------------------
// A work item is a range of planes, each pooled in a flat layout: for every window row i, buffer
// R_i[oh * L + col] holds input row oh*sh - ph + i*dh at column col - pw (-inf outside the image;
// L = sw * PWs), so that pooled cell e = oh * PWs + ow reads R_i[e * sw + j * dw] for tap (i, j). Each
// tap is then one branch-free vector pass over all of the plane's cells, whatever the width of its
// rows. -inf cells never replace the running maximum under PyTorch's rule, so padding needs no
// checks. The index starts as PyTorch's (the window's first in-range cell, kept only when every value
// is -inf) and follows the maximum in int32 lanes: base[e] + i*dh*W + j*dw.

struct PoolCtx {
  const PoolArgs* a;
  int64_t PWs, L, E;            // cells per pooled row (padded), buffer row length, cells per plane
  const int32_t* base;          // (oh*sh - ph) * W + ow*sw - pw per cell
  const int32_t* init;          // PyTorch's initial index per cell
};

// best / q over the E cells for the tap at buffer offset `off` (stride SW: 1, 2, or 0 for runtime sw).
template <int SW>
static void pool_flat_tap(const float* R, int64_t off, int64_t sw_rt, int64_t E, const int32_t* base, int32_t dq,
                          float* best, int32_t* q) {
  const int64_t sw = SW ? SW : sw_rt;
  const vi vdq = (vi){} + dq;
  int64_t e0 = 0;
  for (; e0 + V <= E; e0 += V) {
    vf v;
    if (SW == 1) {
      v = vload(R + e0 + off);
    } else if (SW == 2) {
      v = vload_even(R + 2 * e0 + off);
    } else {
      for (int l = 0; l < V; ++l) v[l] = R[(e0 + l) * sw + off];
    }
    const vf b = vload(best + e0);
    vi qv, bv;
    __builtin_memcpy(&qv, q + e0, sizeof(vi));
    __builtin_memcpy(&bv, base + e0, sizeof(vi));
    const vi take = (vi)(v > b) | (vi)(v != v);
    vstore(best + e0, (vf)(((vi)v & take) | ((vi)b & ~take)));
    qv = ((bv + vdq) & take) | (qv & ~take);
    __builtin_memcpy(q + e0, &qv, sizeof(vi));
  }
  for (int64_t e = e0; e < E; ++e) {
    const float v = R[e * sw + off];
    if (v > best[e] || v != v) {
      best[e] = v;
      q[e] = base[e] + dq;
    }
  }
}

static void pool_body(void* vctx, int64_t begin, int64_t end) {
  const PoolCtx& cx = *static_cast<PoolCtx*>(vctx);
  const PoolArgs& a = *cx.a;
  const PoolGeom& p = a.p;
  // one buffer per window row, V * sw floats of slack for the vector reads past the last cell
  const int64_t RL = p.OH * cx.L + (V + 1) * p.sw + (p.kw - 1) * p.dw;
  Scratch Rs(p.kh * RL * 4), best(cx.E * 4), q(cx.E * 4);
  const float ninf = -__builtin_huge_valf();
  for (int64_t nc = begin; nc < end; ++nc) {
    const int64_t n = nc / a.C, c = nc % a.C;
    const float* plane = a.x.p + n * a.x.s0 + c * a.x.s1;
    float* bst = best.f();
    int32_t* qq = static_cast<int32_t*>(q.p);
    for (int64_t e = 0; e < cx.E; ++e) bst[e] = ninf;
    __builtin_memcpy(qq, cx.init, sizeof(int32_t) * cx.E);
    for (int64_t i = 0; i < p.kh; ++i) {
      float* R = Rs.f() + i * RL;
      for (int64_t t = 0; t < RL; ++t) R[t] = ninf;
      bool any = false;
      for (int64_t oh = 0; oh < p.OH; ++oh) {
        const int64_t h = oh * p.sh - p.ph + i * p.dh;
        if (h < 0 || h >= p.H) continue;
        any = true;
        const float* src = plane + h * a.x.s2;
        float* dst = R + oh * cx.L + p.pw;
        if (a.x.s3 == 1) {
          __builtin_memcpy(dst, src, sizeof(float) * p.W);
        } else {
          for (int64_t w = 0; w < p.W; ++w) dst[w] = src[w * a.x.s3];
        }
      }
      if (!any) continue;
      for (int64_t j = 0; j < p.kw; ++j) {
        const int32_t dq = (int32_t)(i * p.dh * p.W + j * p.dw);
        if (p.sw == 1)
          pool_flat_tap<1>(R, j * p.dw, 1, cx.E, cx.base, dq, bst, qq);
        else if (p.sw == 2)
          pool_flat_tap<2>(R, j * p.dw, 2, cx.E, cx.base, dq, bst, qq);
        else
          pool_flat_tap<0>(R, j * p.dw, p.sw, cx.E, cx.base, dq, bst, qq);
      }
    }
    for (int64_t oh = 0; oh < p.OH; ++oh) {
      const float* b = bst + oh * cx.PWs;
      float* dst = a.out.p + n * a.out.s0 + c * a.out.s1 + oh * a.out.s2;
      if (a.out.s3 == 1) {
        __builtin_memcpy(dst, b, sizeof(float) * p.OW);
      } else {
        for (int64_t ow = 0; ow < p.OW; ++ow) dst[ow * a.out.s3] = b[ow];
      }
      if (a.idx) {
        const int32_t* qr = qq + oh * cx.PWs;
        int64_t* id = a.idx + n * a.is0 + c * a.is1 + oh * a.is2;
        for (int64_t ow = 0; ow < p.OW; ++ow) id[ow * a.is3] = qr[ow];
      }
    }
  }
}

static void max_pool_impl(const PoolArgs& a, ParallelFn parallel) {
  const PoolGeom& p = a.p;
  PoolCtx cx;
  cx.a = &a;
  // A buffer row holds every column a window reads, (OW-1)*sw + (kw-1)*dw, and the whole padded row.
  const int64_t need = imax((p.OW - 1) * p.sw + (p.kw - 1) * p.dw + 1, p.pw + p.W);
  cx.PWs = cdiv(need, p.sw);
  cx.L = cx.PWs * p.sw;
  cx.E = p.OH * cx.PWs;
  Scratch base(cx.E * 4), init(cx.E * 4);
  int32_t* b = static_cast<int32_t*>(base.p);
  int32_t* in = static_cast<int32_t*>(init.p);
  for (int64_t oh = 0; oh < p.OH; ++oh) {
    const int64_t h0 = oh * p.sh - p.ph, hf = h0 + first_in_range(h0, p.dh) * p.dh;
    for (int64_t ow = 0; ow < cx.PWs; ++ow) {
      const int64_t w0 = ow * p.sw - p.pw;
      b[oh * cx.PWs + ow] = (int32_t)(h0 * p.W + w0);
      in[oh * cx.PWs + ow] = (int32_t)(hf * p.W + w0 + first_in_range(w0, p.dw) * p.dw);
    }
  }
  cx.base = b;
  cx.init = in;
  parallel(a.N * a.C, &cx, pool_body);
}
