// Shared by the selective-scan forward and backward kernels: parameters, numerics helpers (softplus,
// complex arithmetic, the scan operator), vectorised loads / stores along L, block reductions and the
// reverse block scan of the backward.
//
// "V" is the value type of the recurrence: float for real A, float2 (re, im) for complex A.
#pragma once
#include <cstdint>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "_common/scan_math.cuh"
#include "_common/vectors.cuh"
#include "selective_scan.h"

namespace ssm_kernels {
namespace ss {

constexpr int kThreads = kSSThreads;
constexpr int kWarps = kThreads / 32;

struct Params {
  int batch, dim, length, dstate;
  int n_ckpt;  // checkpoints per (batch, channel): ceil(L / kSSCkptSpacing)
  bool has_D, has_z, has_bias, softplus, varlen, has_h0, has_dfinal;
  bool B_fixed, C_fixed, B_fp32, C_fp32;  // variable B / C data in fp32 beside a u of another dtype (else u's)
  int cpg_B, cpg_C;                       // channels per group (1 for fixed: every channel its own row)
  int64_t u_sb, u_sd, u_sl, dt_sb, dt_sd, dt_sl, z_sb, z_sd, z_sl, do_sb, do_sd, do_sl;
  int64_t A_sd, A_sn;
  int64_t B_sb, B_sg, B_sn, B_sl, B_im, C_sb, C_sg, C_sn, C_sl, C_im;
  int64_t h0_sb, h0_sd, h0_sn;
  const void *u, *delta, *z, *dout, *B, *C;
  const float *A, *D, *bias, *h0, *dfinal;
  const int *seq_start, *seq_end;  // (L,): index of the sequence starting / ending at t, else -1
  // forward outputs
  void* y;
  float *final_state, *ckpt;
  // backward outputs (partial sums, summed by cuda.py)
  void *du, *ddelta, *dz;
  float *dA, *dD, *dbias, *dB, *dC, *dh0, *work;
  int kch;        // backward: channels per block
  bool acc_smem;    // backward: variable dB / dC accumulated in shared memory (else in the global partials)
  bool atomic_bc;   // backward (plain case only): variable dB / dC added with fp32 atomics into (B, groups, N, L)
  bool defer_sums;  // backward: dA / fixed dB / fixed dC summed over the block per channel, not per mode
};

// ---- the plain case ----------------------------------------------------------------------------------------
// The common call as facts the compiler can use: no packed sequences (no restarts, no per-position final
// states); B and C varying with (batch, position), in u's dtype; u, Δ, z, B and C at unit stride along L; in the
// backward also dout at unit stride, no final-state gradient, and the dB / dC accumulators and the deferred sums
// in shared memory. A kernel instantiated for it overwrites those fields of its copy of Params with these
// constants, so the code of the other cases leaves its loops: the general instantiation issues 3-4x the
// instructions per (position, mode), most of them predicated off (benchmarks/results/
// sm90_selective_scan_cuda_plain.txt).
inline bool is_plain_forward(const Params& p) {
  return !p.varlen && !p.B_fixed && !p.C_fixed && !p.B_fp32 && !p.C_fp32 && p.u_sl == 1 && p.dt_sl == 1 &&
         (!p.has_z || p.z_sl == 1) && p.B_sl == 1 && p.C_sl == 1;
}

inline bool is_plain_backward(const Params& p) {
  return is_plain_forward(p) && p.do_sl == 1 && !p.has_dfinal && (p.acc_smem || p.atomic_bc) && p.defer_sums;
}

__device__ __forceinline__ void assume_plain_forward(Params& p) {
  p.varlen = false;
  p.B_fixed = p.C_fixed = p.B_fp32 = p.C_fp32 = false;
  p.u_sl = p.dt_sl = p.z_sl = p.B_sl = p.C_sl = 1;
}

template <bool kAtomicBC>
__device__ __forceinline__ void assume_plain_backward(Params& p) {
  assume_plain_forward(p);
  p.do_sl = 1;
  p.has_dfinal = false;
  p.defer_sums = true;
  p.acc_smem = !kAtomicBC;
  p.atomic_bc = kAtomicBC;
}

// ---- numerics --------------------------------------------------------------------------------------------
__device__ __forceinline__ float softplus(float x) { return x > 20.f ? x : log1pf(__expf(x)); }
__device__ __forceinline__ float sigmoid(float x) { return 1.f / (1.f + __expf(-x)); }

// sin / cos with an exact-enough range reduction: --use_fast_math turns sincosf into __sincosf, whose error
// grows with |x|; Δ Im(A) reaches tens of radians.
__device__ __forceinline__ void sincos_reduced(float x, float* s, float* c) {
  const float k = rintf(x * 0.15915494309189535f);
  float r = fmaf(-k, 6.28318548202514648f, x);
  r = fmaf(-k, -1.7484555314695172e-7f, r);
  __sincosf(r, s, c);
}

// exp(Δ A) for a real or complex A, as exp2 of Δ times A with log2(e) folded into its real part: a kernel that
// scales A once per mode (log2e_scaled) calls vexp2_scaled, one multiply per position less
__device__ __forceinline__ float log2e_scaled(float A) { return A * 1.4426950408889634f; }
__device__ __forceinline__ float2 log2e_scaled(float2 A) { return make_float2(A.x * 1.4426950408889634f, A.y); }
__device__ __forceinline__ float vexp2_scaled(float dt, float A2) { return exp2f(dt * A2); }
__device__ __forceinline__ float2 vexp2_scaled(float dt, float2 A2) {
  const float m = exp2f(dt * A2.x);
  float s, c;
  sincos_reduced(dt * A2.y, &s, &c);
  return make_float2(m * c, m * s);
}
template <typename V>
__device__ __forceinline__ V vexp_scaled(float dt, V A) {
  return vexp2_scaled(dt, log2e_scaled(A));
}
// Re(x conj(y)) summed per component: the real inner product <x, y>
__device__ __forceinline__ float vdot(float a, float b) { return a * b; }
__device__ __forceinline__ float vdot(float2 a, float2 b) { return a.x * b.x + a.y * b.y; }
// Re(a b): the contribution of mode n to y (times 2 for complex A, done by the caller)
__device__ __forceinline__ float vre_mul(float a, float b) { return a * b; }
__device__ __forceinline__ float vre_mul(float2 a, float2 b) { return a.x * b.x - a.y * b.y; }

// a (real or complex) stored as 1 or 2 consecutive floats / at (p, p + im)
template <typename V> __device__ __forceinline__ V vload(const float* p, int64_t im);
template <> __device__ __forceinline__ float vload<float>(const float* p, int64_t) { return *p; }
template <> __device__ __forceinline__ float2 vload<float2>(const float* p, int64_t im) {
  return make_float2(p[0], p[im]);
}
__device__ __forceinline__ void vstore(float* p, float v) { *p = v; }
__device__ __forceinline__ void vstore(float* p, float2 v) { p[0] = v.x; p[1] = v.y; }
__device__ __forceinline__ void vatomic_add(float* p, float v) { atomicAdd(p, v); }
__device__ __forceinline__ void vatomic_add(float* p, float2 v) {
#if __CUDA_ARCH__ >= 900
  atomicAdd(reinterpret_cast<float2*>(p), v);  // one 8-byte vector atomic (sm_90, global memory)
#else
  atomicAdd(p, v.x);
  atomicAdd(p + 1, v.y);
#endif
}
template <typename V> __host__ __device__ constexpr int vwidth() { return sizeof(V) / sizeof(float); }


__device__ __forceinline__ float shfl_down(float v, int off) { return __shfl_down_sync(0xffffffffu, v, off); }
__device__ __forceinline__ float2 shfl_down(float2 v, int off) {
  return make_float2(__shfl_down_sync(0xffffffffu, v.x, off), __shfl_down_sync(0xffffffffu, v.y, off));
}

// ---- loads and stores of K consecutive positions of one row ------------------------------------------------
// out[i] = row[(t0 + i) * sl] for i < valid, 0 beyond. 16-byte (or narrower) vector loads when the K
// positions are all valid, contiguous and aligned; strided scalar loads otherwise.
template <typename T, int K>
__device__ __forceinline__ void load_row(const T* row, int64_t sl, int t0, int valid, float (&out)[K]) {
  const T* p = row + int64_t(t0) * sl;
  if (valid == K && sl == 1 && vector_aligned<T, K>(p)) {
    load_vectors<K>(p, out);
  } else {
#pragma unroll
    for (int i = 0; i < K; ++i) out[i] = i < valid ? static_cast<float>(p[int64_t(i) * sl]) : 0.f;
  }
}

// B or C data of either dtype (fp32, or the inputs' dtype T)
template <typename T, int K>
__device__ __forceinline__ void load_row_any(const void* row, bool fp32, int64_t sl, int t0, int valid,
                                             float (&out)[K]) {
  if (fp32) load_row<float, K>(static_cast<const float*>(row), sl, t0, valid, out);
  else load_row<T, K>(static_cast<const T*>(row), sl, t0, valid, out);
}

// row[t0 + i] = v[i] for i < valid (row contiguous along L)
template <typename T, int K>
__device__ __forceinline__ void store_row(T* row, int t0, int valid, const float (&v)[K]) {
  T* p = row + t0;
  if (valid == K && vector_aligned<T, K>(p)) {
    store_vectors<K>(p, v);
  } else {
#pragma unroll
    for (int i = 0; i < K; ++i) if (i < valid) p[i] = static_cast<T>(v[i]);
  }
}


// ---- block-wide helpers -------------------------------------------------------------------------------------
// Sum of v[0..R) over the block, in a fixed order (deterministic); the result is valid in thread 0. `red`
// holds kWarps * R floats. Ends with a barrier, so `red` may be reused at once.
template <int R>
__device__ __forceinline__ void block_sum(float (&v)[R], float* red) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int r = 0; r < R; ++r) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v[r] += __shfl_down_sync(0xffffffffu, v[r], off);
    if (lane == 0) red[warp * R + r] = v[r];
  }
  __syncthreads();
  if (threadIdx.x == 0) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      float s = red[r];
      for (int w = 1; w < kWarps; ++w) s += red[w * R + r];
      v[r] = s;
    }
  }
  __syncthreads();
}

