/*
---
title: A parallel reduction in CUDA C
summary: >-
  Mark Harris's seven reduction kernels and a modern warp-shuffle one, summing float32
  arrays in plain CUDA C: what each step removes (divergence, bank conflicts, idle
  threads, barriers, launches), checked against torch.sum and measured against a
  device-to-device copy.
time: 15 s
references:
  - key: harris2007reduction
    authors: [Mark Harris]
    title: Optimizing Parallel Reduction in CUDA
    year: 2007
    venue: NVIDIA Developer Technology
    url: https://developer.download.nvidia.com/assets/cuda/files/reduction.pdf
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
  - {kernel: reduce_interleaved_divergent, from: global, to: shared,
     data: "one float per thread"}
  - {kernel: reduce_interleaved_divergent, from: shared, to: global,
     data: "one partial sum per block"}
  - {kernel: reduce_interleaved_strided, from: global, to: shared,
     data: "one float per thread"}
  - {kernel: reduce_interleaved_strided, from: shared, to: global,
     data: "one partial sum per block"}
  - {kernel: reduce_sequential, from: global, to: shared, data: "one float per thread"}
  - {kernel: reduce_sequential, from: shared, to: global,
     data: "one partial sum per block"}
  - {kernel: reduce_first_add, from: global, to: registers,
     data: "two floats per thread"}
  - {kernel: reduce_first_add, from: registers, to: shared, data: "their sum"}
  - {kernel: reduce_first_add, from: shared, to: global,
     data: "one partial sum per block"}
  - {kernel: reduce_unrolled_warp, from: global, to: registers,
     data: "two floats per thread"}
  - {kernel: reduce_unrolled_warp, from: registers, to: shared, data: "their sum"}
  - {kernel: reduce_unrolled_warp, from: shared, to: global,
     data: "one partial sum per block"}
  - {kernel: reduce_complete_unroll, from: global, to: registers,
     data: "two floats per thread"}
  - {kernel: reduce_complete_unroll, from: registers, to: shared, data: "their sum"}
  - {kernel: reduce_complete_unroll, from: shared, to: global,
     data: "one partial sum per block"}
  - {kernel: reduce_many_per_thread, from: global, to: registers,
     data: "a running sum of n / (threads in the grid) floats"}
  - {kernel: reduce_many_per_thread, from: registers, to: shared,
     data: "one sum per thread"}
  - {kernel: reduce_many_per_thread, from: shared, to: global,
     data: "one partial sum per block"}
  - {kernel: reduce_shuffle, from: global, to: registers,
     data: "float4 loads into a running sum"}
  - {kernel: reduce_shuffle, from: registers, to: shared,
     data: "one sum per warp, after 5 shuffles"}
  - {kernel: reduce_shuffle, from: shared, to: global,
     data: "one partial sum per block"}
---

Summing $n$ numbers is the simplest computation a GPU does badly if it is written
naively, and the clearest lesson in where a kernel's time goes. A sum reads each
number once and does one addition with it: 4 bytes per operation in float32, an
arithmetic intensity of a quarter operation per byte. The roofline model
[@williams2009roofline] says such a kernel can only be as fast as memory delivers
bytes; the ceiling is the bandwidth of a plain device-to-device copy (about 4.3 TB/s
on an H200, 90 % of its datasheet's 4.8). The arithmetic is free, and every cycle a
kernel spends on anything but keeping loads in flight is lost.

The sum is a *tree*: $n$ numbers become $n/2$ pairwise sums, then $n/4$, and after
$\log_2 n$ levels, one. Threads of one block can cooperate through shared memory and
`__syncthreads()`, but blocks cannot wait for each other within a kernel, so the tree
is cut in two: each block reduces its slice of the input to one partial sum, and a
second launch (or a third) reduces the partial sums.

Mark Harris's talk [@harris2007reduction] walks through seven kernels for this, each
fixing what held back the one before: divergent warps, shared-memory bank conflicts,
idle threads, barrier and loop overhead, and too little work per thread. On a G80
they took the sum of $2^{22}$ integers from 2 GB/s to 63 GB/s, 30 times faster and
73 % of that GPU's 86.4 GB/s. This chapter writes the seven for float32, with one
change the hardware has since forced (the last warp's reduction needs `__syncwarp`
since Volta), and adds an eighth that replaces shared memory with warp shuffles
[@lin2018warp]. The driver `annotated/kernels/cuda/reduction.py` checks each against
`torch.sum` and, on a GPU, measures each one's bandwidth against a copy's.
*/

