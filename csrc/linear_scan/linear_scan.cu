// The linear recurrence x_t = a_t x_{t-1} + b_t (real or complex), forward and fused backward, one kernel.
//
// A block of kThreads threads owns one row (batch row or packed sequence, channel) and one segment of its
// positions, walked in chunks of kChunk = kThreads * kItems positions in scan order p (memory position
// t = p, or n - 1 - p in reverse). Per chunk: striped, coalesced loads of the gates and inputs (and in the
// backward the forward output) into shared memory; each thread composes its kItems consecutive (a, b) pairs;
// cub::BlockScan over the thread aggregates, its prefix callback carrying the state across chunks; each
// thread replays its items from the state entering them; striped stores back. Backward (kBackward): the
// adjoint g_t = dy_t + conj(a_prev) g_prev runs in the opposite direction with the gate of the previous scan
// position, and dgates_t = conj(x at the next scan position, the initial state past the end) g_t is written
// in the same pass; the block of the last segment forms dinitial_state = conj(a at the last position) g there.
// Segments (n_segments > 1, few long rows): pass 1 keeps each segment's composition (A, X) from a zero carry
// in `summaries`, pass 2 composes the summaries before each segment (a block scan) with the initial state.
// Same semantics as the Triton kernel (ssm_kernels/linear_scan/triton.py).
#include <cub/block/block_scan.cuh>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "_common/scan_math.cuh"
#include "linear_scan.h"

