// max_pool2d forward, and the max-pool tap passes it shares with the fused forward
// (conv_relu_maxpool2d.h). Both keep the running maximum over a window one tap at a time under
// PyTorch's rule (geometry.h's pool_takes: a value replaces the maximum when greater or NaN, so NaN
// propagates and ties keep the first), with the window index of the maximum alongside, branch-free so
// they vectorise. pool_flat_tap works on a flat layout, where cell e of every pooled row (of every
// channel) reads the buffer at e * sw + off: one vector loop over all the cells, whatever the width of
// their rows; pool_tap works on one pooled row with explicit column bounds.
//
// max_pool2d over float32 planes (values and optional int64 indices): a work item is a range of
// planes, each pooled in a flat layout: for every window row i, buffer R_i[oh * L + col] holds input
// row oh*sh - ph + i*dh at column col - pw (-inf outside the image; L = sw * PWs), so that pooled cell
// e = oh * PWs + ow reads R_i[e * sw + j * dw] for tap (i, j). Each tap is then one pool_flat_tap
// pass over all of the plane's cells. -inf cells never replace the running maximum under PyTorch's
// rule, so padding needs no checks. The index starts as PyTorch's (the window's first in-range cell,
// kept only when every value is -inf) and follows the maximum in int32 lanes: base[e] + i*dh*W + j*dw.
//
// No include guard: engine.h includes this once per instruction set (see there).

// ---- max-pool tap passes -------------------------------------------------------------------------

// The tap at buffer offset `off` for the E cells of a flat layout: cell e reads R[e * sw + off] and,
// where that takes best[e], stores it with the index q[e] = base[e] + dq (dq alone where base is
// null). SW is the stride sw when it is a compile-time 1 or 2, else 0 (sw = sw_rt). Whole vectors of
// cells, then the cells past the last multiple of V one by one; with stride 2 a vector also reads the
// float after its last cell's.
template <int SW>
static void pool_flat_tap_sw(const float* R, int64_t off, int64_t sw_rt, int64_t E, const int32_t* base,
                             int32_t dq, float* best, int32_t* q) {
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
    vi qv, index = vdq;
    __builtin_memcpy(&qv, q + e0, sizeof(vi));
    if (base) {
      vi bv;
      __builtin_memcpy(&bv, base + e0, sizeof(vi));
      index = bv + vdq;
    }
    const vi take = vtakes(v, b);
    vstore(best + e0, vselect(take, v, b));
    qv = vselect(take, index, qv);
    __builtin_memcpy(q + e0, &qv, sizeof(vi));
  }
  for (int64_t e = e0; e < E; ++e) {
    const float v = R[e * sw + off];
    if (pool_takes(v, best[e])) {
      best[e] = v;
      q[e] = (base ? base[e] : 0) + dq;
    }
  }
}

static void pool_flat_tap(int64_t sw, const float* R, int64_t off, int64_t E, const int32_t* base, int32_t dq,
                          float* best, int32_t* q) {
  if (sw == 1)
    pool_flat_tap_sw<1>(R, off, 1, E, base, dq, best, q);
  else if (sw == 2)
    pool_flat_tap_sw<2>(R, off, 2, E, base, dq, best, q);
  else
    pool_flat_tap_sw<0>(R, off, sw, E, base, dq, best, q);
}

// The running maxima of `count` cells before their first tap: -inf, at index 0.
static void reset_max(float* best, int32_t* q, int64_t count) {
  for (int64_t e = 0; e < count; ++e) {
    best[e] = -__builtin_huge_valf();
    q[e] = 0;
  }
}

// The running max over one tap of a window row for the pooled columns [lo, hi) of one row: column pw
// reads row[pw * psw + col_off] and, where that takes best[pw], stores it with the index `tap`; PSW
// is the pool stride when it is a compile-time 1 or 2, else 0 (runtime psw_rt).
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

// ---- max_pool2d forward --------------------------------------------------------------------------

struct MaxPool2dCtx {
  const MaxPool2dForwardArgs* a;
  int64_t PWs, L, E;            // cells per pooled row (padded), buffer row length, cells per plane
  const int32_t* base;          // (oh*sh - ph) * W + ow*sw - pw per cell
  const int32_t* init;          // PyTorch's initial index per cell
};

static void max_pool2d_body(void* vctx, int64_t begin, int64_t end) {
  const MaxPool2dCtx& cx = *static_cast<MaxPool2dCtx*>(vctx);
  const MaxPool2dForwardArgs& a = *cx.a;
  const PoolGeom& p = a.p;
  // one buffer per window row, V * sw floats of slack for the vector reads past the last cell
  const int64_t RL = p.OH * cx.L + (V + 1) * p.sw + (p.kw - 1) * p.dw;
  Scratch Rs(p.kh * RL * 4), best(cx.E * 4), q(cx.E * 4);
  const float ninf = -__builtin_huge_valf();
  for (int64_t nc = begin; nc < end; ++nc) {
    const int64_t n = nc / a.C, c = nc % a.C;
    const float* plane = a.x.p + n * a.x.s0 + c * a.x.s1;
    float* bst = best.f();
    int32_t* qq = q.as<int32_t>();
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
        pool_flat_tap(p.sw, R, j * p.dw, cx.E, cx.base, (int32_t)(i * p.dh * p.W + j * p.dw), bst, qq);
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

// The engine's max_pool2d forward (engine_api.h's max_pool2d_forward).
static void max_pool2d_forward_impl(const MaxPool2dForwardArgs& a, ParallelFn parallel) {
  const PoolGeom& p = a.p;
  MaxPool2dCtx cx;
  cx.a = &a;
  // A buffer row holds every column a window reads, (OW-1)*sw + (kw-1)*dw, and the whole padded row.
  const int64_t need = imax((p.OW - 1) * p.sw + (p.kw - 1) * p.dw + 1, p.pw + p.W);
  cx.PWs = cdiv(need, p.sw);
  cx.L = cx.PWs * p.sw;
  cx.E = p.OH * cx.PWs;
  Scratch base(cx.E * 4), init(cx.E * 4);
  int32_t *b = base.as<int32_t>(), *in = init.as<int32_t>();
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
  parallel(a.N * a.C, &cx, max_pool2d_body);
}