#include <cuda_runtime.h>

// ## Passes
//
// Every kernel writes one partial sum per block. The launchers below run passes until
// one number is left: pass one reads the input and writes its partial sums to the
// `workspace`, pass two reduces those to fewer, and so on, alternating between the
// workspace's two halves, until a pass with a single block writes to `output`. With
// 256 threads and 256 elements a block, $2^{26}$ floats take four passes,
// $2^{26} \to 2^{18} \to 2^{10} \to 4 \to 1$; the first reads 256 MB, the others
// together about 1 MB. `reduce_workspace_floats(n)` says how large the
// workspace must be: room for two passes' partial sums.

constexpr int THREADS = 256;  // threads per block, for every kernel here

static int blocks_for(int n, int per_block) { return (n + per_block - 1) / per_block; }

extern "C" int reduce_workspace_floats(int n) { return 2 * blocks_for(n, THREADS); }

struct Pass {
  const float *in;  // this pass reads n floats from here
  float *out;  // and writes one partial sum per block here
  int n;
  int blocks;
};

// The first pass over `n` inputs, `per_block` of them to a block.
static Pass first_pass(const float *input, float *output, float *workspace, int n,
                       int per_block) {
  const int blocks = blocks_for(n, per_block);
  return {input, blocks == 1 ? output : workspace, n, blocks};
}

// The pass after `done`; one with no blocks when `done` wrote the final sum.
static Pass next_pass(Pass done, float *output, float *workspace, int n,
                      int per_block) {
  if (done.blocks == 1) {
    return {nullptr, nullptr, 0, 0};
  }
  const int blocks = blocks_for(done.blocks, per_block);
  float *other_half = done.out == workspace ? workspace + blocks_for(n, THREADS)
                                            : workspace;
  return {done.out, blocks == 1 ? output : other_half, done.blocks, blocks};
}

// ## Kernel 1: interleaved addressing, divergent branches
//
// Each thread copies one number into shared memory. Then, at step $s = 1, 2, 4,
// \dots$, every thread whose index is a multiple of $2s$ adds the value $s$ places to
// its right: after the step with $s$, `partial[t]` holds the sum of $2s$ numbers for
// every $t$ divisible by $2s$, and after $\log_2 256 = 8$ steps `partial[0]` holds the
// block's sum.
//
// It is correct and slow. In the first step the active threads are 0, 2, 4, ...: half
// of each warp, and the warp executes the addition for all 32 lanes with half of them
// masked off. By the fifth step one lane in 32 works, yet the warp takes the whole
// instruction's time. This *divergence* (threads of one warp taking different paths
// through `if`) is the first thing Harris removes. The `%` is slow on a GPU, too.

__global__ void reduce_interleaved_divergent(const float *input, float *output,
                                             unsigned int n) {
  extern __shared__ float partial[];  // [blockDim.x], sized by the launch
  const unsigned int tid = threadIdx.x;
  const unsigned int i = blockIdx.x * blockDim.x + tid;
  partial[tid] = i < n ? input[i] : 0.0f;
  __syncthreads();
  for (unsigned int s = 1; s < blockDim.x; s *= 2) {
    if (tid % (2 * s) == 0) {  // lanes 0, 2s, 4s, ...: divergent within a warp
      partial[tid] += partial[tid + s];
    }
    __syncthreads();
  }
  if (tid == 0) {
    output[blockIdx.x] = partial[0];
  }
}

extern "C" int reduce_interleaved_divergent_launch(const float *input, float *output,
                                                   float *workspace, int n,
                                                   cudaStream_t stream) {
  if (n == 0) {
    return (int)cudaMemsetAsync(output, 0, sizeof(float), stream);
  }
  for (Pass p = first_pass(input, output, workspace, n, THREADS); p.blocks > 0;
       p = next_pass(p, output, workspace, n, THREADS)) {
    reduce_interleaved_divergent<<<p.blocks, THREADS, THREADS * sizeof(float),
                                   stream>>>(p.in, p.out, p.n);
  }
  return (int)cudaGetLastError();
}

