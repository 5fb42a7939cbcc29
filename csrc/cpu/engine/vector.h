// Vector primitives of the CPU engine: vf, V floats in a GCC vector (CNNFAST_V = 8: a 256-bit
// register), and vi, its int32 lane mask; loads (contiguous, broadcast, strided, stride-2), stores, a
// horizontal sum, PyTorch's max-pool rule and ReLU in lanes, and the integer helpers every file uses.
// The vectors are plain GCC vector extensions: the compiler lowers them to AVX2 in the copy built
// with CNNFAST_AVX2, to SSE2 pairs (or scalars) in the baseline copy. Lane masks are all-ones or
// zero, as GCC's vector comparisons return them, so a select is two ANDs and an OR.
//
// No include guard: engine.h includes this once per instruction set (see there).

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

// a where the lane mask `take` is set, else b (bit for bit: no arithmetic on the values).
static inline vf vselect(vi take, vf a, vf b) { return (vf)(((vi)a & take) | ((vi)b & ~take)); }
static inline vi vselect(vi take, vi a, vi b) { return (a & take) | (b & ~take); }
// geometry.h's pool_takes in lanes: where v replaces the running maximum b (greater, or NaN).
static inline vi vtakes(vf v, vf b) { return (vi)(v > b) | (vi)(v != v); }
// ReLU keeping NaN (NaN < 0 is false), as torch.relu does: the lanes below 0 cleared.
static inline vf vrelu(vf y) { return (vf)((vi)y & ~(vi)(y < vsplat(0.f))); }

static inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }
static inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
static inline int64_t floordiv(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
static inline int64_t roundup(int64_t a, int64_t b) { return cdiv(a, b) * b; }
