// Launchers of csrc/fftconv, registered in registration.cpp; the binding is ssm_kernels/fftconv/cuda.py, which
// makes the tables (kernel spectrum, twiddles) and allocates every output.
#pragma once
#include <ATen/ATen.h>

namespace ssm_kernels {

// y = (conv(u * pre, k) + D u * pre) * post for (B, H, L) u, pregate, postgate of one dtype (any strides; y
// contiguous), and where given, for the backward, ungated = conv(u * pre, k) + D u * pre (contiguous) and
// v_spectrum = the transforms of u * pre ((B, H, M, 2) fp32, frequency order, contiguous). spectrum:
// (H, M + 1, 2) fp32, FFT_N of the circular kernel divided by 2N; twiddles: fp32 pairs laid out as fft_block.cuh's
// twiddle_table_size says; N = 2M = 2^(log_points + 1) >= 2L. threads: per block, a power of two from 32 to 512.
void fftconv_fwd_cuda(const at::Tensor& u, const c10::optional<at::Tensor>& pregate,
                      const c10::optional<at::Tensor>& postgate, const c10::optional<at::Tensor>& skip,
                      const at::Tensor& spectrum, const at::Tensor& twiddles, int64_t log_points, int64_t threads,
                      at::Tensor& y, const c10::optional<at::Tensor>& ungated,
                      const c10::optional<at::Tensor>& v_spectrum);

// The backward: du, dpregate, dpostgate (contiguous, u's dtype), per-row fp32 partials dskip (B, H) that the
// caller sums over the batch, and dk (1 or 2, H, Lk) fp32. ungated: the forward's, or absent (then dpostgate
// recomputes the convolution); v_spectrum: the forward's.
void fftconv_bwd_cuda(const at::Tensor& dy, const c10::optional<at::Tensor>& ungated, const at::Tensor& v_spectrum,
                      const at::Tensor& u,
                      const c10::optional<at::Tensor>& pregate, const c10::optional<at::Tensor>& postgate,
                      const c10::optional<at::Tensor>& skip,
                      const at::Tensor& spectrum, const at::Tensor& twiddles, int64_t log_points, int64_t threads,
                      bool bidirectional, at::Tensor& du, const c10::optional<at::Tensor>& dpregate,
                      const c10::optional<at::Tensor>& dpostgate, const c10::optional<at::Tensor>& dskip,
                      at::Tensor& dk);

}  // namespace ssm_kernels
