// The fused forward, conv2d + bias + ReLU + max_pool2d, so that the conv output is never stored:
// only the pooled output and the window positions `pos` are written. Two layouts, as for the conv:
//
// Along the conv output row (fused_rows_*): the conv rows of conv_rows.h with a pooling epilogue. A
// work item (image n, group g, a chunk of pooled rows) takes each pooled row in turn: it packs the
// input rows of that row's pool windows once, computes each window row (all Kg channels) into its
// slot of the row buffer, adds bias, rounds (geometry.h's RoundMode, as the unfused ops would see the
// stored value) and applies ReLU in place (bias_relu_row), and max-pools the slots (max_pool2d.h's
// passes). Where the windows start at column 0 with stride 1 or 2 and stay inside the buffer, one flat
// pass per tap pools every channel's row at once (pool_flat_tap); otherwise each channel's row is
// pooled with explicit column bounds (pool_tap).
//
// Across output channels (fused_channels_*), for Kg a multiple of V with pool windows inside the conv
// output (fused_channels_fit): the Net's second block, 6 -> 16 channels on 15x15, whose 13-wide conv
// rows would fill 16-lane row blocks poorly. GEMM view per image: M = pooled pixels x window taps,
// N = Kg, K = Cg*R*S. A work item (n, g, a chunk of pooled rows) packs its input rows once; then, per
// pooled pixel, TB window taps x KV channel vectors are held in registers (conv_channels.h's
// cvec_taps). Bias, rounding, ReLU and the max-pool rule run on the vectors (taps in window order, so
// ties and NaN go as in pool_tap). conv_relu_maxpool2d_forward_impl, the engine's fused forward,
// picks the channel path where it fits.
//
// No include guard: engine.h includes this once per instruction set (see there).

// ---- fused forward along the conv row ------------------------------------------------------------

// One pooled row of channel k: the values, and the window positions (q, or -1 where the value is
// <= 0; `final_q`: q holds the final positions already).
static void store_pooled(const ConvReluMaxpool2dForwardArgs& a, int64_t n, int64_t k, int64_t ph, const float* best,
                         const int32_t* q, int64_t PW, bool final_q = false) {
  const View4& o = a.conv.y;
  float* dst = o.p + n * o.s0 + k * o.s1 + ph * o.s2;
  if (o.s3 == 1) {
    __builtin_memcpy(dst, best, sizeof(float) * PW);
  } else {
    for (int64_t pw = 0; pw < PW; ++pw) dst[pw * o.s3] = best[pw];
  }
  if (!a.pos) return;
  with_pos_type(a.pos_bytes, [&](auto pos_type) {
    using PosT = decltype(pos_type);
    PosT* pdst = static_cast<PosT*>(a.pos) + n * a.ps0 + k * a.ps1 + ph * a.ps2;
    if (final_q && a.ps3 == 1) {
      for (int64_t pw = 0; pw < PW; ++pw) pdst[pw] = (PosT)q[pw];
    } else if (final_q) {
      for (int64_t pw = 0; pw < PW; ++pw) pdst[pw * a.ps3] = (PosT)q[pw];
    } else {
      for (int64_t pw = 0; pw < PW; ++pw) pdst[pw * a.ps3] = (PosT)(best[pw] <= 0.f ? -1 : q[pw]);
    }
  });
}

// r[ow] = relu(round(r[ow] + bias)) for ow < OW and -inf for OW <= ow < OWpad (a multiple of V), so
// that a window tap landing past the row is never taken; ReLU keeps NaN, as torch.relu does.
static void bias_relu_row(float* r, float bias, int64_t OW, int64_t OWpad, int round_mode) {
  const vf vb = vsplat(bias), ninf = vsplat(-__builtin_huge_valf());
  vi lane;
  for (int l = 0; l < V; ++l) lane[l] = l;
  for (int64_t ow0 = 0; ow0 < OWpad; ow0 += V) {
    vf y = vload(r + ow0) + vb;
    if (round_mode != kRoundNone)
      for (int l = 0; l < V; ++l) y[l] = round_to(y[l], round_mode);
    y = vrelu(y);
    const vi in = (vi)(lane + (int32_t)ow0 < (vi){} + (int32_t)OW);
    vstore(r + ow0, vselect(in, y, ninf));
  }
}

