// Memory access the block programs share: a strided 4-D view, float conversion of every storage
// dtype, and the window-position store of the fused op. Plain C++ (c10's Half and BFloat16 convert
// on host and device alike), so the emulator compiles it with the host compiler.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>

#include "../common/geometry.h"

namespace cnnfast {
namespace cuda {

template <typename T>
struct View {
  T* p;
  int64_t s0, s1, s2, s3;
  CNNFAST_HD T& at(int64_t a, int64_t b, int64_t c, int64_t d) const { return p[a * s0 + b * s1 + c * s2 + d * s3]; }
  CNNFAST_HD int64_t offset(int64_t a, int64_t b, int64_t c, int64_t d) const {
    return a * s0 + b * s1 + c * s2 + d * s3;
  }
};

template <typename T>
CNNFAST_HD float to_f(T v) {
  return static_cast<float>(v);
}

template <typename T>
CNNFAST_HD T from_f(float v) {
  return static_cast<T>(v);
}

// pos[offset] = value for an int8 / int16 / int32 window-position tensor.
CNNFAST_HD void store_pos(void* pos, int bytes, int64_t offset, int32_t value) {
  if (bytes == 1) {
    static_cast<int8_t*>(pos)[offset] = static_cast<int8_t>(value);
  } else if (bytes == 2) {
    static_cast<int16_t*>(pos)[offset] = static_cast<int16_t>(value);
  } else {
    static_cast<int32_t*>(pos)[offset] = value;
  }
}

CNNFAST_HD int32_t load_pos(const void* pos, int bytes, int64_t offset) {
  if (bytes == 1) return static_cast<const int8_t*>(pos)[offset];
  if (bytes == 2) return static_cast<const int16_t*>(pos)[offset];
  return static_cast<const int32_t*>(pos)[offset];
}

// The fused op's window positions: where they live and how wide each is.
struct PosView {
  void* p;
  int bytes;
  int64_t s0, s1, s2, s3;
  CNNFAST_HD void store(int64_t n, int64_t k, int64_t h, int64_t w, int32_t v) const {
    store_pos(p, bytes, n * s0 + k * s1 + h * s2 + w * s3, v);
  }
  CNNFAST_HD int32_t load(int64_t n, int64_t k, int64_t h, int64_t w) const {
    return load_pos(p, bytes, n * s0 + k * s1 + h * s2 + w * s3);
  }
};

}  // namespace cuda
}  // namespace cnnfast
