/*
---
title: SGEMM in CUDA C, step by step to cuBLAS
summary: >-
  Seven single-precision matrix-multiply kernels in plain CUDA C, from one thread per
  output to warp tiling, each explained by the bytes it moves per multiply-add at each
  level of the memory hierarchy, checked against torch.matmul and timed against cuBLAS.
time: 30 s
references:
  - key: boehm2022sgemm
    authors: [Simon Boehm]
    title: "How to Optimize a CUDA Matmul Kernel for cuBLAS-like Performance: a
      Worklog"
    year: 2022
    venue: siboehm.com
    url: https://siboehm.com/articles/22/CUDA-MMM
  - key: kerr2017cutlass
    authors: [Andrew Kerr, Duane Merrill, Julien Demouth, John Tran]
    title: "CUTLASS: Fast Linear Algebra in CUDA C++"
    year: 2017
    venue: NVIDIA Developer Blog
    url: https://developer.nvidia.com/blog/cutlass-linear-algebra-cuda/
  - key: nvidia2024cutlassgemm
    authors: [NVIDIA]
    title: Efficient GEMM in CUDA (CUTLASS documentation)
    year: 2024
    venue: CUTLASS documentation
    url: https://github.com/NVIDIA/cutlass/blob/main/media/docs/efficient_gemm.md
  - key: williams2009roofline
    authors: [Samuel Williams, Andrew Waterman, David Patterson]
    title: "Roofline: An Insightful Visual Performance Model for Multicore
      Architectures"
    year: 2009
    venue: Communications of the ACM 52(4)
    url: https://doi.org/10.1145/1498765.1498785
memory:
  - {kernel: sgemm_naive, from: global, to: registers,
     data: "A[i, k] and B[k, j], every multiply-add"}
  - {kernel: sgemm_naive, from: registers, to: global, data: "C[i, j]"}
  - {kernel: sgemm_coalesced, from: global, to: registers,
     data: "A[i, k] (one per warp) and B[k, j..j+31] (one line)"}
  - {kernel: sgemm_coalesced, from: registers, to: global,
     data: "C[i, j..j+31], one line per warp"}
  - {kernel: sgemm_shared, from: global, to: shared, data: "32×32 tiles of A and B"}
  - {kernel: sgemm_shared, from: shared, to: registers,
     data: "one A value, one B value per multiply-add"}
  - {kernel: sgemm_shared, from: registers, to: global, data: "C[i, j]"}
  - {kernel: sgemm_blocktile_1d, from: global, to: shared,
     data: "64×8 tile of A, 8×64 tile of B"}
  - {kernel: sgemm_blocktile_1d, from: shared, to: registers,
     data: "one B value and 8 A values per 8 multiply-adds"}
  - {kernel: sgemm_blocktile_1d, from: registers, to: global,
     data: "8 outputs of one column"}
  - {kernel: sgemm_blocktile_2d, from: global, to: shared,
     data: "128×8 tile of A, 8×128 tile of B"}
  - {kernel: sgemm_blocktile_2d, from: shared, to: registers,
     data: "8 A and 8 B values per 64 multiply-adds"}
  - {kernel: sgemm_blocktile_2d, from: registers, to: global, data: "an 8×8 tile of C"}
  - {kernel: sgemm_vectorized, from: global, to: shared,
     data: "float4 loads; A stored transposed"}
  - {kernel: sgemm_vectorized, from: shared, to: registers,
     data: "float4 loads, 8 A and 8 B values per 64 multiply-adds"}
  - {kernel: sgemm_vectorized, from: registers, to: global,
     data: "an 8×8 tile of C in float4 stores"}
  - {kernel: sgemm_warptiling, from: global, to: shared,
     data: "128×16 tile of A (transposed), 16×128 of B"}
  - {kernel: sgemm_warptiling, from: shared, to: registers,
     data: "8 A and 16 B values per 128 multiply-adds"}
  - {kernel: sgemm_warptiling, from: registers, to: global,
     data: "8×16 outputs per thread, in a warp's 64×64 tile"}
---

A matrix product $C = AB$ of an $M \times K$ and a $K \times N$ matrix does
$MNK$ multiply-adds, $2MNK$ floating-point operations, and needs at least its
inputs and its output to cross the GPU's memory: $4(MK + KN + MN)$ bytes in float32.
At $M = N = K = 4096$ that is 137 GFLOP on 201 MB, about 680 operations per byte. The
roofline model [@williams2009roofline] puts the balance point of an H200 at its 67
TFLOP/s of float32 arithmetic over its 4.8 TB/s of memory bandwidth, 14 operations
per byte: a large matrix product is fifty times past it, *compute-bound*, and the
fastest kernel keeps every arithmetic unit busy. cuBLAS, which `torch.matmul` calls,
does.

The catch is that a kernel which simply reads its operands for every multiply-add has
an intensity of a quarter operation per byte: two 4-byte loads per two operations.
All the work of a fast matrix product goes into *reuse*: each number fetched from a
slow memory is used many times from a faster one. A GPU has three levels to play
with: global memory (the HBM, with an L2 cache in front of it), *shared memory*
(about 228 KB of on-chip SRAM per streaming multiprocessor, shared by the threads of a
block), and *registers* (64 K 32-bit registers per multiprocessor, private to each
thread, the only memory the arithmetic units read without a load instruction).

This chapter follows Simon Boehm's worklog [@boehm2022sgemm] through seven kernels,
each one step on that ladder, in the hierarchy CUTLASS names
[@kerr2017cutlass; @nvidia2024cutlassgemm]: a thread block computes a tile of $C$
from tiles of $A$ and $B$ staged in shared memory, a warp a sub-tile of that, and a
thread a small tile of registers. For each step the prose counts the loads per
multiply-add from each level; the driver `annotated/kernels/cuda/sgemm.py` loads this
file with `ctypes`, checks every kernel against `torch.matmul`, and on a GPU measures
each one at $4096^3$ against cuBLAS in float32 (TF32 switched off, so both do the same
arithmetic). On an A6000 Boehm's versions of the seven reached 1.3, 8.5, 12.8, 36.5,
68.7, 78.4 and 93.7 % of cuBLAS; the target here is 80 % on an H200.

Matrices are row-major and contiguous, as a PyTorch tensor is: $A_{ik}$ is
`A[i * K + k]`. Every kernel computes $C = AB$, BLAS's `sgemm` with
$\alpha = 1, \beta = 0$. The [matrix lesson](../foundations/matrix.md) derives the
product itself.
*/

