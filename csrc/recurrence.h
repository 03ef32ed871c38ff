// Shared by jaxrnn's CPU kernels (simple.cc, lstm.cc, gru.cc; linear.cc uses the thread rounds
// and the vector versions): the forward and backward loops themselves (RunForward,
// RunBackward), the weights' gradients (OpenBLAS' sgemm), the thread rounds, the chunking of
// hidden units, the vectorisable exp/sigmoid/tanh and the layouts.
// A cell's file holds its pointwise math for one row of one step and its handlers' FFI
// bindings.
//
// XLA:CPU runs the body of a while loop one operation after another on one core, and every
// operation costs a dispatch; these handlers run the whole loop in one call, on every core.
// Where the batch is large enough, each thread runs every step of its own rows of the batch
// (a row's recurrence reads only its own state: no thread waits for another until the loop
// ends); otherwise each step's hidden units are split into chunks, one per core, and step
// t+1 starts when every chunk of step t is written (RunRounds). Either way a block of rows
// and units multiplies its rows of the previous state by its units' columns of the
// recurrent weights (small_matmul.h: packed once per call) and computes its elementwise
// update. The backward handlers also return the weights' gradients. A value's arithmetic
// does not depend on the thread or the split, so results repeat from run to run.
//
// Shapes (T steps, B batch, H hidden, G = gates * H): `xp` [T, B, G] (time-major) or
// [B, T, G] (batch-first), the input projections x @ w_i, to which the forward handlers add
// the bias `b` [G]; `valid` [T, B]: a step past a sequence's length copies the state and
// outputs zero; `resets` [T, B] (or empty: none): a step where it is True starts from a zero
// state, and no cotangent passes through it to the earlier state (the driver sets it only on
// valid steps). Outputs are time-major.
// The Python side (jaxrnn/_native.py) hands over OpenBLAS' cblas_sgemm before any call.

#ifndef JAXRNN_CSRC_RECURRENCE_H_
#define JAXRNN_CSRC_RECURRENCE_H_

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "dispatch.h"
#include "small_matmul.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace jaxrnn {

// ---------------------------------------------------------------------------------- BLAS

using Sgemm = void (*)(int order, int trans_a, int trans_b, int m, int n, int k, float alpha,
                       const float* a, int lda, const float* b, int ldb, float beta, float* c,
                       int ldc);
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;  // the CBLAS enum values

// Set once from Python (jaxrnn_set_sgemm, jaxrnn_set_max_threads) before any handler runs.
inline Sgemm g_sgemm = nullptr;
inline int g_max_threads = 1;

// The recurrent weights' gradient for `width` of its columns (from column `col`):
// d_w[:, col:col+width] = sum over steps of h_prev[t]^T @ d_z[t][:, col:col+width], where
// h_prev[t] is the state before step t: the previous step's output (ys [T, B, H], in the
// direction the steps ran), or h0 for the first step. Where a step is past a sequence's
// length its d_z row is zero, so the (wrong) h_prev row there adds nothing.
inline void RecurrentWeightGradient(int64_t steps, int64_t batch, int64_t hidden, bool reverse,
                                    const float* ys, const float* h0, const float* dz,
                                    int64_t dz_width, int col, int width, float* d_w) {
  const int64_t first = reverse ? steps - 1 : 0;  // the step whose previous state is h0
  // h0 x d_z[first], then the outputs of steps [0, T-1) x d_z[1, T) (or [1, T) x [0, T-1)).
  g_sgemm(kRowMajor, kTrans, kNoTrans, hidden, width, batch, 1.0f, h0, hidden,
          dz + first * batch * dz_width + col, dz_width, 0.0f, d_w + col, dz_width);
  if (steps == 1) return;
  const float* h = reverse ? ys + batch * hidden : ys;
  const float* d = reverse ? dz + col : dz + batch * dz_width + col;
  g_sgemm(kRowMajor, kTrans, kNoTrans, hidden, width, (steps - 1) * batch, 1.0f, h, hidden, d,
          dz_width, 1.0f, d_w + col, dz_width);
}

