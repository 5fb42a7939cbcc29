// The CPU vector engine's interface: plain structs of float32 pointers and int64 strides, no ATen.
// engine.cpp compiles the engine (engine.h, engine/) twice, for AVX2+FMA and for the compiler's
// baseline, and picks one at run time; the ATen glue (conv2d.cpp, max_pool2d.cpp,
// conv_relu_maxpool2d.cpp, glue.h) converts dtypes and layouts, and supplies the thread pool through
// `ParallelFn`.
#pragma once

#include <cstdint>

#include "../common/geometry.h"

namespace cnnfast {
namespace cpu {

// A float32 4-D view with arbitrary int64 strides.
struct View4 {
  float* p;
  int64_t s0, s1, s2, s3;
};

// The conv-output gradient of the fused op, never stored: dy(n, k, h, w) is the sum, over the pool
// windows (ph, pw) holding (h, w) at tap (i, j) with pos[n, k, ph, pw] == i * pkw + j, of
// grad[n, k, ph, pw], in ascending (ph, pw) order (the gather order of geometry.h's pool_gather).
// The engine rebuilds rows of it where it would have read them.
struct Unpooled {
  View4 grad;  // (N, K, PH, PW)
  const void* pos;
  int pos_bytes;
  int64_t ps0, ps1, ps2, ps3;
  PoolGeom p;              // p.H, p.W: dy's size; p.OH, p.OW: grad's
  const int64_t* tap_h;    // per window tap q = i * kw + j: i * dh - ph and j * dw - pw, so that the
  const int64_t* tap_w;    // cell chosen by window (ph, pw) is (ph * sh + tap_h[q], pw * sw + tap_w[q])
};

// Runs body(ctx, begin, end) over [0, count) on the thread pool.
using Body = void (*)(void* ctx, int64_t begin, int64_t end);
using ParallelFn = void (*)(int64_t count, void* ctx, Body body);

// y = conv(x, w) + bias. x is read through `x` (N, C, Hx, Wx) where the convolution sees the
// zero-upsampled input  xs[t] = x[t / up] if t % up == 0 (up = 1: x itself), of size
// ((Hx-1)*up_h+1, (Wx-1)*up_w+1); this is how the input gradient runs as a forward convolution of dy.
// Padding (g.ph, g.pw) may be negative. w: contiguous float (K, C/groups, R, S). bias: K floats or null.
// x_unpool: read the input as that Unpooled (the fused op's input gradient) instead of x.
struct Conv2dForwardArgs {
  View4 x;
  const Unpooled* x_unpool = nullptr;
  int64_t Hx, Wx, up_h, up_w;
  const float* w;
  const float* bias;
  View4 y;
  ConvGeom g;  // g.H, g.W: the (upsampled) input size the convolution sees
};

// max_pool2d(relu(round(conv(x, w) + bias))) with the pooled window position written to `pos`
// (int8/16/32 per `pos_bytes`, same strides as `out`; null for none): i * pkw + j, or -1 where the
// pooled value is <= 0. `round_mode`: geometry.h's RoundMode for the conv output before ReLU.
struct ConvReluMaxpool2dForwardArgs {
  Conv2dForwardArgs conv;
  PoolGeom pool;  // pool.H, pool.W = conv output size
  void* pos;
  int pos_bytes;
  int64_t ps0, ps1, ps2, ps3;
  int round_mode;
};

// gw (contiguous float (K, C/groups, R, S)) = sum over n, oh, ow of dy[n,k,oh,ow] * x[...], split over
// fixed chunks of the batch (a function of N only) and reduced in chunk order: bit-for-bit repeatable
// whatever the number of threads. dy_unpool: read dy as that Unpooled (the fused op) instead of dy.
struct Conv2dWeightGradArgs {
  View4 x, dy;
  const Unpooled* dy_unpool = nullptr;
  float* gw;
  ConvGeom g;
};

// max_pool2d over float32 planes: out (N, C, OH, OW) and, when idx is given, the flattened index
// h * W + w of each chosen cell (int64, strides is0..is3), PyTorch's rule (NaN propagates, ties keep
// the first). Planes of fewer than 2^31 elements.
struct MaxPool2dForwardArgs {
  View4 x, out;
  int64_t N, C;
  PoolGeom p;
  int64_t* idx;
  int64_t is0, is1, is2, is3;
};

void conv_forward(const Conv2dForwardArgs& a, ParallelFn parallel);
void max_pool2d_forward(const MaxPool2dForwardArgs& a, ParallelFn parallel);
void conv_relu_maxpool2d_forward(const ConvReluMaxpool2dForwardArgs& a, ParallelFn parallel);
void conv_weight_grad(const Conv2dWeightGradArgs& a, ParallelFn parallel);

// Which instruction set the engine runs on here: "avx2" or "baseline".
const char* engine_isa();

}  // namespace cpu
}  // namespace cnnfast