namespace ssm_kernels {
namespace ls {

constexpr int kThreads = 128;
constexpr int kItems = 8;
constexpr int kChunk = kThreads * kItems;
constexpr int kMaxSegments = kChunk;  // the carry of a segment composes at most this many summaries
enum Mode { kWhole = 0, kSummary = 1, kApply = 2 };

struct Params {
  int64_t dim, length, seg_len, n_segments;
  bool reverse, has_h0, varlen, gates_complex, inputs_complex, outputs_complex;
  int mode;
  const void* gates;
  int64_t a_sb, a_sd, a_sl;
  const void* inputs;
  int64_t i_sb, i_sd, i_sl;
  void* outputs;
  int64_t o_sb, o_sd, o_sl;
  const void* states;
  int64_t s_sb, s_sd, s_sl;
  void* dgates;
  int64_t g_sb, g_sd, g_sl;
  const float* h0;
  int64_t h_sb, h_sd;
  float* dh0;
  float* summaries;
  const int64_t* cu_seqlens;
};

// A value of a stream: a real tensor, or the real view of a complex one (the imaginary part at +1).
template <typename V, typename T> __device__ __forceinline__ V load_value(const T* p, int64_t off, bool is_complex);
template <> __device__ __forceinline__ float load_value<float, float>(const float* p, int64_t off, bool) {
  return p[off];
}
template <> __device__ __forceinline__ float load_value<float, at::Half>(const at::Half* p, int64_t off, bool) {
  return static_cast<float>(p[off]);
}
template <>
__device__ __forceinline__ float load_value<float, at::BFloat16>(const at::BFloat16* p, int64_t off, bool) {
  return static_cast<float>(p[off]);
}
template <>
__device__ __forceinline__ float2 load_value<float2, float>(const float* p, int64_t off, bool is_complex) {
  return make_float2(p[off], is_complex ? p[off + 1] : 0.f);
}

template <typename T> __device__ __forceinline__ void store_value(T* p, int64_t off, float v, bool) {
  p[off] = static_cast<T>(v);
}
__device__ __forceinline__ void store_value(float* p, int64_t off, float2 v, bool is_complex) {
  p[off] = v.x;
  if (is_complex) p[off + 1] = v.y;
}

// Shared-memory index of item i: one pad per 32 items, so the blocked reads (stride kItems) hit distinct banks.
__device__ __forceinline__ int padded(int i) { return i + i / 32; }
constexpr int kPadded = kChunk + kChunk / 32;

// cub's block-prefix callback: the composition of everything scanned before the current chunk; with the
// entering state as its b, its b is the state before the chunk and its a the product of the gates since.
template <typename V> struct RunningPrefix {
  Pair<V> running;
  __device__ Pair<V> operator()(const Pair<V>& chunk) {
    const Pair<V> before = running;
    running = ScanOp()(running, chunk);
    return before;
  }
};

template <typename V>
using BlockScanT = cub::BlockScan<Pair<V>, kThreads, cub::BLOCK_SCAN_WARP_SCANS>;

// T: inputs / outputs / states element type; G: gates; DG: dgates (backward). V: float or float2 math.
template <typename V, typename T, typename G, typename DG, bool kBackward>
__global__ void __launch_bounds__(kThreads) linear_scan_kernel(Params p) {
  __shared__ V a_s[kPadded];
  __shared__ V u_s[kPadded];  // inputs, then the values to store
  __shared__ V x_s[kBackward ? kPadded : 1];  // backward: the forward output at the next scan position, then dgates
  __shared__ typename BlockScanT<V>::TempStorage scan_storage;
  __shared__ V carry_s;

  const int tid = threadIdx.x;
  const int64_t row = blockIdx.x;  // (batch or sequence) * dim + channel
  const int64_t seg = blockIdx.y;
  const int64_t b = row / p.dim, d = row % p.dim;
  int64_t start = 0, n = p.length, tb = b;
  if (p.varlen) {
    start = p.cu_seqlens[b];
    n = p.cu_seqlens[b + 1] - start;
    tb = 0;
  }
  const int64_t p_begin = seg * p.seg_len;
  const int64_t p_end = min(p_begin + p.seg_len, n);  // empty (p_begin >= n): identities only
  const G* gates = static_cast<const G*>(p.gates) + tb * p.a_sb + d * p.a_sd;
  const T* inputs = static_cast<const T*>(p.inputs) + tb * p.i_sb + d * p.i_sd;
  const T* states = static_cast<const T*>(p.states) + tb * p.s_sb + d * p.s_sd;
  V h0 = vzero<V>();
  if (p.has_h0) h0 = load_value<V, float>(p.h0, b * p.h_sb + d * p.h_sd, true);

  // the state entering this segment
  if (tid == 0) carry_s = (!kBackward && p.mode != kSummary) ? h0 : vzero<V>();
  if (p.mode == kApply) {  // compose the summaries of the segments before this one
    Pair<V> agg{vone<V>(), vzero<V>()};
    for (int k = 0; k < kMaxSegments / kThreads; ++k) {
      const int64_t s = tid * (kMaxSegments / kThreads) + k;
      if (s < seg) {
        const float* sm = p.summaries + (row * p.n_segments + s) * 4;
        agg = ScanOp()(agg, Pair<V>{load_value<V, float>(sm, 0, true), load_value<V, float>(sm, 2, true)});
      }
    }
    Pair<V> before;
    Pair<V> total;
    BlockScanT<V>(scan_storage).ExclusiveScan(agg, before, ScanOp(), total);
    if (tid == 0) carry_s = vadd(vmul(total.a, carry_s), total.b);
    __syncthreads();
  }
  __syncthreads();
  RunningPrefix<V> prefix{Pair<V>{vone<V>(), carry_s}};

  for (int64_t p0 = p_begin; p0 < p_end; p0 += kChunk) {
    // striped loads, in scan order
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      const int i = j * kThreads + tid;
      const int64_t q = p0 + i;
      V a = vone<V>(), u = vzero<V>(), x = vzero<V>();
      if (q < p_end) {
        const int64_t t = start + (p.reverse ? n - 1 - q : q);
        u = load_value<V, T>(inputs, t * p.i_sl, p.inputs_complex);
        if constexpr (kBackward) {
          if (q >= 1) a = vconj(load_value<V, G>(gates, (p.reverse ? t + 1 : t - 1) * p.a_sl, p.gates_complex));
          if (q + 1 < n) x = load_value<V, T>(states, (p.reverse ? t - 1 : t + 1) * p.s_sl, true);
          else x = h0;
        } else {
          a = load_value<V, G>(gates, t * p.a_sl, p.gates_complex);
        }
      }
      a_s[padded(i)] = a;
      u_s[padded(i)] = u;
      if constexpr (kBackward) x_s[padded(i)] = x;
    }
    __syncthreads();

    // this thread's items, then the block scan of the thread aggregates
    V a[kItems], u[kItems];
    Pair<V> agg{vone<V>(), vzero<V>()};
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      a[k] = a_s[padded(tid * kItems + k)];
      u[k] = u_s[padded(tid * kItems + k)];
      agg = ScanOp()(agg, Pair<V>{a[k], u[k]});
    }
    Pair<V> before;
    BlockScanT<V>(scan_storage).ExclusiveScan(agg, before, ScanOp(), prefix);
    V state = before.b;
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      state = vadd(vmul(a[k], state), u[k]);
      const int i = padded(tid * kItems + k);
      u_s[i] = state;
      if constexpr (kBackward) x_s[i] = vmul(vconj(x_s[i]), state);
    }
    __syncthreads();

