// conv2d on CUDA: the host code of conv2d.h launched on the GPU (implicit GEMM on tensor cores for
// wide layers, direct convolution with shared-memory tiles for narrow ones; deterministic backward).
#include "conv2d.h"
#include "device.cuh"

CNNFAST_REGISTER_CUDA(register_conv2d)
