// The fused conv2d + bias + ReLU + max_pool2d on CUDA: the ops of ops_impl.h launched on the GPU.
// Forward: direct convolution with POOL (narrow layers) or the implicit GEMM with the pooling
// epilogue (wide layers); either writes only the pooled output and the window position. Backward:
// unpool rebuilds the conv-output gradient as a gather, which the conv2d gradient ops consume, and
// the bias gradient sums the kept pooled gradients straight from (grad, pos).
#include <torch/library.h>

#include "device.cuh"
#include "ops_impl.h"

namespace cnnfast {
namespace cuda {

TORCH_LIBRARY_IMPL(cnnfast, CUDA, m) {
  m.impl("conv_relu_maxpool2d_fwd_kernel", &impl::fused_fwd<DeviceExec>);
  m.impl("conv_relu_maxpool2d_unpool_kernel", &impl::unpool<DeviceExec>);
  m.impl("conv_relu_maxpool2d_bias_grad_kernel", &impl::fused_bias_grad<DeviceExec>);
}

}  // namespace cuda
}  // namespace cnnfast
