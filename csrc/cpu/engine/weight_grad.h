// The weight gradient, gw = sum over n, oh, ow of dy[n,k,oh,ow] * x[...], bit for bit repeatable
// whatever the number of threads: the batch is cut into fixed chunks (a function of the shape only,
// never of the threads), each chunk's partial gradient is summed by one of the two paths below, and
// the partials are then added in chunk order (reduce_body, in blocks of the gradient's elements
// spread over the threads).
//
// Along the output row (weight_grad_rows_*), for Kg not a multiple of V: the packing of the forward
// with a reduction over output pixels. A work item (a chunk of the batch, group g) packs, image by
// image, the input rows (P, as the forward) and dy (D[k][oh][ow], rows padded to OWp, a multiple of
// V), then per (c, r, s) and block of KB output channels sums dy rows times input rows in KB * NS
// vector accumulators (NS taps s sharing each load of dy) and adds each weight element's horizontal
// sum to the chunk's partial gradient.
//
// Across output channels (weight_grad_channels_*), for Kg a multiple of V: the GEMM view M = Kg
// (channel vectors), N = crs, K = the chunk's output pixels. conv_channels.h's cvec_taps with the
// roles of pixels and taps swapped: a tile is TB reduction indices (c, r, s) x KV channel vectors,
// summed over the pixels of every image of the batch chunk (dy transposed to pixel-major rows of Kg
// channels), in blocks of pixels whose dy rows stay in the L1 cache; each weight element keeps one
// chain over the chunk's pixels in order, whatever the blocking or threads. No horizontal sums: short
// rows (7x7, 14x14 feature maps) waste nothing. A work item is (a chunk of the batch, group g, a run
// of channel blocks).
//
// No include guard: engine.h includes this once per instruction set (see there).

// ---- weight gradient along the output row --------------------------------------------------------