// ## Kernel 2: strided index, bank conflicts
//
// Same tree, different assignment of work to threads: at step $s$, thread `t` does the
// addition at `index = 2 * s * t`. Now the active threads are the *first* $256/(2s)$,
// so whole warps are either busy or idle, and a warp with nothing to do skips the
// instruction. No divergence, until fewer than 32 threads remain.
//
// A new problem appears. Shared memory is 32 *banks*, each 4 bytes wide: word $w$
// lives in bank $w \bmod 32$, and a warp's 32 accesses complete in one pass only if
// they fall in 32 different banks (or the same word). At step $s = 4$, thread `t`
// adds word $8t + 4$ into word $8t$: the 32 lanes of warp 0 fall in only 4 banks,
// eight to a bank, and each access is replayed 8 times. While a whole warp is active,
// the stride $2s$ makes a $2s$-way conflict.

__global__ void reduce_interleaved_strided(const float *input, float *output,
                                           unsigned int n) {
  extern __shared__ float partial[];
  const unsigned int tid = threadIdx.x;
  const unsigned int i = blockIdx.x * blockDim.x + tid;
  partial[tid] = i < n ? input[i] : 0.0f;
  __syncthreads();
  for (unsigned int s = 1; s < blockDim.x; s *= 2) {
    const unsigned int index = 2 * s * tid;  // words 2s apart: a 2s-way conflict
    if (index < blockDim.x) {
      partial[index] += partial[index + s];
    }
    __syncthreads();
  }
  if (tid == 0) {
    output[blockIdx.x] = partial[0];
  }
}

extern "C" int reduce_interleaved_strided_launch(const float *input, float *output,
                                                 float *workspace, int n,
                                                 cudaStream_t stream) {
  if (n == 0) {
    return (int)cudaMemsetAsync(output, 0, sizeof(float), stream);
  }
  for (Pass p = first_pass(input, output, workspace, n, THREADS); p.blocks > 0;
       p = next_pass(p, output, workspace, n, THREADS)) {
    reduce_interleaved_strided<<<p.blocks, THREADS, THREADS * sizeof(float),
                                 stream>>>(p.in, p.out, p.n);
  }
  return (int)cudaGetLastError();
}

// ## Kernel 3: sequential addressing
//
// Turn the tree around: at the first step the first half of the threads add the
// second half of the array to the first, `partial[t] += partial[t + 128]`; then
// the first quarter add the second quarter, and so on with $s = 128, 64, \dots, 1$.
// Consecutive threads touch consecutive words, one per bank: no conflicts. The active
// threads are still the first $s$, so no divergence above 32 either.

__global__ void reduce_sequential(const float *input, float *output, unsigned int n) {
  extern __shared__ float partial[];
  const unsigned int tid = threadIdx.x;
  const unsigned int i = blockIdx.x * blockDim.x + tid;
  partial[tid] = i < n ? input[i] : 0.0f;
  __syncthreads();
  for (unsigned int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (tid < s) {  // consecutive threads, consecutive banks
      partial[tid] += partial[tid + s];
    }
    __syncthreads();
  }
  if (tid == 0) {
    output[blockIdx.x] = partial[0];
  }
}

extern "C" int reduce_sequential_launch(const float *input, float *output,
                                        float *workspace, int n, cudaStream_t stream) {
  if (n == 0) {
    return (int)cudaMemsetAsync(output, 0, sizeof(float), stream);
  }
  for (Pass p = first_pass(input, output, workspace, n, THREADS); p.blocks > 0;
       p = next_pass(p, output, workspace, n, THREADS)) {
    reduce_sequential<<<p.blocks, THREADS, THREADS * sizeof(float), stream>>>(
        p.in, p.out, p.n);
  }
  return (int)cudaGetLastError();
}

// ## Kernel 4: the first addition during the load
//
// In kernel 3, half of the threads go idle after the very first step: they only ever
// copied one number. Let every thread read *two* numbers, a block's width apart, and
// store their sum: the first level of the tree happens on the way in, from registers,
// and half as many blocks cover the input. Each block now reduces $2 \cdot 256 = 512$
// numbers.

