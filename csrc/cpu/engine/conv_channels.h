// The conv forward vectorised over output channels, and the channel-vectorised register tile it
// shares with the fused forward and the weight gradient. The GEMM view of a convolution: M = output
// pixels, N = output channels (in vectors of V), K = Cg*R*S, the reduction indices (c, r, s).
// cvec_taps() holds TB pixels x KV channel vectors (KV * TB <= CNNFAST_ACC accumulators) in registers:
// per reduction index, KV weight vectors and TB input broadcasts feed KV * TB FMAs, in index order (one
// chain per output element, as conv_row sums). This wastes no lanes on short rows and reads strided
// input as scalars. Weights are packed as [g][crs][Kg] (cvec_weights), the input as pack.h's P,
// addressed by per-pixel offsets pix[t] and per-index offsets toff[i] (cvec_tap_offsets). The weight
// gradient runs the same tile with the roles swapped: TB reduction indices x KV channel vectors,
// summed over pixels.
//
// The conv forward takes this path for Kg (output channels per group) a multiple of V: the Net's
// second conv, 6 -> 16 channels with 13-wide rows, and the wide layers of converted models, where
// conv_row's row blocks would waste lanes or gather strided input. A work item is (a run of B images
// or a chunk of one image's output rows, group g, a run of channel blocks). It packs its input rows
// (skipped when the previous item packed the same), then per block of KV channel vectors and per block
// of reduction indices whose weights fit the L1 cache, tiles of TB output pixels (row-major, across the
// item's images) run cvec_taps into per-pixel sums; bias is added and each pixel's channel vector is
// stored (one vector store where the output's channels are contiguous, channels_last; else lane by
// lane). Small images are taken B at a time so that a block of weights serves enough pixels; deep
// layers with few items split their channel blocks. The input gradient (an upsampled input) takes its
// pixels phase by phase, each over only the taps that meet nonzero input (conv_phase).
// conv2d_forward_impl, the engine's conv forward, picks this path or conv_rows.h's.
//
// No include guard: engine.h includes this once per instruction set (see there).

// ---- the channel-vectorised register tile --------------------------------------------------------

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

// The bias of channels [k0, k0 + KV * V) as KV vectors (zeros without bias).
static inline void load_bias(const float* bias, int64_t k0, int KV, vf* out) {
  for (int v = 0; v < KV; ++v) out[v] = bias ? vload(bias + k0 + v * V) : vsplat(0.f);
}

// ---- conv forward across output channels ---------------------------------------------------------