#include <cuda_runtime.h>

// ## Step 1: one thread per output
//
// The textbook kernel: thread $(i, j)$ walks row $i$ of $A$ and column $j$ of $B$ and
// writes $C_{ij}$. Blocks are $32 \times 32$ threads and the grid covers $C$, rounded
// up; threads past the edge do nothing, so any $M, N, K$ work.
//
// Its flaw is the mapping of threads to rows. The 32 threads of a *warp*, which issue
// every instruction together, are consecutive in `threadIdx.x`, and here
// `threadIdx.x` picks the row. At each $k$ the warp's 32 loads of $A$ are 32 floats
// $K$ apart, in 32 different 128-byte lines, and its 32 stores of $C$ likewise.
// Global memory is read in 32-byte sectors, so each useful 4 bytes costs a 32-byte
// sector: the L1 cache saves some of it, but this kernel moves the most bytes per
// multiply-add of the seven, 2 loads from global memory for every one.

__global__ void sgemm_naive(int M, int N, int K, const float *A, const float *B,
                            float *C) {
  const int row = blockIdx.x * blockDim.x + threadIdx.x;  // i: varies within a warp
  const int col = blockIdx.y * blockDim.y + threadIdx.y;  // j: fixed within a warp
  if (row < M && col < N) {
    float sum = 0.0f;
    for (int k = 0; k < K; ++k) {
      sum += A[row * K + k] * B[k * N + col];  // A: 32 lines a warp; B: one float
    }
    C[row * N + col] = sum;
  }
}

extern "C" int sgemm_naive_launch(int M, int N, int K, const float *A, const float *B,
                                  float *C, cudaStream_t stream) {
  const dim3 block(32, 32);
  const dim3 grid((M + 31) / 32, (N + 31) / 32);
  sgemm_naive<<<grid, block, 0, stream>>>(M, N, K, A, B, C);
  return (int)cudaGetLastError();
}

