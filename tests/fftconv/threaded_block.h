// A CUDA thread block modelled by OS threads, for CPU models of row code written for both (csrc/_common/
// host_device.cuh): the threads meet at a barrier wherever the block calls __syncthreads, and each takes its
// share of every loop. Used by cuda_model.cpp (through torch) and race_check.cpp (under ThreadSanitizer).
#pragma once
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

class Barrier {
 public:
  explicit Barrier(int count) : count_(count) {}
  void wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    const int generation = generation_;
    if (++waiting_ == count_) {
      waiting_ = 0;
      ++generation_;
      changed_.notify_all();
    } else {
      changed_.wait(lock, [&] { return generation != generation_; });
    }
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  int count_, waiting_ = 0, generation_ = 0;
};

// One thread of the modelled block: what the row code needs of a CUDA block (fftconv.cu's CudaBlock).
struct ThreadOfBlock {
  int thread, threads;
  Barrier* barrier;
  float* scratch;  // one float per thread, shared
  void sync() const {
    if (threads > 1) barrier->wait();
  }
  float sum(float x) const {
    sync();
    scratch[thread] = x;
    sync();
    float total = 0.0f;
    for (int i = 0; i < threads; ++i) total += scratch[i];
    return total;
  }
};

// body(block) on every thread of a block of `threads` (>= 1), the calling thread being thread 0.
template <typename Body>
void run_block(int threads, const Body& body) {
  Barrier barrier{threads};
  std::vector<float> scratch(threads);
  std::vector<std::thread> others;
  for (int i = 1; i < threads; ++i) {
    others.emplace_back([&, i] { body(ThreadOfBlock{i, threads, &barrier, scratch.data()}); });
  }
  body(ThreadOfBlock{0, threads, &barrier, scratch.data()});
  for (auto& other : others) other.join();
}
