// Causal depthwise conv1d, forward and backward (see ssm_kernels/causal_conv1d/reference.py for the math).
//
// x, dout: (B, D, L) fp32/fp16/bf16 with unit stride along L; weight: (D, W) fp32, W <= 8; bias: (D,) fp32;
// seq_idx: (B, L) int32; initial_states: (B, D, W-1) in x's dtype, any strides. Accumulation in fp32.
// Forward: one block per (fwd_tile<T>() positions, channel, batch), a run of outputs per thread (below). Backward:
// one block per (tile of kTile positions, channel, batch), the tile and its halo staged in shared memory so that
// every input is read from global memory once per block.
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
constexpr int kTile = 512;  // backward: positions per block, kTile / kThreads per thread

struct ConvParams {
  int batch, dim, length, width;
  int64_t x_stride_b, x_stride_d;
  int64_t dout_stride_b, dout_stride_d;
  int64_t init_stride_b, init_stride_d, init_stride_l;
  bool silu;
};

__device__ __forceinline__ float sigmoid(float v) { return 1.f / (1.f + __expf(-v)); }

// Stages x[b, d, first .. first + count) into xs and the sequence ids into ids. Positions before 0 come
// from the initial state (zeros without one) and continue the sequence of position 0; positions past the
// end read as zero.
template <typename T>
__device__ void stage_inputs(const T* __restrict__ x_row, const T* __restrict__ init_row, const int* __restrict__ seq_row,
                             const ConvParams& p, int first, int count, float* xs, int* ids) {
  for (int i = threadIdx.x; i < count; i += blockDim.x) {
    const int pos = first + i;
    float v = 0.f;
    int id = 0;
    if (pos >= 0 && pos < p.length) {
      v = static_cast<float>(x_row[pos]);
      if (seq_row) id = seq_row[pos];
    } else if (pos < 0) {
      if (init_row) v = static_cast<float>(init_row[(p.width - 1 + pos) * p.init_stride_l]);
      if (seq_row) id = seq_row[0];
    }
    xs[i] = v;
    ids[i] = id;
  }
}

// Pre-activation at the position whose window starts at xs[j] (window xs[j .. j + W - 1], output at the end).
__device__ __forceinline__ float window_sum(const float* xs, const int* ids, int j, const float (&w)[kMaxWidth],
                                            float bias, int width) {
  float acc = bias;
  const int out_id = ids[j + width - 1];
#pragma unroll
  for (int k = 0; k < kMaxWidth; ++k) {
    if (k < width && ids[j + k] == out_id) acc += w[k] * xs[j + k];
  }
  return acc;
}

// Forward: every thread computes a run of RUN consecutive outputs from its run of inputs (two 16-byte loads where
// aligned: 8 fp32 or 16 fp16 / bf16) and the kMaxWidth - 1 inputs before it, taken from the previous lane's run
// by shuffles; lane 0 loads them itself, issued beside its own run's load so that the warp waits for one memory
// latency, not two.
template <typename T> __host__ __device__ constexpr int fwd_run() { return 32 / sizeof(T); }
// positions per forward block
template <typename T> __host__ __device__ constexpr int fwd_tile() { return kThreads * fwd_run<T>(); }

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

// Sequence ids of the same positions (positions before 0 continue position 0's sequence).
template <int RUN>
__device__ __forceinline__ void load_ids(const int* seq_row, const ConvParams& p, int start, int (&ids)[RUN]) {
#pragma unroll
  for (int k = 0; k < RUN; ++k) ids[k] = seq_row[min(max(start + k, 0), p.length - 1)];
}

// window[i] = the run's value at i - (kMaxWidth - 1): the previous lane's last kMaxWidth - 1 (lane 0: `before`,
// the run it loaded itself), then this lane's.
template <typename V, int RUN>
__device__ __forceinline__ void gather_window(const V (&run)[RUN], const V (&before)[kMaxWidth - 1],
                                              V (&window)[kMaxWidth - 1 + RUN]) {
  static_assert(kMaxWidth - 1 <= RUN, "the window reaches one run back");
  const bool first_lane = threadIdx.x % 32 == 0;
#pragma unroll
  for (int i = 0; i < kMaxWidth - 1; ++i) {
    const V previous = __shfl_up_sync(0xffffffffu, run[RUN - (kMaxWidth - 1) + i], 1);
    window[i] = first_lane ? before[i] : previous;
  }
#pragma unroll
  for (int k = 0; k < RUN; ++k) window[kMaxWidth - 1 + k] = run[k];
}

// The last kMaxWidth - 1 entries of a run.
template <typename V, int RUN>
__device__ __forceinline__ void run_tail(const V (&run)[RUN], V (&tail)[kMaxWidth - 1]) {
#pragma unroll
  for (int i = 0; i < kMaxWidth - 1; ++i) tail[i] = run[RUN - (kMaxWidth - 1) + i];
}

