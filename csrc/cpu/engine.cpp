// Builds the vector engine (engine.h, which includes engine/) once per instruction set and picks one at
// run time: AVX2+FMA where the CPU has it, else a baseline build with the compiler's default flags. The
// AVX2 copy is compiled under a target pragma, so the package needs no -march flag and runs on any
// x86-64 (and, with only the baseline copy, on any other CPU). CNNFAST_CPU_ISA=baseline forces the
// baseline.
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "engine_api.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#endif

namespace cnnfast {
namespace cpu {

namespace baseline {
#define CNNFAST_V 8
#define CNNFAST_ACC 6
#include "engine.h"
#undef CNNFAST_V
#undef CNNFAST_ACC
}  // namespace baseline

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define CNNFAST_HAVE_AVX2 1
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif
namespace avx2 {
#define CNNFAST_V 8
#define CNNFAST_ACC 12
#define CNNFAST_AVX2 1
#include "engine.h"
#undef CNNFAST_V
#undef CNNFAST_ACC
#undef CNNFAST_AVX2
}  // namespace avx2
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif

namespace {
int choose_isa() {
  const char* env = std::getenv("CNNFAST_CPU_ISA");
  if (env && std::strcmp(env, "baseline") == 0) return 0;
#ifdef CNNFAST_HAVE_AVX2
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 1;
#endif
  return 0;
}

int isa() {
  static const int chosen = choose_isa();
  return chosen;
}
}  // namespace

#ifdef CNNFAST_HAVE_AVX2
#define CNNFAST_DISPATCH(fn, ...) (isa() == 1 ? avx2::fn(__VA_ARGS__) : baseline::fn(__VA_ARGS__))
#else
#define CNNFAST_DISPATCH(fn, ...) baseline::fn(__VA_ARGS__)
#endif

void conv_forward(const Conv2dForwardArgs& a, ParallelFn parallel) { CNNFAST_DISPATCH(conv2d_forward_impl, a, parallel); }

void conv_relu_maxpool2d_forward(const ConvReluMaxpool2dForwardArgs& a, ParallelFn parallel) {
  CNNFAST_DISPATCH(conv_relu_maxpool2d_forward_impl, a, parallel);
}

void max_pool2d_forward(const MaxPool2dForwardArgs& a, ParallelFn parallel) {
  CNNFAST_DISPATCH(max_pool2d_forward_impl, a, parallel);
}

void conv_weight_grad(const Conv2dWeightGradArgs& a, ParallelFn parallel) {
  CNNFAST_DISPATCH(conv2d_weight_grad_impl, a, parallel);
}

const char* engine_isa() { return isa() == 1 ? "avx2" : "baseline"; }

}  // namespace cpu
}  // namespace cnnfast
