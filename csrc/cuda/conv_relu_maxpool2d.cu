// The fused conv2d + bias + ReLU + max_pool2d on CUDA: the host code of conv_relu_maxpool2d.h
// launched on the GPU.
#include "conv_relu_maxpool2d.h"
#include "device.cuh"

CNNFAST_REGISTER_CUDA(register_conv_relu_maxpool2d)