template <typename T>
__global__ void __launch_bounds__(kThreads) causal_conv1d_fwd_kernel(
    const T* __restrict__ x, const float* __restrict__ weight, const float* __restrict__ bias,
    const int* __restrict__ seq_idx, const T* __restrict__ initial_states, T* __restrict__ out, ConvParams p) {
  constexpr int RUN = fwd_run<T>();
  const int d = blockIdx.y, b = blockIdx.z;
  const int start = blockIdx.x * fwd_tile<T>() + threadIdx.x * RUN;  // this thread's first output
  const bool first_lane = threadIdx.x % 32 == 0;
  const T* x_row = x + b * p.x_stride_b + d * p.x_stride_d;
  const T* init_row = initial_states ? initial_states + b * p.init_stride_b + d * p.init_stride_d : nullptr;
  const int* seq_row = seq_idx ? seq_idx + int64_t(b) * p.length : nullptr;

  float run[RUN], previous_run[RUN], before[kMaxWidth - 1], window[kMaxWidth - 1 + RUN];
  if (first_lane) load_inputs(x_row, init_row, p, start - RUN, previous_run);
  load_inputs(x_row, init_row, p, start, run);
  run_tail(previous_run, before);  // (unused but for lane 0)
  gather_window(run, before, window);
  // taps right-aligned: tap i reads window[k + i] for output k; the first kMaxWidth - W taps are unused
  const int skip = kMaxWidth - p.width;
  float w[kMaxWidth];
#pragma unroll
  for (int i = 0; i < kMaxWidth; ++i) w[i] = i >= skip ? weight[d * p.width + i - skip] : 0.f;
  const float bias_d = bias ? bias[d] : 0.f;

  float y[RUN];
  if (seq_row) {  // a tap reads an input only of the output's own sequence
    int ids[RUN], previous_ids[RUN], ids_before[kMaxWidth - 1], id_window[kMaxWidth - 1 + RUN];
    if (first_lane) load_ids(seq_row, p, start - RUN, previous_ids);
    load_ids(seq_row, p, start, ids);
    run_tail(previous_ids, ids_before);
    gather_window(ids, ids_before, id_window);
#pragma unroll
    for (int k = 0; k < RUN; ++k) {
      float acc = bias_d;
#pragma unroll
      for (int i = 0; i < kMaxWidth; ++i) {
        if (i >= skip && id_window[k + i] == id_window[k + kMaxWidth - 1]) acc += w[i] * window[k + i];
      }
      y[k] = acc;
    }
  } else {
#pragma unroll
    for (int k = 0; k < RUN; ++k) {
      float acc = bias_d;
#pragma unroll
      for (int i = 0; i < kMaxWidth; ++i) {
        if (i >= skip) acc += w[i] * window[k + i];  // not 0 * x: an inf before the window stays out
      }
      y[k] = acc;
    }
  }
  if (p.silu) {
#pragma unroll
    for (int k = 0; k < RUN; ++k) y[k] *= sigmoid(y[k]);
  }

  T* out_row = out + (int64_t(b) * p.dim + d) * p.length;
  if (start + RUN <= p.length && vector_aligned<T, RUN>(out_row + start)) {
    store_vectors<RUN>(out_row + start, y);
  } else {
#pragma unroll
    for (int k = 0; k < RUN; ++k) {
      if (start + k < p.length) out_row[start + k] = static_cast<T>(y[k]);
    }
  }
}

