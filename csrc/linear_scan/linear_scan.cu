// The linear recurrence x_t = a_t x_{t-1} + b_t (real or complex), forward and fused backward, one kernel.
//
// A block of kThreads threads owns one row (batch row or packed sequence, channel) and one segment of its
// positions, walked in tiles of kTile = kThreads * K positions that sit at multiples of kTile in memory (a packed
// sequence's first and last tiles are partly masked). Every thread owns a run of K consecutive positions, read
// and written as 16-byte vectors where the stream has a unit stride (scalar accesses otherwise and at the
// sequence's edges). A descending scan (reverse, and the backward of the forward scan) gives the runs to the
// threads last-first and each thread walks its run backwards, so memory accesses stay aligned either way. Per
// tile: each thread composes its run's (a, b) pairs, cub::BlockScan over the thread aggregates (its prefix
// callback carries the state across tiles), each thread replays its run from the state entering it.
// Backward (kBackward): the adjoint g_t = dy_t + conj(a_next) g_next is scanned as h = conj(a) g, which reads
// only its own position's gate: h_t = conj(a_t) (dy_t + h_next), g_t = dy_t + h_next; what leaves the last
// position, conj(a_0) g_0, is dinitial_state. dgates_t = conj(x before step t) g_t reads the forward output
// one position away (one scalar load per run beyond its edge; the initial state before the first position).
// Segments (n_segments > 1, few long rows): pass 1 keeps each segment's composition (A, X) from a zero carry
// in `summaries`, pass 2 composes the summaries before each segment (a block scan) with the initial state.
// Same semantics as the Triton kernel (ssm_kernels/linear_scan/triton.py).
#include <cub/block/block_scan.cuh>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "_common/scan_math.cuh"
#include "_common/vectors.cuh"
#include "linear_scan.h"

