// CPU kernel of the linear scan x_t = a_t * x_{t-1} + b_t along the last axis (torch.ops.ssm_kernels_cpu).
// One row (b, d) is a sequential loop over t; rows run in parallel. A row's positions are contiguous in
// the output and read with any stride from the inputs (stride 0: broadcast gates), so the scan is one
// memory pass instead of the several passes of the chunked pure-PyTorch engine.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>
#include <torch/library.h>

namespace ssm_kernels_cpu {
namespace {

template <typename T>
T conjugate(T v) { return v; }
template <typename T>
c10::complex<T> conjugate(c10::complex<T> v) { return c10::complex<T>(v.real(), -v.imag()); }

// Rows scanned together by one thread: independent dependency chains hide the multiply-add latency.
constexpr int64_t kRowsInFlight = 2;

template <typename T, bool kConjGates>
void scan_rows(T* out, const T* gates, const T* tokens, const T* h0, int64_t row_begin, int64_t row_end,
               int64_t dim, int64_t length, const int64_t* xs, const int64_t* gs, const int64_t* ts,
               int64_t h0_sb, int64_t h0_sd, bool reverse) {
  const int64_t step = reverse ? -1 : 1;
  const int64_t first = reverse ? length - 1 : 0;
  for (int64_t r0 = row_begin; r0 < row_end; r0 += kRowsInFlight) {
    const int64_t n = std::min(kRowsInFlight, row_end - r0);
    T state[kRowsInFlight];
    const T* a[kRowsInFlight];
    const T* b[kRowsInFlight];
    T* x[kRowsInFlight];
    for (int64_t i = 0; i < n; ++i) {
      const int64_t bi = (r0 + i) / dim, di = (r0 + i) % dim;
      state[i] = h0 ? h0[bi * h0_sb + di * h0_sd] : T(0);
      a[i] = gates + bi * gs[0] + di * gs[1] + first * gs[2];
      b[i] = tokens + bi * ts[0] + di * ts[1] + first * ts[2];
      x[i] = out + bi * xs[0] + di * xs[1] + first * xs[2];
    }
    const int64_t ga = step * gs[2], tb = step * ts[2], xo = step * xs[2];
    for (int64_t t = 0; t < length; ++t) {
      for (int64_t i = 0; i < n; ++i) {
        const T gate = kConjGates ? conjugate(*a[i]) : *a[i];
        state[i] = gate * state[i] + *b[i];
        *x[i] = state[i];
        a[i] += ga;
        b[i] += tb;
        x[i] += xo;
      }
    }
  }
}

// out, gates, tokens: (B, D, L) of one dtype, any strides (out must not overlap itself); initial_state: (B, D).
// conj_gates scans under the conjugate gates (the backward of a complex scan) without materialising them.
void linear_scan_into(at::Tensor out, const at::Tensor& gates, const at::Tensor& tokens,
                      const c10::optional<at::Tensor>& initial_state, bool reverse, bool conj_gates) {
  TORCH_CHECK(out.dim() == 3, "linear_scan_into: out must be (B, D, L)");
  TORCH_CHECK(gates.sizes() == out.sizes() && tokens.sizes() == out.sizes(),
              "linear_scan_into: gates and tokens must have out's shape");
  TORCH_CHECK(gates.scalar_type() == out.scalar_type() && tokens.scalar_type() == out.scalar_type(),
              "linear_scan_into: gates and tokens must have out's dtype");
  TORCH_CHECK(!gates.is_conj() && !tokens.is_conj(), "linear_scan_into: resolve conjugate views first");
  const bool has_h0 = initial_state.has_value() && initial_state->defined();
  if (has_h0) {
    TORCH_CHECK(initial_state->dim() == 2 && initial_state->size(0) == out.size(0) &&
                    initial_state->size(1) == out.size(1) && initial_state->scalar_type() == out.scalar_type() &&
                    !initial_state->is_conj(),
                "linear_scan_into: initial_state must be a (B, D) tensor of out's dtype");
  }
  const int64_t dim = out.size(1), length = out.size(2), rows = out.size(0) * dim;
  if (rows == 0 || length == 0) return;
  const int64_t xs[3] = {out.stride(0), out.stride(1), out.stride(2)};
  const int64_t gs[3] = {gates.stride(0), gates.stride(1), gates.stride(2)};
  const int64_t ts[3] = {tokens.stride(0), tokens.stride(1), tokens.stride(2)};
  const int64_t h0_sb = has_h0 ? initial_state->stride(0) : 0, h0_sd = has_h0 ? initial_state->stride(1) : 0;
  const int64_t grain = std::max<int64_t>(kRowsInFlight, (1 << 16) / length);
  AT_DISPATCH_FLOATING_AND_COMPLEX_TYPES(out.scalar_type(), "linear_scan_into", [&] {
    scalar_t* x = out.data_ptr<scalar_t>();
    const scalar_t* a = gates.const_data_ptr<scalar_t>();
    const scalar_t* b = tokens.const_data_ptr<scalar_t>();
    const scalar_t* h0 = has_h0 ? initial_state->const_data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
      if (conj_gates) {
        scan_rows<scalar_t, true>(x, a, b, h0, begin, end, dim, length, xs, gs, ts, h0_sb, h0_sd, reverse);
      } else {
        scan_rows<scalar_t, false>(x, a, b, h0, begin, end, dim, length, xs, gs, ts, h0_sb, h0_sd, reverse);
      }
    });
  });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(ssm_kernels_cpu, m) {
  m.def("linear_scan_into(Tensor(a!) out, Tensor gates, Tensor tokens, Tensor? initial_state, bool reverse, "
        "bool conj_gates) -> ()");
}

TORCH_LIBRARY_IMPL(ssm_kernels_cpu, CPU, m) { m.impl("linear_scan_into", &linear_scan_into); }

}  // namespace ssm_kernels_cpu