// Backward. g = dout * act'(pre) is formed for the tile plus a right halo of W-1 positions (outputs that
// read inputs of this tile); then dx[t] = sum_k w[k] g[t + W - 1 - k], per-block partial sums of dweight
// and dbias (reduced on the host in a fixed order: deterministic), and dinitial_states in the first tile.
template <typename T>
__global__ void __launch_bounds__(kThreads) causal_conv1d_bwd_kernel(
    const T* __restrict__ x, const float* __restrict__ weight, const float* __restrict__ bias,
    const int* __restrict__ seq_idx, const T* __restrict__ initial_states, const T* __restrict__ dout,
    T* __restrict__ dx, float* __restrict__ dweight_partial, float* __restrict__ dbias_partial,
    T* __restrict__ dinitial, ConvParams p) {
  constexpr int kSpan = kTile + 2 * (kMaxWidth - 1);
  extern __shared__ unsigned char smem[];
  float* xs = reinterpret_cast<float*>(smem);  // positions t0 - (W-1) ...
  float* gs = xs + kSpan;                       // positions t0 ...
  float* red = gs + kSpan;                      // block reduction scratch
  int* ids = reinterpret_cast<int*>(red + kThreads);

  const int W = p.width, t0 = blockIdx.x * kTile, d = blockIdx.y, b = blockIdx.z;
  const T* x_row = x + b * p.x_stride_b + d * p.x_stride_d;
  const T* dout_row = dout + b * p.dout_stride_b + d * p.dout_stride_d;
  const T* init_row = initial_states ? initial_states + b * p.init_stride_b + d * p.init_stride_d : nullptr;
  const int* seq_row = seq_idx ? seq_idx + int64_t(b) * p.length : nullptr;
  stage_inputs(x_row, init_row, seq_row, p, t0 - (W - 1), kTile + 2 * (W - 1), xs, ids);

  float w[kMaxWidth];
#pragma unroll
  for (int k = 0; k < kMaxWidth; ++k) w[k] = k < W ? weight[d * W + k] : 0.f;
  const float bias_d = bias ? float(bias[d]) : 0.f;
  __syncthreads();

  for (int j = threadIdx.x; j < kTile + W - 1; j += blockDim.x) {
    const int pos = t0 + j;
    float g = 0;
    if (pos < p.length) {
      g = static_cast<float>(dout_row[pos]);
      if (p.silu) {
        const float pre = window_sum(xs, ids, j, w, bias_d, W);
        const float s = sigmoid(pre);
        g *= s * (1.f + pre * (1.f - s));
      }
    }
    gs[j] = g;
  }
  __syncthreads();

  // Input position t sits at xs[t - t0 + W - 1]; output position o at gs[o - t0] and ids[o - t0 + W - 1].
  float dw[kMaxWidth] = {0};
  float db = 0;
  T* dx_row = dx + (int64_t(b) * p.dim + d) * p.length;
  for (int i = threadIdx.x; i < kTile && t0 + i < p.length; i += blockDim.x) {
    const int in_id = ids[i + W - 1];
    float acc = 0;
#pragma unroll
    for (int k = 0; k < kMaxWidth; ++k) {
      const int o = i + W - 1 - k;  // output reading this input through weight k
      if (k < W && ids[o + W - 1] == in_id) acc += w[k] * gs[o];
    }
    dx_row[t0 + i] = static_cast<T>(acc);
    const float g = gs[i];
    const int out_id = ids[i + W - 1];
    db += g;
#pragma unroll
    for (int k = 0; k < kMaxWidth; ++k) {
      if (k < W && ids[i + k] == out_id) dw[k] += g * xs[i + k];
    }
  }

  if (blockIdx.x == 0 && dinitial && threadIdx.x < W - 1) {
    // Initial-state slot j is input position j - (W-1); it shares position 0's sequence id.
    const int j = threadIdx.x;
    float acc = 0;
#pragma unroll
    for (int k = 0; k < kMaxWidth; ++k) {
      const int o = j - k;  // output position reading slot j through weight k
      if (k < W && o >= 0 && o < p.length && ids[o + W - 1] == ids[0]) acc += w[k] * gs[o];
    }
    dinitial[(int64_t(b) * p.dim + d) * (W - 1) + j] = static_cast<T>(acc);
  }

  // Block reductions of dbias and each dweight[k]; slot layout (b, tile, d, k).
  const int64_t slot = (int64_t(b) * gridDim.x + blockIdx.x) * p.dim + d;
#pragma unroll
  for (int k = -1; k < kMaxWidth; ++k) {
    if (k < W) {  // W is uniform over the block, so the barriers inside are reached by all threads
      red[threadIdx.x] = k < 0 ? db : dw[k];
      __syncthreads();
      for (int stride = kThreads / 2; stride > 0; stride >>= 1) {
        if (threadIdx.x < stride) red[threadIdx.x] += red[threadIdx.x + stride];
        __syncthreads();
      }
      if (threadIdx.x == 0) {
        if (k < 0) dbias_partial[slot] = red[0];
        else dweight_partial[slot * W + k] = red[0];
      }
      __syncthreads();
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
    const dim3 grid((p.length + fwd_tile<scalar_t>() - 1) / fwd_tile<scalar_t>(), p.dim, p.batch);
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
  const int tiles = (p.length + kTile - 1) / kTile;
  if (x.numel() == 0) {
    dweight.zero_();
    dbias.zero_();
    dinitial.zero_();
    return;
  }
  auto partial_w = at::empty({p.batch, tiles, p.dim, p.width}, x.options().dtype(at::kFloat));
  auto partial_b = at::empty({p.batch, tiles, p.dim}, x.options().dtype(at::kFloat));
  const dim3 grid(tiles, p.dim, p.batch);
  SSM_DISPATCH_FLOAT_HALF_BF16(x.scalar_type(), "causal_conv1d_bwd", [&] {
    const int span = kTile + 2 * (kMaxWidth - 1);
    const size_t smem = (2 * span + kThreads) * sizeof(float) + span * sizeof(int);
    causal_conv1d_bwd_kernel<scalar_t><<<grid, kThreads, smem, c10::cuda::getCurrentCUDAStream()>>>(
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
