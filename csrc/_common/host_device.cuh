// Lets a header of kernel arithmetic compile twice: with nvcc for the device, and with a host C++ compiler as a
// CPU model of the same code (tests build such models to check a kernel's indexing and math without a GPU).
// Code written for both takes its thread block as an object (thread, threads, sync()), which the CPU model
// supplies as one thread that runs every work item in turn.
#pragma once

#ifdef __CUDACC__
#define SSM_HD __host__ __device__ __forceinline__
#else
#define SSM_HD inline
#endif