// ## Step 2: coalesced global loads
//
// Swap the roles: let consecutive threads of a warp take consecutive *columns*. At
// each $k$ a warp then reads one value of $A$ (the same address for all 32 threads,
// served as one broadcast) and 32 consecutive floats of $B$, one 128-byte line; and
// it writes 32 consecutive floats of $C$. The memory system *coalesces* a warp's
// accesses to neighbouring addresses into as few transactions as the lines they
// touch. The count of loads per multiply-add is unchanged, two, but every sector
// fetched is now fully used: Boehm measured this one change as a factor of 6.4.
//
// The block is one-dimensional, 1024 threads; thread `t` takes row `t / 32` and
// column `t % 32` of its block's $32 \times 32$ tile of $C$.

__global__ void sgemm_coalesced(int M, int N, int K, const float *A, const float *B,
                                float *C) {
  const int row = blockIdx.x * 32 + threadIdx.x / 32;  // fixed within a warp
  const int col = blockIdx.y * 32 + threadIdx.x % 32;  // consecutive within a warp
  if (row < M && col < N) {
    float sum = 0.0f;
    for (int k = 0; k < K; ++k) {
      sum += A[row * K + k] * B[k * N + col];  // A: broadcast; B: one 128-byte line
    }
    C[row * N + col] = sum;
  }
}

extern "C" int sgemm_coalesced_launch(int M, int N, int K, const float *A,
                                      const float *B, float *C, cudaStream_t stream) {
  const dim3 grid((M + 31) / 32, (N + 31) / 32);
  sgemm_coalesced<<<grid, 1024, 0, stream>>>(M, N, K, A, B, C);
  return (int)cudaGetLastError();
}

// ## Step 3: tiles in shared memory
//
// The 32 threads that compute row $i$ of a tile all read row $i$ of $A$; the 32 that
// compute column $j$ all read column $j$ of $B$. Step 2 lets the caches find that
// reuse, if they can. Step 3 makes it explicit: the block's 1024 threads copy a
// $32 \times 32$ tile of $A$ and one of $B$ into shared memory, one float each, wait
// at `__syncthreads()` until the tiles are complete, and then each thread does its 32
// multiply-adds from shared memory. Every float fetched from global memory now serves
// 32 multiply-adds: the global traffic falls from 2 loads per multiply-add to
// $2/32$.
//
// The bottleneck moves one level down. Each multiply-add still needs two loads, now
// from shared memory, and a load instruction costs about as much issue bandwidth as
// the multiply-add itself: a multiprocessor does 128 float32 multiply-adds a clock
// but serves 32 shared-memory words a clock. The kernel spends its time loading.
//
// Tiles that hang over the edge of $A$ or $B$ are filled with zeros, which add
// nothing to the sums, so this kernel too takes any $M, N, K$. Every thread must reach
// both barriers, so the edge test guards the loads and the final store, not the loop.

constexpr int TILE = 32;

__global__ void sgemm_shared(int M, int N, int K, const float *A, const float *B,
                             float *C) {
  __shared__ float tile_a[TILE * TILE];  // [TILE rows of A, TILE columns]
  __shared__ float tile_b[TILE * TILE];  // [TILE rows of B, TILE columns]
  const int inner_row = threadIdx.x / TILE;  // this thread's row in the tile
  const int inner_col = threadIdx.x % TILE;  // and column: consecutive in a warp
  const int row = blockIdx.x * TILE + inner_row;
  const int col = blockIdx.y * TILE + inner_col;
  float sum = 0.0f;
  for (int k0 = 0; k0 < K; k0 += TILE) {
    const int a_col = k0 + inner_col, b_row = k0 + inner_row;
    tile_a[threadIdx.x] = (row < M && a_col < K) ? A[row * K + a_col] : 0.0f;
    tile_b[threadIdx.x] = (b_row < K && col < N) ? B[b_row * N + col] : 0.0f;
    __syncthreads();  // both tiles complete
    for (int k = 0; k < TILE; ++k) {
      sum += tile_a[inner_row * TILE + k] * tile_b[k * TILE + inner_col];
    }
    __syncthreads();  // nobody still reads the tiles the next step overwrites
  }
  if (row < M && col < N) {
    C[row * N + col] = sum;
  }
}

