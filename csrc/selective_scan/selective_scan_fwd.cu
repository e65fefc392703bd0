// Selective scan (Mamba-1), forward. Math and argument conventions: ssm_kernels/selective_scan/reference.py
// and cuda.py.
//
// One block of kThreads threads per (channel d, batch row b). The block walks L in chunks of
// kThreads * kSSFwdItems positions, thread j holding the kSSFwdItems consecutive positions j K .. j K + K - 1
// of the chunk (16-byte vector loads when the row has unit stride along L and is aligned). Per chunk it
// loads u and Δ = softplus(delta + bias) once, then for every mode n (a runtime loop: no per-n registers)
// forms a_t = exp(Δ_t A_n), b_t = Δ_t u_t B_{n,t}, scans the pairs with cub::BlockScan, the prefix callback
// applying the state of mode n carried from the previous chunk (shared memory, one value per n), and adds
// C_{n,t} h_t to y_t. Then y_t += D u_t, y_t *= silu(z_t), and y is stored.
// Packed sequences: at a sequence start a_t = 0 and b_t += exp(Δ_t A) h0[seq] (exact restart); the thread
// holding a sequence's last position writes that sequence's final state.
// For the backward, the state entering every kSSCkptSpacing positions is stored to ckpt (B, D, n_ckpt, N)
// fp32 ((.., N, 2) for complex A), only when ckpt is non-empty.
#include <cub/block/block_scan.cuh>

#include "_common/dispatch.h"
#include "ss_common.cuh"