struct FusedCtx {
  RowPlan pl;  // its rows: the pooled rows
  const ConvReluMaxpool2dForwardArgs* f;
  explicit FusedCtx(const ConvReluMaxpool2dForwardArgs& f_) : pl(f_.conv, f_.pool.OH), f(&f_) {}
};

static void fused_rows_body(void* vctx, int64_t begin, int64_t end) {
  const FusedCtx& cx = *static_cast<FusedCtx*>(vctx);
  const RowPlan& pl = cx.pl;
  const ConvReluMaxpool2dForwardArgs& f = *cx.f;
  const Conv2dForwardArgs& a = f.conv;
  const ConvGeom& g = a.g;
  const PoolGeom& p = f.pool;
  const int64_t PH = p.OH, PW = p.OW;
  const int64_t conv_rows_max = extent(pl.rows_per_chunk, p.sh, p.kh, p.dh);
  const int64_t HPmax = extent(conv_rows_max, g.sh, g.R, g.dh);
  // rows: one slot of Kg x OWpad per window row, and one row of slack for pool_flat_tap's reads
  Scratch P(pl.Cg * HPmax * pl.WP * 4), rows((p.kh * pl.Kg + 1) * pl.OWpad * 4);
  Scratch best(imax(PW, pl.Kg * pl.OWpad) * 4), q(imax(PW, pl.Kg * pl.OWpad) * 4);
  // Flat pooling (all channels in one loop) when windows start at column 0 with stride 1 or 2 and
  // stay inside the row buffer; otherwise per channel with explicit column bounds.
  const bool flat = (p.sw == 1 || p.sw == 2) && p.pw == 0 && pl.OWpad % p.sw == 0 && pl.OWpad / p.sw >= PW &&
                    (PW - 1) * p.sw + (p.kw - 1) * p.dw < pl.OWpad;
  for (int64_t item = begin; item < end; ++item) {
    const Item it = item_at(item, pl.chunks, pl.G);
    const int64_t n = it.n, g_ = it.g;
    const int64_t ph_lo = it.chunk * pl.rows_per_chunk, ph_hi = imin(PH, ph_lo + pl.rows_per_chunk);
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
      int32_t* qq = q.as<int32_t>();
      // Pack once per pooled row for the rows [lo, hi]; compute only the window rows.
      const int64_t h_org = lo * g.sh - g.ph;
      const int64_t HP = extent(hi - lo + 1, g.sh, g.R, g.dh);
      pack(a.x, a.x_unpool, n, g_ * pl.Cg, pl.Cg, a.Hx, a.Wx, a.up_h, a.up_w, h_org, -g.pw, HP, pl.WP, P.f());
      for (int64_t i = 0; i < p.kh; ++i) {
        const int64_t oh = oh0 + i * p.dh;
        if (oh < 0 || oh >= p.H) continue;
        float* rw = rows.f() + i * pl.Kg * pl.OWpad;
        conv_row_blocks(pl, P.f(), HP, g_, (oh - lo) * g.sh, rw);
        for (int64_t k = 0; k < pl.Kg; ++k)
          bias_relu_row(rw + k * pl.OWpad, a.bias ? a.bias[g_ * pl.Kg + k] : 0.f, g.OW, pl.OWpad, f.round_mode);
      }
      if (flat) {
        // Every channel's pooled row at once: pooled cell e = k * PWs + pw reads row column
        // e * psw + j * dw, since OWpad = PWs * psw; long, branch-free vector loops.
        const int64_t PWs = pl.OWpad / p.sw, E = pl.Kg * PWs;
        reset_max(bst, qq, E);
        for (int64_t i = 0; i < p.kh; ++i) {
          const int64_t oh = oh0 + i * p.dh;
          if (oh < 0 || oh >= p.H) continue;
          const float* r = rows.f() + i * pl.Kg * pl.OWpad;
          for (int64_t j = 0; j < p.kw; ++j)
            pool_flat_tap(p.sw, r, j * p.dw, E, nullptr, (int32_t)(i * p.kw + j), bst, qq);
        }
        // The window positions (-1 where the pooled value is <= 0), all cells in one vector loop.
        for (int64_t e = 0; e < E; ++e) qq[e] = bst[e] <= 0.f ? -1 : qq[e];
        for (int64_t k = 0; k < pl.Kg; ++k)
          store_pooled(f, n, g_ * pl.Kg + k, ph, bst + k * PWs, qq + k * PWs, PW, true);
        continue;
      }
      for (int64_t k = 0; k < pl.Kg; ++k) {
        reset_max(bst, qq, PW);
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
        store_pooled(f, n, g_ * pl.Kg + k, ph, bst, qq, PW);
      }
    }
  }
}