__global__ void reduce_first_add(const float *input, float *output, unsigned int n) {
  extern __shared__ float partial[];
  const unsigned int tid = threadIdx.x;
  const unsigned int i = blockIdx.x * (blockDim.x * 2) + tid;
  float sum = i < n ? input[i] : 0.0f;
  if (i + blockDim.x < n) {
    sum += input[i + blockDim.x];  // the tree's first level, in a register
  }
  partial[tid] = sum;
  __syncthreads();
  for (unsigned int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (tid < s) {
      partial[tid] += partial[tid + s];
    }
    __syncthreads();
  }
  if (tid == 0) {
    output[blockIdx.x] = partial[0];
  }
}

extern "C" int reduce_first_add_launch(const float *input, float *output,
                                       float *workspace, int n, cudaStream_t stream) {
  if (n == 0) {
    return (int)cudaMemsetAsync(output, 0, sizeof(float), stream);
  }
  for (Pass p = first_pass(input, output, workspace, n, 2 * THREADS); p.blocks > 0;
       p = next_pass(p, output, workspace, n, 2 * THREADS)) {
    reduce_first_add<<<p.blocks, THREADS, THREADS * sizeof(float), stream>>>(
        p.in, p.out, p.n);
  }
  return (int)cudaGetLastError();
}

// ## Kernel 5: unrolling the last warp
//
// The sum is now limited by instruction overhead rather than memory: the loop
// counter, the comparison and a `__syncthreads()` barrier for each level. When $s
// \le 32$ only one warp is still working, and a warp needs no block-wide barrier, so
// the last six levels can run as straight-line code inside warp 0.
//
// Harris relied on the 32 lanes of a warp executing in lockstep, with a `volatile`
// pointer so that each read went to shared memory. Since Volta (2017) the threads of
// a warp are scheduled independently and lockstep is no longer guaranteed: lane 0 may
// read `partial[16]` before lane 16 has written it. The fix [@lin2018warp] is
// `__syncwarp()`, a barrier for one warp that costs almost nothing: each level reads,
// waits for the whole warp to have read, writes, and waits for the whole warp to have
// written. With the loop bounds fixed, the compiler unrolls it. It needs 64 values,
// so the block must have at least 64 threads.

__device__ void warp_reduce(float *partial, unsigned int tid) {  // tid < 32
#pragma unroll
  for (int offset = 32; offset > 0; offset /= 2) {
    const float sum = partial[tid] + partial[tid + offset];
    __syncwarp();  // every lane has read before any lane writes
    partial[tid] = sum;
    __syncwarp();  // every lane has written before the next level reads
  }
}

__global__ void reduce_unrolled_warp(const float *input, float *output,
                                     unsigned int n) {
  extern __shared__ float partial[];
  const unsigned int tid = threadIdx.x;
  const unsigned int i = blockIdx.x * (blockDim.x * 2) + tid;
  float sum = i < n ? input[i] : 0.0f;
  if (i + blockDim.x < n) {
    sum += input[i + blockDim.x];
  }
  partial[tid] = sum;
  __syncthreads();
  for (unsigned int s = blockDim.x / 2; s > 32; s >>= 1) {
    if (tid < s) {
      partial[tid] += partial[tid + s];
    }
    __syncthreads();
  }
  if (tid < 32) {
    warp_reduce(partial, tid);  // the last six levels, no block barrier
  }
  if (tid == 0) {
    output[blockIdx.x] = partial[0];
  }
}

extern "C" int reduce_unrolled_warp_launch(const float *input, float *output,
                                           float *workspace, int n,
                                           cudaStream_t stream) {
  if (n == 0) {
    return (int)cudaMemsetAsync(output, 0, sizeof(float), stream);
  }
  for (Pass p = first_pass(input, output, workspace, n, 2 * THREADS); p.blocks > 0;
       p = next_pass(p, output, workspace, n, 2 * THREADS)) {
    reduce_unrolled_warp<<<p.blocks, THREADS, THREADS * sizeof(float), stream>>>(
        p.in, p.out, p.n);
  }
  return (int)cudaGetLastError();
}

// ## Kernel 6: complete unrolling
//
// The block size is known when the kernel is compiled, so the remaining loop can go
// too. As a template parameter, `BLOCK` is a constant: `if (BLOCK >= 512)` is decided
// by the compiler, and the code left is a straight run of additions and barriers,
// one per level, with no loop counter at all. Harris's version switches over the
// block sizes at launch to pick an instantiation; every launcher here uses 256.

