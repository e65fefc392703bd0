// The kernels' argument structs from the launchers' tensors: shared by the CUDA launchers (fftconv.cu) and the
// CPU model of the same row code that the tests build (tests/fftconv/cuda_model.cpp).
#pragma once
#include <ATen/ATen.h>

#include <algorithm>

#include "fftconv/fftconv_rows.cuh"

namespace ssm_kernels {
namespace fftconv {

template <typename T>
Strided<T> strided(const c10::optional<at::Tensor>& t) {
  if (!t.has_value()) return {nullptr, 0, 0, 0};
  return {t->data_ptr<T>(), t->stride(0), t->stride(1), t->stride(2)};
}

template <typename T>
T* optional_ptr(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr<T>() : nullptr;
}

template <typename T>
Problem<T> make_problem(const at::Tensor& u, const c10::optional<at::Tensor>& pregate,
                        const c10::optional<at::Tensor>& postgate, const c10::optional<at::Tensor>& skip,
                        const at::Tensor& spectrum, const at::Tensor& twiddles, int64_t log_points) {
  TORCH_CHECK(log_points >= kMinLogPoints && log_points <= kMaxLogPoints, "fftconv: log_points out of range");
  const int64_t points = int64_t(1) << log_points;
  const Transform transform = make_transform(int(log_points));
  TORCH_CHECK(u.dim() == 3 && spectrum.size(-2) == points + 1 && twiddles.size(0) == twiddle_table_size(transform),
              "fftconv: tables of the wrong size");
  TORCH_CHECK(spectrum.is_contiguous() && twiddles.is_contiguous() && spectrum.scalar_type() == at::kFloat &&
              twiddles.scalar_type() == at::kFloat, "fftconv: tables must be contiguous fp32");
  TORCH_CHECK(u.size(2) <= points, "fftconv: the transform is shorter than 2L");
  return {strided<T>(u), strided<T>(pregate), strided<T>(postgate), optional_ptr<float>(skip),
          reinterpret_cast<const cfloat*>(spectrum.data_ptr<float>()),
          reinterpret_cast<const cfloat*>(twiddles.data_ptr<float>()),
          int(u.size(0)), int(u.size(1)), int(u.size(2)), transform};
}

// v_spectrum, the forward's transforms of v, as the row code reads and writes them: contiguous (B, H, M, 2) fp32.
inline cfloat* v_spectrum_data(const at::Tensor& v_spectrum, int64_t batch, int64_t heads, int64_t log_points) {
  TORCH_CHECK(v_spectrum.is_contiguous() && v_spectrum.scalar_type() == at::kFloat &&
                  v_spectrum.sizes() == at::IntArrayRef({batch, heads, int64_t(1) << log_points, int64_t(2)}),
              "fftconv: v_spectrum must be a contiguous (B, H, M, 2) fp32 tensor");
  return reinterpret_cast<cfloat*>(v_spectrum.data_ptr<float>());
}

// dk: the (G, 1 or 2, H, Lk) per-unit partials for G = batch_groups(B, rows_per_group). ungated: the forward's
// output before its postgate (B, H, L), or absent. v_spectrum: the forward's.
template <typename T>
Gradients<T> make_gradients(const Problem<T>& p, const at::Tensor& dy, const c10::optional<at::Tensor>& ungated,
                            const at::Tensor& v_spectrum, bool bidirectional, int rows_per_group, at::Tensor& du,
                            const c10::optional<at::Tensor>& dpregate, const c10::optional<at::Tensor>& dpostgate,
                            const c10::optional<at::Tensor>& dskip, at::Tensor& dk) {
  TORCH_CHECK(du.is_contiguous() && dk.is_contiguous(), "fftconv: outputs must be contiguous");
  return {strided<T>(dy), strided<T>(ungated), v_spectrum_data(v_spectrum, p.batch, p.heads, p.transform.log_points),
          du.data_ptr<T>(), optional_ptr<T>(dpregate), optional_ptr<T>(dpostgate), optional_ptr<float>(dskip),
          dk.data_ptr<float>(), int(dk.size(-1)), rows_per_group, bidirectional};
}

// Batch rows per unit of the backward for `units_wanted` units at least (the resident blocks), as few groups
// as that allows (every group adds one inverse transform and one partial dk): B rows when the heads suffice.
inline int rows_per_group(int64_t batch, int64_t heads, int64_t units_wanted) {
  const int64_t groups = std::min<int64_t>(batch, std::max<int64_t>(1, (units_wanted + heads - 1) / heads));
  return int((batch + groups - 1) / groups);
}

}  // namespace fftconv
}  // namespace ssm_kernels
