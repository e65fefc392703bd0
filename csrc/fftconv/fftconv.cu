// FFT convolution, forward and backward, one thread block per (batch, head) row at a time: the row's N-point
// real transform as an M = N / 2 point complex one in shared memory (fft_block.cuh), gates and skip fused into
// its loads and stores (fftconv_rows.cuh). Grids are persistent (as many blocks as fit on the GPU at once, each
// walking rows or units), so the second of the backward's two buffers (the kernel gradient's spectrum, summed
// over a unit's rows) can live in a global scratch slot per block when the two outgrow shared memory.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "_common/dispatch.h"
#include "fftconv/fftconv_problem.h"
#include "fftconv.h"

namespace ssm_kernels {
namespace fftconv {

constexpr int kMaxThreads = 512;
// Registers bound the kernels' occupancy (about 90 a thread: 2 blocks of 256 threads per SM). The forward's blocks
// of up to 256 threads are compiled for 3 per SM (80 registers, 8 bytes spilled outside the transforms); the
// backward's for 2 (its epilogue's batched loads need more).
constexpr int kSmallBlock = 256;
template <int kMaxBlock, bool kBackward>
constexpr int min_blocks() { return kMaxBlock <= kSmallBlock ? (kBackward ? 2 : 3) : 1; }

// The thread block as the row code sees it (its methods are host-device only so that the row templates, which
// are, may call them; they run on the device alone).
struct CudaBlock {
  int thread, threads;
  float* scratch;  // 32 floats of shared memory for sum()
  SSM_HD void sync() const {
#ifdef __CUDA_ARCH__
    __syncthreads();
#endif
  }
  // The block-wide sum of x, the same on every thread and reproducible (fixed order).
  SSM_HD float sum(float x) const {
#ifdef __CUDA_ARCH__
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
    __syncthreads();
    if ((thread & 31) == 0) scratch[thread >> 5] = x;
    __syncthreads();
    float total = 0.0f;
    for (int w = 0; w < (threads >> 5); ++w) total += scratch[w];
    return total;
#else
    return x;
#endif
  }
};

__device__ inline CudaBlock this_block(float* scratch) { return {int(threadIdx.x), int(blockDim.x), scratch}; }

template <typename T, int kMaxBlock>
__global__ void __launch_bounds__(kMaxBlock, min_blocks<kMaxBlock, false>())
    fftconv_fwd_kernel(Problem<T> p, T* y, T* ungated, cfloat* v_spectrum) {
  extern __shared__ float4 shared[];
  cfloat* buf = reinterpret_cast<cfloat*>(shared);
  const CudaBlock block = this_block(nullptr);
  for (int row = blockIdx.x; row < p.batch * p.heads; row += gridDim.x) {
    forward_row(p, y, ungated, v_spectrum, row, buf, block);
  }
}

// The backward's buffers a, acc: both in shared memory (kAllShared), or a alone there and acc, in frequency order,
// in this block's slot of scratch (M values per block; backward_row's acc_in_scratch). a is taken from `shared`
// directly in both, so the compiler sees where every buffer lies (shared-memory loads and stores in the transforms,
// not generic ones).
template <typename T, bool kAllShared, int kMaxBlock>
__global__ void __launch_bounds__(kMaxBlock, min_blocks<kMaxBlock, true>())
    fftconv_bwd_kernel(Problem<T> p, Gradients<T> grads, int units, cfloat* scratch) {
  extern __shared__ float4 shared[];
  const int points = 1 << p.transform.log_points, size = padded_size(points);
  cfloat* a = reinterpret_cast<cfloat*>(shared);
  cfloat* acc = kAllShared ? a + size : scratch + int64_t(blockIdx.x) * points;
  const CudaBlock block = this_block(reinterpret_cast<float*>(a + (kAllShared ? 2 : 1) * size));
  for (int unit = blockIdx.x; unit < units; unit += gridDim.x) {
    backward_unit(p, grads, unit, a, acc, !kAllShared, block);
  }
}

void check_threads(int64_t threads) {
  TORCH_CHECK(threads >= 32 && threads <= kMaxThreads && (threads & (threads - 1)) == 0,
              "fftconv: threads must be a power of two from 32 to ", kMaxThreads, ", got ", threads);
}

int device_attribute(cudaDeviceAttr attribute) {
  int value = 0, device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&value, attribute, device));
  return value;
}

// A persistent grid: as many blocks as are resident at once, at most one per row (or unit).
template <typename Kernel>
int persistent_grid(Kernel kernel, int threads, size_t smem, int64_t rows) {
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  int per_sm = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem));
  TORCH_CHECK(per_sm > 0, "fftconv: a block of ", threads, " threads and ", smem, " bytes does not fit an SM");
  const int64_t resident = int64_t(per_sm) * device_attribute(cudaDevAttrMultiProcessorCount);
  return int(rows < resident ? rows : resident);
}


}  // namespace fftconv

using namespace fftconv;

