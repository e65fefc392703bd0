// Vector access to runs of consecutive scalars (fp32, fp16, bf16), converted to and from fp32: what lets one
// thread move a run of positions in one or two instructions (16 bytes at most, narrower for a short run).
#pragma once
#include <cstdint>

#include <cuda_runtime.h>

namespace ssm_kernels {

template <int Bytes> struct VecOf;
template <> struct VecOf<2> { using type = uint16_t; };
template <> struct VecOf<4> { using type = uint32_t; };
template <> struct VecOf<8> { using type = uint2; };
template <> struct VecOf<16> { using type = uint4; };

// The vector width (bytes) that moves N scalars of type T.
template <typename T, int N> __host__ __device__ constexpr int vector_bytes() {
  return N * sizeof(T) < 16 ? N * sizeof(T) : 16;
}

template <typename T, int N> __device__ __forceinline__ bool vector_aligned(const T* p) {
  return (reinterpret_cast<uintptr_t>(p) % vector_bytes<T, N>()) == 0;
}

// N consecutive scalars at an address aligned to vector_bytes<T, N>().
template <int N, typename T> __device__ __forceinline__ void load_vectors(const T* p, float (&out)[N]) {
  constexpr int kPer = vector_bytes<T, N>() / sizeof(T);
  static_assert(N % kPer == 0, "whole vectors");
  using Vec = typename VecOf<vector_bytes<T, N>()>::type;
#pragma unroll
  for (int v = 0; v < N / kPer; ++v) {
    Vec raw = reinterpret_cast<const Vec*>(p)[v];
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int k = 0; k < kPer; ++k) out[v * kPer + k] = static_cast<float>(e[k]);
  }
}

template <int N, typename T> __device__ __forceinline__ void store_vectors(T* p, const float (&in)[N]) {
  constexpr int kPer = vector_bytes<T, N>() / sizeof(T);
  static_assert(N % kPer == 0, "whole vectors");
  using Vec = typename VecOf<vector_bytes<T, N>()>::type;
#pragma unroll
  for (int v = 0; v < N / kPer; ++v) {
    Vec raw;
    T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
    for (int k = 0; k < kPer; ++k) e[k] = static_cast<T>(in[v * kPer + k]);
    reinterpret_cast<Vec*>(p)[v] = raw;
  }
}

}  // namespace ssm_kernels
