// The fused conv2d + bias + ReLU + max_pool2d on CUDA: the ops of ops_impl.h launched on the GPU.
// Forward: direct convolution with POOL (narrow layers) or the implicit GEMM with the pooling
// epilogue (wide layers); either writes only the pooled output and the window position. Backward:
// the conv-output gradient is rebuilt from (grad, pos) as a gather into a temporary that the conv2d
// gradient programs consume, and the bias gradient sums the kept pooled gradients from (grad, pos).
#include <torch/library.h>

#include "device.cuh"
#include "ops_impl.h"

namespace cnnfast {
namespace cuda {

TORCH_LIBRARY_IMPL(cnnfast, CUDA, m) {
  m.impl("conv_relu_maxpool2d_fwd_kernel", &impl::fused_fwd<DeviceExec>);
  m.impl("conv_relu_maxpool2d_input_grad_kernel", &impl::fused_input_grad<DeviceExec>);
  m.impl("conv_relu_maxpool2d_weight_grad_kernel", &impl::fused_weight_grad<DeviceExec>);
  m.impl("conv_relu_maxpool2d_bias_grad_kernel", &impl::fused_bias_grad<DeviceExec>);
}

}  // namespace cuda
}  // namespace cnnfast
