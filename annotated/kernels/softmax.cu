/*
---
title: Softmax in CUDA C with warp shuffles
summary: >-
  A row-wise float32 softmax in plain CUDA C: one warp per row with the row held in
  registers and reduced by __shfl_xor_sync, and one block per row with an online
  max-and-sum for long rows; checked against torch.softmax and measured against a copy.
time: 15 s
references:
  - key: milakov2018online
    authors: [Maxim Milakov, Natalia Gimelshein]
    title: Online normalizer calculation for softmax
    year: 2018
    venue: arXiv preprint
    arxiv: "1805.02867"
  - key: lin2018warp
    authors: [Yuan Lin, Vinod Grover]
    title: Using CUDA Warp-Level Primitives
    year: 2018
    venue: NVIDIA Developer Blog
    url: https://developer.nvidia.com/blog/using-cuda-warp-level-primitives/
  - key: williams2009roofline
    authors: [Samuel Williams, Andrew Waterman, David Patterson]
    title: "Roofline: An Insightful Visual Performance Model for Multicore
      Architectures"
    year: 2009
    venue: Communications of the ACM 52(4)
    url: https://doi.org/10.1145/1498765.1498785
memory:
  - {kernel: softmax_warp_per_row, from: global, to: registers,
     data: "a row of up to 1024 floats, 32 per lane at most"}
  - {kernel: softmax_warp_per_row, from: registers, to: registers,
     data: "max and sum across the warp by __shfl_xor_sync"}
  - {kernel: softmax_warp_per_row, from: registers, to: global,
     data: "the row's probabilities"}
  - {kernel: softmax_block_per_row, from: global, to: registers,
     data: "the row, read once for the running max and sum"}
  - {kernel: softmax_block_per_row, from: registers, to: shared,
     data: "one (max, sum) per warp"}
  - {kernel: softmax_block_per_row, from: L2, to: registers,
     data: "the row again, for the output"}
  - {kernel: softmax_block_per_row, from: registers, to: global,
     data: "the row's probabilities"}
---

Softmax turns a row of scores $x_1, \dots, x_N$ into probabilities:

$$
y_j = \frac{e^{x_j - m}}{\sum_k e^{x_k - m}}, \qquad m = \max_k x_k .
$$

Subtracting the maximum changes nothing in exact arithmetic and keeps every
exponential at most 1, so nothing overflows; it is what makes the kernel a chain of
two *reductions* over the row (a max, then a sum) followed by an elementwise step. It
is the normalisation inside [attention](../transformers/attention.md), run on every
row of every score matrix.

Per element the kernel does about five operations (a subtraction, an exponential, an
addition, a multiplication, a comparison) and must at least read the input and write
the output: 8 bytes in float32, under one operation per byte. By the roofline model
[@williams2009roofline] it is memory-bound on every GPU, and the best it can do is move
those 8 bytes per element at the speed of a plain copy. Written as separate PyTorch
operations (`max`, subtract, `exp`, `sum`, divide) it would read and write the row
several times over; a fused kernel reads it once and writes it once, if the row stays
on the chip between the reductions and the output.

Where the row stays depends on its length, and the two kernels here are the two
answers. A row of up to 1024 floats fits in the registers of one warp, 32 per lane,
and a warp reduces across its lanes with *shuffles*, register-to-register exchanges
that need no shared memory and no barrier [@lin2018warp]. A longer row is split over
a whole block; the block combines its warps' results through shared memory and reads
the row a second time for the output, from the L2 cache if it is still there. Its
max and sum come from one pass, by the *online* softmax [@milakov2018online]. The
driver `annotated/kernels/cuda/softmax.py` checks both against `torch.softmax` and,
on a GPU, measures them on $4096 \times N$ matrices against a copy and against
PyTorch's own fused kernel.
*/

#include <cuda_runtime.h>

#include <math_constants.h>  // CUDART_INF_F

// ## Reductions across a warp
//
// `__shfl_xor_sync(mask, v, offset)` gives each lane the `v` of lane `lane ^ offset`.
// With offsets 16, 8, 4, 2, 1 the lanes pair up in a *butterfly*: after the step with
// 16, lane $l$ holds the max of itself and lane $l \oplus 16$; after the step with 8,
// of four lanes; after five steps, of all 32, and every lane holds the same result.
// (A `__shfl_down_sync` tree leaves it in lane 0 only; here every lane needs the max
// to compute its own exponentials, so the butterfly saves a broadcast.) The mask
// `0xffffffff` says all 32 lanes take part, and the `_sync` makes the call wait for
// them: since Volta a warp's lanes need not run in lockstep.

constexpr unsigned int FULL_WARP = 0xffffffffu;