struct ConvChannelsCtx {
  const Conv2dForwardArgs* a;
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
static int64_t conv_phase(const Conv2dForwardArgs& a, int64_t oh, int64_t ow) {
  const ConvGeom& g = a.g;
  const int64_t qh = oh * g.sh - g.ph - floordiv(oh * g.sh - g.ph, a.up_h) * a.up_h;
  const int64_t qw = ow * g.sw - g.pw - floordiv(ow * g.sw - g.pw, a.up_w) * a.up_w;
  return qh * a.up_w + qw;
}

static void conv_channels_body(void* vctx, int64_t begin, int64_t end) {
  const ConvChannelsCtx& cx = *static_cast<ConvChannelsCtx*>(vctx);
  const Conv2dForwardArgs& a = *cx.a;
  const ConvGeom& g = a.g;
  const View4& y = a.y;
  const int64_t crs = cx.Cg * g.R * g.S, nkv = cx.Kg / V, nph = a.up_h * a.up_w;
  const int64_t HPmax = extent(cx.rows_per_chunk, g.sh, g.R, g.dh);
  const int64_t img_floats = cx.Cg * HPmax * cx.WP, Mmax = cx.B * cx.rows_per_chunk * g.OW;
  // The reduction in blocks of KC indices, whose weights (KC x KV vectors, 16 KiB) stay in the L1 cache
  // while every pixel of the item passes; the pixels' sums carry over from block to block.
  const int64_t KC = imax(1, 16384 / (cx.KV * V * 4));
  Scratch P(cx.B * img_floats * 4), toff(crs * 8), pix(Mmax * 8), dst(Mmax * 8), mph(Mmax * 8),
      sums(Mmax * cx.KV * V * 4), mstart((nph + 1) * 8);
  int64_t *to = toff.as<int64_t>(), *px = pix.as<int64_t>(), *yo = dst.as<int64_t>(), *ph_of = mph.as<int64_t>();
  int64_t* ms = mstart.as<int64_t>();
  vf* sm = sums.as<vf>();
  const CvecFn fn_full = cvec_fn(cx.KV, cx.TB);
  int64_t packed = -1, M = 0;
  for (int64_t item = begin; item < end; ++item) {
    const int64_t split = item % cx.splits, rest = item / cx.splits;  // splits fastest: packs are shared
    if (rest != packed) {
      const Item it = item_at(rest, cx.chunks, cx.G);
      const int64_t g_ = it.g, n0 = it.n * cx.B, n1 = imin(g.N, n0 + cx.B);
      const int64_t oh_lo = it.chunk * cx.rows_per_chunk, oh_hi = imin(g.OH, oh_lo + cx.rows_per_chunk);
      const int64_t HP = extent(oh_hi - oh_lo, g.sh, g.R, g.dh), Mi = (oh_hi - oh_lo) * g.OW;
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
    const int64_t g_ = item_at(rest, cx.chunks, cx.G).g;
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
      load_bias(a.bias, k0, cx.KV, bias);
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

static void conv_channels_forward(const Conv2dForwardArgs& a, ParallelFn parallel) {
  const ConvGeom& g = a.g;
  const int64_t G = g.groups, Kg = g.Kg(), Cg = g.Cg(), crs = Cg * g.R * g.S, nph = a.up_h * a.up_w;
  // The reduction indices phase by phase, and the weights in that order.
  Scratch perm(crs * 8), istart((nph + 1) * 8), w(G * crs * Kg * 4);
  int64_t *pm = perm.as<int64_t>(), *is = istart.as<int64_t>();
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
  ConvChannelsCtx cx;
  cx.a = &a;
  cx.w = w.f();
  cx.perm = pm;
  cx.istart = is;
  cx.Cg = Cg, cx.Kg = Kg, cx.G = G;
  cx.KV = cvec_kv(Kg / V);
  cx.TB = (int)imin(8, CNNFAST_ACC / cx.KV);
  cx.WP = extent(g.OW, g.sw, g.S, g.dw);
  // Images of fewer than 256 output pixels go B at a time (whole images); larger ones one at a time,
  // in row chunks when there are few.
  const int64_t want_pixels = 256, want_items = 32;
  cx.B = imin(g.N, cdiv(want_pixels, g.OH * g.OW));
  if (cx.B > 1) {
    cx.rows_per_chunk = g.OH, cx.chunks = 1;
  } else {
    split_rows(g.N * G, g.OH, &cx.rows_per_chunk, &cx.chunks);
  }
  const int64_t runs = cdiv(g.N, cx.B) * G * cx.chunks, kv_blocks = cdiv(Kg / V, cx.KV);
  split_channel_blocks(kv_blocks, runs, want_items, &cx.kv_per_split, &cx.splits);
  parallel(runs * cx.splits, &cx, conv_channels_body);
}

// The engine's conv forward (engine_api.h's conv_forward): channel-vectorised where Kg is a multiple
// of V, else along the rows.
static void conv2d_forward_impl(const Conv2dForwardArgs& a, ParallelFn parallel) {
  const ConvGeom& g = a.g;
  if (g.Kg() % V == 0 && g.OH > 0 && g.OW > 0) return conv_channels_forward(a, parallel);
  conv_rows_forward(a, parallel);
}