template <unsigned int BLOCK>
__device__ void block_reduce(float *partial, unsigned int tid) {
  static_assert(BLOCK >= 64 && BLOCK <= 1024, "warp_reduce needs 64 values");
  if (BLOCK >= 1024) {
    if (tid < 512) partial[tid] += partial[tid + 512];
    __syncthreads();
  }
  if (BLOCK >= 512) {
    if (tid < 256) partial[tid] += partial[tid + 256];
    __syncthreads();
  }
  if (BLOCK >= 256) {
    if (tid < 128) partial[tid] += partial[tid + 128];
    __syncthreads();
  }
  if (BLOCK >= 128) {
    if (tid < 64) partial[tid] += partial[tid + 64];
    __syncthreads();
  }
  if (tid < 32) {
    warp_reduce(partial, tid);
  }
}

template <unsigned int BLOCK>
__global__ void reduce_complete_unroll(const float *input, float *output,
                                       unsigned int n) {
  extern __shared__ float partial[];
  const unsigned int tid = threadIdx.x;
  const unsigned int i = blockIdx.x * (BLOCK * 2) + tid;
  float sum = i < n ? input[i] : 0.0f;
  if (i + BLOCK < n) {
    sum += input[i + BLOCK];
  }
  partial[tid] = sum;
  __syncthreads();
  block_reduce<BLOCK>(partial, tid);
  if (tid == 0) {
    output[blockIdx.x] = partial[0];
  }
}

extern "C" int reduce_complete_unroll_launch(const float *input, float *output,
                                             float *workspace, int n,
                                             cudaStream_t stream) {
  if (n == 0) {
    return (int)cudaMemsetAsync(output, 0, sizeof(float), stream);
  }
  for (Pass p = first_pass(input, output, workspace, n, 2 * THREADS); p.blocks > 0;
       p = next_pass(p, output, workspace, n, 2 * THREADS)) {
    reduce_complete_unroll<THREADS>
        <<<p.blocks, THREADS, THREADS * sizeof(float), stream>>>(p.in, p.out, p.n);
  }
  return (int)cudaGetLastError();
}

// ## Kernel 7: many elements per thread
//
// Each thread still adds only two numbers of the input before the tree starts, and
// the tree costs $\log_2 256 = 8$ levels of overhead per 512 numbers. Harris's last
// step is *algorithm cascading*: launch only as many blocks as the GPU can hold at
// once, and let each thread walk through the input with a stride of the whole grid,
// adding as it goes. A thread then sums $n / (\text{threads in the grid})$ numbers in
// a register, thousands for a large $n$, and the tree runs once per block for all of
// them. Consecutive threads still read consecutive addresses at every step of the
// walk, so the loads stay coalesced.
//
// How many blocks? Enough to fill every multiprocessor: an H200 has 132, each
// running up to 2048 threads, so 8 blocks of 256 each, 1056 blocks in all. The
// launcher asks the runtime for the multiprocessor count. A second launch of a single
// block sums the partial sums.

template <unsigned int BLOCK>
__global__ void reduce_many_per_thread(const float *input, float *output,
                                       unsigned int n) {
  extern __shared__ float partial[];
  const unsigned int tid = threadIdx.x;
  const unsigned int grid_stride = BLOCK * 2 * gridDim.x;
  float sum = 0.0f;
  for (unsigned int i = blockIdx.x * (BLOCK * 2) + tid; i < n; i += grid_stride) {
    sum += input[i];
    if (i + BLOCK < n) {
      sum += input[i + BLOCK];
    }
  }
  partial[tid] = sum;
  __syncthreads();
  block_reduce<BLOCK>(partial, tid);
  if (tid == 0) {
    output[blockIdx.x] = partial[0];
  }
}

// Blocks that fit on the GPU at once: 2048 threads per multiprocessor.
static int resident_blocks() {
  int device = 0, multiprocessors = 1;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, device);
  return multiprocessors * (2048 / THREADS);
}