__device__ float warp_max(float value) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    value = fmaxf(value, __shfl_xor_sync(FULL_WARP, value, offset));
  }
  return value;  // in every lane
}

__device__ float warp_sum(float value) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    value += __shfl_xor_sync(FULL_WARP, value, offset);
  }
  return value;  // in every lane
}

// ## One warp per row
//
// For rows of up to 1024 floats. Lane $l$ holds columns $l, l + 32, l + 64, \dots$ in
// an array of `PER_LANE` registers: at each step $k$ the warp reads 32 consecutive
// floats, one 128-byte line, so every load is coalesced. The row is read from global
// memory once, reduced twice from registers (max, then the sum of exponentials), and
// written once: exactly the 8 bytes per element the roofline asks for. Lanes past the
// row's end hold $-\infty$, which neither wins the max nor adds to the sum
// ($e^{-\infty} = 0$).
//
// `PER_LANE` is a template parameter so that `values` is a fixed-size array the
// compiler keeps in registers (indexed by a variable it would spill to slow *local*
// memory); the launcher picks the smallest power of two with $32 \cdot$ `PER_LANE`
// $\ge N$. A block of 128 threads holds four warps, four rows. A warp whose row is
// past the end leaves at once: no block barrier follows, so that is safe.

template <int PER_LANE>
__global__ void softmax_warp_per_row(const float *input, float *output, int rows,
                                     int cols) {
  const int lane = threadIdx.x % 32;
  const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  if (row >= rows) {
    return;
  }
  input += static_cast<size_t>(row) * cols;  // this warp's row
  output += static_cast<size_t>(row) * cols;
  float values[PER_LANE];  // columns lane, lane + 32, ...
  float row_max = -CUDART_INF_F;
#pragma unroll
  for (int k = 0; k < PER_LANE; ++k) {
    const int col = lane + 32 * k;
    values[k] = col < cols ? input[col] : -CUDART_INF_F;
    row_max = fmaxf(row_max, values[k]);
  }
  row_max = warp_max(row_max);
  float row_sum = 0.0f;
#pragma unroll
  for (int k = 0; k < PER_LANE; ++k) {
    const int col = lane + 32 * k;
    values[k] = col < cols ? expf(values[k] - row_max) : 0.0f;
    row_sum += values[k];
  }
  const float inverse = 1.0f / warp_sum(row_sum);
#pragma unroll
  for (int k = 0; k < PER_LANE; ++k) {
    const int col = lane + 32 * k;
    if (col < cols) {
      output[col] = values[k] * inverse;
    }
  }
}

constexpr int ROWS_PER_BLOCK = 4;  // warps per block in softmax_warp_per_row

template <int PER_LANE>
static int launch_warp_per_row(const float *input, float *output, int rows, int cols,
                               cudaStream_t stream) {
  const int blocks = (rows + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK;
  softmax_warp_per_row<PER_LANE>
      <<<blocks, 32 * ROWS_PER_BLOCK, 0, stream>>>(input, output, rows, cols);
  return (int)cudaGetLastError();
}

extern "C" int softmax_warp_per_row_launch(const float *input, float *output,
                                           int rows, int cols, cudaStream_t stream) {
  if (rows == 0 || cols == 0) {
    return (int)cudaSuccess;
  }
  if (cols <= 32) return launch_warp_per_row<1>(input, output, rows, cols, stream);
  if (cols <= 64) return launch_warp_per_row<2>(input, output, rows, cols, stream);
  if (cols <= 128) return launch_warp_per_row<4>(input, output, rows, cols, stream);
  if (cols <= 256) return launch_warp_per_row<8>(input, output, rows, cols, stream);
  if (cols <= 512) return launch_warp_per_row<16>(input, output, rows, cols, stream);
  if (cols <= 1024) return launch_warp_per_row<32>(input, output, rows, cols, stream);
  return (int)cudaErrorInvalidValue;  // longer rows: softmax_block_per_row
}

// ## The online max and sum
//
// A row too long for one warp's registers has to be read twice: once to find $m$ and
// the denominator, once to write the output. The textbook order would read it three
// times (max, then sum, then output). Milakov and Gimelshein [@milakov2018online]
// compute the max and the sum in the same pass: keep a running max $m$ and a running
// sum $d = \sum e^{x_k - m}$ of the values seen so far; a new value $x$ that raises the
// max to $m' = \max(m, x)$ rescales the sum,
//
// $$
// d' = d \, e^{m - m'} + e^{x - m'} .
// $$
//
// Two partial states $(m_a, d_a)$ and $(m_b, d_b)$ of disjoint parts of the row
// combine the same way, $m = \max(m_a, m_b)$, $d = d_a e^{m_a - m} + d_b e^{m_b - m}$,
// and the combination is associative, so threads, warps and the block can each merge
// states in any tree. The one trap is a part with nothing in it, $(-\infty, 0)$:
// $-\infty - (-\infty)$ is NaN, so merging two empty states must give an empty
// state without computing it. Each element costs one `expf`: only one of the two
// exponentials in $d'$ differs from 1.

struct MaxSum {
  float max;  // the largest value seen
  float sum;  // the sum of exp(value - max) over the values seen
};

__device__ MaxSum combine(MaxSum a, MaxSum b) {
  const float max = fmaxf(a.max, b.max);
  if (max == -CUDART_INF_F) {
    return {max, 0.0f};  // both empty: avoid exp(-inf - -inf) = NaN
  }
  return {max, a.sum * expf(a.max - max) + b.sum * expf(b.max - max)};
}

__device__ void online_update(MaxSum &state, float value) {
  if (value > state.max) {
    state.sum = state.sum * expf(state.max - value) + 1.0f;  // rescale to the new max
    state.max = value;
  } else if (value != -CUDART_INF_F) {  // exp(-inf) adds nothing
    state.sum += expf(value - state.max);
  }
}

__device__ MaxSum warp_combine(MaxSum state) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    const MaxSum other = {__shfl_xor_sync(FULL_WARP, state.max, offset),
                          __shfl_xor_sync(FULL_WARP, state.sum, offset)};
    state = combine(state, other);
  }
  return state;  // in every lane
}

