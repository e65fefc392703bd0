// Causal depthwise conv1d, forward and backward (see ssm_kernels/causal_conv1d/reference.py for the math).
//
// x, dout: (B, D, L) fp32/fp16/bf16 with unit stride along L; weight: (D, W) fp32, W <= 8; bias: (D,) fp32;
// seq_idx: (B, L) int32; initial_states: (B, D, W-1) in x's dtype, any strides. Accumulation in fp32.
// Both kernels: one block per (run_tile<T>() positions, channel, batch), every thread a run of consecutive
// positions moved as 16-byte vectors; the inputs just before a run come from the previous lane by shuffles, and
// the backward's g just after it from the next lane (the block's edge lanes load those themselves). No shared
// memory but the backward's final reduction of the dweight / dbias partial sums.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include "_common/dispatch.h"
#include "_common/vectors.cuh"
#include "causal_conv1d.h"

namespace ssm_kernels {
namespace {

constexpr int kMaxWidth = 8;
constexpr int kThreads = 128;

struct ConvParams {
  int batch, dim, length, width;
  int64_t x_stride_b, x_stride_d;
  int64_t dout_stride_b, dout_stride_d;
  int64_t init_stride_b, init_stride_d, init_stride_l;
  bool silu;
};

__device__ __forceinline__ float sigmoid(float v) { return 1.f / (1.f + __expf(-v)); }

// Every thread owns a run of RUN consecutive positions: two 16-byte loads where aligned (8 fp32, 16 fp16 / bf16).
template <typename T> __host__ __device__ constexpr int run_length() { return 32 / sizeof(T); }
template <typename T> __host__ __device__ constexpr int run_tile() { return kThreads * run_length<T>(); }
constexpr int kHalo = kMaxWidth - 1;  // inputs before a run that its outputs read; g values after it for dx

// Inputs at positions start .. start + RUN - 1 of a row: x (zeros past the end), the initial state before
// position 0 (zeros without one, and before it).
template <typename T, int RUN>
__device__ __forceinline__ void load_inputs(const T* x_row, const T* init_row, const ConvParams& p, int start,
                                            float (&v)[RUN]) {
  if (start >= 0 && start + RUN <= p.length && vector_aligned<T, RUN>(x_row + start)) {
    load_vectors<RUN>(x_row + start, v);
    return;
  }
#pragma unroll
  for (int k = 0; k < RUN; ++k) {
    const int pos = start + k;
    float value = 0.f;
    if (pos >= 0 && pos < p.length) {
      value = static_cast<float>(x_row[pos]);
    } else if (pos < 0 && pos >= 1 - p.width && init_row) {
      value = static_cast<float>(init_row[(p.width - 1 + pos) * p.init_stride_l]);
    }
    v[k] = value;
  }
}

// Sequence ids of the same positions (positions before 0 continue position 0's sequence, positions past the
// end the last one's).
template <int RUN>
__device__ __forceinline__ void load_ids(const int* seq_row, const ConvParams& p, int start, int (&ids)[RUN]) {
#pragma unroll
  for (int k = 0; k < RUN; ++k) ids[k] = seq_row[min(max(start + k, 0), p.length - 1)];
}

// window[i] = the run's value at i - kHalo: the previous lane's last kHalo (lane 0: `before`, loaded by
// itself), then this lane's.
template <typename V, int RUN>
__device__ __forceinline__ void gather_window(const V (&run)[RUN], const V (&before)[kHalo],
                                              V (&window)[kHalo + RUN]) {
  static_assert(kHalo <= RUN, "the window reaches one run back");
  const bool first_lane = threadIdx.x % 32 == 0;
#pragma unroll
  for (int i = 0; i < kHalo; ++i) {
    const V previous = __shfl_up_sync(0xffffffffu, run[RUN - kHalo + i], 1);
    window[i] = first_lane ? before[i] : previous;
  }
#pragma unroll
  for (int k = 0; k < RUN; ++k) window[kHalo + k] = run[k];
}

// after[j] = the run's value at RUN + j: the next lane's first kHalo (the last lane: `next`, its own load).
template <typename V, int RUN>
__device__ __forceinline__ void gather_after(const V (&run)[RUN], const V (&next)[RUN], V (&after)[kHalo]) {
  const bool last_lane = threadIdx.x % 32 == 31;
#pragma unroll
  for (int j = 0; j < kHalo; ++j) {
    const V following = __shfl_down_sync(0xffffffffu, run[j], 1);
    after[j] = last_lane ? next[j] : following;
  }
}

template <typename V, int RUN>
__device__ __forceinline__ void run_tail(const V (&run)[RUN], V (&tail)[kHalo]) {
#pragma unroll
  for (int i = 0; i < kHalo; ++i) tail[i] = run[RUN - kHalo + i];
}

// x's run at `start` and the window its outputs read (window[i]: position start + i - kHalo), and where
// seq_row is given the window's sequence ids. Lane 0 loads the run before its own, issued beside its own run's
// load so that the warp waits for one memory latency, not two.
template <int RUN, typename T>
__device__ __forceinline__ void load_window(const T* x_row, const T* init_row, const int* seq_row,
                                            const ConvParams& p, int start, float (&window)[kHalo + RUN],
                                            int (&id_window)[kHalo + RUN]) {
  const bool first_lane = threadIdx.x % 32 == 0;
  float run[RUN], previous[RUN], before[kHalo];
  if (first_lane) load_inputs(x_row, init_row, p, start - RUN, previous);
  load_inputs(x_row, init_row, p, start, run);
  run_tail(previous, before);  // (read by lane 0 only)
  gather_window(run, before, window);
  if (seq_row) {  // uniform over the block: every lane takes the shuffles
    int ids[RUN], previous_ids[RUN], ids_before[kHalo];
    if (first_lane) load_ids(seq_row, p, start - RUN, previous_ids);
    load_ids(seq_row, p, start, ids);
    run_tail(previous_ids, ids_before);
    gather_window(ids, ids_before, id_window);
  }
}

// The W taps right-aligned in kMaxWidth slots: tap i reads window[k + i] for output k; the first
// kMaxWidth - W slots are zero and never read.
__device__ __forceinline__ void load_weights(const float* weight, int d, int width, float (&w)[kMaxWidth]) {
  const int skip = kMaxWidth - width;
#pragma unroll
  for (int i = 0; i < kMaxWidth; ++i) w[i] = i >= skip ? weight[d * width + i - skip] : 0.f;
}

// The pre-activation of output k of a window: bias + its taps; with HAS_SEQ a tap reads an input only of the
// output's own sequence. Not 0 * x for the unused slots: an inf before the window stays out.
template <bool HAS_SEQ, int N>
__device__ __forceinline__ float pre_activation(const float (&window)[N], const int (&id_window)[N], int k,
                                                const float (&w)[kMaxWidth], float bias, int skip) {
  float acc = bias;
#pragma unroll
  for (int i = 0; i < kMaxWidth; ++i) {
    if (i >= skip && (!HAS_SEQ || id_window[k + i] == id_window[k + kHalo])) acc += w[i] * window[k + i];
  }
  return acc;
}

// dL/d(pre-activation) from dL/dy.
__device__ __forceinline__ float grad_pre(float dy, float pre, bool silu) {
  if (!silu) return dy;
  const float s = sigmoid(pre);
  return dy * s * (1.f + pre * (1.f - s));
}

template <typename T>
__device__ __forceinline__ void store_run(T* row, int start, int length, const float (&v)[run_length<T>()]) {
  constexpr int RUN = run_length<T>();
  if (start + RUN <= length && vector_aligned<T, RUN>(row + start)) {
    store_vectors<RUN>(row + start, v);
  } else {
#pragma unroll
    for (int k = 0; k < RUN; ++k) {
      if (start + k < length) row[start + k] = static_cast<T>(v[k]);
    }
  }
}

template <bool HAS_SEQ, int RUN>
__device__ __forceinline__ void forward_run(const float (&window)[kHalo + RUN], const int (&id_window)[kHalo + RUN],
                                            const float (&w)[kMaxWidth], float bias, int skip, bool silu,
                                            float (&y)[RUN]) {
#pragma unroll
  for (int k = 0; k < RUN; ++k) {
    y[k] = pre_activation<HAS_SEQ>(window, id_window, k, w, bias, skip);
    if (silu) y[k] *= sigmoid(y[k]);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) causal_conv1d_fwd_kernel(
    const T* __restrict__ x, const float* __restrict__ weight, const float* __restrict__ bias,
    const int* __restrict__ seq_idx, const T* __restrict__ initial_states, T* __restrict__ out, ConvParams p) {
  constexpr int RUN = run_length<T>();
  const int d = blockIdx.y, b = blockIdx.z;
  const int start = blockIdx.x * run_tile<T>() + threadIdx.x * RUN;  // this thread's first output
  const T* x_row = x + b * p.x_stride_b + d * p.x_stride_d;
  const T* init_row = initial_states ? initial_states + b * p.init_stride_b + d * p.init_stride_d : nullptr;
  const int* seq_row = seq_idx ? seq_idx + int64_t(b) * p.length : nullptr;

  float window[kHalo + RUN], w[kMaxWidth], y[RUN];
  int id_window[kHalo + RUN];
  load_window<RUN>(x_row, init_row, seq_row, p, start, window, id_window);
  load_weights(weight, d, p.width, w);
  const float bias_d = bias ? bias[d] : 0.f;
  const int skip = kMaxWidth - p.width;
  if (seq_row) {
    forward_run<true>(window, id_window, w, bias_d, skip, p.silu, y);
  } else {
    forward_run<false>(window, id_window, w, bias_d, skip, p.silu, y);
  }
  store_run(out + (int64_t(b) * p.dim + d) * p.length, start, p.length, y);
}

// Backward of one run: g = dL/d(pre-activation) on the run and (from the next lane, or the next run's loads in
// the last lane) on the kHalo positions after it; dx[q] = sum over the outputs o reading input q (tap i:
// o = q + kHalo - i) of w[i] g[o]; this run's share of dweight (dw[i] += g[o] window[o + i]) and dbias. With
// HAS_SEQ a pair (input, output) counts only within one sequence.
template <bool HAS_SEQ, int RUN>
__device__ __forceinline__ void backward_run(const float (&window)[kHalo + RUN], const int (&id_window)[kHalo + RUN],
                                             const float (&dy)[RUN], const float (&next_x)[RUN],
                                             const float (&next_dy)[RUN], const int (&next_ids)[RUN],
                                             const float (&w)[kMaxWidth], float bias, int skip, bool silu,
                                             float (&g)[RUN], float (&dx)[RUN], float (&dw)[kMaxWidth], float& db) {
#pragma unroll
  for (int k = 0; k < RUN; ++k) g[k] = grad_pre(dy[k], pre_activation<HAS_SEQ>(window, id_window, k, w, bias, skip),
                                                silu);
  // g after the run: the next lane's first kHalo; the last lane computes them from the next run's inputs (the
  // window of output RUN + j is this window's tail and the next run)
  float g_next[RUN], x_next_window[2 * kHalo];
  int id_next_window[2 * kHalo];
  if (threadIdx.x % 32 == 31) {
#pragma unroll
    for (int i = 0; i < kHalo; ++i) {
      x_next_window[i] = window[RUN + i];
      x_next_window[kHalo + i] = next_x[i];
      id_next_window[i] = id_window[RUN + i];
      id_next_window[kHalo + i] = next_ids[i];
    }
#pragma unroll
    for (int j = 0; j < kHalo; ++j) {
      g_next[j] = grad_pre(next_dy[j], pre_activation<HAS_SEQ>(x_next_window, id_next_window, j, w, bias, skip),
                           silu);
    }
  }
  float g_after[kHalo];
  gather_after(g, g_next, g_after);
  int id_after[kHalo];
  if (HAS_SEQ) {
    int own_ids[RUN];
#pragma unroll
    for (int k = 0; k < RUN; ++k) own_ids[k] = id_window[kHalo + k];
    gather_after(own_ids, next_ids, id_after);
  }
#pragma unroll
  for (int k = 0; k < RUN; ++k) {  // input q = k; output o = k + kHalo - i through tap i
    float acc = 0.f;
#pragma unroll
    for (int i = 0; i < kMaxWidth; ++i) {
      const int o = k + kHalo - i;
      if (i < skip) continue;
      const float go = o < RUN ? g[o] : g_after[o - RUN];
      if (HAS_SEQ) {
        const int id_o = o < RUN ? id_window[kHalo + o] : id_after[o - RUN];
        if (id_o != id_window[kHalo + k]) continue;
      }
      acc += w[i] * go;
    }
    dx[k] = acc;
    db += g[k];
#pragma unroll
    for (int i = 0; i < kMaxWidth; ++i) {  // output k reads window[k + i] through tap i
      if (i >= skip && (!HAS_SEQ || id_window[k + i] == id_window[k + kHalo])) dw[i] += g[k] * window[k + i];
    }
  }
}

// dinitial_states[j] (input position j - (W-1), before position 0 and in its sequence) from the outputs
// o = 0 .. j that read it, through the weight's column j - o (read from memory: an index known only at run time
// would put a register array in local memory): all inside the block's first run.
template <int RUN>
__device__ __forceinline__ float initial_state_grad(int j, const float (&g)[RUN], const int (&id_window)[kHalo + RUN],
                                                    const float* weight_row, bool has_seq) {
  float acc = 0.f;
#pragma unroll
  for (int o = 0; o < kHalo; ++o) {
    if (o <= j && (!has_seq || id_window[kHalo + o] == id_window[kHalo])) acc += weight_row[j - o] * g[o];
  }
  return acc;
}

// The block's sum of v (every thread's share), in thread 0. red: kThreads / 32 floats of shared memory.
__device__ __forceinline__ float block_sum(float v, float* red) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
  __syncthreads();
  float total = 0.f;
  if (threadIdx.x == 0) {
#pragma unroll
    for (int warp = 0; warp < kThreads / 32; ++warp) total += red[warp];
  }
  __syncthreads();  // red is reused by the next sum
  return total;
}

// Backward: per block partial sums of dweight and dbias (reduced on the host in a fixed order: deterministic),
// dinitial_states in the first block of a row.
template <typename T>
__global__ void __launch_bounds__(kThreads) causal_conv1d_bwd_kernel(
    const T* __restrict__ x, const float* __restrict__ weight, const float* __restrict__ bias,
    const int* __restrict__ seq_idx, const T* __restrict__ initial_states, const T* __restrict__ dout,
    T* __restrict__ dx, float* __restrict__ dweight_partial, float* __restrict__ dbias_partial,
    T* __restrict__ dinitial, ConvParams p) {
  constexpr int RUN = run_length<T>();
  __shared__ float red[kThreads / 32];
  const int d = blockIdx.y, b = blockIdx.z;
  const int start = blockIdx.x * run_tile<T>() + threadIdx.x * RUN;
  const T* x_row = x + b * p.x_stride_b + d * p.x_stride_d;
  const T* dout_row = dout + b * p.dout_stride_b + d * p.dout_stride_d;
  const T* init_row = initial_states ? initial_states + b * p.init_stride_b + d * p.init_stride_d : nullptr;
  const int* seq_row = seq_idx ? seq_idx + int64_t(b) * p.length : nullptr;

  // the last lane's loads of the next run first, issued beside the others
  float next_x[RUN], next_dy[RUN], dy[RUN], window[kHalo + RUN];
  int next_ids[RUN], id_window[kHalo + RUN];
  if (threadIdx.x % 32 == 31) {
    load_inputs(x_row, init_row, p, start + RUN, next_x);
    load_inputs(dout_row, static_cast<const T*>(nullptr), p, start + RUN, next_dy);
    if (seq_row) load_ids(seq_row, p, start + RUN, next_ids);
  }
  load_inputs(dout_row, static_cast<const T*>(nullptr), p, start, dy);
  load_window<RUN>(x_row, init_row, seq_row, p, start, window, id_window);
  float w[kMaxWidth];
  load_weights(weight, d, p.width, w);
  const float bias_d = bias ? bias[d] : 0.f;
  const int skip = kMaxWidth - p.width;

  float g[RUN], dx_run[RUN], dw[kMaxWidth] = {0}, db = 0.f;
  if (seq_row) {
    backward_run<true>(window, id_window, dy, next_x, next_dy, next_ids, w, bias_d, skip, p.silu, g, dx_run, dw, db);
  } else {
    backward_run<false>(window, id_window, dy, next_x, next_dy, next_ids, w, bias_d, skip, p.silu, g, dx_run, dw,
                        db);
  }
  store_run(dx + (int64_t(b) * p.dim + d) * p.length, start, p.length, dx_run);

  if (blockIdx.x == 0 && threadIdx.x == 0 && dinitial) {
#pragma unroll
    for (int j = 0; j < kHalo; ++j) {
      if (j < p.width - 1) {
        dinitial[(int64_t(b) * p.dim + d) * (p.width - 1) + j] =
            static_cast<T>(initial_state_grad(j, g, id_window, weight + d * p.width, seq_row != nullptr));
      }
    }
  }

  // slot layout (b, block, d, k); W is uniform over the block, so every thread reaches the barriers
  const int64_t slot = (int64_t(b) * gridDim.x + blockIdx.x) * p.dim + d;
  const float db_total = block_sum(db, red);
  if (threadIdx.x == 0) dbias_partial[slot] = db_total;
#pragma unroll
  for (int i = 0; i < kMaxWidth; ++i) {
    if (i >= skip) {
      const float total = block_sum(dw[i], red);
      if (threadIdx.x == 0) dweight_partial[slot * p.width + i - skip] = total;
    }
  }
}

ConvParams make_params(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& initial_states,
                       bool silu) {
  ConvParams p{};
  p.batch = x.size(0);
  p.dim = x.size(1);
  p.length = x.size(2);
  p.width = weight.size(1);
  p.x_stride_b = x.stride(0);
  p.x_stride_d = x.stride(1);
  if (initial_states.has_value()) {
    p.init_stride_b = initial_states->stride(0);
    p.init_stride_d = initial_states->stride(1);
    p.init_stride_l = initial_states->stride(2);
  }
  p.silu = silu;
  return p;
}

void check_inputs(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                  const c10::optional<at::Tensor>& seq_idx, const c10::optional<at::Tensor>& initial_states) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 3 && x.stride(2) == 1, "x must be a CUDA (B, D, L) tensor with unit stride along L");
  TORCH_CHECK(weight.scalar_type() == at::kFloat && weight.is_contiguous() && weight.dim() == 2 &&
              weight.size(0) == x.size(1) && weight.size(1) >= 1 && weight.size(1) <= kMaxWidth,
              "weight must be a contiguous fp32 (D, W) tensor with 1 <= W <= 8");
  if (bias.has_value())
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->is_contiguous() && bias->numel() == x.size(1),
                "bias must be a contiguous fp32 (D,) tensor");
  if (seq_idx.has_value())
    TORCH_CHECK(seq_idx->scalar_type() == at::kInt && seq_idx->is_contiguous() && seq_idx->size(0) == x.size(0) &&
                seq_idx->size(1) == x.size(2), "seq_idx must be a contiguous int32 (B, L) tensor");
  if (initial_states.has_value())
    TORCH_CHECK(initial_states->scalar_type() == x.scalar_type() && initial_states->dim() == 3 &&
                initial_states->size(0) == x.size(0) && initial_states->size(1) == x.size(1) &&
                initial_states->size(2) == weight.size(1) - 1, "initial_states must be (B, D, W-1) in x's dtype");
}

