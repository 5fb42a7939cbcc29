// Warp-tile multiply-accumulate policies of the implicit-GEMM program (conv_gemm.h).
//
// A warp owns a 32 x 32 tile of C at (m0, n0) of its block's tile. For each staged slice of `bk`
// reduction steps it adds A(32 x bk) * B(bk x 32), both read from shared memory k-major:
// A(m, k) = As[k * lda + m] and B(k, n) = Bs[k * ldb + n]. store() writes the tile column-major,
// C(m, n) -> Cs[n * ldc + m], for the epilogue. A policy provides
//   using Elem;                      shared-memory element type
//   static constexpr int kK;         reduction steps per instruction (bk is a multiple)
//   static constexpr bool kCollective;   whether the calls are warp-wide (every lane calls, the
//                                    emulator calls once per warp with lane 0)
//   struct Acc;  zero(Acc&);  step(Acc&, As, lda, Bs, ldb, m0, n0, bk, lane);  store(Cs, ldc, Acc, m0, n0, lane)
//
// Policies: SimtF32 here (float32 FMA, exact: float32 with TF32 off); the tensor-core policy
// TensorCore<T> (wmma: float16 / bfloat16 m16n16k16, TF32 m16n16k8, float32 accumulation) in
// device.cuh, and its reference EmulatedTensorCore<T> with the same arithmetic contract in emulator.h.
#pragma once

#include <cmath>

#include "../common/geometry.h"

namespace cnnfast {
namespace cuda {

constexpr int kWarpTile = 32;

// float32 FMA. Lane l computes rows m0 + (l / 8) * 8 + [0, 8) and columns n0 + (l % 8) * 4 + [0, 4):
// per reduction step two 16-byte reads of A shared by 8 lanes and one of B shared by 4 groups.
struct SimtF32 {
  static constexpr const char* kName = "simt";
  using Elem = float;
  static constexpr int kK = 1;
  static constexpr bool kCollective = false;
  struct Acc {
    float v[8][4];
  };
  static CNNFAST_HD void zero(Acc& acc) {
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc.v[i][j] = 0.f;
  }
  static CNNFAST_HD void step(Acc& acc, const float* As, int lda, const float* Bs, int ldb, int m0, int n0, int bk,
                              int lane) {
    const float* a = As + m0 + (lane / 8) * 8;
    const float* b = Bs + n0 + (lane % 8) * 4;
    for (int k = 0; k < bk; ++k) {
      float av[8], bv[4];
#pragma unroll
      for (int i = 0; i < 8; ++i) av[i] = a[k * lda + i];
#pragma unroll
      for (int j = 0; j < 4; ++j) bv[j] = b[k * ldb + j];
#pragma unroll
      for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc.v[i][j] = fmaf(av[i], bv[j], acc.v[i][j]);
    }
  }
  static CNNFAST_HD void store(float* Cs, int ldc, const Acc& acc, int m0, int n0, int lane) {
    const int m = m0 + (lane / 8) * 8, n = n0 + (lane % 8) * 4;
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int i = 0; i < 8; ++i) Cs[(n + j) * ldc + m + i] = acc.v[i][j];
  }
};

// Round a float32 to TF32 (10 explicit mantissa bits), to nearest with ties away from zero, as the
// tensor cores' operand conversion (cvt.rna.tf32.f32) does; inf and NaN pass through.
CNNFAST_HD float round_tf32(float f) {
  uint32_t u = float_bits(f);
  if ((u & 0x7f800000u) == 0x7f800000u) return f;
  u += 0x1000u;
  return bits_float(u & 0xffffe000u);
}

}  // namespace cuda
}  // namespace cnnfast