// acc_out[k * crs + (c*R + r)*S + s] += sum over oh, ow of D[k][oh][ow] * P[c][oh*sh + r*dh][ow*sw + s*dw].
// NS consecutive taps s share each load of D: KB * NS vector accumulators. Every weight element keeps
// its own chain (lanes over ow, rows in order, then vsum), so the result does not depend on KB or NS.
template <int KB, int NS>
static void weight_grad_block(const float* P, int64_t HP, int64_t WP, const float* D, int64_t OH, int64_t OWp,
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
        vf acc[NS][KB];  // (constant trips: the zeroing unrolls fully)
        for (int t = 0; t < NS; ++t)
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

using WeightGradFn = void (*)(const float*, int64_t, int64_t, const float*, int64_t, int64_t, int64_t, int64_t,
                              int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, float*, int64_t);

// Channel block for the weight gradient: KB * NS accumulators within the register budget, with NS
// covering the kernel's row (S <= 3) so that no tap group computes a dummy tap and every load of dy
// serves S taps; blocks of equal size (Kg = 6, S = 3: two blocks of 3 rather than 6 with NS = 2).
static int64_t weight_grad_kb(int64_t Kg, int64_t S) {
  const int64_t ns = imin(3, S);
  const int64_t widest = imax(1, imin(8, CNNFAST_ACC / ns));
  return cdiv(Kg, cdiv(Kg, widest));
}

static int weight_grad_ns(int64_t kb, int64_t S) {
  int ns = (int)imax(1, imin(3, CNNFAST_ACC / kb));
  return (int)imin(ns, S);
}

template <int KB>
static WeightGradFn weight_grad_fn_ns(int ns) {
  return ns >= 3 ? weight_grad_block<KB, 3> : ns == 2 ? weight_grad_block<KB, 2> : weight_grad_block<KB, 1>;
}

static WeightGradFn weight_grad_fn(int64_t kb, int ns) {
  switch (kb) {
    case 1: return weight_grad_fn_ns<1>(ns);
    case 2: return weight_grad_fn_ns<2>(ns);
    case 3: return weight_grad_fn_ns<3>(ns);
    case 4: return weight_grad_fn_ns<4>(ns);
    case 5: return weight_grad_fn_ns<5>(ns);
    case 6: return weight_grad_fn_ns<6>(ns);
    case 7: return weight_grad_fn_ns<7>(ns);
    default: return weight_grad_fn_ns<8>(ns);
  }
}

struct WeightGradRowsCtx {
  const Conv2dWeightGradArgs* a;
  float* ws;  // [chunk][K][crs]
  int64_t chunks, per_chunk;
};

static void weight_grad_rows_body(void* vctx, int64_t begin, int64_t end) {
  const WeightGradRowsCtx& cx = *static_cast<WeightGradRowsCtx*>(vctx);
  const Conv2dWeightGradArgs& a = *cx.a;
  const ConvGeom& g = a.g;
  const int64_t Cg = g.Cg(), Kg = g.Kg(), G = g.groups, crs = Cg * g.R * g.S;
  const int64_t OWp = roundup(g.OW, V);
  const int64_t WP = roundup(extent(OWp, g.sw, g.S, g.dw), V);
  const int64_t HP = extent(g.OH, g.sh, g.R, g.dh);
  Scratch P(Cg * HP * WP * 4), D(Kg * g.OH * OWp * 4);
  for (int64_t item = begin; item < end; ++item) {
    const int64_t chunk = item / G, g_ = item % G;
    float* out = cx.ws + (chunk * g.K + g_ * Kg) * crs;
    for (int64_t i = 0; i < Kg * crs; ++i) out[i] = 0.f;
    const int64_t n_end = imin(g.N, (chunk + 1) * cx.per_chunk);
    for (int64_t n = chunk * cx.per_chunk; n < n_end; ++n) {
      pack(a.x, nullptr, n, g_ * Cg, Cg, g.H, g.W, 1, 1, -g.ph, -g.pw, HP, WP, P.f());
      pack(a.dy, a.dy_unpool, n, g_ * Kg, Kg, g.OH, g.OW, 1, 1, 0, 0, g.OH, OWp, D.f());
      const int64_t kbmax = weight_grad_kb(Kg, g.S);
      for (int64_t k0 = 0; k0 < Kg; k0 += kbmax) {
        const int64_t kb = imin(kbmax, Kg - k0);
        weight_grad_fn(kb, weight_grad_ns(kb, g.S))(P.f(), HP, WP, D.f() + k0 * g.OH * OWp, g.OH, OWp, g.OW, Cg, g.R,
                                                    g.S, g.sh, g.sw, g.dh, g.dw, out + k0 * crs, crs);
      }
    }
  }
}

// The chunks' partial gradients into ws ([chunk][K][crs]), per_chunk images each.
static void weight_grad_rows(const Conv2dWeightGradArgs& a, int64_t per_chunk, float* ws, ParallelFn parallel) {
  WeightGradRowsCtx cx;
  cx.a = &a;
  cx.per_chunk = per_chunk;
  cx.chunks = cdiv(a.g.N, per_chunk);
  cx.ws = ws;
  parallel(cx.chunks * a.g.groups, &cx, weight_grad_rows_body);
}

// ---- weight gradient across output channels ------------------------------------------------------

struct WeightGradChannelsCtx {
  const Conv2dWeightGradArgs* a;
  float* ws;  // [chunk][K][crs]
  int64_t chunks, per_chunk, HP, WP, splits, kv_per_split;
  int KV, TB;
};

static void weight_grad_channels_body(void* vctx, int64_t begin, int64_t end) {
  const WeightGradChannelsCtx& cx = *static_cast<WeightGradChannelsCtx*>(vctx);
  const Conv2dWeightGradArgs& a = *cx.a;
  const ConvGeom& g = a.g;
  const int64_t Cg = g.Cg(), Kg = g.Kg(), G = g.groups, crs = Cg * g.R * g.S, nkv = Kg / V;
  const int64_t img_floats = Cg * cx.HP * cx.WP, Mi = g.OH * g.OW, Mmax = cx.per_chunk * Mi;
  const int64_t ntiles = cdiv(crs, cx.TB);
  // Pixel blocks whose dy rows (MB x KV vectors) fill at most 16 KiB of the L1 cache.
  const int64_t MB = imax(1, 16384 / (cx.KV * V * 4));
  Scratch P(cx.per_chunk * img_floats * 4), D(Kg * Mi * 4), Dt(Mmax * Kg * 4), pix(Mmax * 8), toff(crs * 8),
      sums(ntiles * cx.TB * cx.KV * V * 4);
  int64_t *px = pix.as<int64_t>(), *to = toff.as<int64_t>();
  vf* sm = sums.as<vf>();
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

// The chunks' partial gradients into ws ([chunk][K][crs]), per_chunk images each.
static void weight_grad_channels(const Conv2dWeightGradArgs& a, int64_t per_chunk, float* ws, ParallelFn parallel) {
  const ConvGeom& g = a.g;
  WeightGradChannelsCtx cx;
  cx.a = &a;
  cx.ws = ws;
  cx.per_chunk = per_chunk;
  cx.chunks = cdiv(g.N, per_chunk);
  cx.HP = extent(g.OH, g.sh, g.R, g.dh);
  cx.WP = extent(g.OW, g.sw, g.S, g.dw);
  cx.KV = cvec_kv(g.Kg() / V);
  cx.TB = (int)imin(8, CNNFAST_ACC / cx.KV);
  const int64_t runs = cx.chunks * g.groups, kv_blocks = cdiv(g.Kg() / V, cx.KV);
  split_channel_blocks(kv_blocks, runs, 32, &cx.kv_per_split, &cx.splits);
  parallel(runs * cx.splits, &cx, weight_grad_channels_body);
}

// ---- batch chunks and their reduction ------------------------------------------------------------

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

// The engine's weight gradient (engine_api.h's conv_weight_grad).
static void conv2d_weight_grad_impl(const Conv2dWeightGradArgs& a, ParallelFn parallel) {
  const ConvGeom& g = a.g;
  const int64_t total = g.K * g.Cg() * g.R * g.S;
  // Batch chunks, summed separately and then in chunk order: a function of the shape only, so the
  // summation order never depends on the threads. At most 16; for the channel-vectorised path at least
  // 256 output pixels each (short reductions would make the partial sums the bulk of the work).
  const bool channels = g.Kg() % V == 0;
  const int64_t per_chunk = imin(g.N, imax(cdiv(g.N, 16), channels ? cdiv(256, g.OH * g.OW) : 1));
  const int64_t chunks = cdiv(g.N, per_chunk);
  Scratch ws(chunks * total * 4);
  if (channels) {
    weight_grad_channels(a, per_chunk, ws.f(), parallel);
  } else {
    weight_grad_rows(a, per_chunk, ws.f(), parallel);
  }
  ReduceCtx rc{ws.f(), a.gw, chunks, total};
  parallel(cdiv(total, 4096), &rc, reduce_body);
}