namespace ssm_kernels {
namespace ls {

constexpr int kThreads = 128;
// positions per thread and tile: 32 bytes of fp32 (8 real or 4 complex values), 16 of fp16 / bf16
template <typename V> struct RunLength { static constexpr int value = 8; };
template <> struct RunLength<float2> { static constexpr int value = 4; };
constexpr int kMaxSegments = 1024;  // the carry of a segment composes at most this many summaries
enum Mode { kWhole = 0, kSummary = 1, kApply = 2 };

struct Params {
  int64_t dim, length, seg_tiles, n_segments;
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

template <typename V> __device__ __forceinline__ V make_value(float re, float im);
template <> __device__ __forceinline__ float make_value<float>(float re, float) { return re; }
template <> __device__ __forceinline__ float2 make_value<float2>(float re, float im) { return make_float2(re, im); }
__device__ __forceinline__ float real_part(float v) { return v; }
__device__ __forceinline__ float real_part(float2 v) { return v.x; }
__device__ __forceinline__ float imag_part(float) { return 0.f; }
__device__ __forceinline__ float imag_part(float2 v) { return v.y; }

// One row of a (B, D, L) stream: its first element, the stride along L in scalars of the (real view) tensor,
// complex (re, im at +0, +1) or not.
template <typename T> struct Stream {
  T* base;
  int64_t stride;
  bool is_complex;

  // Whether the run of K positions from `start`, all inside [lo, hi), can move as vectors (16 bytes for every K
  // and T instantiated here, complex runs included).
  template <int K> __device__ __forceinline__ bool vector_run(int64_t start, int64_t lo, int64_t hi) const {
    const int parts = is_complex ? 2 : 1;
    return stride == parts && start >= lo && start + K <= hi && vector_aligned<T, K>(base + start * parts);
  }
};

// The values of positions start .. start + K - 1 (outside [lo, hi): fill), in memory order.
template <int K, typename V, typename T>
__device__ __forceinline__ void load_run(const Stream<const T>& s, int64_t start, int64_t lo, int64_t hi, V fill,
                                         V (&out)[K]) {
  if (s.template vector_run<K>(start, lo, hi)) {
    if (s.is_complex) {
      float f[2 * K];
      load_vectors<2 * K>(s.base + start * 2, f);
#pragma unroll
      for (int k = 0; k < K; ++k) out[k] = make_value<V>(f[2 * k], f[2 * k + 1]);
    } else {
      float f[K];
      load_vectors<K>(s.base + start, f);
#pragma unroll
      for (int k = 0; k < K; ++k) out[k] = make_value<V>(f[k], 0.f);
    }
    return;
  }
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int64_t t = start + k;
    out[k] = (t >= lo && t < hi) ? load_value<V, T>(s.base, t * s.stride, s.is_complex) : fill;
  }
}

template <int K, typename V, typename T>
__device__ __forceinline__ void store_run(const Stream<T>& s, int64_t start, int64_t lo, int64_t hi,
                                          const V (&in)[K]) {
  if (s.template vector_run<K>(start, lo, hi)) {
    if (s.is_complex) {
      float f[2 * K];
#pragma unroll
      for (int k = 0; k < K; ++k) {
        f[2 * k] = real_part(in[k]);
        f[2 * k + 1] = imag_part(in[k]);
      }
      store_vectors<2 * K>(s.base + start * 2, f);
    } else {
      float f[K];
#pragma unroll
      for (int k = 0; k < K; ++k) f[k] = real_part(in[k]);
      store_vectors<K>(s.base + start, f);
    }
    return;
  }
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int64_t t = start + k;
    if (t >= lo && t < hi) store_value(s.base, t * s.stride, in[k], s.is_complex);
  }
}

// A run's values in the opposite order (constant register indices: no local memory).
template <int K, typename V> __device__ __forceinline__ void reverse_run(V (&v)[K]) {
#pragma unroll
  for (int k = 0; k < K / 2; ++k) {
    const V t = v[k];
    v[k] = v[K - 1 - k];
    v[K - 1 - k] = t;
  }
}

// cub's block-prefix callback: the composition of everything scanned before the current tile; with the
// entering state as its b, its b is the state before the tile and its a the product of the gates since.
template <typename V> struct RunningPrefix {
  Pair<V> running;
  __device__ Pair<V> operator()(const Pair<V>& tile) {
    const Pair<V> before = running;
    running = ScanOp()(running, tile);
    return before;
  }
};

template <typename V>
using BlockScanT = cub::BlockScan<Pair<V>, kThreads, cub::BLOCK_SCAN_WARP_SCANS>;

// T: inputs / outputs / states element type; G: gates; DG: dgates (backward). V: float or float2 math.
template <typename V, typename T, typename G, typename DG, bool kBackward>
__global__ void __launch_bounds__(kThreads) linear_scan_kernel(Params p) {
  constexpr int K = RunLength<V>::value;
  constexpr int kTile = kThreads * K;
  constexpr bool kComplex = sizeof(V) == sizeof(float2);
  __shared__ typename BlockScanT<V>::TempStorage scan_storage;
  __shared__ V carry_s;

  const int tid = threadIdx.x;
  const int64_t row = blockIdx.x;  // (batch or sequence) * dim + channel
  const int64_t seg = blockIdx.y;
  const int64_t b = row / p.dim, d = row % p.dim;
  int64_t lo = 0, hi = p.length, tb = b;  // the row's positions [lo, hi)
  if (p.varlen) {
    lo = p.cu_seqlens[b];
    hi = p.cu_seqlens[b + 1];
    tb = 0;
  }
  const int64_t first_tile = lo / kTile;
  const int64_t n_tiles = hi > lo ? (hi - 1) / kTile - first_tile + 1 : 0;
  const int64_t i_begin = seg * p.seg_tiles;
  const int64_t i_end = min(i_begin + p.seg_tiles, n_tiles);  // empty (i_begin >= n_tiles): identities only
  const Stream<const G> gates{static_cast<const G*>(p.gates) + tb * p.a_sb + d * p.a_sd, p.a_sl, p.gates_complex};
  const Stream<const T> inputs{static_cast<const T*>(p.inputs) + tb * p.i_sb + d * p.i_sd, p.i_sl,
                               p.inputs_complex};
  const Stream<const T> states{static_cast<const T*>(p.states) + tb * p.s_sb + d * p.s_sd, p.s_sl, kComplex};
  const Stream<T> outputs{static_cast<T*>(p.outputs) + tb * p.o_sb + d * p.o_sd, p.o_sl, p.outputs_complex};
  const Stream<DG> dgates{static_cast<DG*>(p.dgates) + tb * p.g_sb + d * p.g_sd, p.g_sl, p.gates_complex};
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
  const bool desc = p.reverse;

  for (int64_t i = i_begin; i < i_end; ++i) {
    const int64_t tile = first_tile + (desc ? n_tiles - 1 - i : i);
    const int64_t start = tile * kTile + static_cast<int64_t>(desc ? kThreads - 1 - tid : tid) * K;
    V a[K], u[K];
    load_run<K>(gates, start, lo, hi, vone<V>(), a);
    load_run<K>(inputs, start, lo, hi, vzero<V>(), u);
    if (desc) {  // this thread's run in scan order: backwards in memory
      reverse_run(a);
      reverse_run(u);
    }

    Pair<V> agg{vone<V>(), vzero<V>()};
#pragma unroll
    for (int k = 0; k < K; ++k) {
      if constexpr (kBackward) {
        const V ca = vconj(a[k]);
        agg = ScanOp()(agg, Pair<V>{ca, vmul(ca, u[k])});
      } else {
        agg = ScanOp()(agg, Pair<V>{a[k], u[k]});
      }
    }
    Pair<V> before;
    BlockScanT<V>(scan_storage).ExclusiveScan(agg, before, ScanOp(), prefix);
    V state = before.b;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      if constexpr (kBackward) {  // state: h of the previous scan position
        u[k] = vadd(u[k], state);
        state = vmul(vconj(a[k]), u[k]);
      } else {
        state = vadd(vmul(a[k], state), u[k]);
        u[k] = state;
      }
    }
    if (desc) reverse_run(u);

    if (p.mode != kSummary) {
      store_run<K>(outputs, start, lo, hi, u);
      if constexpr (kBackward) {  // dgates_t = conj(x before step t of the forward scan) g_t
        V x[K];
        load_run<K>(states, start, lo, hi, vzero<V>(), x);
        const int64_t beyond = desc ? start - 1 : start + K;  // the forward scan's neighbour of this run
        const V edge = (beyond >= lo && beyond < hi) ? load_value<V, T>(states.base, beyond * states.stride, kComplex)
                                                     : vzero<V>();
        const int64_t entry = desc ? lo : hi - 1;  // where the initial state enters the forward scan
        V dg[K];
#pragma unroll
        for (int k = 0; k < K; ++k) {
          V prev = desc ? (k == 0 ? edge : x[k - 1]) : (k == K - 1 ? edge : x[k + 1]);
          if (p.has_h0 && start + k == entry) prev = h0;
          dg[k] = vmul(vconj(prev), u[k]);
        }
        store_run<K>(dgates, start, lo, hi, dg);
      }
    }
    __syncthreads();  // the next tile's block scan reuses scan_storage
  }

