// Launcher of csrc/linear_scan (linear_scan.cu), registered in registration.cpp. The binding is
// ssm_kernels/linear_scan/cuda.py, which passes real views of complex tensors with their strides (in elements
// of the view, for the (B, D, L) or (B, D) dims) and allocates every output.
#pragma once
#include <ATen/ATen.h>

namespace ssm_kernels {

// One pass of the fused scan (ssm_kernels/linear_scan/_common.py, KernelLaunch): forward (states undefined)
// x = scan(gates, inputs) into outputs, or backward (states = the forward output x): the adjoint scan of
// inputs = dy in the opposite direction into outputs = dtokens, dgates = conj(x_prev) g, dh0. With
// n_segments > 1 two passes run (segment summaries into `summaries`, then the scan from composed carries);
// a segment is seg_tiles tiles of 1024 positions (512 for a complex scan) at multiples of the tile in memory.
void linear_scan_cuda(const at::Tensor& gates, at::IntArrayRef gates_strides, bool gates_complex,
                      const at::Tensor& inputs, at::IntArrayRef inputs_strides, bool inputs_complex,
                      at::Tensor& outputs, at::IntArrayRef outputs_strides, bool outputs_complex,
                      const c10::optional<at::Tensor>& states, at::IntArrayRef states_strides,
                      const c10::optional<at::Tensor>& dgates, at::IntArrayRef dgates_strides,
                      const c10::optional<at::Tensor>& h0, at::IntArrayRef h0_strides,
                      const c10::optional<at::Tensor>& dh0, const c10::optional<at::Tensor>& cu_seqlens,
                      at::Tensor& summaries, int64_t batch, int64_t dim, int64_t length, int64_t seg_tiles,
                      int64_t n_segments, bool reverse, bool scan_complex);

}  // namespace ssm_kernels
