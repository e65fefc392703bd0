// Value arithmetic shared by the scan kernels: "V" is float (a real recurrence) or float2 (re, im: a complex
// one), and the first-order recurrence h_t = a_t h_{t-1} + b_t as a scan over (a, b) pairs.
#pragma once
#include <cuda_runtime.h>

namespace ssm_kernels {

__device__ __forceinline__ float vmul(float a, float b) { return a * b; }
__device__ __forceinline__ float2 vmul(float2 a, float2 b) {
  return make_float2(a.x * b.x - a.y * b.y, a.x * b.y + a.y * b.x);
}
__device__ __forceinline__ float vadd(float a, float b) { return a + b; }
__device__ __forceinline__ float2 vadd(float2 a, float2 b) { return make_float2(a.x + b.x, a.y + b.y); }
__device__ __forceinline__ float vconj(float a) { return a; }
__device__ __forceinline__ float2 vconj(float2 a) { return make_float2(a.x, -a.y); }
__device__ __forceinline__ float vscale(float a, float s) { return a * s; }
__device__ __forceinline__ float2 vscale(float2 a, float s) { return make_float2(a.x * s, a.y * s); }
template <typename V> __device__ __forceinline__ V vone();
template <> __device__ __forceinline__ float vone<float>() { return 1.f; }
template <> __device__ __forceinline__ float2 vone<float2>() { return make_float2(1.f, 0.f); }
template <typename V> __device__ __forceinline__ V vzero();
template <> __device__ __forceinline__ float vzero<float>() { return 0.f; }
template <> __device__ __forceinline__ float2 vzero<float2>() { return make_float2(0.f, 0.f); }

// The linear recurrence h_t = a_t h_{t-1} + b_t as a scan over pairs: (a1, b1) then (a2, b2) gives
// (a1 a2, a2 b1 + b2).
template <typename V>
struct Pair {
  V a, b;
};
struct ScanOp {
  template <typename V>
  __device__ __forceinline__ Pair<V> operator()(const Pair<V>& first, const Pair<V>& second) const {
    return Pair<V>{vmul(first.a, second.a), vadd(vmul(second.a, first.b), second.b)};
  }
};

}  // namespace ssm_kernels
