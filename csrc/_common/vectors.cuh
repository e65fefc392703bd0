// 16-byte vector access to runs of consecutive scalars (fp32, fp16, bf16), converted to and from fp32:
// what lets one thread move a run of positions in one or two instructions.
#pragma once
#include <cstdint>

#include <cuda_runtime.h>

namespace ssm_kernels {

__device__ __forceinline__ bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// N consecutive scalars at a 16-byte aligned address, as whole 16-byte vectors.
template <int N, typename T> __device__ __forceinline__ void load_vectors(const T* p, float (&out)[N]) {
  constexpr int kPer = 16 / sizeof(T);
  static_assert(N % kPer == 0, "whole 16-byte vectors");
#pragma unroll
  for (int v = 0; v < N / kPer; ++v) {
    const uint4 raw = reinterpret_cast<const uint4*>(p)[v];
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int k = 0; k < kPer; ++k) out[v * kPer + k] = static_cast<float>(e[k]);
  }
}

template <int N, typename T> __device__ __forceinline__ void store_vectors(T* p, const float (&in)[N]) {
  constexpr int kPer = 16 / sizeof(T);
  static_assert(N % kPer == 0, "whole 16-byte vectors");
#pragma unroll
  for (int v = 0; v < N / kPer; ++v) {
    uint4 raw;
    T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
    for (int k = 0; k < kPer; ++k) e[k] = static_cast<T>(in[v * kPer + k]);
    reinterpret_cast<uint4*>(p)[v] = raw;
  }
}

}  // namespace ssm_kernels