void fftconv_fwd_cuda(const at::Tensor& u, const c10::optional<at::Tensor>& pregate,
                      const c10::optional<at::Tensor>& postgate, const c10::optional<at::Tensor>& skip,
                      const at::Tensor& spectrum, const at::Tensor& twiddles, int64_t log_points, int64_t threads,
                      at::Tensor& y, const c10::optional<at::Tensor>& ungated,
                      const c10::optional<at::Tensor>& v_spectrum) {
  const c10::cuda::CUDAGuard guard(u.device());
  const int64_t rows = u.size(0) * u.size(1);
  if (rows == 0 || u.size(2) == 0) return;
  TORCH_CHECK(y.is_contiguous() && (!ungated.has_value() || ungated->is_contiguous()),
              "fftconv: y and ungated must be contiguous");
  check_threads(threads);
  const size_t smem = padded_size(1 << log_points) * sizeof(cfloat);
  SSM_DISPATCH_FLOAT_HALF_BF16(u.scalar_type(), "fftconv_fwd", [&] {
    const Problem<scalar_t> p = make_problem<scalar_t>(u, pregate, postgate, skip, spectrum, twiddles, log_points);
    cfloat* saved = v_spectrum.has_value() ? v_spectrum_data(*v_spectrum, p.batch, p.heads, log_points) : nullptr;
    const auto kernel = threads <= kSmallBlock ? fftconv_fwd_kernel<scalar_t, kSmallBlock>
                                               : fftconv_fwd_kernel<scalar_t, kMaxThreads>;
    const int grid = persistent_grid(kernel, int(threads), smem, rows);
    kernel<<<grid, int(threads), smem, c10::cuda::getCurrentCUDAStream()>>>(p, y.data_ptr<scalar_t>(),
                                                                           optional_ptr<scalar_t>(ungated), saved);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void fftconv_bwd_cuda(const at::Tensor& dy, const c10::optional<at::Tensor>& ungated, const at::Tensor& v_spectrum,
                      const at::Tensor& u,
                      const c10::optional<at::Tensor>& pregate, const c10::optional<at::Tensor>& postgate,
                      const c10::optional<at::Tensor>& skip,
                      const at::Tensor& spectrum, const at::Tensor& twiddles, int64_t log_points, int64_t threads,
                      bool bidirectional, at::Tensor& du, const c10::optional<at::Tensor>& dpregate,
                      const c10::optional<at::Tensor>& dpostgate, const c10::optional<at::Tensor>& dskip,
                      at::Tensor& dk) {
  const c10::cuda::CUDAGuard guard(u.device());
  const int64_t batch = u.size(0), heads = u.size(1);
  if (batch * heads == 0 || u.size(2) == 0) {
    dk.zero_();
    return;
  }
  check_threads(threads);
  const size_t buffer = padded_size(1 << log_points) * sizeof(cfloat), sum_scratch = 32 * sizeof(float);
  const size_t limit = size_t(device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin));
  const bool all_shared = 2 * buffer + sum_scratch <= limit;
  const size_t smem = (all_shared ? 2 : 1) * buffer + sum_scratch;
  SSM_DISPATCH_FLOAT_HALF_BF16(u.scalar_type(), "fftconv_bwd", [&] {
    const auto kernel = !all_shared              ? fftconv_bwd_kernel<scalar_t, false, kMaxThreads>
                        : threads <= kSmallBlock ? fftconv_bwd_kernel<scalar_t, true, kSmallBlock>
                                                 : fftconv_bwd_kernel<scalar_t, true, kMaxThreads>;
    const int resident = persistent_grid(kernel, int(threads), smem, int64_t(1) << 30);
    const int per_group = rows_per_group(batch, heads, resident);
    const int64_t groups = batch_groups(int(batch), per_group), units = heads * groups;
    // one group (the heads alone fill the GPU): the kernel writes dk itself, no partials to sum and copy
    at::Tensor partial =
        groups == 1 ? dk.unsqueeze(0) : at::empty({groups, dk.size(0), heads, dk.size(-1)}, dk.options());
    const Problem<scalar_t> p = make_problem<scalar_t>(u, pregate, postgate, skip, spectrum, twiddles, log_points);
    const Gradients<scalar_t> grads =
        make_gradients<scalar_t>(p, dy, ungated, v_spectrum, bidirectional, per_group, du, dpregate, dpostgate, dskip,
                                 partial);
    const int grid = int(std::min<int64_t>(units, resident));
    at::Tensor scratch;
    if (!all_shared) {
      scratch = at::empty({int64_t(grid) << (log_points + 1)}, u.options().dtype(at::kFloat));
    }
    kernel<<<grid, int(threads), smem, c10::cuda::getCurrentCUDAStream()>>>(
        p, grads, int(units), all_shared ? nullptr : reinterpret_cast<cfloat*>(scratch.data_ptr<float>()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (groups > 1) dk.copy_(partial.sum(0));
  });
}

}  // namespace ssm_kernels
