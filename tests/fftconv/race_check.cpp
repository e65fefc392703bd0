// ThreadSanitizer check of csrc/fftconv's row code, without torch: a block of T std::threads meeting at a barrier
// wherever the CUDA block calls __syncthreads, running forward rows and backward units on random data. Any two
// threads touching the same buffer slot between barriers, one of them writing, is reported as a data race.
// Built and run by test_cuda_model.py (g++ -fsanitize=thread); prints one line per configuration.
#include <cstdio>
#include <random>
#include <vector>

#include "fftconv/fftconv_rows.cuh"
#include "threaded_block.h"

using namespace ssm_kernels::fftconv;

int main() {
  std::mt19937 rng(0);
  std::normal_distribution<float> normal;
  for (int log_points : {5, 7, 9}) {
    for (bool bidirectional : {false, true}) {
      for (bool gated : {false, true}) {
        const int batch = 3, heads = 2, points = 1 << log_points, length = points - 3, taps = length / 2;
        const Transform t = make_transform(log_points);
        std::vector<float> u(batch * heads * length), pre(u.size()), post(u.size()), dy(u.size()), skip(heads);
        for (auto* values : {&u, &pre, &post, &dy, &skip}) {
          for (auto& x : *values) x = normal(rng);
        }
        std::vector<cfloat> spectrum(heads * (points + 1)), twiddles(twiddle_table_size(t));
        for (auto* values : {&spectrum, &twiddles}) {
          for (auto& c : *values) c = {normal(rng), normal(rng)};
        }
        const Strided<float> no_gate{nullptr, 0, 0, 0};
        const Problem<float> p{{u.data(), heads * length, length, 1},
                               gated ? Strided<float>{pre.data(), heads * length, length, 1} : no_gate,
                               gated ? Strided<float>{post.data(), heads * length, length, 1} : no_gate,
                               skip.data(), spectrum.data(), twiddles.data(), batch, heads, length, t};
        std::vector<float> y(u.size()), ungated(u.size()), du(u.size()), dpre(u.size()), dpost(u.size());
        std::vector<float> dskip(batch * heads);
        const int rows_per_group = 2, groups = batch_groups(batch, rows_per_group);
        std::vector<float> dk(groups * (bidirectional ? 2 : 1) * heads * taps);
        std::vector<cfloat> a(padded_size(points)), acc(a.size()), v_spectrum(batch * heads * points);
        for (int threads : {4, 8}) {
          for (bool acc_in_scratch : {false, true}) {
            // gated: the backward with the forward's ungated output (4 threads) and recomputing it (8)
            const bool saved = gated && threads == 4;
            const Gradients<float> grads{{dy.data(), heads * length, length, 1},
                                         saved ? Strided<float>{ungated.data(), heads * length, length, 1} : no_gate,
                                         v_spectrum.data(), du.data(), gated ? dpre.data() : nullptr,
                                         gated ? dpost.data() : nullptr, dskip.data(), dk.data(), taps,
                                         rows_per_group, bidirectional};
            run_block(threads, [&](const ThreadOfBlock& block) {
              for (int row = 0; row < batch * heads; ++row) {
                forward_row(p, y.data(), saved ? ungated.data() : nullptr, v_spectrum.data(), row, a.data(), block);
              }
              for (int unit = 0; unit < groups * heads; ++unit) {
                backward_unit(p, grads, unit, a.data(), acc.data(), acc_in_scratch, block);
              }
            });
          }
        }
        std::printf("log_points %d bidirectional %d gated %d: done\n", log_points, int(bidirectional), int(gated));
      }
    }
  }
  return 0;
}