extern "C" int reduce_many_per_thread_launch(const float *input, float *output,
                                             float *workspace, int n,
                                             cudaStream_t stream) {
  if (n == 0) {
    return (int)cudaMemsetAsync(output, 0, sizeof(float), stream);
  }
  int blocks = blocks_for(n, 2 * THREADS);
  blocks = blocks < resident_blocks() ? blocks : resident_blocks();
  float *partials = blocks == 1 ? output : workspace;
  reduce_many_per_thread<THREADS>
      <<<blocks, THREADS, THREADS * sizeof(float), stream>>>(input, partials, n);
  if (blocks > 1) {  // one block sums the partial sums
    reduce_many_per_thread<THREADS>
        <<<1, THREADS, THREADS * sizeof(float), stream>>>(partials, output, blocks);
  }
  return (int)cudaGetLastError();
}

// ## Kernel 8: warp shuffles
//
// Since Kepler a warp can exchange registers directly: `__shfl_down_sync(mask, v,
// offset)` returns lane `lane + offset`'s `v` to every lane [@lin2018warp]. Five
// shuffles with offsets 16, 8, 4, 2, 1 leave the sum of a warp's 32 values in lane
// 0, with no shared memory and no barrier; the mask `0xffffffff` names the lanes that
// take part, all 32. A block then needs shared memory only for its 8 warps' sums,
// which the first warp adds with five more shuffles.
//
// The walk through the input changes too: each thread loads a `float4`, 16 bytes in
// one instruction, so a warp requests 512 consecutive bytes at once and fewer
// instructions keep as many bytes in flight. That needs the input's first element
// 16-byte aligned (the driver checks); the last $n \bmod 4$ numbers are read one by
// one.

__device__ float warp_sum(float value) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    value += __shfl_down_sync(0xffffffffu, value, offset);
  }
  return value;  // the warp's sum, in lane 0
}

template <unsigned int BLOCK>
__global__ void reduce_shuffle(const float *input, float *output, unsigned int n) {
  __shared__ float warp_sums[BLOCK / 32];
  const unsigned int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const unsigned int stride = BLOCK * gridDim.x;
  const unsigned int vectors = n / 4;
  const float4 *input4 = reinterpret_cast<const float4 *>(input);
  float sum = 0.0f;
  for (unsigned int i = blockIdx.x * BLOCK + tid; i < vectors; i += stride) {
    const float4 v = input4[i];  // 16 bytes, one instruction
    sum += (v.x + v.y) + (v.z + v.w);
  }
  for (unsigned int i = 4 * vectors + blockIdx.x * BLOCK + tid; i < n; i += stride) {
    sum += input[i];  // the n % 4 left over
  }
  sum = warp_sum(sum);
  if (lane == 0) {
    warp_sums[warp] = sum;
  }
  __syncthreads();
  if (warp == 0) {
    sum = warp_sum(lane < BLOCK / 32 ? warp_sums[lane] : 0.0f);
    if (lane == 0) {
      output[blockIdx.x] = sum;
    }
  }
}

extern "C" int reduce_shuffle_launch(const float *input, float *output,
                                     float *workspace, int n, cudaStream_t stream) {
  if (n == 0) {
    return (int)cudaMemsetAsync(output, 0, sizeof(float), stream);
  }
  int blocks = blocks_for(n, 4 * THREADS);
  blocks = blocks < resident_blocks() ? blocks : resident_blocks();
  float *partials = blocks == 1 ? output : workspace;
  reduce_shuffle<THREADS><<<blocks, THREADS, 0, stream>>>(input, partials, n);
  if (blocks > 1) {
    reduce_shuffle<THREADS><<<1, THREADS, 0, stream>>>(partials, output, blocks);
  }
  return (int)cudaGetLastError();
}

// ## Exercises
//
// 1. Kernel 2's bank conflicts: for each step $s = 1, 2, \dots, 128$, how many ways
//    is the conflict of a warp's first access? Sum the replays and compare with
//    kernel 3's.
// 2. Remove the two `__syncwarp()` calls from `warp_reduce` and run the tests on a
//    Volta or newer GPU many times. Does it fail? Why is "it passed" no proof here?
// 3. Kernel 8 sums a float32 array of $2^{27}$ ones correctly, but a running sum in
//    one float32 stops growing at $2^{24}$. Why does no thread's sum get that large,
//    and what input makes kernel 8 and `torch.sum` disagree by more than a few ulps?
// 4. Replace the second launch of kernels 7 and 8 with an `atomicAdd` of each
//    block's sum into `output` (zeroed first). What does it save, and why is the
//    result no longer bitwise reproducible from run to run?
