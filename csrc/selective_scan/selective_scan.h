// Launchers of csrc/selective_scan (forward in selective_scan_fwd.cu, backward in selective_scan_bwd.cu),
// registered in registration.cpp. The binding is ssm_kernels/selective_scan/cuda.py, which prepares the
// arguments (dtypes, real views of complex tensors, B / C layouts) and allocates every output.
#pragma once
#include <ATen/ATen.h>

namespace ssm_kernels {

// Positions per thread: the forward walks L in chunks of kThreads * kFwdItems positions, the backward in
// chunks of kThreads * kBwdItems, which is also the spacing of the forward's state checkpoints.
constexpr int kSSThreads = 128;
constexpr int kSSFwdItems = 16;
constexpr int kSSBwdItems = 4;
constexpr int kSSCkptSpacing = kSSThreads * kSSBwdItems;

// B_layout / C_layout (from cuda.py): {fixed, channels per group, stride batch, stride group, stride n,
// stride l, offset of the imaginary part} in elements of the tensor passed (a real view for complex ones).
void selective_scan_fwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                        at::IntArrayRef B_layout, const at::Tensor& C, at::IntArrayRef C_layout,
                        const c10::optional<at::Tensor>& D, const c10::optional<at::Tensor>& z,
                        const c10::optional<at::Tensor>& delta_bias, bool delta_softplus,
                        const c10::optional<at::Tensor>& initial_state, const c10::optional<at::Tensor>& seq_start,
                        const c10::optional<at::Tensor>& seq_end, at::Tensor& y, at::Tensor& final_state,
                        at::Tensor& ckpt);

void selective_scan_bwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                        at::IntArrayRef B_layout, const at::Tensor& C, at::IntArrayRef C_layout,
                        const c10::optional<at::Tensor>& D, const c10::optional<at::Tensor>& z,
                        const c10::optional<at::Tensor>& delta_bias, bool delta_softplus,
                        const c10::optional<at::Tensor>& initial_state, const c10::optional<at::Tensor>& seq_start,
                        const c10::optional<at::Tensor>& seq_end, const at::Tensor& dout,
                        const c10::optional<at::Tensor>& dfinal, const at::Tensor& ckpt, int64_t channels_per_block,
                        bool atomic_bc, at::Tensor& du, at::Tensor& ddelta, at::Tensor& dz, at::Tensor& dA, at::Tensor& dD,
                        at::Tensor& dbias, at::Tensor& dB, at::Tensor& dC, at::Tensor& dh0, at::Tensor& workspace);

}  // namespace ssm_kernels