extern "C" int sgemm_shared_launch(int M, int N, int K, const float *A, const float *B,
                                   float *C, cudaStream_t stream) {
  const dim3 grid((M + TILE - 1) / TILE, (N + TILE - 1) / TILE);
  sgemm_shared<<<grid, TILE * TILE, 0, stream>>>(M, N, K, A, B, C);
  return (int)cudaGetLastError();
}

// ## Step 4: several outputs per thread (1-D register blocking)
//
// To load less per multiply-add from shared memory, a thread must reuse what it
// loads, and the only place to keep it is a register. Let each thread compute
// `TM = 8` outputs of one column of $C$: at each $k$ it loads $B_{kj}$ once into a
// register and multiplies it with 8 values of $A$. That is $1 + 8$ shared loads for
// 8 multiply-adds, $9/8$ instead of 2.
//
// The block tile grows to $64 \times 64$ outputs, computed by $64 \cdot 64 / 8 = 512$
// threads, and walks $K$ in slices of `BK = 8`: each step stages a $64 \times 8$
// slice of $A$ and an $8 \times 64$ slice of $B$, 512 floats each, one per thread. A
// float of $A$ or $B$ fetched from global memory serves 64 multiply-adds, so global
// traffic is $2/64$ loads per multiply-add. The sizes are template parameters, so
// the compiler unrolls the inner loops and keeps `results` in registers.
//
// This kernel and the three after it have no edge handling: $M$ and $N$ must be
// multiples of the block tile and $K$ of `BK`. The driver checks, and says which
// multiple it wants; a real library pads or runs a separate edge kernel.

template <int BM, int BN, int BK, int TM>
__global__ void sgemm_blocktile_1d(int M, int N, int K, const float *A,
                                   const float *B, float *C) {
  __shared__ float tile_a[BM * BK];  // [BM, BK]
  __shared__ float tile_b[BK * BN];  // [BK, BN]
  const int thread_col = threadIdx.x % BN;  // the column of C this thread computes
  const int thread_row = threadIdx.x / BN;  // its TM rows start at thread_row * TM
  A += blockIdx.y * BM * K;  // the block's rows of A
  B += blockIdx.x * BN;  // its columns of B
  C += blockIdx.y * BM * N + blockIdx.x * BN;
  const int a_row = threadIdx.x / BK, a_col = threadIdx.x % BK;  // BM * BK threads
  const int b_row = threadIdx.x / BN, b_col = threadIdx.x % BN;  // BK * BN threads
  float results[TM] = {0.0f};
  for (int k0 = 0; k0 < K; k0 += BK) {
    tile_a[a_row * BK + a_col] = A[a_row * K + a_col];
    tile_b[b_row * BN + b_col] = B[b_row * N + b_col];
    __syncthreads();
    A += BK;  // the next slice of K
    B += BK * N;
    for (int k = 0; k < BK; ++k) {
      const float b = tile_b[k * BN + thread_col];  // one load, reused TM times
      for (int m = 0; m < TM; ++m) {
        results[m] += tile_a[(thread_row * TM + m) * BK + k] * b;
      }
    }
    __syncthreads();
  }
  for (int m = 0; m < TM; ++m) {
    C[(thread_row * TM + m) * N + thread_col] = results[m];
  }
}

extern "C" int sgemm_blocktile_1d_launch(int M, int N, int K, const float *A,
                                         const float *B, float *C,
                                         cudaStream_t stream) {
  constexpr int BM = 64, BN = 64, BK = 8, TM = 8;
  const dim3 grid(N / BN, M / BM);  // x: columns of C, y: rows
  sgemm_blocktile_1d<BM, BN, BK, TM>
      <<<grid, BM * BN / TM, 0, stream>>>(M, N, K, A, B, C);
  return (int)cudaGetLastError();
}

