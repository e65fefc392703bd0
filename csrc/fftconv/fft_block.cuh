// A thread block's FFT of M = 2^m complex points held in shared memory (or any memory the block alone uses),
// and the real-FFT identities that make one M-point complex transform serve a real sequence of N = 2M points.
//
// Forward transforms run decimation in frequency (Gentleman-Sande) in place: pass j splits blocks of S points
// into R_j interleaved sub-blocks (stride T = S / R_j), one R_j-point DFT per (block, offset) in registers,
// then the twiddles w_S^(q o). Nothing is reordered: the spectrum ends in digit-reversed order (slot_of says
// where frequency k lies), pointwise products do not care, and inverse transforms run the passes backwards
// (decimation in time), which consumes that order and returns to natural order: inverse(forward(x)) = M x.
// Radix 16 passes first, one pass of radix 2, 4 or 8 last for the remaining bits.
//
// Shared-memory slot p lives at padded(p) = p + p/16 + p/256 + p/4096: with it every pass's accesses and the
// real-FFT pairing (k with M - k) hit distinct banks per half warp (a bank model of the plans for M = 32 ..
// 16384 gives 1.0 wavefronts per 16 threads in every pass and 1.5 in the pairing).
//
// Code here runs on a CUDA thread block or, compiled for the host, as a CPU model of it (host_device.cuh).
#pragma once
#include <type_traits>

#include "_common/host_device.cuh"