  if (tid == 0) {
    const Pair<V> total = prefix.running;  // (factor on the entering state, the state leaving the segment)
    if (p.mode == kSummary) {
      store_value(p.summaries + (row * p.n_segments + seg) * 4, 0, total.a, true);
      store_value(p.summaries + (row * p.n_segments + seg) * 4, 2, total.b, true);
    } else if (kBackward && p.has_h0 && i_end == n_tiles && i_begin < n_tiles) {  // dinitial_state
      store_value(p.dh0, row * (sizeof(V) / sizeof(float)), total.b, true);
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
                      at::Tensor& summaries, int64_t batch, int64_t dim, int64_t length, int64_t seg_tiles,
                      int64_t n_segments, bool reverse, bool scan_complex) {
  using namespace ls;
  const bool backward = states.has_value();
  TORCH_CHECK(inputs.is_cuda() && gates.device() == inputs.device() && outputs.device() == inputs.device(),
              "linear_scan: tensors must be on one CUDA device");
  TORCH_CHECK(!backward || dgates.has_value(), "linear_scan: the backward needs dgates");
  TORCH_CHECK(n_segments >= 1 && n_segments <= kMaxSegments && seg_tiles >= 1,
              "linear_scan: at most ", kMaxSegments, " segments of at least one tile");
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
  p.seg_tiles = seg_tiles;
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