    if (p.mode != kSummary) {
      T* outputs = static_cast<T*>(p.outputs) + tb * p.o_sb + d * p.o_sd;
      DG* dgates = static_cast<DG*>(p.dgates) + tb * p.g_sb + d * p.g_sd;
#pragma unroll
      for (int j = 0; j < kItems; ++j) {
        const int i = j * kThreads + tid;
        const int64_t q = p0 + i;
        if (q < p_end) {
          const int64_t t = start + (p.reverse ? n - 1 - q : q);
          store_value(outputs, t * p.o_sl, u_s[padded(i)], p.outputs_complex);
          if constexpr (kBackward) store_value(dgates, t * p.g_sl, x_s[padded(i)], p.gates_complex);
        }
      }
    }
    __syncthreads();  // before the next chunk's loads overwrite shared memory
  }

  if (tid == 0) {
    const Pair<V> total = prefix.running;  // (product of the gates, the state leaving the segment)
    if (p.mode == kSummary) {
      store_value(p.summaries + (row * p.n_segments + seg) * 4, 0, total.a, true);
      store_value(p.summaries + (row * p.n_segments + seg) * 4, 2, total.b, true);
    } else if (kBackward && p.has_h0 && p_end == n && p_begin < n) {  // dinitial_state
      const int64_t t_last = start + (p.reverse ? 0 : n - 1);
      const V a_last = load_value<V, G>(gates, t_last * p.a_sl, p.gates_complex);
      store_value(p.dh0, row * (sizeof(V) / sizeof(float)), vmul(vconj(a_last), total.b), true);
    }
  }
}