namespace ssm_kernels {
namespace ss {
namespace {

template <typename V>
struct CarryPrefix {  // the state of one mode carried across chunks, in shared memory
  float* state;
  __device__ Pair<V> operator()(const Pair<V>& aggregate) {
    const V h = vload<V>(state, 1);
    if (threadIdx.x == 0) vstore(state, vadd(vmul(aggregate.a, h), aggregate.b));
    return Pair<V>{vone<V>(), h};
  }
};

template <typename T, typename V, bool kPlain>
__global__ void __launch_bounds__(kThreads, sizeof(V) == sizeof(float) ? (kPlain ? 4 : 3) : 2) selective_scan_fwd_kernel(Params p) {
  if (kPlain) assume_plain_forward(p);
  constexpr int K = kSSFwdItems;
  constexpr int kChunk = kThreads * K;
  constexpr int W = vwidth<V>();
  constexpr bool kComplex = W == 2;
  using BlockScanT = cub::BlockScan<Pair<V>, kThreads, cub::BLOCK_SCAN_WARP_SCANS>;
  // two scan buffers used alternately: a warp that starts the next mode's scan early cannot overwrite what a
  // slower warp still reads, and no barrier is needed between the modes
  __shared__ typename BlockScanT::TempStorage scan_tmp[2];
  extern __shared__ float state[];  // (N, W): the running state of every mode

  const int d = blockIdx.x, b = blockIdx.y, tid = threadIdx.x;
  const int L = p.length, N = p.dstate;
  const T* u_row = static_cast<const T*>(p.u) + b * p.u_sb + d * p.u_sd;
  const T* dt_row = static_cast<const T*>(p.delta) + b * p.dt_sb + d * p.dt_sd;
  const T* z_row = p.has_z ? static_cast<const T*>(p.z) + b * p.z_sb + d * p.z_sd : nullptr;
  T* y_row = static_cast<T*>(p.y) + (int64_t(b) * p.dim + d) * L;
  const float Dv = p.has_D ? p.D[d] : 0.f;
  const float bias = p.has_bias ? p.bias[d] : 0.f;
  const int64_t state_row = (int64_t(b) * p.dim + d) * N;  // final state / ckpt rows of (b, d)
  float* ckpt = p.ckpt ? p.ckpt + (int64_t(b) * p.dim + d) * p.n_ckpt * N * W : nullptr;
  // B / C rows of this channel's group (fixed: row d of the (D, N) tensor, through cpg = 1)
  const int64_t B_base = (p.B_fixed ? 0 : b * p.B_sb) + int64_t(d / p.cpg_B) * p.B_sg;
  const int64_t C_base = (p.C_fixed ? 0 : b * p.C_sb) + int64_t(d / p.cpg_C) * p.C_sg;
  const size_t bc_elt_B = p.B_fp32 ? sizeof(float) : sizeof(T);
  const size_t bc_elt_C = p.C_fp32 ? sizeof(float) : sizeof(T);
  const char* B_bytes = static_cast<const char*>(p.B);
  const char* C_bytes = static_cast<const char*>(p.C);

  for (int n = tid; n < N; n += kThreads) {
    V h = vzero<V>();
    if (p.has_h0 && !p.varlen) h = vload<V>(p.h0 + b * p.h0_sb + d * p.h0_sd + n * p.h0_sn, 1);
    vstore(state + n * W, h);
    if (ckpt) vstore(ckpt + int64_t(n) * W, h);  // checkpoint 0: the state before position 0
  }
  __syncthreads();

  const int n_chunks = (L + kChunk - 1) / kChunk;
  unsigned scan_count = 0;  // scans so far: selects the buffer, alternating over modes and chunks
  for (int c = 0; c < n_chunks; ++c) {
    const int t0 = c * kChunk + tid * K;
    const int valid = max(0, min(K, L - t0));
    float dtu[K], dt[K], y[K];  // dtu: u, then Δ u (every mode's b is Δ u B)
    load_row<T, K>(u_row, p.u_sl, t0, valid, dtu);
    load_row<T, K>(dt_row, p.dt_sl, t0, valid, dt);
    unsigned starts = 0, ends = 0;  // bit i: item i starts / ends a packed sequence
#pragma unroll
    for (int i = 0; i < K; ++i) {
      float v = dt[i] + bias;
      if (p.softplus) v = softplus(v);
      dt[i] = i < valid ? v : 0.f;  // positions past L: a = 1, b = 0, the state passes through
      y[i] = Dv * dtu[i];           // the skip first: u is not kept
      dtu[i] *= dt[i];
      if (p.varlen && i < valid) {
        if (p.seq_start[t0 + i] >= 0) starts |= 1u << i;
        if (p.seq_end[t0 + i] >= 0) ends |= 1u << i;
      }
    }

    for (int n = 0; n < N; ++n) {
      const V An = log2e_scaled(vload<V>(p.A + d * p.A_sd + n * p.A_sn, 1));
      float Bv[K], Cv[K];
      if (p.B_fixed) {
        const float v = reinterpret_cast<const float*>(p.B)[B_base + n * p.B_sn];
#pragma unroll
        for (int i = 0; i < K; ++i) Bv[i] = v;
      } else {
        load_row_any<T, K>(B_bytes + (B_base + n * p.B_sn) * bc_elt_B, p.B_fp32, p.B_sl, t0, valid, Bv);
      }
      float Bi[K];  // imaginary parts (complex A)
      if (kComplex) {
        if (p.B_fixed) {
          const float v = reinterpret_cast<const float*>(p.B)[B_base + n * p.B_sn + p.B_im];
#pragma unroll
          for (int i = 0; i < K; ++i) Bi[i] = v;
        } else {
          load_row_any<T, K>(B_bytes + (B_base + n * p.B_sn + p.B_im) * bc_elt_B, p.B_fp32, p.B_sl, t0, valid, Bi);
        }
      }
      Pair<V> e[K];
#pragma unroll
      for (int i = 0; i < K; ++i) {
        const V a = vexp2_scaled(dt[i], An);
        V bb;
        if constexpr (kComplex) bb = make_float2(dtu[i] * Bv[i], dtu[i] * Bi[i]);
        else bb = dtu[i] * Bv[i];
        e[i] = Pair<V>{a, bb};
        if (starts & (1u << i)) {  // restart from the sequence's initial state
          if (p.has_h0) {
            const int s = p.seq_start[t0 + i];
            const V h0 = vload<V>(p.h0 + s * p.h0_sb + d * p.h0_sd + n * p.h0_sn, 1);
            e[i].b = vadd(e[i].b, vmul(a, h0));
          }
          e[i].a = vzero<V>();
        }
      }
      // C before the scan: its loads are in flight while the block scans
      if (p.C_fixed) {
        const float v = reinterpret_cast<const float*>(p.C)[C_base + n * p.C_sn];
#pragma unroll
        for (int i = 0; i < K; ++i) Cv[i] = v;
      } else {
        load_row_any<T, K>(C_bytes + (C_base + n * p.C_sn) * bc_elt_C, p.C_fp32, p.C_sl, t0, valid, Cv);
      }
      float Ci[K];
      if (kComplex) {
        if (p.C_fixed) {
          const float v = reinterpret_cast<const float*>(p.C)[C_base + n * p.C_sn + p.C_im];
#pragma unroll
          for (int i = 0; i < K; ++i) Ci[i] = v;
        } else {
          load_row_any<T, K>(C_bytes + (C_base + n * p.C_sn + p.C_im) * bc_elt_C, p.C_fp32, p.C_sl, t0, valid, Ci);
        }
      }
      CarryPrefix<V> prefix{state + n * W};
      BlockScanT(scan_tmp[scan_count++ & 1]).InclusiveScan(e, e, ScanOp(), prefix);
#pragma unroll
      for (int i = 0; i < K; ++i) {
        const V h = e[i].b;  // the prefix (1, h_prev) makes the scanned b the state itself
        if constexpr (kComplex) y[i] += 2.f * (Cv[i] * h.x - Ci[i] * h.y);
        else y[i] += Cv[i] * h;
        if (ends & (1u << i)) vstore(p.final_state + (int64_t(p.seq_end[t0 + i]) * p.dim + d) * N * W + n * W, h);
        const int next = t0 + i + 1;
        if (ckpt && i < valid && next < L && next % kSSCkptSpacing == 0)
          vstore(ckpt + (int64_t(next / kSSCkptSpacing) * N + n) * W, h);
      }
    }

    float zv[K];
    if (p.has_z) load_row<T, K>(z_row, p.z_sl, t0, valid, zv);
#pragma unroll
    for (int i = 0; i < K; ++i) {
      if (p.has_z) y[i] *= zv[i] * sigmoid(zv[i]);
    }
    store_row<T, K>(y_row, t0, valid, y);
  }

  if (!p.varlen) {
    __syncthreads();
    for (int n = tid; n < N; n += kThreads) vstore(p.final_state + (state_row + n) * W, vload<V>(state + n * W, 1));
  }
}

template <typename T, typename V>
void launch_fwd(const Params& p) {
  const dim3 grid(p.dim, p.batch);
  const size_t smem = size_t(p.dstate) * vwidth<V>() * sizeof(float);
  const auto kernel = is_plain_forward(p) ? selective_scan_fwd_kernel<T, V, true> : selective_scan_fwd_kernel<T, V, false>;
  kernel<<<grid, kThreads, smem, c10::cuda::getCurrentCUDAStream()>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace
}  // namespace ss

void selective_scan_fwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                        at::IntArrayRef B_layout, const at::Tensor& C, at::IntArrayRef C_layout,
                        const c10::optional<at::Tensor>& D, const c10::optional<at::Tensor>& z,
                        const c10::optional<at::Tensor>& delta_bias, bool delta_softplus,
                        const c10::optional<at::Tensor>& initial_state, const c10::optional<at::Tensor>& seq_start,
                        const c10::optional<at::Tensor>& seq_end, at::Tensor& y, at::Tensor& final_state,
                        at::Tensor& ckpt) {
  bool is_complex = false;
  ss::Params p = ss::make_params(u, delta, A, B, B_layout, C, C_layout, D, z, delta_bias, delta_softplus,
                                 initial_state, seq_start, seq_end, is_complex);
  const int W = is_complex ? 2 : 1;
  const int rows = p.varlen ? final_state.size(0) : p.batch;
  TORCH_CHECK(y.is_contiguous() && y.sizes() == u.sizes() && y.scalar_type() == u.scalar_type(),
              "selective_scan: y must be contiguous and shaped like u");
  TORCH_CHECK(final_state.is_contiguous() && final_state.scalar_type() == at::kFloat &&
              final_state.numel() == int64_t(rows) * p.dim * p.dstate * W, "selective_scan: bad final_state buffer");
  TORCH_CHECK(ckpt.numel() == 0 || (ckpt.is_contiguous() && ckpt.scalar_type() == at::kFloat &&
                                    ckpt.numel() == int64_t(p.batch) * p.dim * p.n_ckpt * p.dstate * W),
              "selective_scan: bad checkpoint buffer");
  TORCH_CHECK(p.dstate >= 1 && p.dstate <= 4096, "selective_scan: N must be in [1, 4096]");
  if (p.length == 0 || p.batch == 0 || p.dim == 0) return;
  p.y = y.data_ptr();
  p.final_state = final_state.data_ptr<float>();
  p.ckpt = ckpt.numel() ? ckpt.data_ptr<float>() : nullptr;
  const c10::cuda::CUDAGuard guard(u.device());
  SSM_DISPATCH_FLOAT_HALF_BF16(u.scalar_type(), "selective_scan_fwd", [&] {
    if (is_complex) ss::launch_fwd<scalar_t, float2>(p);
    else ss::launch_fwd<scalar_t, float>(p);
  });
}

}  // namespace ssm_kernels