namespace ssm_kernels {
namespace fftconv {

struct alignas(8) cfloat {
  float re, im;
};

SSM_HD cfloat operator+(cfloat a, cfloat b) { return {a.re + b.re, a.im + b.im}; }
SSM_HD cfloat operator-(cfloat a, cfloat b) { return {a.re - b.re, a.im - b.im}; }
SSM_HD cfloat operator*(cfloat a, cfloat b) { return {a.re * b.re - a.im * b.im, a.re * b.im + a.im * b.re}; }
SSM_HD cfloat operator*(float s, cfloat a) { return {s * a.re, s * a.im}; }
SSM_HD cfloat conj(cfloat a) { return {a.re, -a.im}; }
SSM_HD cfloat times_i(cfloat a) { return {-a.im, a.re}; }
// a * conj(b)
SSM_HD cfloat mul_conj(cfloat a, cfloat b) { return {a.re * b.re + a.im * b.im, a.im * b.re - a.re * b.im}; }

// table[i] of a table the kernel only reads (twiddles, spectra): through the read-only cache on the device
SSM_HD cfloat table_entry(const cfloat* table, int i) {
#ifdef __CUDA_ARCH__
  const float2 v = __ldg(reinterpret_cast<const float2*>(table) + i);
  return {v.x, v.y};
#else
  return table[i];
#endif
}

constexpr int kMaxLogPoints = 14;  // M <= 16384: 128 KB of fp32 complex values, one buffer per block
constexpr int kMaxLogRadix = 4;
constexpr int kMinLogPoints = kMaxLogRadix;  // the first pass (the last of an inverse) is of radix 16

SSM_HD int padded(int slot) { return slot + (slot >> 4) + (slot >> 8) + (slot >> 12); }
SSM_HD int padded_size(int points) { return padded(points - 1) + 1; }

// The passes of an M-point transform (M = 2^log_points): pass j has radix 2^radix_log(j). The radices are
// packed 4 bits each in one int (a per-pass array indexed at run time would live in local memory).
struct Transform {
  int log_points, passes, packed_radix_logs;
  SSM_HD int radix_log(int j) const { return (packed_radix_logs >> (4 * j)) & 15; }
};

SSM_HD Transform make_transform(int log_points) {
  Transform t{log_points, 0, 0};
  for (int left = log_points; left > 0; ++t.passes) {
    const int bits = left < kMaxLogRadix ? left : kMaxLogRadix;
    t.packed_radix_logs |= bits << (4 * t.passes);
    left -= bits;
  }
  return t;
}

// The slot of frequency k after a forward transform: pass j's output digit q_j (frequency bits starting at the
// radices before it) lands at stride T_j = M / (R_0 ... R_j). With radix-16 passes first (make_transform), that is
// the low 4a bits of k with their hex digits in reverse order, above the last digit k >> 4a (r bits):
// a byte swap and a nibble swap instead of a loop over the passes.
SSM_HD unsigned byte_swap(unsigned x) {
#ifdef __CUDA_ARCH__
  return __byte_perm(x, 0, 0x0123);
#else
  return __builtin_bswap32(x);
#endif
}

SSM_HD int slot_of(int k, const Transform& t) {
  const int digit_bits = t.log_points & ~3, last_bits = t.log_points & 3;
  if (digit_bits == 0) return k;  // one pass
  unsigned reversed = byte_swap(unsigned(k) & ((1u << digit_bits) - 1u));
  reversed = ((reversed >> 4) & 0x0F0F0F0Fu) | ((reversed & 0x0F0F0F0Fu) << 4);
  return int(((reversed >> (32 - digit_bits)) << last_bits) | (unsigned(k) >> digit_bits));
}

// cos(2 pi e / 16) for a compile-time e (folds to a constant once loops are unrolled)
SSM_HD float cos16(int e) {
  switch (e & 15) {
    case 0: return 1.0f;
    case 1: case 15: return 0.92387953251128674f;
    case 2: case 14: return 0.70710678118654752f;
    case 3: case 13: return 0.38268343236508977f;
    case 4: case 12: return 0.0f;
    case 5: case 11: return -0.38268343236508977f;
    case 6: case 10: return -0.70710678118654752f;
    case 7: case 9: return -0.92387953251128674f;
    default: return -1.0f;  // 8
  }
}

// v * exp(-+2 pi i e / 16) (- forward, + inverse), e known at compile time: the quarter turns cost no multiply.
template <bool INVERSE>
SSM_HD cfloat rotate16(cfloat v, int e) {
  e &= 15;
  if (e == 0) return v;
  if (e == 8) return {-v.re, -v.im};
  if (e == 4 || e == 12) return (e == 4) != INVERSE ? cfloat{v.im, -v.re} : times_i(v);
  const float c = cos16(e), s = cos16(e - 4);  // exp(-+i theta) = c -+ i s
  return INVERSE ? v * cfloat{c, s} : v * cfloat{c, -s};
}

template <int LOG_R>
SSM_HD constexpr int bit_reverse(int q) {
  int r = 0;
  for (int b = 0; b < LOG_R; ++b) r |= ((q >> b) & 1) << (LOG_R - 1 - b);
  return r;
}

// One radix-2 decimation-in-frequency stage over blocks of 2 HALF registers, then the next (template recursion
// rather than loops with computed bounds: every index is a constant, so the arrays stay in registers).
template <int HALF, bool INVERSE, int R>
SSM_HD void dif_stages(cfloat (&x)[R]) {
#pragma unroll
  for (int start = 0; start < R; start += 2 * HALF) {
#pragma unroll
    for (int j = 0; j < HALF; ++j) {
      const cfloat a = x[start + j], b = x[start + j + HALF];
      x[start + j] = a + b;
      x[start + j + HALF] = rotate16<INVERSE>(a - b, j * (8 / HALF));  // w_(2 HALF)^j
    }
  }
  if constexpr (HALF > 1) dif_stages<HALF / 2, INVERSE, R>(x);
}

// x[q] <- sum_r x[r] exp(-+2 pi i r q / R) in registers, R = 2^LOG_R <= 16, natural order in and out
// (radix-2 decimation in frequency, then the bit-reversal as a renaming of registers).
template <int LOG_R, bool INVERSE>
SSM_HD void small_dft(cfloat (&x)[1 << LOG_R]) {
  constexpr int R = 1 << LOG_R;
  dif_stages<R / 2, INVERSE, R>(x);
  cfloat natural[R];
#pragma unroll
  for (int q = 0; q < R; ++q) natural[q] = x[bit_reverse<LOG_R>(q)];
#pragma unroll
  for (int q = 0; q < R; ++q) x[q] = natural[q];
}

SSM_HD constexpr int highest_power_of_two(int q) {
  int high = 1;
  while (2 * high <= q) high *= 2;
  return high;
}

// w[q] = w[1]^q for Q <= q < R, each a product of at most four rounded factors (powers of two first, then sums
// of them), from a base the table holds exactly: one load per (block, offset) instead of R - 1.
template <int Q, int R>
SSM_HD void twiddle_powers(cfloat (&w)[R]) {
  if constexpr (Q < R) {
    constexpr int high = highest_power_of_two(Q);
    w[Q] = Q == high ? w[Q / 2] * w[Q / 2] : w[high] * w[Q - high];
    twiddle_powers<Q + 1, R>(w);
  }
}

// A buffer's slots as a pass reads and writes them: slot is the natural index, at its padded place.
struct BufferSlots {
  cfloat* buf;
  SSM_HD cfloat load(int /*slot*/, int place) const { return buf[place]; }
  SSM_HD void store(int /*slot*/, int place, cfloat value) const { buf[place] = value; }
};

// One pass over blocks of S = 2^log_block points, reading its inputs from `in` and writing its outputs to `out`
// (BufferSlots of one buffer for a pass in place; the first forward pass reads a sequence straight from global
// memory, the last inverse one hands its outputs to the caller's epilogue). bases: this pass's twiddle bases
// exp(-2 pi i o / S) for the offsets o < S / R (contiguous: a warp's threads load neighbouring entries).
template <int LOG_R, bool INVERSE, class In, class Out, class Block>
SSM_HD void radix_pass(const In& in, const Out& out, int log_block, const Transform& t, const cfloat* bases,
                       const Block& block) {
  constexpr int R = 1 << LOG_R;
  const int log_stride = log_block - LOG_R;
  const int groups = 1 << (t.log_points - LOG_R);
  // A slot is (block << log_block) | (r << log_stride) | offset, fields of disjoint bits, so padded() of it is
  // the sum of padded() of the fields: the r part once per pass.
  int step[R];
#pragma unroll
  for (int r = 0; r < R; ++r) step[r] = padded(r << log_stride);
  for (int g = block.thread; g < groups; g += block.threads) {
    const int offset = g & ((1 << log_stride) - 1);
    const int first = ((g >> log_stride) << log_block) + offset, base = padded(first);
    cfloat x[R], w[R];
#pragma unroll
    for (int r = 0; r < R; ++r) x[r] = in.load(first + (r << log_stride), base + step[r]);
    w[0] = {1.0f, 0.0f};
    w[1] = table_entry(bases, offset);
    twiddle_powers<2, R>(w);
    if (!INVERSE) small_dft<LOG_R, false>(x);
#pragma unroll
    for (int q = 1; q < R; ++q) x[q] = INVERSE ? mul_conj(x[q], w[q]) : x[q] * w[q];
    if (INVERSE) small_dft<LOG_R, true>(x);
#pragma unroll
    for (int r = 0; r < R; ++r) out.store(first + (r << log_stride), base + step[r], x[r]);
  }
}

template <bool INVERSE, class Block>
SSM_HD void run_pass(int radix_log, cfloat* buf, int log_block, const Transform& t, const cfloat* bases,
                     const Block& block) {
  const BufferSlots slots{buf};
  switch (radix_log) {
    case 4: radix_pass<4, INVERSE>(slots, slots, log_block, t, bases, block); break;
    case 3: radix_pass<3, INVERSE>(slots, slots, log_block, t, bases, block); break;
    case 2: radix_pass<2, INVERSE>(slots, slots, log_block, t, bases, block); break;
    default: radix_pass<1, INVERSE>(slots, slots, log_block, t, bases, block); break;
  }
}

// The twiddle table (N = 2M): W^k = exp(-2 pi i k / N) for k in [0, M/2] (the real-FFT identities), then each
// pass's bases exp(-2 pi i o / S_j), o < S_j / R_j, in pass order (ssm_kernels/fftconv/cuda.py builds it).
SSM_HD int twiddle_table_size(const Transform& t) {
  int size = (1 << (t.log_points - 1)) + 1, log_block = t.log_points;
  for (int j = 0; j < t.passes; ++j) {
    size += 1 << (log_block - t.radix_log(j));
    log_block -= t.radix_log(j);
  }
  return size;
}

// Forward transforms into a (and into b unless null), spectrum in slot order, of the sequences in_a and in_b
// (slot accessors: BufferSlots of a and b for transforms in place): the first pass, always of radix 16
// (kMinLogPoints), reads them. Synchronises after each pass.
template <class InA, class InB, class Block>
SSM_HD void forward_fft(const InA& in_a, cfloat* a, const InB& in_b, cfloat* b, const Transform& t,
                        const cfloat* twiddles, const Block& block) {
  int log_block = t.log_points;
  const cfloat* bases = twiddles + (1 << (t.log_points - 1)) + 1;
  constexpr bool kInPlace = std::is_same<InA, BufferSlots>::value && std::is_same<InB, BufferSlots>::value;
  for (int j = 0; j < t.passes; ++j) {
    if (!kInPlace && j == 0) {
      radix_pass<kMaxLogRadix, false>(in_a, BufferSlots{a}, log_block, t, bases, block);
      if (b != nullptr) radix_pass<kMaxLogRadix, false>(in_b, BufferSlots{b}, log_block, t, bases, block);
    } else {
      run_pass<false>(t.radix_log(j), a, log_block, t, bases, block);
      if (b != nullptr) run_pass<false>(t.radix_log(j), b, log_block, t, bases, block);
    }
    block.sync();
    bases += 1 << (log_block - t.radix_log(j));
    log_block -= t.radix_log(j);
  }
}

// Forward transforms of a (and of b unless null) in place.
template <class Block>
SSM_HD void forward_fft(cfloat* a, cfloat* b, const Transform& t, const cfloat* twiddles, const Block& block) {
  forward_fft(BufferSlots{a}, a, BufferSlots{b}, b, t, twiddles, block);
}

// The unnormalised inverse transform (exp(+2 pi i k n / M) summed) of the slot-ordered spectrum in a, back to
// natural order: the last pass (radix 16) hands its outputs to `out` (out.store(n, padded place, value n);
// BufferSlots of a for a transform in place). Synchronises after each pass.
template <class Out, class Block>
SSM_HD void inverse_fft(cfloat* a, const Out& out, const Transform& t, const cfloat* twiddles, const Block& block) {
  const cfloat* bases = twiddles + twiddle_table_size(t);
  int log_block = t.radix_log(t.passes - 1);
  for (int j = t.passes - 1; j >= 0; --j) {
    bases -= 1 << (log_block - t.radix_log(j));
    if (!std::is_same<Out, BufferSlots>::value && j == 0) {
      radix_pass<kMaxLogRadix, true>(BufferSlots{a}, out, log_block, t, bases, block);
    } else {
      run_pass<true>(t.radix_log(j), a, log_block, t, bases, block);
    }
    block.sync();
    if (j > 0) log_block += t.radix_log(j - 1);
  }
}

// The inverse transform of a in place.
template <class Block>
SSM_HD void inverse_fft(cfloat* a, const Transform& t, const cfloat* twiddles, const Block& block) {
  inverse_fft(a, BufferSlots{a}, t, twiddles, block);
}

// Real sequences of N = 2M points travel as z[n] = x[2n] + i x[2n+1]; with Z = FFT_M(z) and W = exp(-2 pi i / N),
// X[k] = E[k] + W^k O[k] for E[k] = (Z[k] + conj Z[M-k]) / 2, O[k] = (Z[k] - conj Z[M-k]) / 2i and
// X[M-k] = conj(E[k] - W^k O[k]). unpack gives (2 X[k], 2 X[M-k]) for 0 <= k <= M/2 (Z[M] is Z[0]).
SSM_HD void unpack(cfloat zk, cfloat zmk, cfloat wk, cfloat& xk, cfloat& xmk) {
  const cfloat even = zk + conj(zmk), diff = zk - conj(zmk);
  const cfloat odd = wk * cfloat{diff.im, -diff.re};  // W^k (-i) diff
  xk = even + odd;
  xmk = conj(even - odd);
}

// The way back for a real y of N points: given (Y[k], Y[M-k]) / N, Y = FFT_N(y), the pair (Z[k], Z[M-k])
// whose unnormalised inverse M-point transform is y[2n] + i y[2n+1]. Inputs 2 X times a spectrum divided by 2N
// (unpack's outputs times the kernels' tables) are exactly such Y / N.
SSM_HD void pack(cfloat yk, cfloat ymk, cfloat wk, cfloat& zk, cfloat& zmk) {
  const cfloat even = yk + conj(ymk), diff = yk - conj(ymk);
  zk = even + times_i(mul_conj(diff, wk));  // + i conj(W^k) diff
  zmk = conj(even) + times_i(wk * conj(diff));
}

}  // namespace fftconv
}  // namespace ssm_kernels
