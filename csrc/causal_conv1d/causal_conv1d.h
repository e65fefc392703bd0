// Launchers of csrc/causal_conv1d, registered in registration.cpp.
#pragma once
#include <ATen/ATen.h>

namespace ssm_kernels {

void causal_conv1d_fwd(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                       const c10::optional<at::Tensor>& seq_idx, const c10::optional<at::Tensor>& initial_states,
                       bool silu, at::Tensor& out);

void causal_conv1d_bwd(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                       const c10::optional<at::Tensor>& seq_idx, const c10::optional<at::Tensor>& initial_states,
                       const at::Tensor& dout, bool silu, at::Tensor& dx, at::Tensor& dweight, at::Tensor& dbias,
                       at::Tensor& dinitial);

}  // namespace ssm_kernels
