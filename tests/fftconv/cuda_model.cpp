// A CPU model of csrc/fftconv: the kernels' row code (fftconv_rows.cuh, fft_block.cuh) compiled for the host and
// run as a block of one thread, row after row, with the launchers' signatures. test_cuda_model.py runs
// ssm_kernels/fftconv/cuda.py on it against the reference, so a machine without a GPU checks the kernels' FFT
// passes, real-FFT identities, tables, gates and gradients. It cannot see races between threads or anything
// of the launch (grid, shared memory): the native tests do.
#include <torch/extension.h>

#include <vector>

#include "_common/dispatch.h"
#include "fftconv/fftconv_problem.h"

namespace {

using namespace ssm_kernels::fftconv;

struct SerialBlock {
  int thread = 0, threads = 1;
  void sync() const {}
  float sum(float x) const { return x; }
};

void fftconv_fwd(const at::Tensor& u, const c10::optional<at::Tensor>& pregate,
                 const c10::optional<at::Tensor>& postgate, const c10::optional<at::Tensor>& skip,
                 const at::Tensor& spectrum, const at::Tensor& twiddles, int64_t log_points, int64_t /*threads*/,
                 at::Tensor& y) {
  SSM_DISPATCH_FLOAT_HALF_BF16(u.scalar_type(), "fftconv_fwd_model", [&] {
    const Problem<scalar_t> p = make_problem<scalar_t>(u, pregate, postgate, skip, spectrum, twiddles, log_points);
    std::vector<cfloat> buf(padded_size(1 << log_points));
    for (int row = 0; row < p.batch * p.heads; ++row) {
      forward_row(p, y.data_ptr<scalar_t>(), row, buf.data(), SerialBlock{});
    }
  });
}

void fftconv_bwd(const at::Tensor& dy, const at::Tensor& u, const c10::optional<at::Tensor>& pregate,
                 const c10::optional<at::Tensor>& postgate, const c10::optional<at::Tensor>& skip,
                 const at::Tensor& spectrum, const at::Tensor& twiddles, int64_t log_points, int64_t /*threads*/,
                 bool bidirectional,
                 at::Tensor& du, const c10::optional<at::Tensor>& dpregate,
                 const c10::optional<at::Tensor>& dpostgate, const c10::optional<at::Tensor>& dskip,
                 at::Tensor& dk) {
  SSM_DISPATCH_FLOAT_HALF_BF16(u.scalar_type(), "fftconv_bwd_model", [&] {
    // two units per head where the batch allows: the partial dk sums and a unit of several rows both run
    const int per_group = rows_per_group(u.size(0), u.size(1), 2 * u.size(1));
    const int groups = batch_groups(int(u.size(0)), per_group);
    at::Tensor partial = at::empty({groups, dk.size(0), dk.size(1), dk.size(2)}, dk.options());
    const Problem<scalar_t> p = make_problem<scalar_t>(u, pregate, postgate, skip, spectrum, twiddles, log_points);
    const Gradients<scalar_t> grads =
        make_gradients<scalar_t>(dy, bidirectional, per_group, du, dpregate, dpostgate, dskip, partial);
    const int size = padded_size(1 << log_points);
    std::vector<cfloat> buffers(3 * size);
    for (int unit = 0; unit < groups * p.heads; ++unit) {
      backward_unit(p, grads, unit, buffers.data(), buffers.data() + size, buffers.data() + 2 * size, SerialBlock{});
    }
    dk.copy_(partial.sum(0));
  });
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("fftconv_fwd", &fftconv_fwd);
  m.def("fftconv_bwd", &fftconv_bwd);
}