// ## One block per row
//
// For any row length. The block's `BLOCK` threads stride through the row together
// (thread $t$ takes columns $t, t + $ `BLOCK`$, \dots$, so each warp's loads are
// coalesced), each keeping its own online state. A butterfly of shuffles merges the
// 32 states of each warp; lane 0 of each warp puts its warp's state in shared memory;
// after a barrier, warp 0 merges those and puts the row's state back for everyone;
// after a second barrier, every thread walks its columns again and writes
// $e^{x_j - m} / d$.
//
// The second read is where this kernel pays for the row's length. With 1024 threads
// per block, up to two blocks per multiprocessor and 132 multiprocessors, an H200 has
// 264 rows in flight; rows of 16,384 floats are 64 KB each, 17 MB in all, well inside
// the 50 MB L2 cache, so the second read rarely reaches HBM. Rows several times longer
// than that would pay for it in full: 12 bytes per element instead of 8.

template <int BLOCK>
__global__ void __launch_bounds__(BLOCK)
    softmax_block_per_row(const float *input, float *output, int cols) {
  __shared__ MaxSum warp_states[BLOCK / 32];
  __shared__ MaxSum row_state;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  input += static_cast<size_t>(blockIdx.x) * cols;  // this block's row
  output += static_cast<size_t>(blockIdx.x) * cols;
  MaxSum state = {-CUDART_INF_F, 0.0f};
  for (int col = tid; col < cols; col += BLOCK) {
    online_update(state, input[col]);  // first read of the row
  }
  state = warp_combine(state);
  if (lane == 0) {
    warp_states[warp] = state;
  }
  __syncthreads();
  if (warp == 0) {
    state = lane < BLOCK / 32 ? warp_states[lane] : MaxSum{-CUDART_INF_F, 0.0f};
    state = warp_combine(state);
    if (lane == 0) {
      row_state = state;
    }
  }
  __syncthreads();
  const float row_max = row_state.max, inverse = 1.0f / row_state.sum;
  for (int col = tid; col < cols; col += BLOCK) {
    output[col] = expf(input[col] - row_max) * inverse;  // second read, from L2
  }
}

extern "C" int softmax_block_per_row_launch(const float *input, float *output,
                                            int rows, int cols, cudaStream_t stream) {
  constexpr int BLOCK = 1024;
  if (rows == 0 || cols == 0) {
    return (int)cudaSuccess;
  }
  softmax_block_per_row<BLOCK><<<rows, BLOCK, 0, stream>>>(input, output, cols);
  return (int)cudaGetLastError();
}

// ## Exercises
//
// 1. Change the warp kernel's loads to `float4` (each lane reading four consecutive
//    columns). Which rows does that forbid, and what does it change at $N = 1024$?
// 2. In `softmax_block_per_row`, keep the row in shared memory during the first pass
//    instead of reading it again. Up to which $N$ does that fit with 228 KB of shared
//    memory per multiprocessor, and how many blocks can then run on one at once?
// 3. Remove the `max == -inf` test in `combine` and find the smallest input that
//    makes the block kernel return NaN where `torch.softmax` does not.
// 4. Write the backward pass, $\bar x_j = y_j (\bar y_j - \sum_k \bar y_k y_k)$, as a
//    warp-per-row kernel. How many bytes per element must it move?
