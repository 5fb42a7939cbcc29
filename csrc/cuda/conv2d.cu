// conv2d on CUDA: the ops of ops_impl.h launched on the GPU (implicit GEMM on tensor cores for wide
// layers, direct convolution with shared-memory tiles for narrow ones; deterministic backward).
#include <torch/library.h>

#include "device.cuh"
#include "ops_impl.h"

namespace cnnfast {
namespace cuda {

TORCH_LIBRARY_IMPL(cnnfast, CUDA, m) {
  m.impl("conv2d_fwd_kernel", &impl::conv2d_fwd<DeviceExec>);
  m.impl("conv2d_input_grad_kernel", &impl::conv2d_input_grad<DeviceExec>);
  m.impl("conv2d_weight_grad_kernel", &impl::conv2d_weight_grad<DeviceExec>);
  m.impl("conv2d_bias_grad_kernel", &impl::conv2d_bias_grad<DeviceExec>);
}

}  // namespace cuda
}  // namespace cnnfast
