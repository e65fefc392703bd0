// One (batch, head) row of the FFT convolution, forward and backward, as a thread block runs it: the whole row's
// transform lives in one buffer of M = N / 2 complex values (N = 2^(log_points + 1) >= 2L real points, so no
// circular wrap-around reaches an output, causal or anti-causal), real-FFT identities turn the M-point complex
// transform into the N-point real one, and the gates and the skip are applied while loading and storing.
// Definitions: ssm_kernels/fftconv/reference.py; the tables (kernel spectrum, twiddles) are made by
// ssm_kernels/fftconv/cuda.py.
#pragma once
#include <cstdint>

#include "fftconv/fft_block.cuh"

namespace ssm_kernels {
namespace fftconv {

// Position i of a thread's batch of slot pairs: 2 (first + (i / 2) step) + i % 2, the two positions of slot
// first + (i / 2) step (a thread's slots are step apart).
SSM_HD int pair_position(int first, int step, int i) { return 2 * (first + (i >> 1) * step) + (i & 1); }

// One row of a (B, H, L) tensor with any strides; reads as fp32.
template <typename T>
struct RowIn {
  const T* data;
  int64_t stride;
  SSM_HD float operator[](int t) const { return static_cast<float>(data[t * stride]); }
  // pairs[2 i + j] = x[2 (first + i step) + j] (j = 0, 1; i < kSlots), every load issued before any value is
  // used; positions at or past `length` read x[length - 1] (an address in the row; the caller drops them)
  template <int kSlots>
  SSM_HD void load_pairs(int first, int step, int length, float (&pairs)[2 * kSlots]) const {
#pragma unroll
    for (int i = 0; i < 2 * kSlots; ++i) {
      const int t = pair_position(first, step, i);
      pairs[i] = (*this)[t < length ? t : length - 1];
    }
  }
};

template <typename T>
struct Strided {
  const T* data;  // nullptr: the tensor is absent
  int64_t stride_b, stride_h, stride_l;
  SSM_HD RowIn<T> row(int b, int h) const { return {data + (data ? b * stride_b + h * stride_h : 0), stride_l}; }
};

// x_t * gate_t (x_t when there is no gate), 0 at positions t >= L: the zero padding of the transform.
template <typename T>
struct GatedRow {
  RowIn<T> x, gate;
  int length;
  SSM_HD float operator()(int t) const {
    if (t >= length) return 0.0f;
    const float value = x[t];
    return gate.data != nullptr ? value * gate[t] : value;
  }
  // The kSlots slots n = first + i step as a transform reads them, (x(2n), x(2n + 1)): a batch of loads in flight
  // at once, where reading value by value waits out a memory latency per value.
  template <int kSlots>
  SSM_HD void load_slots(int first, int step, cfloat (&slots)[kSlots]) const {
    float values[2 * kSlots];
    if (2 * first >= length) {
#pragma unroll
      for (int i = 0; i < kSlots; ++i) slots[i] = {0.0f, 0.0f};
      return;
    }
    x.template load_pairs<kSlots>(first, step, length, values);
    if (gate.data != nullptr) {
      float gates[2 * kSlots];
      gate.template load_pairs<kSlots>(first, step, length, gates);
#pragma unroll
      for (int i = 0; i < 2 * kSlots; ++i) values[i] *= gates[i];
    }
#pragma unroll
    for (int i = 0; i < 2 * kSlots; ++i) {
      if (pair_position(first, step, i) >= length) values[i] = 0.0f;
    }
#pragma unroll
    for (int i = 0; i < kSlots; ++i) slots[i] = {values[2 * i], values[2 * i + 1]};
  }
};

// What the forward and the backward both read.
template <typename T>
struct Problem {
  Strided<T> u, pre, post;
  const float* skip;        // (H,) or nullptr
  const cfloat* spectrum;   // (H, M + 1): FFT_N of the circular kernel, frequencies 0..M, divided by 2N
  const cfloat* twiddles;   // twiddle_table_size entries (fft_block.cuh)
  int batch, heads, length;
  Transform transform;
};

// The backward's inputs beyond Problem, and its outputs. Outputs are contiguous; dskip is per row and dk per
// unit of work (a head and a group of its batch rows), both summed by the caller: reproducible, no atomics.
template <typename T>
struct Gradients {
  Strided<T> dy;
  Strided<T> ungated;  // the forward's conv + D v (before the postgate), or absent: then recomputed for dpost
  const cfloat* v_spectrum;  // (B, H, M): the forward's transform of each row's v, in frequency order
  T* du;
  T* dpre;         // nullptr without a pregate
  T* dpost;        // nullptr without a postgate
  float* dskip;    // (B, H) or nullptr without D
  float* dk;       // (G, 1 or 2, H, Lk): causal taps, then the anti-causal ones when bidirectional
  int taps;
  int rows_per_group;  // the batch is split into G = ceil(B / rows_per_group) groups
  bool bidirectional;
};

// A unit of the backward: head h and the batch rows [begin, end) of group g; consecutive units share a head.
struct Unit {
  int h, group, begin, end;
  SSM_HD Unit(int unit, int groups, int rows_per_group, int batch)
      : h(unit / groups), group(unit % groups), begin(group * rows_per_group),
        end(begin + rows_per_group < batch ? begin + rows_per_group : batch) {}
};

SSM_HD int batch_groups(int batch, int rows_per_group) { return (batch + rows_per_group - 1) / rows_per_group; }

// Forward row index -> (batch, head): consecutive rows share a head, so its spectrum stays in cache.
struct RowIndex {
  int b, h;
  SSM_HD RowIndex(int row, int batch) : b(row % batch), h(row / batch) {}
};

// The slots of a real sequence x (GatedRow) as a transform's first pass reads them: slot n is (x(2n), x(2n + 1)).
template <class Values>
struct SequenceSlots {
  Values x;
  SSM_HD cfloat load(int slot, int /*place*/) const { return {x(2 * slot), x(2 * slot + 1)}; }
};

template <class Values>
SSM_HD SequenceSlots<Values> slots_of(const Values& x) { return {x}; }

// How an M-point spectrum is laid out: in slot order at padded places (a transform's output in a block's buffer),
// or in frequency order (global memory: the forward's saved V, the kernel gradient's spectrum in scratch), where
// a warp's pairs (k, M - k) touch two contiguous runs of memory instead of digit-reversed places.
enum class Order { kSlots, kFrequencies };

// The pair of frequencies k and M - k (one place when they coincide: k = 0, where M - k is M = 0 mod M, and
// k = M / 2) in either order, and the factor W^k of the real-FFT identities.
struct FrequencyPair {
  int k, mk, slot_k, slot_mk;
  cfloat wk;
  SSM_HD FrequencyPair(int k, const Transform& t, const cfloat* twiddles)
      : k(k),
        mk((-k) & ((1 << t.log_points) - 1)),
        slot_k(padded(slot_of(k, t))),
        slot_mk(padded(slot_of(mk, t))),
        wk(table_entry(twiddles, k)) {}
  template <Order kOrder>
  SSM_HD int place_k() const { return kOrder == Order::kSlots ? slot_k : k; }
  template <Order kOrder>
  SSM_HD int place_mk() const { return kOrder == Order::kSlots ? slot_mk : mk; }
  // (Z[k], Z[M - k]) of a transform
  template <Order kOrder = Order::kSlots>
  SSM_HD void load(const cfloat* buf, cfloat& zk, cfloat& zmk) const {
    zk = buf[place_k<kOrder>()];
    zmk = buf[place_mk<kOrder>()];
  }
  template <Order kOrder = Order::kSlots>
  SSM_HD void unpack_from(const cfloat* buf, cfloat& xk, cfloat& xmk) const {
    cfloat zk, zmk;
    load<kOrder>(buf, zk, zmk);
    unpack(zk, zmk, wk, xk, xmk);
  }
  // buf = (zk, zmk), or buf += it (ADD)
  template <bool ADD = false, Order kOrder = Order::kSlots>
  SSM_HD void store(cfloat* buf, cfloat zk, cfloat zmk) const {
    const int at_k = place_k<kOrder>(), at_mk = place_mk<kOrder>();
    buf[at_k] = ADD ? buf[at_k] + zk : zk;
    if (at_mk != at_k) buf[at_mk] = ADD ? buf[at_mk] + zmk : zmk;
  }
  // buf = pack(yk, ymk), or buf += it (ADD: pack is linear, so spectra packed one by one add up to the packed
  // sum)
  template <bool ADD = false, Order kOrder = Order::kSlots>
  SSM_HD void pack_into(cfloat* buf, cfloat yk, cfloat ymk) const {
    cfloat zk, zmk;
    pack(yk, ymk, wk, zk, zmk);
    store<ADD, kOrder>(buf, zk, zmk);
  }
};

// to = pack(unpack(from) * kernel spectrum) over every frequency pair: to becomes the slot-ordered input of
// the inverse transform that gives the convolution of from's sequence with the kernel (to may be from, when
// both are in slot order). from in kFromOrder; where `saved` is not null, it receives from's values in frequency
// order (the forward's V for the backward).
template <Order kFromOrder = Order::kSlots, class Block>
SSM_HD void multiply_by_kernel(const cfloat* from, cfloat* to, const cfloat* kernel, const Transform& t,
                               const cfloat* twiddles, cfloat* saved, const Block& block) {
  const int points = 1 << t.log_points;
  for (int k = block.thread; k <= points / 2; k += block.threads) {
    const FrequencyPair pair(k, t, twiddles);
    cfloat zk, zmk, xk, xmk;
    pair.load<kFromOrder>(from, zk, zmk);
    if (saved != nullptr) pair.store<false, Order::kFrequencies>(saved, zk, zmk);
    unpack(zk, zmk, pair.wk, xk, xmk);
    pair.pack_into(to, xk * table_entry(kernel, k), xmk * table_entry(kernel, points - k));
  }
}

template <typename T>
SSM_HD void store_value(T* out, int t, float value) {
  out[t] = static_cast<T>(value);
}

// values[2 i + j] = the re (j = 0) / im (j = 1) part of buf's slot first + i step (i < kSlots), the positions
// store_pairs writes them to; slots at or past `points` read as 0.
template <int kSlots>
SSM_HD void read_slot_pairs(const cfloat* buf, int first, int step, int points, float (&values)[2 * kSlots]) {
#pragma unroll
  for (int i = 0; i < kSlots; ++i) {
    const int n = first + i * step;
    const cfloat slot = n < points ? buf[padded(n)] : cfloat{0.0f, 0.0f};
    values[2 * i] = slot.re;
    values[2 * i + 1] = slot.im;
  }
}

// out[2 (first + i step) + j] = values[2 i + j] (j = 0, 1; i < kSlots) at the positions below length
template <int kSlots, typename T>
SSM_HD void store_pairs(T* out, int first, int step, int length, const float (&values)[2 * kSlots]) {
#pragma unroll
  for (int i = 0; i < 2 * kSlots; ++i) {
    const int t = pair_position(first, step, i);
    if (t < length) store_value(out, t, values[i]);
  }
}

// y = (conv(v, k) + D v) * post, v = u * pre, for one row; also conv + D v into `ungated` (contiguous, like y)
// and v's transform into `v_spectrum` ((B, H, M), frequency order) unless they are nullptr: what the backward
// reads instead of recomputing. buf: padded_size(M) values. Unlike the backward's, the forward's transforms do not read
// the inputs in their first pass and write the outputs in their last: natively (H100, B8 H768) that made the
// forward 1-10% slower (L 1024-16384). The fill and the epilogue load a batch of slots at once (value by value,
// each load waited out a memory latency: natively 10% slower at L 4096, 20% at 16384). Each thread fills the slots
// it reads in the epilogue, so consecutive rows need no barrier between an epilogue and the next fill.
template <typename T, class Block>
SSM_HD void forward_row(const Problem<T>& p, T* y, T* ungated, cfloat* v_spectrum, int row, cfloat* buf,
                        const Block& block) {
  const RowIndex at(row, p.batch);
  const Transform& t = p.transform;
  const int points = 1 << t.log_points;
  const GatedRow<T> v{p.u.row(at.b, at.h), p.pre.row(at.b, at.h), p.length};
  constexpr int kFillBatch = 8, kBatch = 4;  // slots a thread loads at once in the fill, in the epilogue
  for (int first = block.thread; first < points; first += kFillBatch * block.threads) {
    cfloat slots[kFillBatch];
    v.template load_slots<kFillBatch>(first, block.threads, slots);
#pragma unroll
    for (int i = 0; i < kFillBatch; ++i) {
      const int n = first + i * block.threads;
      if (n < points) buf[padded(n)] = slots[i];
    }
  }
  block.sync();
  forward_fft(buf, static_cast<cfloat*>(nullptr), t, p.twiddles, block);
  cfloat* saved = v_spectrum != nullptr ? v_spectrum + (int64_t(at.b) * p.heads + at.h) * points : nullptr;
  multiply_by_kernel(buf, buf, p.spectrum + int64_t(at.h) * (points + 1), t, p.twiddles, saved, block);
  block.sync();
  inverse_fft(buf, t, p.twiddles, block);

  const RowIn<T> post = p.post.row(at.b, at.h);
  const int64_t out = (int64_t(at.b) * p.heads + at.h) * p.length;
  for (int first = block.thread; 2 * first < p.length; first += kBatch * block.threads) {
    float values[2 * kBatch];
    read_slot_pairs<kBatch>(buf, first, block.threads, points, values);  // only the slots this thread fills
    if (p.skip != nullptr) {
      const float skip = p.skip[at.h];
      cfloat slots[kBatch];
      v.template load_slots<kBatch>(first, block.threads, slots);
#pragma unroll
      for (int i = 0; i < kBatch; ++i) {
        values[2 * i] += skip * slots[i].re;
        values[2 * i + 1] += skip * slots[i].im;
      }
    }
    if (ungated != nullptr) store_pairs<kBatch>(ungated + out, first, block.threads, p.length, values);
    if (post.data != nullptr) {
      float gates[2 * kBatch];
      post.template load_pairs<kBatch>(first, block.threads, p.length, gates);
#pragma unroll
      for (int i = 0; i < 2 * kBatch; ++i) values[i] *= gates[i];
    }
    store_pairs<kBatch>(y + out, first, block.threads, p.length, values);
  }
}

// The recomputed convolution's epilogue (slot n of conv, positions 2n and 2n + 1): dpost = dy (conv + D v).
template <typename T>
struct PostgateGradient {
  GatedRow<T> v;
  RowIn<T> dy;
  float skip;
  T* dpost;
  SSM_HD void store(int slot, int /*place*/, cfloat conv) const {
    for (int j = 0; j < 2 && 2 * slot + j < v.length; ++j) {
      const int pos = 2 * slot + j;
      store_value(dpost, pos, dy[pos] * ((j == 0 ? conv.re : conv.im) + skip * v(pos)));
    }
  }
};

// The backward's epilogue, from slot n of the correlation of g with k in a (after the last inverse pass): dv = corr +
// D g, du = dv * pre, dpre = dv * u, dpost = dy * ungated (where saved), and this thread's share of dD = sum g v.
// A batch of slots at a time with all their loads in flight: fused into the last inverse pass, slot by slot, each
// load waited behind the previous slot's stores, which may alias it (natively 4% slower at L 4096, H100).
template <typename T, class Block>
SSM_HD float backward_epilogue(const Problem<T>& p, const Gradients<T>& grads, int batch_row, int h,
                               bool dpost_from_ungated, const cfloat* a, const Block& block) {
  constexpr int kBatch = 4;
  const int points = 1 << p.transform.log_points;
  const int64_t out = (int64_t(batch_row) * p.heads + h) * p.length;
  const RowIn<T> u = p.u.row(batch_row, h), pre = p.pre.row(batch_row, h), post = p.post.row(batch_row, h);
  const RowIn<T> dy = grads.dy.row(batch_row, h), ungated = grads.ungated.row(batch_row, h);
  const float skip = p.skip != nullptr ? p.skip[h] : 0.0f;
  float dskip = 0.0f;
  for (int first = block.thread; 2 * first < p.length; first += kBatch * block.threads) {
    float dv[2 * kBatch], us[2 * kBatch], pres[2 * kBatch], dys[2 * kBatch], posts[2 * kBatch], ungateds[2 * kBatch];
    read_slot_pairs<kBatch>(a, first, block.threads, points, dv);
    u.template load_pairs<kBatch>(first, block.threads, p.length, us);
    dy.template load_pairs<kBatch>(first, block.threads, p.length, dys);
    if (pre.data != nullptr) pre.template load_pairs<kBatch>(first, block.threads, p.length, pres);
    if (post.data != nullptr) post.template load_pairs<kBatch>(first, block.threads, p.length, posts);
    if (dpost_from_ungated) ungated.template load_pairs<kBatch>(first, block.threads, p.length, ungateds);
#pragma unroll
    for (int i = 0; i < 2 * kBatch; ++i) {
      const float gt = post.data != nullptr ? dys[i] * posts[i] : dys[i];
      const float vt = pre.data != nullptr ? us[i] * pres[i] : us[i];
      dv[i] += skip * gt;
      if (pair_position(first, block.threads, i) < p.length) dskip += gt * vt;
      if (dpost_from_ungated) ungateds[i] *= dys[i];  // dpost
      if (pre.data != nullptr) {
        us[i] *= dv[i];    // dpre
        pres[i] *= dv[i];  // du
      }
    }
    if (dpost_from_ungated) store_pairs<kBatch>(grads.dpost + out, first, block.threads, p.length, ungateds);
    if (pre.data != nullptr) {
      store_pairs<kBatch>(grads.dpre + out, first, block.threads, p.length, us);
      store_pairs<kBatch>(grads.du + out, first, block.threads, p.length, pres);
    } else {
      store_pairs<kBatch>(grads.du + out, first, block.threads, p.length, dv);
    }
  }
  return dskip;
}

// The backward of row (b, h), all but the kernel gradient, whose spectrum it adds to acc. a, acc: buffers of
// padded_size(M) values; V, v's transform, comes from the forward (grads.v_spectrum). With g = dy * post and
// v = u * pre:
//   conv = IFFT(V K)          (only with a postgate and no saved ungated output: dpost = dy (conv + D v); with
//                              one, dpost = dy ungated)
//   dv   = IFFT(G conj K)     the correlation of g with k, + D g; du = dv * pre, dpre = dv * u
//   acc += G conj V           the spectrum of the correlation of g with v (backward_unit turns it into dk)
//   dD   = sum_t g v
// Every transform runs in a; acc is only read and written pair by pair, in slot order, or in frequency order when
// it lives in global memory (acc_in_scratch: M = 16384's two buffers do not fit in shared memory). The transforms'
// first passes read the inputs (forward_row says why only here); the last inverse pass leaves the correlation in a
// for backward_epilogue (it says why).
template <typename T, class Block>
SSM_HD void backward_row(const Problem<T>& p, const Gradients<T>& grads, int batch_row, int h, cfloat* a,
                         cfloat* acc, bool acc_in_scratch, const Block& block) {
  const Transform& t = p.transform;
  const int points = 1 << t.log_points;
  const cfloat* kernel = p.spectrum + int64_t(h) * (points + 1);
  const cfloat* v_spectrum = grads.v_spectrum + (int64_t(batch_row) * p.heads + h) * points;
  const GatedRow<T> v{p.u.row(batch_row, h), p.pre.row(batch_row, h), p.length};
  const GatedRow<T> g{grads.dy.row(batch_row, h), p.post.row(batch_row, h), p.length};
  const RowIn<T> dy = grads.dy.row(batch_row, h);
  const float skip = p.skip != nullptr ? p.skip[h] : 0.0f;
  const int64_t out = (int64_t(batch_row) * p.heads + h) * p.length;
  const bool recompute_conv = grads.dpost != nullptr && grads.ungated.data == nullptr;
  const BufferSlots no_buffer{nullptr};

  if (recompute_conv) {  // conv in a, then G over it
    multiply_by_kernel<Order::kFrequencies>(v_spectrum, a, kernel, t, p.twiddles, nullptr, block);
    block.sync();
    inverse_fft(a, PostgateGradient<T>{v, dy, skip, grads.dpost + out}, t, p.twiddles, block);
  }
  forward_fft(slots_of(g), a, no_buffer, static_cast<cfloat*>(nullptr), t, p.twiddles, block);

  const float dk_scale = 0.25f / float(2 * points);  // (2 G) conj(2 V) / 4N: unpack's factors 2, pack's 1 / N
  for (int k = block.thread; k <= points / 2; k += block.threads) {
    const FrequencyPair pair(k, t, p.twiddles);
    cfloat vk, vmk, gk, gmk;
    pair.unpack_from<Order::kFrequencies>(v_spectrum, vk, vmk);
    pair.unpack_from(a, gk, gmk);
    const cfloat dk_k = dk_scale * mul_conj(gk, vk), dk_mk = dk_scale * mul_conj(gmk, vmk);
    if (acc_in_scratch) {
      pair.pack_into<true, Order::kFrequencies>(acc, dk_k, dk_mk);
    } else {
      pair.pack_into<true>(acc, dk_k, dk_mk);
    }
    pair.pack_into(a, mul_conj(gk, table_entry(kernel, k)), mul_conj(gmk, table_entry(kernel, points - k)));
  }
  block.sync();
  inverse_fft(a, t, p.twiddles, block);
  const bool dpost_from_ungated = grads.dpost != nullptr && !recompute_conv;
  float dskip = backward_epilogue(p, grads, batch_row, h, dpost_from_ungated, a, block);
  block.sync();  // the next row's first pass writes slots of a that other threads read in this epilogue
  if (grads.dskip != nullptr) {
    dskip = block.sum(dskip);
    if (block.thread == 0) grads.dskip[int64_t(batch_row) * p.heads + h] = dskip;
  }
}

// The backward of one unit (a head, a group of its batch rows): every row's gradients, and the unit's kernel
// gradient from the spectra the rows added up: dk at lag j (causal tap j) and N - 1 - j (anti-causal tap j).
template <typename T, class Block>
SSM_HD void backward_unit(const Problem<T>& p, const Gradients<T>& grads, int unit_index, cfloat* a, cfloat* acc,
                          bool acc_in_scratch, const Block& block) {
  const Transform& t = p.transform;
  const int points = 1 << t.log_points;
  const int groups = batch_groups(p.batch, grads.rows_per_group);
  const Unit unit(unit_index, groups, grads.rows_per_group, p.batch);
  for (int n = block.thread; n < points; n += block.threads) acc[acc_in_scratch ? n : padded(n)] = {0.0f, 0.0f};
  block.sync();  // the previous unit's last reads of a (its lags with acc_in_scratch) precede the first row's writes
  for (int row = unit.begin; row < unit.end; ++row) {
    backward_row(p, grads, row, unit.h, a, acc, acc_in_scratch, block);
  }
  cfloat* lags = acc;
  // acc's last additions and the last row's reads of a precede the barrier that ends that row's inverse
  // transform: no barrier before the copy of acc, from frequency order in scratch, into a in slot order
  if (acc_in_scratch) {
    for (int k = block.thread; k < points; k += block.threads) a[padded(slot_of(k, t))] = acc[k];
    lags = a;
  }
  block.sync();
  inverse_fft(lags, t, p.twiddles, block);

  const int sides = grads.bidirectional ? 2 : 1;
  float* dk_causal = grads.dk + ((int64_t(unit.group) * sides) * p.heads + unit.h) * grads.taps;
  float* dk_anti = dk_causal + int64_t(p.heads) * grads.taps;
  for (int n = block.thread; n < points; n += block.threads) {
    const cfloat lagged = lags[padded(n)];
    for (int j = 0; j < 2; ++j) {
      const int lag = 2 * n + j;
      const float dk = j == 0 ? lagged.re : lagged.im;
      if (lag < grads.taps) dk_causal[lag] = dk;
      const int anti_tap = 2 * points - 1 - lag;
      if (grads.bidirectional && anti_tap < grads.taps) dk_anti[anti_tap] = dk;
    }
  }
}

}  // namespace fftconv
}  // namespace ssm_kernels