// ## Step 5: a square of outputs per thread (2-D register blocking)
//
// An outer product is the better shape. A thread that owns an $8 \times 8$ tile of
// $C$ loads, at each $k$, 8 values of $A$'s column and 8 of $B$'s row into registers
// (`reg_a`, `reg_b`) and does all $8 \times 8 = 64$ multiply-adds between them:
// 16 shared loads for 64 multiply-adds, $1/4$ per multiply-add, against $9/8$ before.
// In general a $T_M \times T_N$ thread tile costs $(T_M + T_N)/(T_M T_N)$ loads per
// multiply-add, so the square is best, and the limit is registers: the 64 results,
// 16 operands and addresses take about 100 of a thread's 255.
//
// The block tile is $128 \times 128$, computed by 256 threads, with `BK = 8`: a
// global float now serves 128 multiply-adds, $1/64$ load per multiply-add. There are
// more floats to stage ($128 \times 8$ of each operand) than threads, so each thread
// copies four of each, `stride` rows apart.

template <int BM, int BN, int BK, int TM, int TN>
__global__ void sgemm_blocktile_2d(int M, int N, int K, const float *A,
                                   const float *B, float *C) {
  constexpr int THREADS = BM * BN / (TM * TN);
  __shared__ float tile_a[BM * BK];  // [BM, BK]
  __shared__ float tile_b[BK * BN];  // [BK, BN]
  const int thread_col = threadIdx.x % (BN / TN);  // its TN columns start at *TN
  const int thread_row = threadIdx.x / (BN / TN);  // its TM rows start at *TM
  A += blockIdx.y * BM * K;
  B += blockIdx.x * BN;
  C += blockIdx.y * BM * N + blockIdx.x * BN;
  const int a_row = threadIdx.x / BK, a_col = threadIdx.x % BK;
  constexpr int a_stride = THREADS / BK;  // rows of the A tile one pass copies
  const int b_row = threadIdx.x / BN, b_col = threadIdx.x % BN;
  constexpr int b_stride = THREADS / BN;
  float results[TM * TN] = {0.0f};  // [TM, TN], in registers
  float reg_a[TM];
  float reg_b[TN];
  for (int k0 = 0; k0 < K; k0 += BK) {
    for (int offset = 0; offset < BM; offset += a_stride) {
      tile_a[(a_row + offset) * BK + a_col] = A[(a_row + offset) * K + a_col];
    }
    for (int offset = 0; offset < BK; offset += b_stride) {
      tile_b[(b_row + offset) * BN + b_col] = B[(b_row + offset) * N + b_col];
    }
    __syncthreads();
    A += BK;
    B += BK * N;
    for (int k = 0; k < BK; ++k) {
      for (int m = 0; m < TM; ++m) {
        reg_a[m] = tile_a[(thread_row * TM + m) * BK + k];
      }
      for (int n = 0; n < TN; ++n) {
        reg_b[n] = tile_b[k * BN + thread_col * TN + n];
      }
      for (int m = 0; m < TM; ++m) {  // the outer product reg_a ⊗ reg_b
        for (int n = 0; n < TN; ++n) {
          results[m * TN + n] += reg_a[m] * reg_b[n];
        }
      }
    }
    __syncthreads();
  }
  for (int m = 0; m < TM; ++m) {
    for (int n = 0; n < TN; ++n) {
      C[(thread_row * TM + m) * N + thread_col * TN + n] = results[m * TN + n];
    }
  }
}

extern "C" int sgemm_blocktile_2d_launch(int M, int N, int K, const float *A,
                                         const float *B, float *C,
                                         cudaStream_t stream) {
  constexpr int BM = 128, BN = 128, BK = 8, TM = 8, TN = 8;
  const dim3 grid(N / BN, M / BM);
  sgemm_blocktile_2d<BM, BN, BK, TM, TN>
      <<<grid, BM * BN / (TM * TN), 0, stream>>>(M, N, K, A, B, C);
  return (int)cudaGetLastError();
}