static void fused_rows_forward(const ConvReluMaxpool2dForwardArgs& f, ParallelFn parallel) {
  FusedCtx cx(f);
  parallel(f.conv.g.N * f.conv.g.groups * cx.pl.chunks, &cx, fused_rows_body);
}

// ---- fused forward across output channels --------------------------------------------------------

struct FusedChannelsCtx {
  const ConvReluMaxpool2dForwardArgs* f;
  const float* w;  // [g][crs][Kg]
  int64_t Cg, Kg, G, WP, chunks, rows_per_chunk;
  int KV, TB;
};

// The pooled values of channels [k0, k0 + V) at (ph, pw), and their window positions (-1 where the
// value is <= 0).
static void fused_channels_store(const ConvReluMaxpool2dForwardArgs& f, int64_t n, int64_t k0, int64_t ph, int64_t pw, vf best,
                                 vi q) {
  const View4& o = f.conv.y;
  float* dst = o.p + n * o.s0 + k0 * o.s1 + ph * o.s2 + pw * o.s3;
  for (int l = 0; l < V; ++l) dst[l * o.s1] = best[l];
  if (!f.pos) return;
  with_pos_type(f.pos_bytes, [&](auto pos_type) {
    using PosT = decltype(pos_type);
    PosT* pd = static_cast<PosT*>(f.pos) + n * f.ps0 + k0 * f.ps1 + ph * f.ps2 + pw * f.ps3;
    for (int l = 0; l < V; ++l) pd[l * f.ps1] = (PosT)(best[l] <= 0.f ? -1 : q[l]);
  });
}

