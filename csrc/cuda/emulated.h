// The Python binding of the CUDA kernels' emulator (emulated.cpp), registered by ops.cpp.
#pragma once

#include <torch/extension.h>

namespace cnnfast {
namespace cuda {

void register_emulator(pybind11::module& parent);

}  // namespace cuda
}  // namespace cnnfast