// Reverse block scan of the adjoint recurrence G_t = g_t + alpha_t G_{t+1} over the chunk held by the block
// (thread j holds positions j K .. j K + K - 1), where the value entering the chunk's last position from
// beyond it (alpha_last G_after) is `carry`, the same in every thread. e[i] = (alpha, g) of item i for
// i < K - 1 and e[K - 1].b = g of the last item; the last item's alpha is the next thread's first alpha,
// `alpha_first` of thread j + 1 (taken here by a shuffle, or at the warp boundary through `warp_first`).
// Returns G in G[i]. `warp_tot` / `warp_first` hold kWarps values; the function ends with a barrier.
template <typename V, int K>
__device__ __forceinline__ void reverse_scan(Pair<V> (&e)[K], V alpha_first, V carry, V (&G)[K], Pair<V>* warp_tot,
                                             V* warp_first) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  // the last item's alpha; lane 31 leaves it to the warp level (1 here, the boundary alpha applied below)
  const V next_alpha = shfl_down(alpha_first, 1);
  e[K - 1].a = lane == 31 ? vone<V>() : next_alpha;
  // this thread's items combined, later ones first: (prod alpha, the g's carried down to item 0)
  Pair<V> agg = e[K - 1];
#pragma unroll
  for (int i = K - 2; i >= 0; --i) agg = Pair<V>{vmul(e[i].a, agg.a), vadd(e[i].b, vmul(e[i].a, agg.b))};
  // inclusive over lanes lane .. 31
  Pair<V> inc = agg;
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    Pair<V> o{shfl_down(inc.a, off), shfl_down(inc.b, off)};
    if (lane + off < 32) inc = Pair<V>{vmul(inc.a, o.a), vadd(inc.b, vmul(inc.a, o.b))};
  }
  Pair<V> exc{shfl_down(inc.a, 1), shfl_down(inc.b, 1)};  // lanes lane + 1 .. 31
  if (lane == 31) exc = Pair<V>{vone<V>(), vzero<V>()};
  if (lane == 0) {
    warp_tot[warp] = inc;
    warp_first[warp] = alpha_first;
  }
  __syncthreads();
  // the value entering this warp's last position: alpha_first(w + 1) G_first(w + 1), folded from the last warp
  V Gn = carry;
  for (int w = kWarps - 1; w > warp; --w) Gn = vmul(warp_first[w], vadd(warp_tot[w].b, vmul(warp_tot[w].a, Gn)));
  Gn = vadd(exc.b, vmul(exc.a, Gn));  // G at the first position after this thread's items (lane 31: the warp's)
