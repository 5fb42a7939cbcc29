// The CPU vector engine, split by subject under engine/ and included here in dependency order.
//
// No include guard and no includes of its own: engine.cpp includes this file (and so every file of
// engine/) once per instruction set, inside namespace cnnfast::cpu::<isa>, with CNNFAST_V (floats per
// vector), CNNFAST_ACC (vector accumulators the register file holds) and, for the AVX2 copy,
// CNNFAST_AVX2 defined; engine_api.h, geometry.h and <immintrin.h> are included there first.
// Everything here has internal linkage (static), so the copies built for different instruction sets
// never meet at link time; the files under engine/ have no include guards either.
//
// Direct convolution over a packed, zero-padded copy of the input rows a work item needs (pack.h),
// with the accumulators in vector registers, in one of two layouts chosen by shape:
//   - along the output row (conv_rows.h): KB output channels x NV row vectors per register tile;
//   - across output channels, where the channels per group are a multiple of V (conv_channels.h):
//     TB pixels x KV channel vectors per register tile, which wastes no lanes on short rows.
// The conv forward stores the rows plus bias. The fused forward (conv2d + bias + ReLU + max_pool2d)
// pools them from a row buffer or from the registers, so the conv output is never stored. The input
// gradient is a conv forward of dy, zero-upsampled for strided convolutions (the channel path takes
// only the taps that meet nonzero input). The weight gradient is the same packing with a reduction
// over output pixels, in fixed batch chunks summed in order. max_pool2d pools flat buffers of window
// rows, with the same tap pass as the fused op.

#include "engine/vector.h"               // vf, loads and stores, PyTorch's max rule in lanes
#include "engine/pack.h"                 // work items, Scratch; pack, pack_unpooled, PackedWeights
#include "engine/conv_rows.h"            // conv forward along the output row
#include "engine/conv_channels.h"        // the channel tile; conv forward across channels: conv2d_forward_impl
#include "engine/max_pool2d.h"           // max-pool tap passes; max_pool2d_forward_impl
#include "engine/conv_relu_maxpool2d.h"  // fused forward, both layouts: conv_relu_maxpool2d_forward_impl
#include "engine/weight_grad.h"          // weight gradient, both layouts: conv2d_weight_grad_impl
