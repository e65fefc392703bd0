// Selective scan (Mamba-1), backward. Math: ssm_kernels/selective_scan/_triton_bwd.py's docstring; with
// dy = dout * silu(z) and hb_t = h_t - Δ_t u_t B_t (= a_t h_{t-1}, a_t h0 at a sequence start):
//     G_t  = C_t dy_t + a_{t+1} G_{t+1}       (complex: 2 dy_t conj(C_t) + conj(a_{t+1}) G_{t+1});
//            G after the last position = dfinal (packed sequences: dfinal[s] enters at s's last position)
//     du_t = D dy_t + Δ_t <G_t, B_t>           dΔ_t = u_t <G_t, B_t> + Σ_n <A hb_t, G_t>   (<x, y> = Re x conj y)
//     dA   = Σ_t Δ_t conj(hb_t) G_t            dB_t = Δ_t u_t G_t     dC_t = dy_t conj(h_t) (x2 complex)
//     dh0  = conj(a_0) G_0 (conj(a_start) G_start per packed sequence)
//
// Grid (D / kch, B): a block handles kch channels of one group (kch = 1 when B and C are both fixed). It
// walks the chunks of kSSCkptSpacing positions in reverse (kThreads threads x kSSBwdItems positions); per
// chunk, per channel, per mode n it recomputes the states from the forward's checkpoint (cub::BlockScan),
// runs the reverse scan of G (reverse_scan in ss_common.cuh; the value carried across chunks,
// conj(a_first) G_first, is kept in `work` (B, D, N)), and accumulates du, dΔ in registers, dA and fixed
// dB / dC by deterministic block sums into per-(batch, channel) partials (per-thread partials of every mode
// in shared memory summed once per channel and chunk when N is small: `defer_sums`, else one block sum per
// mode). Barriers per (chunk, channel, mode): 1 in the recomputing scan, 2 in reverse_scan.
// Variable dB / dC are summed over the block's channels in a fixed order: every position's sums belong to
// the thread that holds it, in shared memory (when nvar * N * chunk fits) or directly in the global partial
// buffer (B, D / kch, N, L) fp32; cuda.py sums the partials with torch. No atomics: bitwise reproducible.
#include <cub/block/block_scan.cuh>

#include "_common/dispatch.h"
#include "ss_common.cuh"

