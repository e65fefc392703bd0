// FFT convolution, forward and backward, one thread block per (batch, head) row at a time: the row's N-point
// real transform as an M = N / 2 point complex one in shared memory (fft_block.cuh), gates and skip fused into
// its loads and stores (fftconv_rows.cuh). Grids are persistent (as many blocks as fit on the GPU at once, each
// walking rows), so the backward's second buffer can live in a global scratch slot per block when two buffers
// outgrow shared memory (M = 16384, L > 8192).
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

template <typename T>
__global__ void __launch_bounds__(kMaxThreads) fftconv_fwd_kernel(Problem<T> p, T* y) {
  extern __shared__ float4 shared[];
  cfloat* buf = reinterpret_cast<cfloat*>(shared);
  const CudaBlock block = this_block(nullptr);
  for (int row = blockIdx.x; row < p.batch * p.heads; row += gridDim.x) forward_row(p, y, row, buf, block);
}

// scratch: nullptr when both buffers fit in shared memory, else gridDim.x slots of padded_size(M) values.
template <typename T>
__global__ void __launch_bounds__(kMaxThreads) fftconv_bwd_kernel(Problem<T> p, Gradients<T> grads, cfloat* scratch) {
  extern __shared__ float4 shared[];
  const int size = padded_size(1 << p.transform.log_points);
  cfloat* a = reinterpret_cast<cfloat*>(shared);
  cfloat* b = scratch != nullptr ? scratch + int64_t(blockIdx.x) * size : a + size;
  const CudaBlock block = this_block(reinterpret_cast<float*>(scratch != nullptr ? a + size : b + size));
  for (int row = blockIdx.x; row < p.batch * p.heads; row += gridDim.x) backward_row(p, grads, row, a, b, block);
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

// A persistent grid: as many blocks as are resident at once, at most one per row.
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
                      at::Tensor& y) {
  const c10::cuda::CUDAGuard guard(u.device());
  const int64_t rows = u.size(0) * u.size(1);
  if (rows == 0 || u.size(2) == 0) return;
  TORCH_CHECK(y.is_contiguous(), "fftconv: y must be contiguous");
  check_threads(threads);
  const size_t smem = padded_size(1 << log_points) * sizeof(cfloat);
  SSM_DISPATCH_FLOAT_HALF_BF16(u.scalar_type(), "fftconv_fwd", [&] {
    const Problem<scalar_t> p = make_problem<scalar_t>(u, pregate, postgate, skip, spectrum, twiddles, log_points);
    const auto kernel = fftconv_fwd_kernel<scalar_t>;
    const int grid = persistent_grid(kernel, int(threads), smem, rows);
    kernel<<<grid, int(threads), smem, c10::cuda::getCurrentCUDAStream()>>>(p, y.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void fftconv_bwd_cuda(const at::Tensor& dy, const at::Tensor& u, const c10::optional<at::Tensor>& pregate,
                      const c10::optional<at::Tensor>& postgate, const c10::optional<at::Tensor>& skip,
                      const at::Tensor& spectrum, const at::Tensor& twiddles, int64_t log_points, int64_t threads,
                      bool bidirectional, at::Tensor& du, const c10::optional<at::Tensor>& dpregate,
                      const c10::optional<at::Tensor>& dpostgate, const c10::optional<at::Tensor>& dskip,
                      at::Tensor& dk) {
  const c10::cuda::CUDAGuard guard(u.device());
  const int64_t rows = u.size(0) * u.size(1);
  if (rows == 0 || u.size(2) == 0) return;
  check_threads(threads);
  const size_t buffer = padded_size(1 << log_points) * sizeof(cfloat), sum_scratch = 32 * sizeof(float);
  const bool both_shared = 2 * buffer + sum_scratch <= size_t(device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin));
  const size_t smem = (both_shared ? 2 : 1) * buffer + sum_scratch;
  SSM_DISPATCH_FLOAT_HALF_BF16(u.scalar_type(), "fftconv_bwd", [&] {
    const Problem<scalar_t> p = make_problem<scalar_t>(u, pregate, postgate, skip, spectrum, twiddles, log_points);
    const Gradients<scalar_t> grads = make_gradients<scalar_t>(dy, bidirectional, du, dpregate, dpostgate, dskip, dk);
    const auto kernel = fftconv_bwd_kernel<scalar_t>;
    const int grid = persistent_grid(kernel, int(threads), smem, rows);
    at::Tensor scratch;
    if (!both_shared) scratch = at::empty({int64_t(grid) * int64_t(buffer / sizeof(float))}, u.options().dtype(at::kFloat));
    kernel<<<grid, int(threads), smem, c10::cuda::getCurrentCUDAStream()>>>(
        p, grads, both_shared ? nullptr : reinterpret_cast<cfloat*>(scratch.data_ptr<float>()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace ssm_kernels
