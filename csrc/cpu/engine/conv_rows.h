// The conv forward, vectorised along the output row (direct convolution). A work item (image n,
// group g, a chunk of output rows) first packs the input rows it needs (pack.h: P[c][hp][wp]), so the
// inner loop has no bounds checks. One output row of KB <= 8 channels is then computed as KB x NV
// vector accumulators held in registers: per input channel c and tap (r, s), NV vector loads of P
// (shared by the KB channels) and KB weight broadcasts (PackedWeights, [c][r][s][KB]) feed KB * NV
// FMAs, one chain per output element in (c, r, s) order. Rows land in a row buffer of Kg x OWpad
// floats; the conv op adds bias and stores them, the fused op (conv_relu_maxpool2d.h) pools them there.
// Used where the output channels per group are not a multiple of V (conv_channels.h takes the rest).
//
// No include guard: engine.h includes this once per instruction set (see there).

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

// Everything a work item of the row-vectorised conv / fused forward needs, fixed per call: the packed
// weights, the row kernel per block kind, and the split of `rows` (output or pooled rows per image
// and group) into chunks.
struct RowPlan {
  const Conv2dForwardArgs* a;
  PackedWeights wp;
  int64_t G, Cg, Kg, OWpad, WP;
  RowFn fn[2];   // per block kind: full blocks of 8, the remainder
  int64_t nv[2];
  int64_t chunks, rows_per_chunk;

  RowPlan(const Conv2dForwardArgs& a_, int64_t rows)
      : a(&a_), wp(a_.w, a_.g.groups, a_.g.Kg(), a_.g.Cg() * a_.g.R * a_.g.S) {
    const ConvGeom& g = a_.g;
    G = g.groups;
    Cg = g.Cg();
    Kg = g.Kg();
    OWpad = roundup(g.OW, 4 * V);
    WP = roundup(extent(OWpad, g.sw, g.S, g.dw), V);
    const int kb_full = (int)imin(8, Kg), kb_rem = (int)(Kg % 8 == 0 ? kb_full : Kg % 8);
    const int kbs[2] = {kb_full, kb_rem};
    for (int i = 0; i < 2; ++i) {
      nv[i] = pick_nv(kbs[i], g.OW);
      fn[i] = g.sw == 1 ? row_fn_u<true>(kbs[i], (int)nv[i]) : row_fn_u<false>(kbs[i], (int)nv[i]);
    }
    split_rows(g.N * G, rows, &rows_per_chunk, &chunks);
  }
};

// Conv row hp0 of P (P packed from group g_'s input, HP rows): rows[k * OWpad + ow] for every k < Kg
// (bias not added), block by block.
static void conv_row_blocks(const RowPlan& pl, const float* P, int64_t HP, int64_t g_, int64_t hp0, float* rows) {
  const ConvGeom& g = pl.a->g;
  for (int64_t b = 0; b < pl.wp.nblk; ++b) {
    const int64_t k0 = b * 8;
    const int kind = (k0 + 8 <= pl.Kg) ? 0 : 1;
    pl.fn[kind](P, HP, pl.WP, pl.Cg, g.R, g.S, g.dh, g.dw, g.sw, hp0, pl.wp.block(g_, b),
                roundup(g.OW, pl.nv[kind] * V), rows + k0 * pl.OWpad, pl.OWpad);
  }
}

// Items of RowPlan: conv rows [oh_lo, oh_hi] of image n, group g_, packed once, then row by row into
// the row buffer, plus bias, stored.
static void conv_rows_body(void* vctx, int64_t begin, int64_t end) {
  const RowPlan& pl = *static_cast<RowPlan*>(vctx);
  const Conv2dForwardArgs& a = *pl.a;
  const ConvGeom& g = a.g;
  const int64_t HPmax = extent(pl.rows_per_chunk, g.sh, g.R, g.dh);
  Scratch P(pl.Cg * HPmax * pl.WP * 4), rows(pl.Kg * pl.OWpad * 4);
  for (int64_t item = begin; item < end; ++item) {
    const Item it = item_at(item, pl.chunks, pl.G);
    const int64_t n = it.n, g_ = it.g;
    const int64_t oh_lo = it.chunk * pl.rows_per_chunk, oh_hi = imin(g.OH, oh_lo + pl.rows_per_chunk) - 1;
    const int64_t HP = extent(oh_hi - oh_lo + 1, g.sh, g.R, g.dh);
    pack(a.x, a.x_unpool, n, g_ * pl.Cg, pl.Cg, a.Hx, a.Wx, a.up_h, a.up_w, oh_lo * g.sh - g.ph, -g.pw, HP, pl.WP,
         P.f());
    for (int64_t oh = oh_lo; oh <= oh_hi; ++oh) {
      const float* rw = rows.f();
      conv_row_blocks(pl, P.f(), HP, g_, (oh - oh_lo) * g.sh, rows.f());
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
    }
  }
}

static void conv_rows_forward(const Conv2dForwardArgs& a, ParallelFn parallel) {
  RowPlan pl(a, a.g.OH);
  parallel(a.g.N * a.g.groups * pl.chunks, &pl, conv_rows_body);
}
