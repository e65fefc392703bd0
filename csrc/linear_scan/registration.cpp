// Registers csrc/linear_scan as torch.ops.ssm_kernels_cuda.linear_scan (outputs are passed in, allocated by
// ssm_kernels/linear_scan/cuda.py through _common.kernel_functions).
#include <torch/library.h>

#include "linear_scan.h"

TORCH_LIBRARY_FRAGMENT(ssm_kernels_cuda, m) {
  m.def("linear_scan(Tensor gates, int[] gates_strides, bool gates_complex, Tensor inputs, int[] inputs_strides, "
        "bool inputs_complex, Tensor(a!) outputs, int[] outputs_strides, bool outputs_complex, Tensor? states, "
        "int[] states_strides, Tensor(b!)? dgates, int[] dgates_strides, Tensor? h0, int[] h0_strides, "
        "Tensor(c!)? dh0, Tensor? cu_seqlens, Tensor(d!) summaries, int batch, int dim, int length, int seg_tiles, "
        "int n_segments, bool reverse, bool scan_complex) -> ()");
}

TORCH_LIBRARY_IMPL(ssm_kernels_cuda, CUDA, m) {
  m.impl("linear_scan", &ssm_kernels::linear_scan_cuda);
}
