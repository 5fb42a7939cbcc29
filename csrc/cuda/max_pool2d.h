// max_pool2d's host code on CUDA, for either execution context `Exec` (launch.h): pool.h's programs,
// a thread per element, the backward a gather with no atomics; in batch chunks.
#pragma once

#include "launch.h"

namespace cnnfast {
namespace cuda {

template <class Exec>
void max_pool2d_forward(const MaxPool2dForward& a) {
  launch_pooling<MaxPoolFwd, Exec>("max_pool2d_forward_kernel", a.x, a.x.scalar_type(), a.p,
                                   [&](auto& prog, auto t, int64_t n0, int64_t nc) {
    using T = decltype(t);
    prog.x = view_of<const T>(a.x.narrow(0, n0, nc));
    prog.out = view_of<T>(a.out.narrow(0, n0, nc));
    prog.indices = a.indices.has_value() ? view_of<int64_t>(a.indices->narrow(0, n0, nc)) : View<int64_t>{nullptr, 0, 0, 0, 0};
  });
}

template <class Exec>
void max_pool2d_backward(const MaxPool2dBackward& a) {
  launch_pooling<MaxPoolBwd, Exec>("max_pool2d_backward_kernel", a.out, a.grad.scalar_type(), a.p,
                                   [&](auto& prog, auto t, int64_t n0, int64_t nc) {
    prog.indices = view_of<const int64_t>(a.indices.narrow(0, n0, nc));
    using T = decltype(t);
    prog.grad = view_of<const T>(a.grad.narrow(0, n0, nc));
    prog.out = view_of<T>(a.out.narrow(0, n0, nc));
  });
}

// max_pool2d's ops for the registrar `r` (see conv2d.h).
template <class Exec, class Registrar>
void register_max_pool2d(Registrar& r) {
  r.def("max_pool2d_forward_kernel", &ops::max_pool2d_forward_kernel<&max_pool2d_forward<Exec>>);
  r.def("max_pool2d_backward_kernel", &ops::max_pool2d_backward_kernel<&max_pool2d_backward<Exec>>);
}

}  // namespace cuda
}  // namespace cnnfast