#pragma unroll
  for (int i = K - 1; i >= 0; --i) {
    G[i] = vadd(e[i].b, vmul(e[i].a, Gn));
    Gn = G[i];
  }
  __syncthreads();  // warp_tot / warp_first are reused by the next call
}

// Sum over the block of per-thread partials part[(n * R + r) * kThreads + thread] for every n < N, r < R, in a
// fixed order: warp w handles n = w, w + kWarps, ...; calls f(n, r, sum) from lane 0. Starts and ends with
// a barrier.
template <typename F>
__device__ __forceinline__ void block_sum_deferred(const float* part, int N, int R, F f) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __syncthreads();
  for (int n = warp; n < N; n += kWarps) {
    for (int r = 0; r < R; ++r) {
      const float* q = part + size_t(n * R + r) * kThreads;
      float v = 0.f;
#pragma unroll
      for (int j = 0; j < kThreads / 32; ++j) v += q[lane + 32 * j];
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
      if (lane == 0) f(n, r, v);
    }
  }
  __syncthreads();
}

// ---- host side ------------------------------------------------------------------------------------------------
inline void bc_layout(const at::Tensor& X, at::IntArrayRef layout, const at::Tensor& u, bool& fixed, bool& fp32,
                      int& cpg, int64_t& sb, int64_t& sg, int64_t& sn, int64_t& sl, int64_t& im) {
  TORCH_CHECK(layout.size() == 7, "selective_scan: B / C layout must have 7 entries");
  TORCH_CHECK(X.is_cuda() && X.device() == u.device(), "selective_scan: B / C must be on u's device");
  const bool is_float = X.scalar_type() == at::kFloat;
  TORCH_CHECK(is_float || X.scalar_type() == u.scalar_type(), "selective_scan: B / C must be fp32 or in u's dtype");
  // fp32 data beside a u of another dtype; fp32 beside fp32 u is "u's dtype" (the same loads, the plain kernels)
  fp32 = is_float && u.scalar_type() != at::kFloat;
  fixed = layout[0] != 0;
  cpg = static_cast<int>(layout[1]);
  sb = layout[2]; sg = layout[3]; sn = layout[4]; sl = layout[5]; im = layout[6];
  TORCH_CHECK(cpg >= 1 && u.size(1) % cpg == 0, "selective_scan: channels per group must divide D");
  TORCH_CHECK(!fixed || is_float, "selective_scan: fixed B / C must be fp32");
}