// ## Step 6: 128-bit loads and a transposed A tile
//
// Step 5 issues one load instruction per float. The hardware has 128-bit loads,
// `float4`, which fetch four consecutive floats in one instruction, from global or
// shared memory; using them cuts the load instructions by four without changing the
// bytes. Two obstacles stand in the way:
//
// - `reg_a` reads a *column* of the A tile (`tile_a[(row + m) * BK + k]` for
//   $m = 0..7$), eight floats `BK` apart. Storing the A tile transposed, as
//   `tile_a[k * BM + row]`, makes that column contiguous, so the compiler emits two
//   128-bit shared loads for it. The transpose happens once, while copying in.
// - a `float4` access must be 16-byte aligned: every row of $A$, $B$ and $C$ must
//   start on a multiple of four floats, so $K$ and $N$ must be multiples of 4 (they
//   are, as multiples of the tiles) and the tensors' first elements 16-byte aligned
//   (the driver checks).
//
// With 256 threads and a $128 \times 8$ tile of $A$, each thread copies exactly one
// `float4` of each operand per step, and writes its $8 \times 8$ results as 16
// `float4` stores.

template <int BM, int BN, int BK, int TM, int TN>
__global__ void sgemm_vectorized(int M, int N, int K, const float *A, const float *B,
                                 float *C) {
  __shared__ float tile_a[BK * BM];  // [BK, BM]: A's tile transposed
  __shared__ float tile_b[BK * BN];  // [BK, BN]
  const int thread_col = threadIdx.x % (BN / TN);
  const int thread_row = threadIdx.x / (BN / TN);
  A += blockIdx.y * BM * K;
  B += blockIdx.x * BN;
  C += blockIdx.y * BM * N + blockIdx.x * BN;
  const int a_row = threadIdx.x / (BK / 4);  // one float4 of A per thread
  const int a_col = threadIdx.x % (BK / 4);  // in float4s
  const int b_row = threadIdx.x / (BN / 4);  // one float4 of B per thread
  const int b_col = threadIdx.x % (BN / 4);
  float results[TM * TN] = {0.0f};
  float reg_a[TM];
  float reg_b[TN];
  for (int k0 = 0; k0 < K; k0 += BK) {
    const float4 a = reinterpret_cast<const float4 *>(&A[a_row * K + a_col * 4])[0];
    tile_a[(a_col * 4 + 0) * BM + a_row] = a.x;  // transposed on the way in
    tile_a[(a_col * 4 + 1) * BM + a_row] = a.y;
    tile_a[(a_col * 4 + 2) * BM + a_row] = a.z;
    tile_a[(a_col * 4 + 3) * BM + a_row] = a.w;
    reinterpret_cast<float4 *>(&tile_b[b_row * BN + b_col * 4])[0] =
        reinterpret_cast<const float4 *>(&B[b_row * N + b_col * 4])[0];
    __syncthreads();
    A += BK;
    B += BK * N;
    for (int k = 0; k < BK; ++k) {
      for (int m = 0; m < TM; ++m) {
        reg_a[m] = tile_a[k * BM + thread_row * TM + m];  // contiguous now
      }
      for (int n = 0; n < TN; ++n) {
        reg_b[n] = tile_b[k * BN + thread_col * TN + n];
      }
      for (int m = 0; m < TM; ++m) {
        for (int n = 0; n < TN; ++n) {
          results[m * TN + n] += reg_a[m] * reg_b[n];
        }
      }
    }
    __syncthreads();
  }
  for (int m = 0; m < TM; ++m) {
    for (int n = 0; n < TN; n += 4) {
      const float4 out = make_float4(results[m * TN + n], results[m * TN + n + 1],
                                     results[m * TN + n + 2], results[m * TN + n + 3]);
      float *target = &C[(thread_row * TM + m) * N + thread_col * TN + n];
      reinterpret_cast<float4 *>(target)[0] = out;
    }
  }
}

extern "C" int sgemm_vectorized_launch(int M, int N, int K, const float *A,
                                       const float *B, float *C, cudaStream_t stream) {
  constexpr int BM = 128, BN = 128, BK = 8, TM = 8, TN = 8;
  const dim3 grid(N / BN, M / BM);
  sgemm_vectorized<BM, BN, BK, TM, TN>
      <<<grid, BM * BN / (TM * TN), 0, stream>>>(M, N, K, A, B, C);
  return (int)cudaGetLastError();
}