// The rows (step t, batch row b) of a `resets` mask [T, B] that are True: where a sequence
// restarts from a zero state before step t. RecurrentWeightGradient takes every step's
// previous state to be the previous output (or h0); Correct takes back what the reset rows
// added that way, with one sgemm over the gathered rows: its cost grows with the resets
// (rare), where a copy of the outputs with zero rows would pass over all T * B rows.
class ResetRows {
 public:
  // `resets` null (nothing resets) or [T, B]; `ys`, `h0` as for RecurrentWeightGradient.
  ResetRows(const bool* resets, int64_t steps, int64_t batch, int64_t hidden, bool reverse,
            const float* ys, const float* h0)
      : hidden_(hidden) {
    if (resets == nullptr) return;
    const int64_t first = reverse ? steps - 1 : 0;
    for (int64_t t = 0; t < steps; ++t) {
      for (int64_t b = 0; b < batch; ++b) {
        if (!resets[t * batch + b]) continue;
        const int64_t prev = reverse ? t + 1 : t - 1;
        const float* h = t == first ? h0 + b * hidden : ys + (prev * batch + b) * hidden;
        rows_.push_back(t * batch + b);
        h_prev_.insert(h_prev_.end(), h, h + hidden);
      }
    }
  }
  // d_w[:, col:col+width] -= sum over the reset rows r of h_prev[r]^T d_z[r, col:col+width].
  void Correct(const float* dz, int64_t dz_width, int col, int width, float* d_w) const {
    const int64_t count = static_cast<int64_t>(rows_.size());
    if (count == 0) return;
    std::vector<float> d(count * width);
    for (int64_t r = 0; r < count; ++r)
      std::memcpy(&d[r * width], dz + rows_[r] * dz_width + col, sizeof(float) * width);
    g_sgemm(kRowMajor, kTrans, kNoTrans, hidden_, width, count, -1.0f, h_prev_.data(), hidden_,
            d.data(), width, 1.0f, d_w + col, dz_width);
  }

 private:
  int64_t hidden_;
  std::vector<int64_t> rows_;  // t * B + b
  std::vector<float> h_prev_;  // [rows, H]: what RecurrentWeightGradient took as h_prev
};

// The `resets` input [T, B], or null where it is empty (nothing resets: no check is made).
inline const bool* ResetsOrNull(const ffi::Buffer<ffi::PRED>& resets) {
  return resets.element_count() > 0 ? resets.typed_data() : nullptr;
}

// A block of the state [B, H]: rows [b0, b1), units [j0, j0 + n).
struct Block {
  int64_t b0, b1;
  int j0, n;
};

// Zeroes the block's rows b of `state` ([B, H]) where resets[t, b] (`resets` non-null): the
// state a step starts from after a reset, or the cotangent that reaches the state before it.
inline void ZeroResetRows(const bool* resets, int64_t t, int64_t batch, int64_t hidden,
                          const Block& block, float* state) {
  for (int64_t b = block.b0; b < block.b1; ++b)
    if (resets[t * batch + b]) std::fill_n(state + b * hidden + block.j0, block.n, 0.0f);
}

// sum[0:width] += z[r, 0:width] for each of `rows` rows (row r at z + r * z_width), in order.
JAXRNN_ROW_LOOP void AddRows(int64_t rows, const float* __restrict__ z, int64_t z_width,
                             int width, double* __restrict__ sum) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = z + r * z_width;
    for (int j = 0; j < width; ++j) sum[j] += row[j];
  }
}

// sums[col:col+width] = the sums over `rows` rows of z[:, col:col+width] (z: [rows, z_width]),
// accumulated in double (thousands of rows; a float running sum would lose digits).
inline void ColumnSums(int64_t rows, const float* z, int64_t z_width, int col, int width,
                       float* sums) {
  std::vector<double> sum(width, 0.0);
  Vectorised<AddRows>(rows, z + col, z_width, width, sum.data());
  for (int j = 0; j < width; ++j) sums[col + j] = static_cast<float>(sum[j]);
}

// The input weights' and the bias's gradients for `width` of their columns (from `col`):
// d_w_i[:, col:col+width] = x^T @ d_z over all `rows` (steps x batch) rows and d_b[col:col+width]
// the column sums of d_z ([rows, dz_width]); x: [rows, F], time-major like d_z.
inline void InputWeightGradient(int64_t rows, int64_t features, const float* x, const float* dz,
                                int64_t dz_width, int col, int width, float* d_w_i, float* d_b) {
  if (rows == 0) {
    for (int64_t f = 0; f < features; ++f) std::fill_n(d_w_i + f * dz_width + col, width, 0.0f);
  } else {
    g_sgemm(kRowMajor, kTrans, kNoTrans, features, width, rows, 1.0f, x, features, dz + col,
            dz_width, 0.0f, d_w_i + col, dz_width);
  }
  ColumnSums(rows, dz, dz_width, col, width, d_b);
}

