// Packing, and how a call is cut into work items. A work item first copies what its inner loops read
// into scratch, so that they have no bounds checks: pack() copies the input rows it needs into a
// zero-padded float32 P[c][hp][wp], which absorbs padding, any strides and layout, and the
// zero-upsampling by (uh, uw) the input gradient needs; pack_unpooled() builds the same P for the fused
// op's conv-output gradient, which is never stored: zeros, then each pooled cell's gradient added at
// the cell its window chose (pos), windows in ascending order, so every element sums as geometry.h's
// pool_gather would. PackedWeights lays the weights out for the row-vectorised kernels (conv_rows.h):
// blocks of up to 8 output channels, the channel fastest, so that a tap's weights for the block are 8
// consecutive floats.
//
// Work items: a forward item is (image n, group g, a chunk of output or pooled rows), numbered with
// the chunk fastest, then the group, then the image; calls with few images cut their rows into chunks
// so that there are about 32 items for the threads (ParallelFn). Channel-vectorised paths may also
// split their channel blocks across items (split_channel_blocks). Each call of a body (a range of
// items, on one thread) allocates its own Scratch, and items write disjoint outputs.
//
// No include guard: engine.h includes this once per instruction set (see there).

// ---- work items and scratch ----------------------------------------------------------------------

// Scratch memory of one body call (64-byte aligned, freed on scope exit).
struct Scratch {
  void* p;
  explicit Scratch(int64_t bytes) : p(aligned_alloc(64, (size_t)roundup(bytes > 0 ? bytes : 1, 64))) {}
  ~Scratch() { free(p); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  float* f() const { return static_cast<float*>(p); }
  template <class T>
  T* as() const {
    return static_cast<T*>(p);
  }
};

// The input extent that `n` outputs of a `k`-tap window with stride s and dilation d read:
// (n - 1) * s + (k - 1) * d + 1.
static inline int64_t extent(int64_t n, int64_t s, int64_t k, int64_t d) { return (n - 1) * s + (k - 1) * d + 1; }

// Chunks of rows per image and group: enough work items to keep every thread busy.
static int64_t row_chunks(int64_t images, int64_t rows) {
  const int64_t want = 32;
  return images >= want ? 1 : imin(rows, cdiv(want, images > 0 ? images : 1));
}

// `rows` rows of each of `images` (images x groups) cut into chunks of *rows_per_chunk rows (the
// last may be shorter): *chunks of them.
static void split_rows(int64_t images, int64_t rows, int64_t* rows_per_chunk, int64_t* chunks) {
  *rows_per_chunk = cdiv(rows, row_chunks(images, rows));
  *chunks = cdiv(rows, *rows_per_chunk);
}

// A forward work item's image (the run of images, for items of several), group and row chunk.
struct Item {
  int64_t n, g, chunk;
};
static inline Item item_at(int64_t item, int64_t chunks, int64_t G) {
  return Item{item / (chunks * G), (item / chunks) % G, item % chunks};
}

// Channel blocks per work item: enough items (runs x splits) for the threads, want_items at least
// where the blocks allow.
static void split_channel_blocks(int64_t kv_blocks, int64_t runs, int64_t want_items, int64_t* per_split,
                                 int64_t* splits) {
  *per_split = cdiv(kv_blocks, imin(kv_blocks, cdiv(want_items, runs)));
  *splits = cdiv(kv_blocks, *per_split);
}

// ---- packing -------------------------------------------------------------------------------------

// f(T{}) for the integer type T of the window positions `pos`: int8, int16 or int32 by pos_bytes.
template <class F>
static void with_pos_type(int pos_bytes, F f) {
  switch (pos_bytes) {
    case 1: return f(int8_t{});
    case 2: return f(int16_t{});
    default: return f(int32_t{});
  }
}

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
    return with_pos_type(u->pos_bytes, [&](auto pos_type) {
      pack_unpooled<decltype(pos_type)>(*u, n, c0, Cn, uh, uw, h_org, w_org, HP, WP, P);
    });
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