template <typename T>
const T* optional_ptr(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr<T>() : nullptr;
}

}  // namespace

void causal_conv1d_fwd(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                       const c10::optional<at::Tensor>& seq_idx, const c10::optional<at::Tensor>& initial_states,
                       bool silu, at::Tensor& out) {
  check_inputs(x, weight, bias, seq_idx, initial_states);
  TORCH_CHECK(out.is_contiguous() && out.sizes() == x.sizes() && out.scalar_type() == x.scalar_type(),
              "out must be contiguous and shaped like x");
  if (x.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  ConvParams p = make_params(x, weight, initial_states, silu);
  SSM_DISPATCH_FLOAT_HALF_BF16(x.scalar_type(), "causal_conv1d_fwd", [&] {
    const dim3 grid((p.length + run_tile<scalar_t>() - 1) / run_tile<scalar_t>(), p.dim, p.batch);
    causal_conv1d_fwd_kernel<scalar_t><<<grid, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        x.data_ptr<scalar_t>(), weight.data_ptr<float>(), optional_ptr<float>(bias), optional_ptr<int>(seq_idx),
        optional_ptr<scalar_t>(initial_states), out.data_ptr<scalar_t>(), p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// Writes dx (shaped and strided like x), dweight (D, W) fp32, dbias (D,) fp32 and dinitial (B, D, W-1).
void causal_conv1d_bwd(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                       const c10::optional<at::Tensor>& seq_idx, const c10::optional<at::Tensor>& initial_states,
                       const at::Tensor& dout, bool silu, at::Tensor& dx, at::Tensor& dweight, at::Tensor& dbias,
                       at::Tensor& dinitial) {
  check_inputs(x, weight, bias, seq_idx, initial_states);
  TORCH_CHECK(dout.sizes() == x.sizes() && dout.stride(2) == 1 && dout.scalar_type() == x.scalar_type(),
              "dout must be shaped like x with unit stride along L");
  TORCH_CHECK(dx.is_contiguous() && dx.sizes() == x.sizes() && dx.scalar_type() == x.scalar_type(),
              "dx must be contiguous and shaped like x");
  TORCH_CHECK(dweight.is_contiguous() && dweight.scalar_type() == at::kFloat && dbias.scalar_type() == at::kFloat,
              "dweight and dbias must be fp32");
  TORCH_CHECK(dinitial.is_contiguous() && dinitial.scalar_type() == x.scalar_type(), "dinitial must be contiguous");
  const c10::cuda::CUDAGuard guard(x.device());
  ConvParams p = make_params(x, weight, initial_states, silu);
  p.dout_stride_b = dout.stride(0);
  p.dout_stride_d = dout.stride(1);
  if (x.numel() == 0) {
    dweight.zero_();
    dbias.zero_();
    dinitial.zero_();
    return;
  }
  at::Tensor partial_w, partial_b;
  SSM_DISPATCH_FLOAT_HALF_BF16(x.scalar_type(), "causal_conv1d_bwd", [&] {
    const int tiles = (p.length + run_tile<scalar_t>() - 1) / run_tile<scalar_t>();
    partial_w = at::empty({p.batch, tiles, p.dim, p.width}, x.options().dtype(at::kFloat));
    partial_b = at::empty({p.batch, tiles, p.dim}, x.options().dtype(at::kFloat));
    const dim3 grid(tiles, p.dim, p.batch);
    causal_conv1d_bwd_kernel<scalar_t><<<grid, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        x.data_ptr<scalar_t>(), weight.data_ptr<float>(), optional_ptr<float>(bias), optional_ptr<int>(seq_idx),
        optional_ptr<scalar_t>(initial_states), dout.data_ptr<scalar_t>(), dx.data_ptr<scalar_t>(),
        partial_w.data_ptr<float>(), partial_b.data_ptr<float>(),
        p.width > 1 ? dinitial.data_ptr<scalar_t>() : nullptr, p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  const std::vector<int64_t> batch_and_tiles{0, 1};
  dweight.copy_(partial_w.sum(batch_and_tiles));
  dbias.copy_(partial_b.sum(batch_and_tiles));
}

}  // namespace ssm_kernels
