// The CUDA backend's ops run by the block-program emulator (emulator.h) on CPU tensors: the Python
// module cnnfast._C.emulated_cuda, with one function per op of the same name and arguments as
// torch.ops.cnnfast.*_kernel, registered by the same functions as the GPU's (conv2d.h, ...).
// Compiled in every build, with the host compiler, so the test suite runs the CUDA kernels'
// programs (backend "emulated_cuda") on machines without a GPU.
#include <torch/extension.h>

#include <optional>
#include <string>
#include <vector>

#include "conv2d.h"
#include "conv_relu_maxpool2d.h"
#include "emulated.h"
#include "emulator.h"
#include "max_pool2d.h"

namespace cnnfast {
namespace cuda {

namespace {

void check_cpu(const at::Tensor& t) {
  TORCH_CHECK(t.device().is_cpu(), "emulated_cuda: the emulator runs on CPU tensors, got one on ", t.device());
}
void check_cpu(const std::optional<at::Tensor>& t) {
  if (t.has_value()) check_cpu(*t);
}
template <class T>
void check_cpu(const T&) {}

// A registrar that binds each op as a function of the Python module `m`, refusing tensors not on
// the CPU before the op's own checks.
struct PythonRegistrar {
  pybind11::module& m;
  template <class... A>
  void def(const char* name, void (*fn)(A...)) {
    m.def(name, [fn](A... args) {
      (check_cpu(args), ...);
      fn(args...);
    });
  }
};

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
  PythonRegistrar registrar{m};
  register_conv2d<EmulatorExec>(registrar);
  register_max_pool2d<EmulatorExec>(registrar);
  register_conv_relu_maxpool2d<EmulatorExec>(registrar);
}

}  // namespace cuda
}  // namespace cnnfast
