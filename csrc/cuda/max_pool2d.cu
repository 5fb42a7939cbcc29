// max_pool2d on CUDA: the ops of ops_impl.h launched on the GPU (pool.h: a thread per element, the
// backward a gather with no atomics).
#include <torch/library.h>

#include "device.cuh"
#include "ops_impl.h"

namespace cnnfast {
namespace cuda {

TORCH_LIBRARY_IMPL(cnnfast, CUDA, m) {
  m.impl("max_pool2d_fwd_kernel", &impl::max_pool2d_fwd<DeviceExec>);
  m.impl("max_pool2d_bwd_kernel", &impl::max_pool2d_bwd<DeviceExec>);
}

}  // namespace cuda
}  // namespace cnnfast