namespace ssm_kernels {
namespace ss {
namespace {

constexpr int kMaxAccSmem = 96 * 1024;    // bytes of shared memory for the variable dB / dC sums

// row[0 .. valid) += v[0 .. valid) with fp32 atomics: real values as 16-byte vector atomics (sm_90) where the
// thread's K positions are whole and aligned (t0 is a multiple of K; rows of L floats, L a multiple of 4), so a
// warp's atomics cover 512 contiguous bytes.
template <int K>
__device__ __forceinline__ void atomic_add_row(float* row, const float (&v)[K], int valid, int L) {
#if __CUDA_ARCH__ >= 900
  if (K % 4 == 0 && valid == K && L % 4 == 0) {
#pragma unroll
    for (int i = 0; i < K; i += 4) {
      atomicAdd(reinterpret_cast<float4*>(row + i), make_float4(v[i], v[i + 1], v[i + 2], v[i + 3]));
    }
    return;
  }
#endif
#pragma unroll
  for (int i = 0; i < K; ++i) {
    if (i < valid) atomicAdd(row + i, v[i]);
  }
}

template <int K>
__device__ __forceinline__ void atomic_add_row(float* row, const float2 (&v)[K], int valid, int) {
#pragma unroll
  for (int i = 0; i < K; ++i) {
    if (i < valid) vatomic_add(row + 2 * i, v[i]);
  }
}
constexpr int kMaxDeferSmem = 32 * 1024;  // bytes for the per-thread partials of dA and fixed dB / dC

// kPlain: the plain case (ss_common.cuh), with variable dB / dC summed in shared memory or, kAtomicBC, added
// with atomics; the general instantiation reads both choices from Params.
template <typename T, typename V, bool kPlain, bool kAtomicBC>
__global__ void __launch_bounds__(kThreads) selective_scan_bwd_kernel(Params p) {
  if (kPlain) assume_plain_backward<kAtomicBC>(p);
  constexpr int K = kSSBwdItems;
  constexpr int kChunk = kThreads * K;
  constexpr int W = vwidth<V>();
  constexpr bool kComplex = W == 2;
  using BlockScanT = cub::BlockScan<Pair<V>, kThreads, cub::BLOCK_SCAN_WARP_SCANS>;
  __shared__ typename BlockScanT::TempStorage scan_tmp;
  __shared__ Pair<V> warp_tot[kWarps];
  __shared__ float red[kWarps * 3 * W];
  __shared__ V warp_first[kWarps];
  extern __shared__ float acc_smem[];

  const int blk = blockIdx.x, b = blockIdx.y, tid = threadIdx.x;
  const int n_dblocks = gridDim.x;
  const int L = p.length, N = p.dstate;
  const bool varB = !p.B_fixed, varC = !p.C_fixed;
  float* accB = acc_smem;
  float* accC = acc_smem + (varB ? size_t(N) * kChunk * W : 0);
  // per-thread partials of dA / fixed dB / fixed dC, R per mode (when p.defer_sums), after the accumulators
  const int R = W * (1 + int(p.B_fixed) + int(p.C_fixed));
  float* psum = acc_smem + (p.acc_smem ? size_t(int(varB) + int(varC)) * N * kChunk * W : 0);
  const size_t bc_elt_B = p.B_fp32 ? sizeof(float) : sizeof(T);
  const size_t bc_elt_C = p.C_fp32 ? sizeof(float) : sizeof(T);
  const char* B_bytes = static_cast<const char*>(p.B);
  const char* C_bytes = static_cast<const char*>(p.C);
  const int64_t part_row = (int64_t(b) * n_dblocks + blk) * N;  // rows of this block in the dB / dC partials
  const int n_chunks = p.n_ckpt;

  for (int c = n_chunks - 1; c >= 0; --c) {
    const bool first_visit = c == n_chunks - 1;  // partial sums: the first chunk visited stores, later ones add
    const int t0 = c * kChunk + tid * K;
    const int valid = max(0, min(K, L - t0));
    unsigned starts = 0, ends = 0;
    if (p.varlen) {
#pragma unroll
      for (int i = 0; i < K; ++i) {
        if (i < valid && p.seq_start[t0 + i] >= 0) starts |= 1u << i;
        if (i < valid && p.seq_end[t0 + i] >= 0) ends |= 1u << i;
      }
    }
    for (int k = 0; k < p.kch; ++k) {
      const int d = blk * p.kch + k;
      const int64_t bd = int64_t(b) * p.dim + d;
      const int64_t B_base = (p.B_fixed ? 0 : b * p.B_sb) + int64_t(d / p.cpg_B) * p.B_sg;
      const int64_t C_base = (p.C_fixed ? 0 : b * p.C_sb) + int64_t(d / p.cpg_C) * p.C_sg;
      // atomic_bc: this channel's group rows of dB / dC (B, groups, N, L)
      const int64_t atomic_row_B = (int64_t(b) * (p.dim / p.cpg_B) + d / p.cpg_B) * N;
      const int64_t atomic_row_C = (int64_t(b) * (p.dim / p.cpg_C) + d / p.cpg_C) * N;
      const float Dv = p.has_D ? p.D[d] : 0.f;
      const float bias = p.has_bias ? p.bias[d] : 0.f;
      float u[K], dt_raw[K], dt[K], dout[K], zv[K], dy[K];
      load_row<T, K>(static_cast<const T*>(p.u) + b * p.u_sb + d * p.u_sd, p.u_sl, t0, valid, u);
      load_row<T, K>(static_cast<const T*>(p.delta) + b * p.dt_sb + d * p.dt_sd, p.dt_sl, t0, valid, dt_raw);
      load_row<T, K>(static_cast<const T*>(p.dout) + b * p.do_sb + d * p.do_sd, p.do_sl, t0, valid, dout);
      if (p.has_z) load_row<T, K>(static_cast<const T*>(p.z) + b * p.z_sb + d * p.z_sd, p.z_sl, t0, valid, zv);
      float du_acc[K], ddt_acc[K], ypre[K];
#pragma unroll
      for (int i = 0; i < K; ++i) {
        dt_raw[i] += bias;
        dt[i] = i < valid ? (p.softplus ? softplus(dt_raw[i]) : dt_raw[i]) : 0.f;
        dy[i] = p.has_z ? dout[i] * zv[i] * sigmoid(zv[i]) : dout[i];
        du_acc[i] = ddt_acc[i] = ypre[i] = 0.f;
      }

      for (int n = 0; n < N; ++n) {
        const V An = vload<V>(p.A + d * p.A_sd + n * p.A_sn, 1);
        V Bq[K], Cq[K];  // B_t, C_t of mode n
        {
          float re[K], im[K];
          if (p.B_fixed) {
            const float* q = reinterpret_cast<const float*>(p.B) + B_base + n * p.B_sn;
#pragma unroll
            for (int i = 0; i < K; ++i) { re[i] = q[0]; im[i] = kComplex ? q[p.B_im] : 0.f; }
          } else {
            load_row_any<T, K>(B_bytes + (B_base + n * p.B_sn) * bc_elt_B, p.B_fp32, p.B_sl, t0, valid, re);
            if (kComplex)
              load_row_any<T, K>(B_bytes + (B_base + n * p.B_sn + p.B_im) * bc_elt_B, p.B_fp32, p.B_sl, t0, valid, im);
          }
#pragma unroll
          for (int i = 0; i < K; ++i) {
            if constexpr (kComplex) Bq[i] = make_float2(re[i], im[i]); else Bq[i] = re[i];
          }
          if (p.C_fixed) {
            const float* q = reinterpret_cast<const float*>(p.C) + C_base + n * p.C_sn;
#pragma unroll
            for (int i = 0; i < K; ++i) { re[i] = q[0]; im[i] = kComplex ? q[p.C_im] : 0.f; }
          } else {
            load_row_any<T, K>(C_bytes + (C_base + n * p.C_sn) * bc_elt_C, p.C_fp32, p.C_sl, t0, valid, re);
            if (kComplex)
              load_row_any<T, K>(C_bytes + (C_base + n * p.C_sn + p.C_im) * bc_elt_C, p.C_fp32, p.C_sl, t0, valid, im);
          }
#pragma unroll
          for (int i = 0; i < K; ++i) {
            if constexpr (kComplex) Cq[i] = make_float2(re[i], im[i]); else Cq[i] = re[i];
          }
        }

        // recompute the states of the chunk from its checkpoint
        Pair<V> e[K];
        V a_scan[K];
#pragma unroll
        for (int i = 0; i < K; ++i) {
          const V a = vexp_scaled(dt[i], An);
          e[i] = Pair<V>{a, vscale(Bq[i], dt[i] * u[i])};
          if (starts & (1u << i)) {
            if (p.has_h0) {
              const int s = p.seq_start[t0 + i];
              e[i].b = vadd(e[i].b, vmul(a, vload<V>(p.h0 + s * p.h0_sb + d * p.h0_sd + n * p.h0_sn, 1)));
            }
            e[i].a = vzero<V>();
          }
          a_scan[i] = e[i].a;
        }
        const V h_prev = vload<V>(p.ckpt + ((bd * p.n_ckpt + c) * N + n) * W, 1);
        BlockScanT(scan_tmp).InclusiveScan(e, e, ScanOp());  // scan_tmp's next use is after reverse_scan's barriers
        V h[K];
#pragma unroll
        for (int i = 0; i < K; ++i) {
          h[i] = vadd(vmul(e[i].a, h_prev), e[i].b);
          if (p.has_z) ypre[i] += (kComplex ? 2.f : 1.f) * vre_mul(Cq[i], h[i]);
        }

        // reverse scan of the adjoint: alpha_t = conj(a_{t+1}) (the next position's scan a: 0 at a start);
        // the last item's alpha comes from the next thread inside reverse_scan
        Pair<V> r[K];
#pragma unroll
        for (int i = 0; i < K; ++i) {
          const V a_next = i < K - 1 ? a_scan[i + 1] : vone<V>();
          V g = vscale(vconj(Cq[i]), (kComplex ? 2.f : 1.f) * dy[i]);
          if (p.has_dfinal && (ends & (1u << i)))
            g = vadd(g, vload<V>(p.dfinal + ((int64_t(p.seq_end[t0 + i]) * p.dim + d) * N + n) * W, 1));
          r[i] = Pair<V>{vconj(a_next), g};
        }
        float* work = p.work + (bd * N + n) * W;
        V carry = vzero<V>();
        if (!first_visit) carry = vload<V>(work, 1);
        else if (p.has_dfinal && !p.varlen) carry = vload<V>(p.dfinal + (bd * N + n) * W, 1);
        V G[K];
        reverse_scan<V, K>(r, vconj(a_scan[0]), carry, G, warp_tot, warp_first);
        if (tid == 0) {
          const V next_carry = vmul(vconj(a_scan[0]), G[0]);
          vstore(work, next_carry);
          if (c == 0 && p.has_h0 && !p.varlen) vstore(p.dh0 + (bd * N + n) * W, next_carry);
        }

        float sums[3 * W];  // dA, fixed dB, fixed dC of mode n
        V dB_row[K], dC_row[K];  // this thread's positions' dB / dC of mode n (atomic_bc)
#pragma unroll
        for (int j = 0; j < 3 * W; ++j) sums[j] = 0.f;
#pragma unroll
        for (int i = 0; i < K; ++i) {
          if (p.has_h0 && (starts & (1u << i))) {
            const V a = vexp_scaled(dt[i], An);
            vstore(p.dh0 + ((int64_t(p.seq_start[t0 + i]) * p.dim + d) * N + n) * W, vmul(vconj(a), G[i]));
          }
          const V bq = vscale(Bq[i], dt[i] * u[i]);
          const V hb = vadd(h[i], vscale(bq, -1.f));
          const float GB = vdot(G[i], Bq[i]);
          du_acc[i] += dt[i] * GB;
          ddt_acc[i] += u[i] * GB + vdot(vmul(An, hb), G[i]);
          const V dA_i = vscale(vmul(vconj(hb), G[i]), dt[i]);
          const V dB_i = vscale(G[i], dt[i] * u[i]);
          const V dC_i = vscale(vconj(h[i]), (kComplex ? 2.f : 1.f) * dy[i]);
          if constexpr (kComplex) {
            sums[0] += dA_i.x; sums[1] += dA_i.y;
            if (p.B_fixed) { sums[2] += dB_i.x; sums[3] += dB_i.y; }
            if (p.C_fixed) { sums[4] += dC_i.x; sums[5] += dC_i.y; }
          } else {
            sums[0] += dA_i;
            if (p.B_fixed) sums[1] += dB_i;
            if (p.C_fixed) sums[2] += dC_i;
          }
          dB_row[i] = dB_i;
          dC_row[i] = dC_i;
          if (i < valid && !p.atomic_bc) {
            if (varB) {
              float* q = p.acc_smem ? accB + (size_t(n) * kChunk + tid * K + i) * W
                                    : p.dB + ((part_row + n) * L + t0 + i) * W;
              vstore(q, k == 0 ? dB_i : vadd(vload<V>(q, 1), dB_i));
            }
            if (varC) {
              float* q = p.acc_smem ? accC + (size_t(n) * kChunk + tid * K + i) * W
                                    : p.dC + ((part_row + n) * L + t0 + i) * W;
              vstore(q, k == 0 ? dC_i : vadd(vload<V>(q, 1), dC_i));
            }
          }
        }
        if (p.atomic_bc) {
          if (varB) atomic_add_row<K>(p.dB + ((atomic_row_B + n) * L + t0) * W, dB_row, valid, L);
          if (varC) atomic_add_row<K>(p.dC + ((atomic_row_C + n) * L + t0) * W, dC_row, valid, L);
        }
        if (p.defer_sums) {  // packed (dA, [dB], [dC]) into this thread's slots, summed after the modes
#pragma unroll
          for (int w = 0; w < W; ++w) {
            psum[size_t(n * R + w) * kThreads + tid] = sums[w];
            if (p.B_fixed) psum[size_t(n * R + W + w) * kThreads + tid] = sums[W + w];
            if (p.C_fixed) psum[size_t(n * R + R - W + w) * kThreads + tid] = sums[2 * W + w];
          }
          continue;
        }
        if (p.B_fixed || p.C_fixed) {
          block_sum<3 * W>(sums, red);
        } else {  // only dA: a third of the shuffles
          float s_dA[W];
#pragma unroll
          for (int w = 0; w < W; ++w) s_dA[w] = sums[w];
          block_sum<W>(s_dA, red);
#pragma unroll
          for (int w = 0; w < W; ++w) sums[w] = s_dA[w];
        }
        if (tid == 0) {
          const int64_t o = (bd * N + n) * W;
#pragma unroll
          for (int w = 0; w < W; ++w) {
            p.dA[o + w] = first_visit ? sums[w] : p.dA[o + w] + sums[w];
            if (p.B_fixed) p.dB[o + w] = first_visit ? sums[W + w] : p.dB[o + w] + sums[W + w];
            if (p.C_fixed) p.dC[o + w] = first_visit ? sums[2 * W + w] : p.dC[o + w] + sums[2 * W + w];
          }
        }
      }

      if (p.defer_sums) {
        block_sum_deferred(psum, N, R, [&](int n, int r, float v) {
          const int64_t o = (bd * N + n) * W;
          float* dst = r < W ? p.dA + o + r : (p.B_fixed && r < 2 * W) ? p.dB + o + r - W : p.dC + o + r - (R - W);
          *dst = first_visit ? v : *dst + v;
        });
      }

      // per-position gradients of this channel
      float du[K], ddt[K], dz[K];
      float sums[2] = {0.f, 0.f};  // dD, dbias
#pragma unroll
      for (int i = 0; i < K; ++i) {
        du[i] = Dv * dy[i] + du_acc[i];
        ddt[i] = i < valid ? (p.softplus ? ddt_acc[i] * sigmoid(dt_raw[i]) : ddt_acc[i]) : 0.f;
        if (p.has_z) {
          const float y = ypre[i] + Dv * u[i];
          const float s = sigmoid(zv[i]);
          dz[i] = dout[i] * y * s * (1.f + zv[i] * (1.f - s));
        }
        sums[0] += dy[i] * u[i];
        sums[1] += ddt[i];
      }
      store_row<T, K>(static_cast<T*>(p.du) + bd * L, t0, valid, du);
      store_row<T, K>(static_cast<T*>(p.ddelta) + bd * L, t0, valid, ddt);
      if (p.has_z) store_row<T, K>(static_cast<T*>(p.dz) + bd * L, t0, valid, dz);
      block_sum<2>(sums, red);
      if (tid == 0) {
        p.dD[bd] = first_visit ? sums[0] : p.dD[bd] + sums[0];
        p.dbias[bd] = first_visit ? sums[1] : p.dbias[bd] + sums[1];
      }
    }
    if (p.acc_smem) {  // this chunk's sums over the block's channels -> the global partials
      for (int n = 0; n < N; ++n) {
#pragma unroll
        for (int i = 0; i < K; ++i) {
          if (i >= valid) continue;
          const size_t s = (size_t(n) * kChunk + tid * K + i) * W;
          const int64_t g = ((part_row + n) * L + t0 + i) * W;
          if (varB) vstore(p.dB + g, vload<V>(accB + s, 1));
          if (varC) vstore(p.dC + g, vload<V>(accC + s, 1));
        }
      }
    }
  }
}

template <typename T, typename V>
void launch_bwd(const Params& p, int n_dblocks) {
  const dim3 grid(n_dblocks, p.batch);
  const int nvar = int(!p.B_fixed) + int(!p.C_fixed);
  size_t smem = p.acc_smem ? size_t(nvar) * p.dstate * kSSCkptSpacing * vwidth<V>() * sizeof(float) : 0;
  if (p.defer_sums) smem += size_t(vwidth<V>()) * (1 + int(p.B_fixed) + int(p.C_fixed)) * p.dstate * kThreads * sizeof(float);
  const auto kernel = !is_plain_backward(p) ? selective_scan_bwd_kernel<T, V, false, false>
                      : p.atomic_bc          ? selective_scan_bwd_kernel<T, V, true, true>
                                             : selective_scan_bwd_kernel<T, V, true, false>;
  // the opt-in counts static + dynamic shared memory: 48 KB of dynamic memory on top of the scan storage
  // already needs it (H100: complex A, one variable B / C, N 8 failed with "invalid argument" without)
  cudaFuncAttributes attr;
  C10_CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel));
  if (smem + attr.sharedSizeBytes > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  }
  kernel<<<grid, kThreads, smem, c10::cuda::getCurrentCUDAStream()>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace
}  // namespace ss

void selective_scan_bwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                        at::IntArrayRef B_layout, const at::Tensor& C, at::IntArrayRef C_layout,
                        const c10::optional<at::Tensor>& D, const c10::optional<at::Tensor>& z,
                        const c10::optional<at::Tensor>& delta_bias, bool delta_softplus,
                        const c10::optional<at::Tensor>& initial_state, const c10::optional<at::Tensor>& seq_start,
                        const c10::optional<at::Tensor>& seq_end, const at::Tensor& dout,
                        const c10::optional<at::Tensor>& dfinal, const at::Tensor& ckpt, int64_t channels_per_block,
                        bool atomic_bc, at::Tensor& du, at::Tensor& ddelta, at::Tensor& dz, at::Tensor& dA, at::Tensor& dD,
                        at::Tensor& dbias, at::Tensor& dB, at::Tensor& dC, at::Tensor& dh0, at::Tensor& workspace) {
  bool is_complex = false;
  ss::Params p = ss::make_params(u, delta, A, B, B_layout, C, C_layout, D, z, delta_bias, delta_softplus,
                                 initial_state, seq_start, seq_end, is_complex);
  const int64_t W = is_complex ? 2 : 1;
  const int64_t BD = int64_t(p.batch) * p.dim, L = p.length, N = p.dstate;
  const int kch = static_cast<int>(channels_per_block);
  TORCH_CHECK(kch >= 1 && p.dim % kch == 0, "selective_scan: channels per block must divide D");
  TORCH_CHECK((p.B_fixed || p.cpg_B % kch == 0) && (p.C_fixed || p.cpg_C % kch == 0),
              "selective_scan: a block's channels must share one group of B and C");
  const int64_t n_dblocks = p.dim / kch;
  TORCH_CHECK(dout.sizes() == u.sizes() && dout.scalar_type() == u.scalar_type(), "selective_scan: dout must match u");
  p.dout = dout.data_ptr();
  p.do_sb = dout.stride(0); p.do_sd = dout.stride(1); p.do_sl = dout.stride(2);
  p.has_dfinal = dfinal.has_value();
  if (p.has_dfinal) {
    TORCH_CHECK(dfinal->is_contiguous() && dfinal->scalar_type() == at::kFloat &&
                dfinal->numel() == (p.varlen ? dfinal->size(0) : p.batch) * p.dim * N * W,
                "selective_scan: dfinal must be contiguous fp32 (rows, D, N[, 2])");
    p.dfinal = dfinal->data_ptr<float>();
  }
  TORCH_CHECK(ckpt.is_contiguous() && ckpt.scalar_type() == at::kFloat && ckpt.numel() == BD * p.n_ckpt * N * W,
              "selective_scan: the checkpoints do not match the inputs (was the forward run without grad?)");
  auto check_out = [&](const at::Tensor& t, at::ScalarType dtype, int64_t numel, const char* name) {
    TORCH_CHECK(t.is_contiguous() && t.scalar_type() == dtype && t.numel() == numel,
                "selective_scan: bad buffer for ", name);
  };
  check_out(du, u.scalar_type(), BD * L, "du");
  check_out(ddelta, u.scalar_type(), BD * L, "ddelta");
  if (p.has_z) check_out(dz, u.scalar_type(), BD * L, "dz");
  check_out(dA, at::kFloat, BD * N * W, "dA");
  check_out(dD, at::kFloat, BD, "dD");
  check_out(dbias, at::kFloat, BD, "dbias");
  // variable dB / dC: per-block partials (B, D / kch, N, L), or with atomic_bc zeroed sums (B, groups, N, L)
  const int64_t rows_B = atomic_bc ? p.dim / p.cpg_B : n_dblocks, rows_C = atomic_bc ? p.dim / p.cpg_C : n_dblocks;
  check_out(dB, at::kFloat, p.B_fixed ? BD * N * W : p.batch * rows_B * N * L * W, "dB");
  check_out(dC, at::kFloat, p.C_fixed ? BD * N * W : p.batch * rows_C * N * L * W, "dC");
  check_out(workspace, at::kFloat, BD * N * W, "workspace");
  if (p.has_h0) {
    TORCH_CHECK(dh0.is_contiguous() && dh0.scalar_type() == at::kFloat && dh0.numel() == initial_state->size(0) * p.dim * N * W,
                "selective_scan: bad buffer for dh0");
    p.dh0 = dh0.data_ptr<float>();
  }
  if (L == 0 || BD == 0) return;
  p.ckpt = ckpt.data_ptr<float>();
  p.du = du.data_ptr();
  p.ddelta = ddelta.data_ptr();
  p.dz = p.has_z ? dz.data_ptr() : nullptr;
  p.dA = dA.data_ptr<float>();
  p.dD = dD.data_ptr<float>();
  p.dbias = dbias.data_ptr<float>();
  p.dB = dB.data_ptr<float>();
  p.dC = dC.data_ptr<float>();
  p.work = workspace.data_ptr<float>();
  p.kch = kch;
  const int64_t nvar = int64_t(!p.B_fixed) + int64_t(!p.C_fixed);
  p.atomic_bc = atomic_bc && nvar > 0;
  p.acc_smem = !p.atomic_bc && nvar > 0 && nvar * N * kSSCkptSpacing * W * int64_t(sizeof(float)) <= ss::kMaxAccSmem;
  // dA (and fixed dB / dC) summed over the block once per channel and chunk instead of once per mode
  p.defer_sums = W * (1 + int64_t(p.B_fixed) + int64_t(p.C_fixed)) * N * ss::kThreads * int64_t(sizeof(float)) <= ss::kMaxDeferSmem;
  const c10::cuda::CUDAGuard guard(u.device());
  SSM_DISPATCH_FLOAT_HALF_BF16(u.scalar_type(), "selective_scan_bwd", [&] {
    if (is_complex) ss::launch_bwd<scalar_t, float2>(p, int(n_dblocks));
    else ss::launch_bwd<scalar_t, float>(p, int(n_dblocks));
  });
}

}  // namespace ssm_kernels