// The inputs [T, B, F] as time-major rows for InputWeightGradient: `xs` itself, or, for
// batch-first [B, T, F] inputs, a copy that the backward handlers make part by part (one part
// per chunk) in the round before the one that reads it. (Step by step, with B rows per sgemm,
// the whole d_w_i block would be read and written T times: 1.3x slower train steps at F=512.)
class TimeMajorInputs {
 public:
  TimeMajorInputs(const float* xs, int64_t steps, int64_t batch, int64_t features,
                  bool time_major)
      : xs_(xs), steps_(steps), batch_(batch), features_(features) {
    if (!time_major) copy_.reset(new float[steps * batch * features]);
  }
  // Copies steps [T * k / chunks, T * (k + 1) / chunks); nothing for time-major inputs.
  void CopyPart(int k, int chunks) {
    if (!copy_) return;
    const size_t row = sizeof(float) * features_;
    for (int64_t t = steps_ * k / chunks; t < steps_ * (k + 1) / chunks; ++t)
      for (int64_t b = 0; b < batch_; ++b)
        std::memcpy(&copy_[(t * batch_ + b) * features_], xs_ + (b * steps_ + t) * features_, row);
  }
  const float* data() const { return copy_ ? copy_.get() : xs_; }

 private:
  const float* xs_;
  int64_t steps_, batch_, features_;
  std::unique_ptr<float[]> copy_;
};

// The columns [start, end) of the k-th of `chunks` parts of `width` columns (multiples of 16).
inline std::pair<int, int> ColumnPart(int64_t width, int k, int chunks) {
  auto at = [&](int i) {
    return static_cast<int>(std::min<int64_t>(width, (width * i / chunks + 15) / 16 * 16));
  };
  return {k == 0 ? 0 : at(k), k == chunks - 1 ? static_cast<int>(width) : at(k + 1)};
}

// ------------------------------------------------------------------------------ threads

// Counters shared with the helper tasks, which may start late, or after the call returned.
struct Tickets {
  std::atomic<int64_t> next{0};  // the next work item to claim
  std::atomic<int64_t> done{0};  // work items finished
};

// Waits until `counter` reaches `value`: spins for a few microseconds (a step's chunks finish
// close together), then sleeps until notified, so that a waiting thread gives its core to the
// thread it waits for when the two share one (a busy or oversubscribed machine).
inline void WaitUntil(const std::atomic<int64_t>& counter, int64_t value) {
  for (int spins = 0;; ++spins) {
    const int64_t now = counter.load(std::memory_order_acquire);
    if (now >= value) return;
    if (spins < 2000) {
#if defined(__x86_64__)
      __builtin_ia32_pause();
#endif
      continue;
    }
    counter.wait(now, std::memory_order_acquire);
  }
}

// Runs `rounds` rounds of `chunks` work items, work(round, chunk, scratch): every item of a
// round after every item of the previous round, on whichever thread claims it. The calling
// thread claims items until none are left; `helpers` tasks on XLA's intra-op thread pool (whose
// idle workers would otherwise spin on the cores the kernel needs) join when they start. The
// caller never waits for a helper to start, so a busy pool, or none, cannot deadlock it, and an
// item's arithmetic depends only on (round, chunk), so neither do the results. `scratch` holds
// `scratch_size` floats per thread.
template <typename Work>
void RunRounds(ffi::ThreadPool& pool, int helpers, int64_t rounds, int chunks,
               size_t scratch_size, const Work& work) {
  const int64_t total = rounds * chunks;
  auto tickets = std::make_shared<Tickets>();
  // A helper that starts after the last item was claimed returns without touching `work`.
  auto participate = [tickets, total, chunks, scratch_size, &work] {
    std::vector<float> scratch;
    for (;;) {
      const int64_t item = tickets->next.fetch_add(1, std::memory_order_relaxed);
      if (item >= total) return;
      if (scratch.empty()) scratch.resize(scratch_size);
      const int64_t round = item / chunks;
      WaitUntil(tickets->done, round * chunks);
      work(round, static_cast<int>(item % chunks), scratch.data());
      tickets->done.fetch_add(1, std::memory_order_release);
      tickets->done.notify_all();
    }
  };
  for (int k = 0; k < helpers; ++k) pool.Schedule([participate] { participate(); });
  participate();
  WaitUntil(tickets->done, total);
}