// ## Step 7: warp tiling
//
// CUTLASS's hierarchy has a level between the block and the thread: the *warp*
// [@kerr2017cutlass]. Here each of the block's 4 warps owns a $64 \times 64$ quarter
// of the $128 \times 128$ block tile, and the 32 threads of a warp split that warp
// tile between them. A thread's outputs are no longer one contiguous $8 \times 8$
// square but `WN_ITER = 4` sub-tiles of $8 \times 4$, `WSUB_N = 16` columns apart:
// 128 outputs, 8 values of $A$ and 16 of $B$ per $k$, $24/128 \approx 0.19$ shared
// loads per multiply-add.
//
// Why it helps, beyond that count: the warp is the unit that executes, and the warp
// tile decides which addresses its 32 threads load together. For each sub-tile, the
// warp's loads of $B$ cover 16 consecutive floats, each broadcast to the 8 threads of
// a column, and its loads of $A$ 64 consecutive floats, each broadcast to the 4
// threads of a row: distinct banks of shared memory, no conflicts. The larger
// per-thread tile gives the scheduler 128 independent multiply-adds per $k$ to hide
// shared-memory latency with, and the warp tile is the natural size to replace the
// inner loop with tensor-core instructions later. `BK` grows to 16, so each
// `__syncthreads` pair brackets twice the work, and `__launch_bounds__` tells the
// compiler the block size, so that it can budget the registers for 128 threads.
//
// The sizes are Boehm's [@boehm2022sgemm] for an A6000: block $128 \times 128 \times
// 16$, warp $64 \times 64$ in $1 \times 4$ sub-tiles, thread $8 \times 4$ per
// sub-tile, 128 threads. With `WM_ITER = 1` the warp tile's rows are one sub-tile.

template <int BM, int BN, int BK, int WM, int WN, int WN_ITER, int TM, int TN,
          int THREADS>
__global__ void __launch_bounds__(THREADS)
    sgemm_warptiling(int M, int N, int K, const float *A, const float *B, float *C) {
  constexpr int WM_ITER = (WM * WN) / (32 * TM * TN * WN_ITER);  // sub-tiles down
  constexpr int WSUB_M = WM / WM_ITER;  // a sub-tile's rows
  constexpr int WSUB_N = WN / WN_ITER;  // and columns
  __shared__ float tile_a[BK * BM];  // [BK, BM], transposed
  __shared__ float tile_b[BK * BN];  // [BK, BN]
  const int warp = threadIdx.x / 32;
  const int warp_col = warp % (BN / WN);  // the warp tile's place in the block tile
  const int warp_row = warp / (BN / WN);
  const int lane = threadIdx.x % 32;
  const int lane_col = lane % (WSUB_N / TN);  // the thread's place in a sub-tile
  const int lane_row = lane / (WSUB_N / TN);
  A += blockIdx.y * BM * K;
  B += blockIdx.x * BN;
  C += (blockIdx.y * BM + warp_row * WM) * N + blockIdx.x * BN + warp_col * WN;
  const int a_row = threadIdx.x / (BK / 4), a_col = threadIdx.x % (BK / 4);
  constexpr int a_stride = THREADS * 4 / BK;  // rows of A one pass copies
  const int b_row = threadIdx.x / (BN / 4), b_col = threadIdx.x % (BN / 4);
  constexpr int b_stride = THREADS * 4 / BN;  // rows of B one pass copies
  float results[WM_ITER * TM * WN_ITER * TN] = {0.0f};  // [WM_ITER*TM, WN_ITER*TN]
  float reg_a[WM_ITER * TM];
  float reg_b[WN_ITER * TN];
  for (int k0 = 0; k0 < K; k0 += BK) {
    for (int offset = 0; offset < BM; offset += a_stride) {
      const float4 a =
          reinterpret_cast<const float4 *>(&A[(a_row + offset) * K + a_col * 4])[0];
      tile_a[(a_col * 4 + 0) * BM + a_row + offset] = a.x;
      tile_a[(a_col * 4 + 1) * BM + a_row + offset] = a.y;
      tile_a[(a_col * 4 + 2) * BM + a_row + offset] = a.z;
      tile_a[(a_col * 4 + 3) * BM + a_row + offset] = a.w;
    }
    for (int offset = 0; offset < BK; offset += b_stride) {
      reinterpret_cast<float4 *>(&tile_b[(b_row + offset) * BN + b_col * 4])[0] =
          reinterpret_cast<const float4 *>(&B[(b_row + offset) * N + b_col * 4])[0];
    }
    __syncthreads();
    A += BK;
    B += BK * N;
    for (int k = 0; k < BK; ++k) {
      for (int wm = 0; wm < WM_ITER; ++wm) {
        for (int m = 0; m < TM; ++m) {
          reg_a[wm * TM + m] =
              tile_a[k * BM + warp_row * WM + wm * WSUB_M + lane_row * TM + m];
        }
      }
      for (int wn = 0; wn < WN_ITER; ++wn) {
        for (int n = 0; n < TN; ++n) {
          reg_b[wn * TN + n] =
              tile_b[k * BN + warp_col * WN + wn * WSUB_N + lane_col * TN + n];
        }
      }
      for (int m = 0; m < WM_ITER * TM; ++m) {
        for (int n = 0; n < WN_ITER * TN; ++n) {
          results[m * (WN_ITER * TN) + n] += reg_a[m] * reg_b[n];
        }
      }
    }
    __syncthreads();
  }
  for (int wm = 0; wm < WM_ITER; ++wm) {
    for (int wn = 0; wn < WN_ITER; ++wn) {
      float *sub_tile = C + (wm * WSUB_M) * N + wn * WSUB_N;  // [WSUB_M, WSUB_N]
      for (int m = 0; m < TM; ++m) {
        for (int n = 0; n < TN; n += 4) {
          const int r = (wm * TM + m) * (WN_ITER * TN) + wn * TN + n;  // in results
          reinterpret_cast<float4 *>(
              &sub_tile[(lane_row * TM + m) * N + lane_col * TN + n])[0] =
              make_float4(results[r], results[r + 1], results[r + 2], results[r + 3]);
        }
      }
    }
  }
}

