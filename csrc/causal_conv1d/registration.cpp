// Registers csrc/causal_conv1d as torch.ops.ssm_kernels_cuda.* (outputs are passed in, allocated by Python).
#include <torch/library.h>

#include "causal_conv1d.h"

TORCH_LIBRARY_FRAGMENT(ssm_kernels_cuda, m) {
  m.def("causal_conv1d_fwd(Tensor x, Tensor weight, Tensor? bias, Tensor? seq_idx, Tensor? initial_states, "
        "bool silu, Tensor(a!) out) -> ()");
  m.def("causal_conv1d_bwd(Tensor x, Tensor weight, Tensor? bias, Tensor? seq_idx, Tensor? initial_states, "
        "Tensor dout, bool silu, Tensor(a!) dx, Tensor(b!) dweight, Tensor(c!) dbias, Tensor(d!) dinitial) -> ()");
}

TORCH_LIBRARY_IMPL(ssm_kernels_cuda, CUDA, m) {
  m.impl("causal_conv1d_fwd", &ssm_kernels::causal_conv1d_fwd);
  m.impl("causal_conv1d_bwd", &ssm_kernels::causal_conv1d_bwd);
}