// The chunks of H hidden units (one per thread, given batch B and G gate columns per unit) as
// the first unit of each, a multiple of 16 so that chunks write whole cache lines, and H.
inline std::vector<int> SplitUnits(int64_t batch, int64_t hidden, int gates) {
  int64_t macs = batch * hidden * hidden * gates;  // one step's recurrent multiply-adds
  int n = static_cast<int>(std::min<int64_t>(g_max_threads, hidden / 16));
  if (macs < (1 << 17)) n = 1;  // too little work per step to pay for a second thread
  n = std::max(n, 1);
  int64_t chunk = (hidden + n - 1) / n;
  if (n > 1) chunk = (chunk + 15) / 16 * 16;
  std::vector<int> starts;
  for (int64_t j = 0; j < hidden; j += chunk) starts.push_back(static_cast<int>(j));
  starts.push_back(static_cast<int>(hidden));
  return starts;
}

// The most units of any chunk of `starts` (SplitUnits), for the threads' scratch sizes.
inline int WidestChunk(const std::vector<int>& starts) {
  int widest = 0;
  for (size_t k = 0; k + 1 < starts.size(); ++k)
    widest = std::max(widest, starts[k + 1] - starts[k]);
  return widest;
}

// The fewest batch rows a thread takes where the threads split the batch, and the fewest
// recurrent multiply-adds of a whole loop worth a thread there (some 25 us of arithmetic: a
// relu RNN of 16 units, T 28, B 100, 0.7 million, ran slower on two threads).
constexpr int64_t kRowsPerThread = 16;
constexpr int64_t kLoopMacsPerThread = int64_t{1} << 20;
// The largest w_h, in bytes, split by rows: each thread reads all of it at every step, so it
// should stay in a core's L2 (split by units, a thread reads only its chunk's columns).
constexpr int64_t kRowSplitWeightBytes = int64_t{1} << 20;

// How a loop's threads share its work: by the batch's rows where the batch has
// kRowsPerThread rows a thread and w_h fits a core's L2 (each thread runs every step of its
// rows, all units, without waiting for the others: a row's recurrence reads only its own
// state), otherwise by units (every step's units in chunks, SplitUnits; step t + 1 after
// every chunk of step t). The values kept for the backward pass are laid out by the unit
// chunks either way.
struct WorkSplit {
  std::vector<int> units;     // SplitUnits
  std::vector<int64_t> rows;  // each thread's first row, then B; {0, B} where split by units
  bool by_rows() const { return rows.size() > 2; }
  int unit_chunks() const { return static_cast<int>(units.size()) - 1; }
  // The work items of a round: a thread's rows, or a chunk of units.
  int items() const { return by_rows() ? static_cast<int>(rows.size()) - 1 : unit_chunks(); }
  Block Unit(int k, int64_t b0, int64_t b1) const {
    return {b0, b1, units[k], units[k + 1] - units[k]};
  }
};

inline WorkSplit SplitWork(int64_t steps, int64_t batch, int64_t hidden, int gates) {
  WorkSplit split{SplitUnits(batch, hidden, gates), {0, batch}};
  if (gates * hidden * hidden * int64_t{sizeof(float)} > kRowSplitWeightBytes) return split;
  const int64_t macs = steps * batch * hidden * hidden * gates;
  const int64_t threads = std::min<int64_t>(
      {g_max_threads, batch / kRowsPerThread, macs / kLoopMacsPerThread});
  if (threads < 2) return split;
  split.rows.clear();
  for (int64_t r = 0; r <= threads; ++r) split.rows.push_back(batch * r / threads);
  return split;
}

// ---------------------------------------------------------------------------- pointwise
// exp to about 1 ulp (range reduction by ln 2, a degree-6 polynomial), written so that the
// compiler vectorises loops over it; NaN propagates through every function.

