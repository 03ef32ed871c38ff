// Shared by jaxrnn's CPU kernels (simple.cc, lstm.cc, gru.cc): OpenBLAS' sgemm, the thread
// rounds, the chunking of hidden units, the vectorisable exp/sigmoid/tanh and the layouts.
//
// XLA:CPU runs the body of a while loop one operation after another on one core, and every
// operation costs a dispatch; these handlers run the whole loop in one call and split each
// step's hidden units into chunks, one per core. A chunk multiplies the full previous state
// by its columns of the recurrent weights (OpenBLAS sgemm, single-threaded), computes its
// units' elementwise update and writes it; step t+1 starts when every chunk of step t is
// written (RunRounds). The backward handlers also return the weights' gradients. A chunk's
// arithmetic does not depend on the thread that runs it, so results repeat from run to run.
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

// C[m, n] = beta * C + A[m, k] @ op(B) with op(B) = B[k, n] or B[n, k]^T (row-major).
inline void Gemm(bool trans_b, int m, int n, int k, const float* a, int lda, const float* b,
                 int ldb, float beta, float* c, int ldc) {
  g_sgemm(kRowMajor, kNoTrans, trans_b ? kTrans : kNoTrans, m, n, k, 1.0f, a, lda, b, ldb, beta,
          c, ldc);
}

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

// Zeroes units [j0, j0 + n) of the rows b of `state` ([B, H]) where resets[t, b] (`resets`
// non-null): the state a step starts from after a reset, or the cotangent that reaches the
// state before it.
inline void ZeroResetRows(const bool* resets, int64_t t, int64_t batch, int64_t hidden, int j0,
                          int n, float* state) {
  for (int64_t b = 0; b < batch; ++b)
    if (resets[t * batch + b]) std::fill_n(state + b * hidden + j0, n, 0.0f);
}

// sums[col:col+width] = the sums over `rows` rows of z[:, col:col+width] (z: [rows, z_width]),
// accumulated in double (thousands of rows; a float running sum would lose digits).
inline void ColumnSums(int64_t rows, const float* z, int64_t z_width, int col, int width,
                       float* sums) {
  std::vector<double> sum(width, 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = z + r * z_width + col;
    for (int j = 0; j < width; ++j) sum[j] += row[j];
  }
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

// Each chunk's columns of w_h ([H, gates * H], gate blocks of H), gate by gate: [H, gates * n]
// per chunk of n units, so that one sgemm computes every gate of the chunk's units.
inline std::vector<std::vector<float>> ChunkColumns(const float* w, int64_t hidden, int gates,
                                                    const std::vector<int>& starts) {
  std::vector<std::vector<float>> out(starts.size() - 1);
  for (size_t k = 0; k + 1 < starts.size(); ++k) {
    const int j0 = starts[k], n = starts[k + 1] - j0;
    out[k].resize(hidden * gates * n);
    for (int64_t r = 0; r < hidden; ++r)
      for (int gate = 0; gate < gates; ++gate)
        std::memcpy(&out[k][(r * gates + gate) * n], w + (r * gates + gate) * hidden + j0,
                    sizeof(float) * n);
  }
  return out;
}

// ---------------------------------------------------------------------------- pointwise
// exp to about 1 ulp (range reduction by ln 2, a degree-6 polynomial), written so that the
// compiler vectorises loops over it; NaN propagates through every function.

inline float Exp(float x) {
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

inline float Sigmoid(float x) { return 1.0f / (1.0f + Exp(-x)); }

inline float Tanh(float x) {
  float a = std::fabs(x);
  float e = Exp(-2.0f * a);
  float t = (1.0f - e) / (1.0f + e);
  float x2 = x * x;  // the series near 0, where 1 - e cancels
  float s =
      x * (1.0f + x2 * (-1.0f / 3 + x2 * (2.0f / 15 + x2 * (-17.0f / 315 + x2 * (62.0f / 2835)))));
  return a < 0.25f ? s : std::copysign(t, x);
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
// One build serves every x86-64 machine: AVX-512, AVX2 and baseline versions, picked at load.
#define JAXRNN_VECTOR_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define JAXRNN_VECTOR_CLONES
#endif

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

}  // namespace jaxrnn

#endif  // JAXRNN_CSRC_RECURRENCE_H_