template <typename V, typename T, typename G, typename DG, bool kBackward>
void launch(Params p, int64_t rows) {
  dim3 grid(rows, p.n_segments);
  auto stream = c10::cuda::getCurrentCUDAStream();
  if (p.n_segments == 1) {
    p.mode = kWhole;
    linear_scan_kernel<V, T, G, DG, kBackward><<<grid, kThreads, 0, stream>>>(p);
  } else {
    p.mode = kSummary;
    linear_scan_kernel<V, T, G, DG, kBackward><<<grid, kThreads, 0, stream>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    p.mode = kApply;
    linear_scan_kernel<V, T, G, DG, kBackward><<<grid, kThreads, 0, stream>>>(p);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, typename G, bool kBackward>
void launch_real(const Params& p, int64_t rows, at::ScalarType dgates_type) {
  if (!kBackward || dgates_type == at::kFloat) {
    launch<float, T, G, float, kBackward>(p, rows);
  } else {
    TORCH_CHECK(dgates_type == c10::CppTypeToScalarType<G>::value,
                "linear_scan: dgates must be fp32 or the gates' dtype");
    launch<float, T, G, G, kBackward>(p, rows);
  }
}

template <bool kBackward>
void dispatch(const Params& p, int64_t rows, bool scan_complex, at::ScalarType t_type, at::ScalarType g_type,
              at::ScalarType dg_type) {
  if (scan_complex) {
    TORCH_CHECK(t_type == at::kFloat && g_type == at::kFloat, "linear_scan: a complex scan takes fp32 views");
    launch<float2, float, float, float, kBackward>(p, rows);
    return;
  }
  TORCH_CHECK(g_type == at::kFloat || g_type == t_type, "linear_scan: gates must be fp32 or the inputs' dtype");
  const bool g32 = g_type == at::kFloat;
  switch (t_type) {
    case at::kFloat: launch_real<float, float, kBackward>(p, rows, dg_type); break;
    case at::kHalf:
      g32 ? launch_real<at::Half, float, kBackward>(p, rows, dg_type)
          : launch_real<at::Half, at::Half, kBackward>(p, rows, dg_type);
      break;
    case at::kBFloat16:
      g32 ? launch_real<at::BFloat16, float, kBackward>(p, rows, dg_type)
          : launch_real<at::BFloat16, at::BFloat16, kBackward>(p, rows, dg_type);
      break;
    default: TORCH_CHECK(false, "linear_scan: inputs must be fp32, fp16 or bf16");
  }
}

void strides3(at::IntArrayRef s, int64_t* b, int64_t* d, int64_t* l, const char* name) {
  TORCH_CHECK(s.size() == 3, "linear_scan: ", name, " strides must have 3 entries");
  *b = s[0];
  *d = s[1];
  *l = s[2];
}

}  // namespace ls

void linear_scan_cuda(const at::Tensor& gates, at::IntArrayRef gates_strides, bool gates_complex,
                      const at::Tensor& inputs, at::IntArrayRef inputs_strides, bool inputs_complex,
                      at::Tensor& outputs, at::IntArrayRef outputs_strides, bool outputs_complex,
                      const c10::optional<at::Tensor>& states, at::IntArrayRef states_strides,
                      const c10::optional<at::Tensor>& dgates, at::IntArrayRef dgates_strides,
                      const c10::optional<at::Tensor>& h0, at::IntArrayRef h0_strides,
                      const c10::optional<at::Tensor>& dh0, const c10::optional<at::Tensor>& cu_seqlens,
                      at::Tensor& summaries, int64_t batch, int64_t dim, int64_t length, int64_t seg_len,
                      int64_t n_segments, bool reverse, bool scan_complex) {
  using namespace ls;
  const bool backward = states.has_value();
  TORCH_CHECK(inputs.is_cuda() && gates.device() == inputs.device() && outputs.device() == inputs.device(),
              "linear_scan: tensors must be on one CUDA device");
  TORCH_CHECK(!backward || dgates.has_value(), "linear_scan: the backward needs dgates");
  TORCH_CHECK(n_segments >= 1 && n_segments <= kMaxSegments && seg_len % kChunk == 0,
              "linear_scan: segments must be at most ", kMaxSegments, " of whole chunks of ", kChunk);
  TORCH_CHECK(!h0.has_value() || (h0->scalar_type() == at::kFloat && h0_strides.size() == 2),
              "linear_scan: h0 must be an fp32 (real view) tensor with 2 strides");
  TORCH_CHECK(!dh0.has_value() || (dh0->scalar_type() == at::kFloat && dh0->is_contiguous()),
              "linear_scan: dh0 must be a contiguous fp32 (real view) tensor");
  TORCH_CHECK(summaries.scalar_type() == at::kFloat &&
                  (n_segments == 1 || summaries.numel() >= batch * dim * n_segments * 4),
              "linear_scan: summaries must hold 4 floats per row and segment");
  TORCH_CHECK(!cu_seqlens.has_value() || (cu_seqlens->scalar_type() == at::kLong && cu_seqlens->is_contiguous() &&
                                          cu_seqlens->numel() == batch + 1),
              "linear_scan: cu_seqlens must be contiguous int64 of batch + 1 entries");
  const at::cuda::OptionalCUDAGuard guard(inputs.device());

  Params p{};
  p.dim = dim;
  p.length = length;
  p.seg_len = seg_len;
  p.n_segments = n_segments;
  p.reverse = reverse;
  p.has_h0 = h0.has_value();
  p.varlen = cu_seqlens.has_value();
  p.gates_complex = gates_complex;
  p.inputs_complex = inputs_complex;
  p.outputs_complex = outputs_complex;
  p.gates = gates.data_ptr();
  strides3(gates_strides, &p.a_sb, &p.a_sd, &p.a_sl, "gates");
  p.inputs = inputs.data_ptr();
  strides3(inputs_strides, &p.i_sb, &p.i_sd, &p.i_sl, "inputs");
  p.outputs = outputs.data_ptr();
  strides3(outputs_strides, &p.o_sb, &p.o_sd, &p.o_sl, "outputs");
  if (backward) {
    TORCH_CHECK(states->scalar_type() == inputs.scalar_type(), "linear_scan: states must have the inputs' dtype");
    p.states = states->data_ptr();
    strides3(states_strides, &p.s_sb, &p.s_sd, &p.s_sl, "states");
    p.dgates = dgates->data_ptr();
    strides3(dgates_strides, &p.g_sb, &p.g_sd, &p.g_sl, "dgates");
  }
  if (h0.has_value()) {
    p.h0 = h0->data_ptr<float>();
    p.h_sb = h0_strides[0];
    p.h_sd = h0_strides[1];
  }
  p.dh0 = dh0.has_value() ? dh0->data_ptr<float>() : nullptr;
  p.summaries = summaries.data_ptr<float>();
  p.cu_seqlens = cu_seqlens.has_value() ? cu_seqlens->data_ptr<int64_t>() : nullptr;

  TORCH_CHECK(outputs.scalar_type() == inputs.scalar_type() || (backward && outputs.scalar_type() == at::kFloat),
              "linear_scan: outputs must have the inputs' dtype");
  const int64_t rows = batch * dim;
  const auto dg_type = backward ? dgates->scalar_type() : at::kFloat;
  if (backward) {
    dispatch<true>(p, rows, scan_complex, inputs.scalar_type(), gates.scalar_type(), dg_type);
  } else {
    dispatch<false>(p, rows, scan_complex, inputs.scalar_type(), gates.scalar_type(), dg_type);
  }
}

}  // namespace ssm_kernels