JAXRNN_INLINE float Exp(float x) {
  x = x > 88.0f ? 88.0f : x;
  x = x < -87.0f ? -87.0f : x;
  float n = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

JAXRNN_INLINE float Sigmoid(float x) { return 1.0f / (1.0f + Exp(-x)); }

JAXRNN_INLINE float Tanh(float x) {
  float a = std::fabs(x);
  float e = Exp(-2.0f * a);
  float t = (1.0f - e) / (1.0f + e);
  float x2 = x * x;  // the series near 0, where 1 - e cancels
  float s =
      x * (1.0f + x2 * (-1.0f / 3 + x2 * (2.0f / 15 + x2 * (-17.0f / 315 + x2 * (62.0f / 2835)))));
  return a < 0.25f ? s : std::copysign(t, x);
}

// ------------------------------------------------------------------------------ layout

struct Steps {
  int64_t steps, batch;
  bool reverse;
  int64_t At(int64_t s) const { return reverse ? steps - 1 - s : s; }  // s-th step run
};

// What a forward pass keeps for its backward pass (K values per unit and step: the LSTM's
// previous cell state and gates i, f, g, o; the GRU's r, z, n and hh_n), chunk by chunk: the
// chunk of units [j0, j0 + n) owns floats [T * B * K * j0, T * B * K * (j0 + n)), laid out
// [T, B, K, n], so that each row's writes are contiguous. jaxrnn/_native.py packs and unpacks
// the same layout for the XLA loops.
template <int K, typename F>
inline F* KeptRow(F* kept, int64_t steps, int64_t batch, int j0, int n, int64_t t, int64_t b) {
  return kept + steps * batch * K * j0 + (t * batch + b) * K * n;
}

// Offset of xp[t, b, 0] for either layout.
inline int64_t XpOffset(bool time_major, int64_t t, int64_t b, int64_t steps, int64_t batch,
                        int64_t width) {
  return (time_major ? t * batch + b : b * steps + t) * width;
}

inline ffi::Error CheckGemm() {
  if (g_sgemm == nullptr) {
    return ffi::Error(ffi::ErrorCode::kFailedPrecondition,
                      "jaxrnn native kernels: no sgemm was registered");
  }
  return ffi::Error::Success();
}

// The `kept` output: its data, or null where it is empty (nothing will differentiate the call).
inline float* KeptOrNull(ffi::ResultBuffer<ffi::F32>& kept) {
  return kept->element_count() > 0 ? kept->typed_data() : nullptr;
}

// -------------------------------------------------------------------------------- loops
// Every cell's forward and backward loops: the steps, the threads' rounds, lengths, resets,
// the sgemm calls and the weights' gradients. A cell (simple.cc, lstm.cc, gru.cc) supplies
// its number of gates (gate blocks of H columns in xp, w_h and d_z), of values it keeps per
// unit and step for its backward pass, and its pointwise math for one batch row of one step.

// One batch row b of step t for a chunk's units [j0, j0 + n), as a cell's forward update
// reads and writes it. Gate g of unit j0 + j is at g * hidden + j in `xp` and `bias`, at
// g * n + j in `acc`.
struct ForwardRow {
  int j0, n;
  int64_t hidden;
  const float* xp;      // xp[t, b, j0:], the input projection
  const float* bias;    // bias[j0:]
  const float* acc;     // the recurrent product h_prev @ w_h of the chunk's units
  const float* h_prev;  // the state the step starts from
  float* c;             // the LSTM's cell state (updated in place); null for the others
  float* h;             // the new state
  float* y;             // the output
  float* kept;          // kKept * n values for the backward pass
};

// Asks for the cache lines of a chunk's gates in a row of xp (gate g's units [j0, j0 + n) at
// row + g * hidden): batch-first rows of one step lie T rows apart, too far apart for the
// hardware's prefetcher.
JAXRNN_INLINE void PrefetchGates(const float* row, int gates, int64_t hidden, int n) {
  for (int gate = 0; gate < gates; ++gate)
    for (int j = 0; j < n; j += 16) __builtin_prefetch(row + gate * hidden + j);
}

// What a forward handler passes to RunForward (shapes in the comment at the top).
struct ForwardLoop {
  int64_t steps, batch, hidden;
  bool reverse, time_major;
  const float *xp, *bias, *w_h, *h0;
  const bool* valid;
  const bool* resets;  // null: nothing resets
  float *ys, *h_out;
  const float* c0 = nullptr;  // the LSTM's cell state [B, H]: initial, and final (c_out)
  float* c_out = nullptr;
  float* kept = nullptr;  // [T * B * kKept * H] (KeptRow), or null: nothing is kept
};

constexpr int64_t kRowsAhead = 2;  // how far ahead RunForward prefetches rows of xp

// Runs a forward loop: update(const ForwardRow&) computes one row of one step. A row past its
// sequence's length copies the state and outputs zero; a cell that keeps values still runs
// its update there, into scratch, so that its kept rows are all written.
template <int kGates, int kKept, typename Update>
void RunForward(ffi::ThreadPool& pool, const ForwardLoop& loop, const Update& update) {
  const int64_t steps = loop.steps, batch = loop.batch, hidden = loop.hidden;
  const int64_t width = kGates * hidden;
  const Steps order{steps, batch, loop.reverse};
  const WorkSplit split = SplitWork(steps, batch, hidden, kGates);
  const int widest = WidestChunk(split.units);
  const bool* v = loop.valid;
  const bool* rs = loop.resets;
  float* c = loop.c_out;  // the cell state, updated in place
  if (c) std::memcpy(c, loop.c0, sizeof(float) * batch * hidden);
  // Two state buffers: step s reads h[s % 2] and writes h[(s + 1) % 2].
  std::vector<float> h_buf(2 * batch * hidden);
  std::memcpy(h_buf.data(), loop.h0, sizeof(float) * batch * hidden);
  if (rs && steps > 0) {
    const Block all{0, batch, 0, static_cast<int>(hidden)};
    if (c) ZeroResetRows(rs, order.At(0), batch, hidden, all, c);
    ZeroResetRows(rs, order.At(0), batch, hidden, all, h_buf.data());
  }
  // Each chunk's columns of w_h, gate by gate ([H, kGates * n]), packed for Multiply.
  std::vector<PackedColumns> w_chunk(split.unit_chunks());
  auto pack = [&](int k) {
    const int j0 = split.units[k], n = split.units[k + 1] - j0;
    w_chunk[k] = PackedColumns(hidden, kGates * n, [&](int64_t r, float* out) {
      for (int gate = 0; gate < kGates; ++gate)
        std::memcpy(out + gate * n, loop.w_h + r * width + gate * hidden + j0, sizeof(float) * n);
    });
  };

  // Step s for rows [b0, b1) of chunk k's units. scratch: the recurrent products
  // [rows, kGates * n], then one row's discarded c, h and y, then one row's discarded kept
  // values when nothing is kept.
  auto step = [&](int64_t s, int k, int64_t b0, int64_t b1, float* scratch) {
    const Block block = split.Unit(k, b0, b1);
    const int j0 = block.j0, n = block.n;
    const int64_t t = order.At(s);
    const float* h_cur = &h_buf[(s % 2) * batch * hidden];
    float* h_next = &h_buf[((s + 1) % 2) * batch * hidden];
    float* acc = scratch;
    float *sc = acc + batch * kGates * n, *sh = sc + n, *sy = sh + n, *sk = sy + n;
    Multiply(block.b1 - block.b0, h_cur + block.b0 * hidden, hidden, w_chunk[k], acc,
             kGates * n, false);
    for (int64_t b = block.b0; b < block.b1; ++b) {
      if (!loop.time_major && b + kRowsAhead < block.b1) {
        PrefetchGates(loop.xp + XpOffset(false, t, b + kRowsAhead, steps, batch, width) + j0,
                      kGates, hidden, n);
      }
      const int64_t row = (t * batch + b) * hidden + j0;
      ForwardRow r{
          .j0 = j0,
          .n = n,
          .hidden = hidden,
          .xp = loop.xp + XpOffset(loop.time_major, t, b, steps, batch, width) + j0,
          .bias = loop.bias + j0,
          .acc = acc + (b - block.b0) * kGates * n,
          .h_prev = h_cur + b * hidden + j0,
          .c = c ? c + b * hidden + j0 : nullptr,
          .h = h_next + b * hidden + j0,
          .y = loop.ys + row,
          .kept = loop.kept ? KeptRow<kKept>(loop.kept, steps, batch, j0, n, t, b) : sk,
      };
      if (v[t * batch + b]) {
        update(r);
        continue;
      }
      if constexpr (kKept > 0) {
        if (r.c) {
          std::memcpy(sc, r.c, sizeof(float) * n);
          r.c = sc;
        }
        r.h = sh;
        r.y = sy;
        update(r);
      }
      std::memcpy(h_next + b * hidden + j0, h_cur + b * hidden + j0, sizeof(float) * n);
      std::fill_n(loop.ys + row, n, 0.0f);
    }
    // The next step starts from zeros where it resets (every block has read h_cur's rows by
    // now; the block's units of c are its own).
    if (rs && s + 1 < steps) {
      if (c) ZeroResetRows(rs, order.At(s + 1), batch, hidden, block, c);
      ZeroResetRows(rs, order.At(s + 1), batch, hidden, block, h_next);
    }
  };
  const size_t scratch = (batch * kGates + 3 + kKept) * widest;
  const int items = split.items();
  if (split.by_rows()) {
    // Round 0 packs the chunks (item r every items-th one); in round 1 item r runs its rows.
    RunRounds(pool, items - 1, 2, items, scratch, [&](int64_t round, int r, float* sc) {
      if (round == 0) {
        for (int k = r; k < split.unit_chunks(); k += items) pack(k);
        return;
      }
      for (int64_t s = 0; s < steps; ++s)
        for (int k = 0; k < split.unit_chunks(); ++k)
          step(s, k, split.rows[r], split.rows[r + 1], sc);
    });
  } else {
    // Round s runs step s, item k chunk k (whose first item packs its columns).
    RunRounds(pool, items - 1, steps, items, scratch, [&](int64_t s, int k, float* sc) {
      if (s == 0) pack(k);
      step(s, k, 0, batch, sc);
    });
  }
  std::memcpy(loop.h_out, &h_buf[(steps % 2) * batch * hidden], sizeof(float) * batch * hidden);
}

// One batch row b of step t for a chunk's units [j0, j0 + n), as a cell's backward step reads
// and writes it. On entry `dh` (and `dc`) hold the cotangents of the step's state from later
// steps; on exit the parts that reach the previous state other than through w_h (the loop
// adds d_rec @ w_h^T). Gate g of unit j0 + j is at g * hidden + j in `d_in` and `d_rec`.
struct BackwardRow {
  int n;
  int64_t hidden;
  const float* kept;    // the kKept * n values the forward pass kept
  const float* y;       // ys[t, b, j0:], the step's output
  const float* h_prev;  // the state the step started from (zeros after a reset)
  const float* dy;      // d_ys[t, b, j0:]
  float* dh;            // the running cotangent of h
  float* dc;            // the LSTM's running cotangent of c; null for the others
  float* d_in;          // the cotangents of the input pre-activations (xp + bias)
  float* d_rec;         // those of the recurrent ones (h_prev @ w_h); d_in where the same
};

// What a backward handler passes to RunBackward (shapes in the comment at the top).
struct BackwardLoop {
  int64_t steps, batch, hidden;
  bool reverse, time_major;  // as in the forward pass
  const float *w_h, *kept;
  const bool* valid;
  const bool* resets;  // null: nothing resets
  const float *d_ys, *d_h, *ys, *h0;
  const float* xs;  // [T, B, F] or [B, T, F] (time_major)
  int64_t features;
  float *d_in, *d_rec;  // [T, B, kGates * H]; the same buffer where they are the same
  float *d_h0, *d_w_h, *d_w_i, *d_b;
  const float* d_c = nullptr;  // the LSTM's: the final cell state's cotangent [B, H]
  float* d_c0 = nullptr;
  float* d_b_rec = nullptr;  // a recurrent bias's gradient (the GRU's b_h): sums of d_rec
};

// Runs a backward loop (the forward pass's steps, last first): update(const BackwardRow&)
// computes one row of one step. Rows past a sequence's length get zero d_in and d_rec; the
// state's cotangents pass through them. Then the weights' gradients: d_w_h from d_rec,
// d_w_i and d_b from d_in.
//
// Part u of the walk finishes step u - 1 for a block (dh += d_rec @ w_h^T needs every unit's
// d_rec of that step and row; then dh and dc are zero in the rows where that step reset) and
// runs the pointwise part of step u. Split by units, part u is round u (chunk k's first item
// packs its rows of w_h); split by rows, round 0 packs and round 1 walks every part of a
// thread's rows. Once every d_rec is written, the next round computes a part of w_h's
// gradient's columns and of the time-major copy of batch-first inputs, the last round its
// part of w_i's and the biases' columns.
template <int kGates, int kKept, typename Update>
void RunBackward(ffi::ThreadPool& pool, const BackwardLoop& loop, const Update& update) {
  const int64_t steps = loop.steps, batch = loop.batch, hidden = loop.hidden;
  const int64_t width = kGates * hidden;
  const Steps order{steps, batch, !loop.reverse};
  const int64_t first = loop.reverse ? steps - 1 : 0;  // the step whose previous state is h0
  const WorkSplit split = SplitWork(steps, batch, hidden, kGates);
  const int items = split.items();
  const bool* v = loop.valid;
  const bool* rs = loop.resets;
  const float* y = loop.ys;
  const ResetRows reset_rows(rs, steps, batch, hidden, loop.reverse, y, loop.h0);
  const std::vector<float> zeros(hidden, 0.0f);  // the state before a reset
  float* dh = loop.d_h0;  // running cotangents, updated in place
  float* dc = loop.d_c0;
  std::memcpy(dh, loop.d_h, sizeof(float) * batch * hidden);
  if (dc) std::memcpy(dc, loop.d_c, sizeof(float) * batch * hidden);
  TimeMajorInputs inputs(loop.xs, steps, batch, loop.features, loop.time_major);
  // Each chunk's rows of w_h, transposed ([kGates * H, n]), packed for Multiply.
  std::vector<PackedColumns> w_rows(split.unit_chunks());
  auto pack = [&](int k) {
    const int j0 = split.units[k], n = split.units[k + 1] - j0;
    w_rows[k] = PackedColumns(width, n, [&](int64_t r, float* out) {
      for (int j = 0; j < n; ++j) out[j] = loop.w_h[(j0 + j) * width + r];
    });
  };

  // Part u of the walk for rows [b0, b1) of chunk k's units.
  auto walk = [&](int64_t u, int k, int64_t b0, int64_t b1) {
    const Block block = split.Unit(k, b0, b1);
    const int j0 = block.j0, n = block.n;
    if (u > 0) {
      const int64_t t = order.At(u - 1);
      Multiply(b1 - b0, loop.d_rec + (t * batch + b0) * width, width, w_rows[k],
               dh + b0 * hidden + j0, hidden, true);
      if (rs) {  // no cotangent crosses a reset
        ZeroResetRows(rs, t, batch, hidden, block, dh);
        if (dc) ZeroResetRows(rs, t, batch, hidden, block, dc);
      }
    }
    if (u == steps) return;
    const int64_t t = order.At(u);
    const int64_t prev = loop.reverse ? t + 1 : t - 1;
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t row = (t * batch + b) * hidden + j0;
      float* d_in = loop.d_in + (t * batch + b) * width + j0;
      float* d_rec = loop.d_rec + (t * batch + b) * width + j0;
      if (!v[t * batch + b]) {
        for (int gate = 0; gate < kGates; ++gate) {
          std::fill_n(d_in + gate * hidden, n, 0.0f);
          if (d_rec != d_in) std::fill_n(d_rec + gate * hidden, n, 0.0f);
        }
        continue;
      }
      const float* h_prev =
          rs && rs[t * batch + b]
              ? zeros.data()
              : (t == first ? loop.h0 + b * hidden : y + (prev * batch + b) * hidden) + j0;
      update(BackwardRow{
          .n = n,
          .hidden = hidden,
          .kept = kKept > 0 ? KeptRow<kKept>(loop.kept, steps, batch, j0, n, t, b) : nullptr,
          .y = y + row,
          .h_prev = h_prev,
          .dy = loop.d_ys + row,
          .dh = dh + b * hidden + j0,
          .dc = dc ? dc + b * hidden + j0 : nullptr,
          .d_in = d_in,
          .d_rec = d_rec,
      });
    }
  };
  // Item k's part of the weights' gradients: w_h's after the walk, then w_i's and the biases'.
  auto gradients = [&](bool recurrent, int k) {
    if (!recurrent) {
      const auto [c0, c1] = ColumnPart(width, k, items);
      if (c1 == c0) return;
      InputWeightGradient(steps * batch, loop.features, inputs.data(), loop.d_in, width, c0,
                          c1 - c0, loop.d_w_i, loop.d_b);
      if (loop.d_b_rec) ColumnSums(steps * batch, loop.d_rec, width, c0, c1 - c0, loop.d_b_rec);
      return;
    }
    // Measured on AVX-512 (docs/design/cpu-kernels.md): at 128 units one sgemm over a
    // contiguous part of the columns took 2.5% less time than one per gate; at 32 units 8%
    // more.
    const bool per_gate = hidden < 64;
    const auto [c0, c1] = ColumnPart(per_gate ? hidden : width, k, items);
    for (int gate = 0; c1 > c0 && gate < (per_gate ? kGates : 1); ++gate) {
      RecurrentWeightGradient(steps, batch, hidden, loop.reverse, y, loop.h0, loop.d_rec, width,
                              gate * hidden + c0, c1 - c0, loop.d_w_h);
      reset_rows.Correct(loop.d_rec, width, gate * hidden + c0, c1 - c0, loop.d_w_h);
    }
    inputs.CopyPart(k, items);
  };
  if (split.by_rows()) {
    RunRounds(pool, items - 1, 4, items, 0, [&](int64_t round, int r, float*) {
      if (round == 0) {
        for (int k = r; k < split.unit_chunks(); k += items) pack(k);
      } else if (round == 1) {
        for (int64_t u = 0; u <= steps; ++u)
          for (int k = 0; k < split.unit_chunks(); ++k)
            walk(u, k, split.rows[r], split.rows[r + 1]);
      } else {
        gradients(round == 2, r);
      }
    });
  } else {
    RunRounds(pool, items - 1, steps + 3, items, 0, [&](int64_t u, int k, float*) {
      if (u == 0) pack(k);
      if (u <= steps) {
        walk(u, k, 0, batch);
      } else {
        gradients(u == steps + 1, k);
      }
    });
  }
}

}  // namespace jaxrnn

#endif  // JAXRNN_CSRC_RECURRENCE_H_
