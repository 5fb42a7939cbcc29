// max_pool2d on CUDA: the host code of max_pool2d.h launched on the GPU (pool.h: a thread per
// element, the backward a gather with no atomics).
#include "device.cuh"
#include "max_pool2d.h"

CNNFAST_REGISTER_CUDA(register_max_pool2d)
