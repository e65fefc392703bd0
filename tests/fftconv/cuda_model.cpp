// A CPU model of csrc/fftconv: the kernels' row code (fftconv_rows.cuh, fft_block.cuh) compiled for the host and
// run by one block, row after row (unit after unit), with the launchers' signatures. The block is one thread, or
// `threads` OS threads meeting at a barrier wherever the CUDA block does (__syncthreads), each taking its share
// of every loop as a CUDA thread does. test_cuda_model.py runs ssm_kernels/fftconv/cuda.py on it against the
// reference, so a machine without a GPU checks the kernels' FFT passes, real-FFT identities, tables, gates,
// gradients and the division of work between a block's threads (a barrier missing there shows as results that
// depend on the thread count, or under ThreadSanitizer). It does not see the launch (grid, shared memory
// sizes, warp shuffles): the native tests do.
#include <torch/extension.h>

#include <vector>

#include "_common/dispatch.h"
#include "fftconv/fftconv_problem.h"
#include "threaded_block.h"

namespace {

using namespace ssm_kernels::fftconv;

bool acc_in_scratch = false;  // the backward as the kernel runs it when its buffers outgrow shared memory

void set_acc_in_scratch(bool value) { acc_in_scratch = value; }

void check_threads(int64_t threads) {
  TORCH_CHECK(threads >= 1 && threads <= 1024, "fftconv model: threads must be in [1, 1024]");
}

void fftconv_fwd(const at::Tensor& u, const c10::optional<at::Tensor>& pregate,
                 const c10::optional<at::Tensor>& postgate, const c10::optional<at::Tensor>& skip,
                 const at::Tensor& spectrum, const at::Tensor& twiddles, int64_t log_points, int64_t threads,
                 at::Tensor& y, const c10::optional<at::Tensor>& ungated,
                 const c10::optional<at::Tensor>& v_spectrum) {
  SSM_DISPATCH_FLOAT_HALF_BF16(u.scalar_type(), "fftconv_fwd_model", [&] {
    const Problem<scalar_t> p = make_problem<scalar_t>(u, pregate, postgate, skip, spectrum, twiddles, log_points);
    std::vector<cfloat> buf(padded_size(1 << log_points));
    scalar_t* out = y.data_ptr<scalar_t>();
    scalar_t* saved = optional_ptr<scalar_t>(ungated);
    cfloat* v = v_spectrum.has_value() ? v_spectrum_data(*v_spectrum, p.batch, p.heads, log_points) : nullptr;
    check_threads(threads);
    run_block(int(threads), [&](const ThreadOfBlock& block) {
      for (int row = 0; row < p.batch * p.heads; ++row) forward_row(p, out, saved, v, row, buf.data(), block);
    });
  });
}

void fftconv_bwd(const at::Tensor& dy, const c10::optional<at::Tensor>& ungated, const at::Tensor& v_spectrum,
                 const at::Tensor& u,
                 const c10::optional<at::Tensor>& pregate, const c10::optional<at::Tensor>& postgate,
                 const c10::optional<at::Tensor>& skip,
                 const at::Tensor& spectrum, const at::Tensor& twiddles, int64_t log_points, int64_t threads,
                 bool bidirectional, at::Tensor& du, const c10::optional<at::Tensor>& dpregate,
                 const c10::optional<at::Tensor>& dpostgate, const c10::optional<at::Tensor>& dskip,
                 at::Tensor& dk) {
  SSM_DISPATCH_FLOAT_HALF_BF16(u.scalar_type(), "fftconv_bwd_model", [&] {
    // two units per head where the batch allows: the partial dk sums and a unit of several rows both run
    const int per_group = rows_per_group(u.size(0), u.size(1), 2 * u.size(1));
    const int groups = batch_groups(int(u.size(0)), per_group);
    at::Tensor partial = at::empty({groups, dk.size(0), dk.size(1), dk.size(2)}, dk.options());
    const Problem<scalar_t> p = make_problem<scalar_t>(u, pregate, postgate, skip, spectrum, twiddles, log_points);
    const Gradients<scalar_t> grads =
        make_gradients<scalar_t>(p, dy, ungated, v_spectrum, bidirectional, per_group, du, dpregate, dpostgate, dskip,
                                 partial);
    std::vector<cfloat> a(padded_size(1 << log_points)), acc(a.size());
    check_threads(threads);
    run_block(int(threads), [&](const ThreadOfBlock& block) {
      for (int unit = 0; unit < groups * p.heads; ++unit) {
        backward_unit(p, grads, unit, a.data(), acc.data(), acc_in_scratch, block);
      }
    });
    dk.copy_(partial.sum(0));
  });
}

// slot_of(k) for every frequency k of an M-point transform: (M,) int32.
at::Tensor slots(int64_t log_points) {
  const Transform t = make_transform(int(log_points));
  at::Tensor out = at::empty({int64_t(1) << log_points}, at::kInt);
  for (int k = 0; k < out.size(0); ++k) out[k] = slot_of(k, t);
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("fftconv_fwd", &fftconv_fwd);
  m.def("fftconv_bwd", &fftconv_bwd);
  m.def("slots", &slots);
  m.def("set_acc_in_scratch", &set_acc_in_scratch);
}
