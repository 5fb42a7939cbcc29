// Every schema of the extension's ops, in one place, and the Python module cnnfast._C. Their C++
// signatures and argument checks are ops.h's; the CPU kernels (cpu/<op>.cpp) and the CUDA kernels
// (cuda/<op>.cu) register implementations for the CPU and CUDA dispatch keys, and the emulator
// (cuda/emulated.cpp) binds the CUDA host code to cnnfast._C.emulated_cuda under the same names.
//
// The ops are the kernels' entry points, not the public API: cnnfast/_extension.py allocates every
// output (so the test suite's poisoning applies, as for the Triton kernels), passes it as a mutable
// argument, and registers fake kernels; cnnfast/_ops.py wires autograd around the public custom ops.
// Names end in _kernel so they never meet the Python-defined ops of the same namespace. Python's
// torch.library registers fragments of `cnnfast` too, so this is a fragment as well.
#include <torch/extension.h>
#include <torch/library.h>

#include <torch/cuda.h>

#include "cpu/engine_api.h"
#include "cpu/glue.h"
#include "cuda/emulated.h"

TORCH_LIBRARY_FRAGMENT(cnnfast, m) {
  // allow_tf32: float32 may use TF32 tensor cores (CUDA; the CPU kernels compute float32 exactly).
  m.def("conv2d_forward_kernel(Tensor x, Tensor weight, Tensor? bias, int[] stride, int[] padding, int[] dilation, "
        "int groups, bool allow_tf32, Tensor(a!) out) -> ()");
  m.def("conv2d_input_grad_kernel(Tensor grad, Tensor weight, int[] stride, int[] padding, int[] dilation, "
        "int groups, bool allow_tf32, Tensor(a!) out) -> ()");
  m.def("conv2d_weight_grad_kernel(Tensor x, Tensor grad, int[] stride, int[] padding, int[] dilation, "
        "int groups, bool allow_tf32, Tensor(a!) out) -> ()");
  m.def("conv2d_bias_grad_kernel(Tensor grad, Tensor(a!) out) -> ()");
  m.def("max_pool2d_forward_kernel(Tensor x, int[] kernel_size, int[] stride, int[] padding, int[] dilation, "
        "Tensor(a!) out, Tensor(b!)? indices) -> ()");
  m.def("max_pool2d_backward_kernel(Tensor grad, Tensor indices, int[] kernel_size, int[] stride, int[] padding, "
        "int[] dilation, Tensor(a!) out) -> ()");
  m.def("conv_relu_maxpool2d_forward_kernel(Tensor x, Tensor weight, Tensor? bias, int[] stride, int[] padding, "
        "int[] dilation, int groups, int[] conv_out_size, int[] pool_kernel, int[] pool_stride, "
        "int[] pool_padding, int[] pool_dilation, bool allow_tf32, Tensor(a!) out, Tensor(b!)? pos) -> ()");
  // The fused op's gradients from the pooled gradient and the window positions (the conv-output
  // gradient is rebuilt inside, never returned).
  m.def("conv_relu_maxpool2d_input_grad_kernel(Tensor grad, Tensor pos, Tensor weight, int[] stride, int[] padding, "
        "int[] dilation, int groups, int[] conv_out_size, int[] pool_kernel, int[] pool_stride, int[] pool_padding, "
        "int[] pool_dilation, bool allow_tf32, Tensor(a!) out) -> ()");
  m.def("conv_relu_maxpool2d_weight_grad_kernel(Tensor x, Tensor grad, Tensor pos, int[] stride, int[] padding, "
        "int[] dilation, int groups, int[] conv_out_size, int[] pool_kernel, int[] pool_stride, int[] pool_padding, "
        "int[] pool_dilation, bool allow_tf32, Tensor(a!) out) -> ()");
  // The fused op's bias gradient: the sum of the pooled gradient where pos >= 0.
  m.def("conv_relu_maxpool2d_bias_grad_kernel(Tensor grad, Tensor pos, Tensor(a!) out) -> ()");
}

namespace {

bool has_cpu() { return true; }

bool has_cuda() {
#ifdef CNNFAST_WITH_CUDA
  return torch::cuda::is_available();
#else
  return false;
#endif
}

bool built_with_cuda() {
#ifdef CNNFAST_WITH_CUDA
  return true;
#else
  return false;
#endif
}

// What the CPU kernels' output temporary (cpu/glue.h: FloatOut) holds where a kernel writes nothing:
// `out` receives it (for the tests: NaN when $CNNFAST_POISON=1).
void unwritten_float_out(const at::Tensor& out) { cnnfast::cpu::FloatOut(out).finish(); }

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "cnnfast's C++/CUDA kernels; the ops live in torch.ops.cnnfast.*_kernel";
  m.def("has_cpu", &has_cpu, "whether the CPU kernels are built (always)");
  m.def("has_cuda", &has_cuda, "whether the CUDA kernels are built and a CUDA device is available");
  m.def("built_with_cuda", &built_with_cuda, "whether the CUDA kernels are built");
  m.def("cpu_isa", &cnnfast::cpu::engine_isa, "the instruction set the CPU engine runs on here");
  m.def("_unwritten_float_out", &unwritten_float_out,
        "copies into `out` the CPU kernels' output temporary as no kernel wrote it (for the tests)");
  cnnfast::cuda::register_emulator(m);
}
