// The CUDA backend's ops run by the block-program emulator (cuda/emulator.h) on CPU tensors: the
// Python module cnnfast._C.emulated_cuda, with one function per op of the same name and arguments as
// torch.ops.cnnfast.*_kernel. Compiled in every build, with the host compiler, so the test suite
// runs the CUDA kernels' programs (backend "emulated_cuda") on machines without a GPU.
#include <torch/extension.h>

#include <vector>

#include "../cuda/emulator.h"
#include "../cuda/ops_impl.h"
#include "emulated_cuda.h"

namespace cnnfast {
namespace cuda {

namespace {

using Ints = std::vector<int64_t>;
using OptTensor = std::optional<at::Tensor>;

void check_cpu(const at::Tensor& t) {
  TORCH_CHECK(t.device().is_cpu(), "emulated_cuda: the emulator runs on CPU tensors, got one on ", t.device());
}

}  // namespace

void register_emulator(pybind11::module& parent) {
  auto m = parent.def_submodule("emulated_cuda", "the CUDA kernels' block programs run on the CPU (for tests)");
  m.def(
      "launches",
      [] {
        const std::lock_guard<std::mutex> lock(launch_log_mutex());
        std::vector<std::string> out;
        out.swap(launch_log());
        return out;
      },
      "the programs the emulator ran since the last call, one description each");
  m.def("conv2d_fwd_kernel", [](const at::Tensor& x, const at::Tensor& w, const OptTensor& b, Ints stride,
                                Ints padding, Ints dilation, int64_t groups, bool allow_tf32, const at::Tensor& out) {
    check_cpu(x);
    impl::conv2d_fwd<EmulatorExec>(x, w, b, stride, padding, dilation, groups, allow_tf32, out);
  });
  m.def("conv2d_input_grad_kernel", [](const at::Tensor& grad, const at::Tensor& w, Ints stride, Ints padding,
                                       Ints dilation, int64_t groups, bool allow_tf32, const at::Tensor& out) {
    check_cpu(grad);
    impl::conv2d_input_grad<EmulatorExec>(grad, w, stride, padding, dilation, groups, allow_tf32, out);
  });
  m.def("conv2d_weight_grad_kernel", [](const at::Tensor& x, const at::Tensor& grad, Ints stride, Ints padding,
                                        Ints dilation, int64_t groups, bool allow_tf32, const at::Tensor& out) {
    check_cpu(x);
    impl::conv2d_weight_grad<EmulatorExec>(x, grad, stride, padding, dilation, groups, allow_tf32, out);
  });
  m.def("conv2d_bias_grad_kernel", [](const at::Tensor& grad, const at::Tensor& out) {
    check_cpu(grad);
    impl::conv2d_bias_grad<EmulatorExec>(grad, out);
  });
  m.def("max_pool2d_fwd_kernel", [](const at::Tensor& x, Ints kernel, Ints stride, Ints padding, Ints dilation,
                                    const at::Tensor& out, const OptTensor& indices) {
    check_cpu(x);
    impl::max_pool2d_fwd<EmulatorExec>(x, kernel, stride, padding, dilation, out, indices);
  });
  m.def("max_pool2d_bwd_kernel", [](const at::Tensor& grad, const at::Tensor& indices, Ints kernel, Ints stride,
                                    Ints padding, Ints dilation, const at::Tensor& out) {
    check_cpu(grad);
    impl::max_pool2d_bwd<EmulatorExec>(grad, indices, kernel, stride, padding, dilation, out);
  });
  m.def("conv_relu_maxpool2d_fwd_kernel",
        [](const at::Tensor& x, const at::Tensor& w, const OptTensor& b, Ints stride, Ints padding, Ints dilation,
           int64_t groups, Ints conv_out_size, Ints pool_kernel, Ints pool_stride, Ints pool_padding,
           Ints pool_dilation, bool allow_tf32, const at::Tensor& out, const OptTensor& pos) {
          check_cpu(x);
          impl::fused_fwd<EmulatorExec>(x, w, b, stride, padding, dilation, groups, conv_out_size, pool_kernel,
                                        pool_stride, pool_padding, pool_dilation, allow_tf32, out, pos);
        });
  m.def("conv_relu_maxpool2d_input_grad_kernel",
        [](const at::Tensor& grad, const at::Tensor& pos, const at::Tensor& w, Ints stride, Ints padding,
           Ints dilation, int64_t groups, Ints conv_out_size, Ints pool_kernel, Ints pool_stride, Ints pool_padding,
           Ints pool_dilation, bool allow_tf32, const at::Tensor& out) {
          check_cpu(grad);
          impl::fused_input_grad<EmulatorExec>(grad, pos, w, stride, padding, dilation, groups, conv_out_size,
                                               pool_kernel, pool_stride, pool_padding, pool_dilation, allow_tf32, out);
        });
  m.def("conv_relu_maxpool2d_weight_grad_kernel",
        [](const at::Tensor& x, const at::Tensor& grad, const at::Tensor& pos, Ints stride, Ints padding,
           Ints dilation, int64_t groups, Ints conv_out_size, Ints pool_kernel, Ints pool_stride, Ints pool_padding,
           Ints pool_dilation, bool allow_tf32, const at::Tensor& out) {
          check_cpu(x);
          impl::fused_weight_grad<EmulatorExec>(x, grad, pos, stride, padding, dilation, groups, conv_out_size,
                                                pool_kernel, pool_stride, pool_padding, pool_dilation, allow_tf32, out);
        });
  m.def("conv_relu_maxpool2d_bias_grad_kernel", [](const at::Tensor& grad, const at::Tensor& pos, const at::Tensor& out) {
    check_cpu(grad);
    impl::fused_bias_grad<EmulatorExec>(grad, pos, out);
  });
}

}  // namespace cuda
}  // namespace cnnfast