inline Params make_params(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                          at::IntArrayRef B_layout, const at::Tensor& C, at::IntArrayRef C_layout,
                          const c10::optional<at::Tensor>& D, const c10::optional<at::Tensor>& z,
                          const c10::optional<at::Tensor>& delta_bias, bool delta_softplus,
                          const c10::optional<at::Tensor>& initial_state, const c10::optional<at::Tensor>& seq_start,
                          const c10::optional<at::Tensor>& seq_end, bool& is_complex) {
  TORCH_CHECK(u.is_cuda() && u.dim() == 3, "selective_scan: u must be a CUDA (B, D, L) tensor");
  TORCH_CHECK(delta.sizes() == u.sizes() && delta.scalar_type() == u.scalar_type() && delta.device() == u.device(),
              "selective_scan: delta must match u in shape, dtype and device");
  TORCH_CHECK(A.scalar_type() == at::kFloat && (A.dim() == 2 || (A.dim() == 3 && A.size(2) == 2 && A.stride(2) == 1)) &&
              A.size(0) == u.size(1), "selective_scan: A must be fp32 (D, N), or (D, N, 2) for complex A");
  is_complex = A.dim() == 3;
  Params p{};
  p.batch = u.size(0);
  p.dim = u.size(1);
  p.length = u.size(2);
  p.dstate = A.size(1);
  p.n_ckpt = (p.length + kSSCkptSpacing - 1) / kSSCkptSpacing;
  p.u = u.data_ptr();
  p.u_sb = u.stride(0); p.u_sd = u.stride(1); p.u_sl = u.stride(2);
  p.delta = delta.data_ptr();
  p.dt_sb = delta.stride(0); p.dt_sd = delta.stride(1); p.dt_sl = delta.stride(2);
  p.A = A.data_ptr<float>();
  p.A_sd = A.stride(0); p.A_sn = A.stride(1);
  bc_layout(B, B_layout, u, p.B_fixed, p.B_fp32, p.cpg_B, p.B_sb, p.B_sg, p.B_sn, p.B_sl, p.B_im);
  bc_layout(C, C_layout, u, p.C_fixed, p.C_fp32, p.cpg_C, p.C_sb, p.C_sg, p.C_sn, p.C_sl, p.C_im);
  p.B = B.data_ptr();
  p.C = C.data_ptr();
  p.has_D = D.has_value();
  if (p.has_D) {
    TORCH_CHECK(D->scalar_type() == at::kFloat && D->is_contiguous() && D->numel() == p.dim, "selective_scan: D must be fp32 (D,)");
    p.D = D->data_ptr<float>();
  }
  p.has_z = z.has_value();
  if (p.has_z) {
    TORCH_CHECK(z->sizes() == u.sizes() && z->scalar_type() == u.scalar_type(), "selective_scan: z must match u");
    p.z = z->data_ptr();
    p.z_sb = z->stride(0); p.z_sd = z->stride(1); p.z_sl = z->stride(2);
  }
  p.has_bias = delta_bias.has_value();
  if (p.has_bias) {
    TORCH_CHECK(delta_bias->scalar_type() == at::kFloat && delta_bias->is_contiguous() && delta_bias->numel() == p.dim,
                "selective_scan: delta_bias must be fp32 (D,)");
    p.bias = delta_bias->data_ptr<float>();
  }
  p.softplus = delta_softplus;
  p.varlen = seq_start.has_value();
  if (p.varlen) {
    TORCH_CHECK(p.batch == 1 && seq_end.has_value(), "selective_scan: packed sequences need B == 1");
    TORCH_CHECK(seq_start->scalar_type() == at::kInt && seq_start->is_contiguous() && seq_start->numel() == p.length &&
                seq_end->scalar_type() == at::kInt && seq_end->is_contiguous() && seq_end->numel() == p.length,
                "selective_scan: sequence markers must be contiguous int32 (L,)");
    p.seq_start = seq_start->data_ptr<int>();
    p.seq_end = seq_end->data_ptr<int>();
  }
  p.has_h0 = initial_state.has_value();
  if (p.has_h0) {
    const auto& h0 = *initial_state;
    TORCH_CHECK(h0.scalar_type() == at::kFloat && h0.dim() == (is_complex ? 4 : 3) && h0.size(1) == p.dim &&
                h0.size(2) == p.dstate && (!is_complex || h0.stride(3) == 1),
                "selective_scan: initial_state must be fp32 (rows, D, N) (complex: (rows, D, N, 2))");
    p.h0 = h0.data_ptr<float>();
    p.h0_sb = h0.stride(0); p.h0_sd = h0.stride(1); p.h0_sn = h0.stride(2);
  }
  return p;
}

template <typename T>
inline T* opt_ptr(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? static_cast<T*>(t->data_ptr()) : nullptr;
}

}  // namespace ss
}  // namespace ssm_kernels
