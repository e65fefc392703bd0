// Registers csrc/selective_scan as torch.ops.ssm_kernels_cuda.selective_scan_{fwd,bwd} (outputs are passed in,
// allocated by ssm_kernels/selective_scan/cuda.py).
#include <torch/library.h>

#include "selective_scan.h"

TORCH_LIBRARY_FRAGMENT(ssm_kernels_cuda, m) {
  m.def("selective_scan_fwd(Tensor u, Tensor delta, Tensor A, Tensor B, int[] B_layout, Tensor C, int[] C_layout, "
        "Tensor? D, Tensor? z, Tensor? delta_bias, bool delta_softplus, Tensor? initial_state, Tensor? seq_start, "
        "Tensor? seq_end, Tensor(a!) y, Tensor(b!) final_state, Tensor(c!) ckpt) -> ()");
  m.def("selective_scan_bwd(Tensor u, Tensor delta, Tensor A, Tensor B, int[] B_layout, Tensor C, int[] C_layout, "
        "Tensor? D, Tensor? z, Tensor? delta_bias, bool delta_softplus, Tensor? initial_state, Tensor? seq_start, "
        "Tensor? seq_end, Tensor dout, Tensor? dfinal, Tensor ckpt, int channels_per_block, bool atomic_bc, "
        "Tensor(a!) du, "
        "Tensor(b!) ddelta, Tensor(c!) dz, Tensor(d!) dA, Tensor(e!) dD, Tensor(f!) dbias, Tensor(g!) dB, "
        "Tensor(h!) dC, Tensor(i!) dh0, Tensor(j!) workspace) -> ()");
}

TORCH_LIBRARY_IMPL(ssm_kernels_cuda, CUDA, m) {
  m.impl("selective_scan_fwd", &ssm_kernels::selective_scan_fwd);
  m.impl("selective_scan_bwd", &ssm_kernels::selective_scan_bwd);
}
