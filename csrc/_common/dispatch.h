// Shared by every csrc op: dtype dispatch over the inputs the kernels take (fp32, fp16, bf16).
#pragma once
#include <ATen/Dispatch.h>

#define SSM_DISPATCH_FLOAT_HALF_BF16(TYPE, NAME, ...)                     \
  AT_DISPATCH_SWITCH(TYPE, NAME,                                          \
                     AT_DISPATCH_CASE(at::ScalarType::Float, __VA_ARGS__) \
                     AT_DISPATCH_CASE(at::ScalarType::Half, __VA_ARGS__)  \
                     AT_DISPATCH_CASE(at::ScalarType::BFloat16, __VA_ARGS__))