extern "C" int sgemm_warptiling_launch(int M, int N, int K, const float *A,
                                       const float *B, float *C, cudaStream_t stream) {
  constexpr int BM = 128, BN = 128, BK = 16, WM = 64, WN = 64, WN_ITER = 4;
  constexpr int TM = 8, TN = 4, THREADS = 128;
  static_assert((BM / WM) * (BN / WN) == THREADS / 32, "one warp per warp tile");
  static_assert((WM * WN) % (32 * TM * TN * WN_ITER) == 0, "whole sub-tiles");
  static_assert((THREADS * 4) % BK == 0 && BM % (THREADS * 4 / BK) == 0, "A copy");
  static_assert((THREADS * 4) % BN == 0 && BK % (THREADS * 4 / BN) == 0, "B copy");
  const dim3 grid(N / BN, M / BM);
  sgemm_warptiling<BM, BN, BK, WM, WN, WN_ITER, TM, TN, THREADS>
      <<<grid, THREADS, 0, stream>>>(M, N, K, A, B, C);
  return (int)cudaGetLastError();
}

// ## Exercises
//
// 1. Step 3 reads `tile_a[inner_row * TILE + k]`, the same address for all 32 threads
//    of a warp. What would happen to its speed if the tile were indexed
//    `tile_a[k * TILE + inner_row]` and the threads of a warp took consecutive
//    *rows*? Count the shared-memory bank conflicts (32 banks of 4 bytes).
// 2. Add $\alpha$ and $\beta$ to step 7 ($C \leftarrow \alpha AB + \beta C$, BLAS's
//    full `sgemm`). How many more bytes does $\beta \neq 0$ move at $4096^3$, and
//    how much slower should it be by the roofline?
// 3. Give step 5 edge handling for any $M$, $N$ (zero-filled tiles, as step 3 does,
//    and a guarded store) and measure what it costs at $4096^3$ and at $4095^3$.
// 4. Double-buffer step 7: two pairs of shared tiles, so that the copy of slice
//    $k + 1$ overlaps the multiply-adds of slice $k$ with one `__syncthreads` per
//    slice. Does it move the H200 closer to cuBLAS?
