// Registers csrc/fftconv as torch.ops.ssm_kernels_cuda.fftconv_{fwd,bwd} (outputs are passed in, allocated by
// ssm_kernels/fftconv/cuda.py).
#include <torch/library.h>

#include "fftconv.h"

TORCH_LIBRARY_FRAGMENT(ssm_kernels_cuda, m) {
  m.def("fftconv_fwd(Tensor u, Tensor? pregate, Tensor? postgate, Tensor? skip, Tensor spectrum, Tensor twiddles, "
        "int log_points, int threads, Tensor(a!) y, Tensor(b!)? ungated, Tensor(c!)? v_spectrum) -> ()");
  m.def("fftconv_bwd(Tensor dy, Tensor? ungated, Tensor v_spectrum, Tensor u, Tensor? pregate, Tensor? postgate, "
        "Tensor? skip, Tensor spectrum, Tensor twiddles, int log_points, int threads, bool bidirectional, "
        "Tensor(a!) du, Tensor(b!)? dpregate, Tensor(c!)? dpostgate, Tensor(d!)? dskip, Tensor(e!) dk) -> ()");
}

TORCH_LIBRARY_IMPL(ssm_kernels_cuda, CUDA, m) {
  m.impl("fftconv_fwd", &ssm_kernels::fftconv_fwd_cuda);
  m.impl("fftconv_bwd", &ssm_kernels::fftconv_bwd_cuda);
}