static void fused_channels_body(void* vctx, int64_t begin, int64_t end) {
  const FusedChannelsCtx& cx = *static_cast<FusedChannelsCtx*>(vctx);
  const ConvReluMaxpool2dForwardArgs& f = *cx.f;
  const Conv2dForwardArgs& a = f.conv;
  const ConvGeom& g = a.g;
  const PoolGeom& p = f.pool;
  const int64_t crs = cx.Cg * g.R * g.S, NT = p.kh * p.kw, nkv = cx.Kg / V;
  const int64_t conv_rows_max = extent(cx.rows_per_chunk, p.sh, p.kh, p.dh);
  const int64_t HPmax = extent(conv_rows_max, g.sh, g.R, g.dh);
  Scratch P(cx.Cg * HPmax * cx.WP * 4), toff(crs * 8), pix(NT * 8), acc(4 * 4 * V * 4);
  int64_t *to = toff.as<int64_t>(), *px = pix.as<int64_t>();
  vf* ac = acc.as<vf>();
  const CvecFn fn_full = cvec_fn(cx.KV, cx.TB), fn_rem = cvec_fn(cx.KV, (int)(NT % cx.TB));
  const vf ninf = vsplat(-__builtin_huge_valf());
  for (int64_t item = begin; item < end; ++item) {
    const Item it = item_at(item, cx.chunks, cx.G);
    const int64_t n = it.n, g_ = it.g;
    const int64_t ph_lo = it.chunk * cx.rows_per_chunk, ph_hi = imin(p.OH, ph_lo + cx.rows_per_chunk);
    const int64_t oh_lo = ph_lo * p.sh, oh_hi = (ph_hi - 1) * p.sh + (p.kh - 1) * p.dh;
    const int64_t HP = extent(oh_hi - oh_lo + 1, g.sh, g.R, g.dh);
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
          }
          load_bias(a.bias, k0, cx.KV, bias);
          for (int64_t t0 = 0; t0 < NT; t0 += cx.TB) {
            const int tb = (int)imin(cx.TB, NT - t0);
            (tb == cx.TB ? fn_full : fn_rem)(P.f(), px + t0, to, crs, wk, cx.Kg, nullptr, ac);
            for (int t = 0; t < tb; ++t)
              for (int v = 0; v < cx.KV; ++v) {
                vf y = ac[t * cx.KV + v] + bias[v];
                if (f.round_mode != kRoundNone)
                  for (int l = 0; l < V; ++l) y[l] = round_to(y[l], f.round_mode);
                y = vrelu(y);
                const vi take = vtakes(y, best[v]);
                best[v] = vselect(take, y, best[v]);
                q[v] = vselect(take, (vi){} + (int32_t)(t0 + t), q[v]);
              }
          }
          for (int v = 0; v < cx.KV; ++v) fused_channels_store(f, n, k0 + v * V, ph, pw, best[v], q[v]);
        }
      }
  }
}

// Whether the channel-vectorised path takes this call: Kg a multiple of V, no pool padding, every
// pool window inside the conv output, and a register tile of at least 2 taps x the channel vectors.
static bool fused_channels_fit(const ConvReluMaxpool2dForwardArgs& f) {
  const ConvGeom& g = f.conv.g;
  const PoolGeom& p = f.pool;
  const int64_t Kg = g.Kg();
  if (Kg % V != 0 || p.ph != 0 || p.pw != 0 || p.OH <= 0 || p.OW <= 0) return false;
  if ((p.OH - 1) * p.sh + (p.kh - 1) * p.dh >= p.H || (p.OW - 1) * p.sw + (p.kw - 1) * p.dw >= p.W) return false;
  return 2 * imin(Kg / V, 4) <= CNNFAST_ACC && p.kh * p.kw >= 2;
}

static void fused_channels_forward(const ConvReluMaxpool2dForwardArgs& f, ParallelFn parallel) {
  const ConvGeom& g = f.conv.g;
  const int64_t G = g.groups, Kg = g.Kg(), Cg = g.Cg(), crs = Cg * g.R * g.S;
  Scratch w(G * crs * Kg * 4);
  cvec_weights(f.conv.w, G, Kg, crs, nullptr, w.f());
  FusedChannelsCtx cx;
  cx.f = &f;
  cx.w = w.f();
  cx.Cg = Cg, cx.Kg = Kg, cx.G = G;
  cx.KV = cvec_kv(Kg / V);
  cx.TB = (int)imin(imin(4, CNNFAST_ACC / cx.KV), f.pool.kh * f.pool.kw);
  cx.WP = extent(f.pool.W, g.sw, g.S, g.dw);
  split_rows(g.N * G, f.pool.OH, &cx.rows_per_chunk, &cx.chunks);
  parallel(g.N * G * cx.chunks, &cx, fused_channels_body);
}

// The engine's fused forward (engine_api.h's conv_relu_maxpool2d_forward): channel-vectorised where it
// fits, else along the conv rows.
static void conv_relu_maxpool2d_forward_impl(const ConvReluMaxpool2dForwardArgs& f, ParallelFn parallel) {
  if (fused_channels_fit(f)) return fused_channels_forward(f, parallel);
  fused_rows_forward(f, parallel);
}
