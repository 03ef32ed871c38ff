// The recurrent loops of jaxrnn's fused SimpleRNN and LSTM paths as XLA FFI handlers for the CPU.
//
// XLA:CPU runs the body of a while loop one operation after another on one core, and every
// operation costs a dispatch; these handlers run the whole loop in one call and split each
// step's hidden units into chunks, one per core. A chunk multiplies the full previous state
// by its columns of the recurrent weights (OpenBLAS sgemm, single-threaded), computes its
// units' elementwise update and writes it; step t+1 starts when every chunk of step t is
// written (RunRounds). The backward handlers also return w_h's gradient. A chunk's
// arithmetic does not depend on the thread that runs it, so results repeat from run to run.
//
// Shapes (T steps, B batch, H hidden, G = gates * H): `xp` [T, B, G] (time-major) or
// [B, T, G] (batch-first), the input projections with every bias added; `valid` [T, B]: a
// step past a sequence's length copies the state and outputs zero. Outputs are time-major.
// The Python side (jaxrnn/_native.py) hands over OpenBLAS' cblas_sgemm before any call.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <utility>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// ---------------------------------------------------------------------------------- BLAS

using Sgemm = void (*)(int order, int trans_a, int trans_b, int m, int n, int k, float alpha,
                       const float* a, int lda, const float* b, int ldb, float beta, float* c,
                       int ldc);
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;  // the CBLAS enum values

Sgemm g_sgemm = nullptr;
int g_max_threads = 1;

// C[m, n] = beta * C + A[m, k] @ op(B) with op(B) = B[k, n] or B[n, k]^T (row-major).
void Gemm(bool trans_b, int m, int n, int k, const float* a, int lda, const float* b, int ldb,
          float beta, float* c, int ldc) {
  g_sgemm(kRowMajor, kNoTrans, trans_b ? kTrans : kNoTrans, m, n, k, 1.0f, a, lda, b, ldb, beta,
          c, ldc);
}

// The recurrent weights' gradient for `width` of its columns (from column `col`):
// d_w[:, col:col+width] = sum over steps of h_prev[t]^T @ d_z[t][:, col:col+width], where
// h_prev[t] is the state before step t: the previous step's output (ys [T, B, H], in the
// direction the steps ran), or h0 for the first step. Where a step is past a sequence's
// length its d_z row is zero, so the (wrong) h_prev row there adds nothing.
void RecurrentWeightGradient(int64_t steps, int64_t batch, int64_t hidden, bool reverse,
                             const float* ys, const float* h0, const float* dz, int64_t dz_width,
                             int col, int width, float* d_w) {
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

// The input weights' and the bias's gradients for `width` of their columns (from `col`):
// d_w_i[:, col:col+width] = sum over steps and rows of x^T @ d_z and d_b[col:col+width] the
// column sums of d_z ([T, B, dz_width]). x is [T, B, F] (time-major) or [B, T, F].
void InputWeightGradient(int64_t steps, int64_t batch, int64_t features, bool time_major,
                         const float* x, const float* dz, int64_t dz_width, int col, int width,
                         float* d_w_i, float* d_b) {
  std::fill_n(d_b + col, width, 0.0f);
  if (steps * batch == 0) {
    for (int64_t f = 0; f < features; ++f) std::fill_n(d_w_i + f * dz_width + col, width, 0.0f);
    return;
  }
  if (time_major) {
    g_sgemm(kRowMajor, kTrans, kNoTrans, features, width, steps * batch, 1.0f, x, features,
            dz + col, dz_width, 0.0f, d_w_i + col, dz_width);
  } else {  // step t's rows of x are B rows strided by T * F
    for (int64_t t = 0; t < steps; ++t)
      g_sgemm(kRowMajor, kTrans, kNoTrans, features, width, batch, 1.0f, x + t * features,
              steps * features, dz + t * batch * dz_width + col, dz_width, t ? 1.0f : 0.0f,
              d_w_i + col, dz_width);
  }
  float* sum = d_b + col;
  for (int64_t r = 0; r < steps * batch; ++r) {
    const float* row = dz + r * dz_width + col;
    for (int j = 0; j < width; ++j) sum[j] += row[j];
  }
}

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
std::vector<int> SplitUnits(int64_t batch, int64_t hidden, int gates) {
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

// One batch row of one LSTM step over units [0, n): `xp`, `bias` and `acc` hold the four
// gates' pre-activations (input projection, bias, recurrent product; gate g of unit j at
// g * stride + j, `bias` with `xp`'s stride).
JAXRNN_VECTOR_CLONES
void LstmRow(int n, const float* __restrict__ xp, const float* __restrict__ bias,
             int64_t xp_stride, const float* __restrict__ acc, int64_t acc_stride,
             float forget_bias,
             float* __restrict__ c, float* __restrict__ h, float* __restrict__ y,
             float* __restrict__ c_prev, float* __restrict__ gi, float* __restrict__ gf,
             float* __restrict__ gg, float* __restrict__ go) {
  for (int j = 0; j < n; ++j) {
    float i = Sigmoid(xp[j] + bias[j] + acc[j]);
    float f = Sigmoid(xp[xp_stride + j] + bias[xp_stride + j] + acc[acc_stride + j] +
                      forget_bias);
    float g = Tanh(xp[2 * xp_stride + j] + bias[2 * xp_stride + j] + acc[2 * acc_stride + j]);
    float o = Sigmoid(xp[3 * xp_stride + j] + bias[3 * xp_stride + j] + acc[3 * acc_stride + j]);
    float cp = c[j];
    float cn = f * cp + i * g;
    float hn = o * Tanh(cn);
    c_prev[j] = cp;
    gi[j] = i;
    gf[j] = f;
    gg[j] = g;
    go[j] = o;
    c[j] = cn;
    h[j] = hn;
    y[j] = hn;
  }
}

// One batch row of the LSTM's backward step over units [0, n). On entry `dh` holds the
// cotangent of this step's h from later steps; on exit it is zero (the caller adds
// d_z @ w_h^T) and `dc` holds the cotangent of the previous cell state.
JAXRNN_VECTOR_CLONES
void LstmBackwardRow(int n, const float* __restrict__ gi, const float* __restrict__ gf,
                     const float* __restrict__ gg, const float* __restrict__ go,
                     const float* __restrict__ c_prev, const float* __restrict__ dy,
                     float* __restrict__ dc, float* __restrict__ dh, float* __restrict__ dz,
                     int64_t dz_stride) {
  for (int j = 0; j < n; ++j) {
    float i = gi[j], f = gf[j], g = gg[j], o = go[j];
    float cp = c_prev[j];
    float tc = Tanh(f * cp + i * g);
    float dha = dh[j] + dy[j];
    float dca = dc[j] + dha * o * (1.0f - tc * tc);
    dz[j] = dca * g * i * (1.0f - i);
    dz[dz_stride + j] = dca * cp * f * (1.0f - f);
    dz[2 * dz_stride + j] = dca * i * (1.0f - g * g);
    dz[3 * dz_stride + j] = dha * tc * o * (1.0f - o);
    dc[j] = dca * f;
    dh[j] = 0.0f;
  }
}

JAXRNN_VECTOR_CLONES
void SimpleRow(int n, bool relu, const float* __restrict__ xp, const float* __restrict__ bias,
               const float* __restrict__ acc, float* __restrict__ h, float* __restrict__ y) {
  if (relu) {
    for (int j = 0; j < n; ++j) {
      float z = xp[j] + bias[j] + acc[j];
      h[j] = y[j] = z > 0.0f ? z : (z == z ? 0.0f : z);
    }
  } else {
    for (int j = 0; j < n; ++j) h[j] = y[j] = Tanh(xp[j] + bias[j] + acc[j]);
  }
}

JAXRNN_VECTOR_CLONES
void SimpleBackwardRow(int n, bool relu, const float* __restrict__ y,
                       const float* __restrict__ dy, float* __restrict__ dh,
                       float* __restrict__ dz) {
  for (int j = 0; j < n; ++j) {
    float g = dh[j] + dy[j];
    dz[j] = relu ? (y[j] > 0.0f ? g : 0.0f) : g * (1.0f - y[j] * y[j]);
    dh[j] = 0.0f;
  }
}

// ------------------------------------------------------------------------------ layout

struct Steps {
  int64_t steps, batch;
  bool reverse;
  int64_t At(int64_t s) const { return reverse ? steps - 1 - s : s; }  // s-th step run
};

// What the LSTM's forward pass keeps for its backward pass, chunk by chunk: the chunk of units
// [j0, j0 + n) owns floats [T * B * 5 * j0, T * B * 5 * (j0 + n)), laid out [T, B, 5, n] (the
// previous cell state, then the gates i, f, g, o), so that each row's writes are contiguous.
// jaxrnn/_native.py packs and unpacks the same layout for the XLA loops.
template <typename F>
inline F* KeptRow(F* kept, int64_t steps, int64_t batch, int j0, int n, int64_t t, int64_t b) {
  return kept + steps * batch * 5 * j0 + (t * batch + b) * 5 * n;
}

// Offset of xp[t, b, 0] for either layout.
inline int64_t XpOffset(bool time_major, int64_t t, int64_t b, int64_t steps, int64_t batch,
                        int64_t width) {
  return (time_major ? t * batch + b : b * steps + t) * width;
}

ffi::Error CheckGemm() {
  if (g_sgemm == nullptr) {
    return ffi::Error(ffi::ErrorCode::kFailedPrecondition,
                      "jaxrnn native kernels: no sgemm was registered");
  }
  return ffi::Error::Success();
}

// ------------------------------------------------------------------------------- LSTM

ffi::Error LstmForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> xp,
                           ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> w_h, ffi::Buffer<ffi::F32> c0,
                           ffi::Buffer<ffi::F32> h0, ffi::Buffer<ffi::PRED> valid,
                           ffi::ResultBuffer<ffi::F32> ys, ffi::ResultBuffer<ffi::F32> c_out,
                           ffi::ResultBuffer<ffi::F32> h_out, ffi::ResultBuffer<ffi::F32> kept,
                           float forget_bias, int32_t reverse, int32_t time_major) {
  if (auto err = CheckGemm(); err.failure()) return err;
  const int64_t steps = valid.dimensions()[0], batch = valid.dimensions()[1];
  const int64_t hidden = w_h.dimensions()[0], width = 4 * hidden;
  const Steps order{steps, batch, reverse != 0};
  const std::vector<int> starts = SplitUnits(batch, hidden, 4);
  const int chunks = static_cast<int>(starts.size()) - 1;
  int widest = 0;
  for (int k = 0; k < chunks; ++k) widest = std::max(widest, starts[k + 1] - starts[k]);

  const float* x = xp.typed_data();
  const float* bs = bias.typed_data();
  const float* w = w_h.typed_data();
  const bool* v = valid.typed_data();
  float* y = ys->typed_data();
  // An empty `kept` (inference: nothing will differentiate this call): each row's kept values
  // go to a scratch row that stays in L1 instead.
  float* kept_out = kept->element_count() > 0 ? kept->typed_data() : nullptr;
  float* c = c_out->typed_data();  // the cell state, updated in place
  std::memcpy(c, c0.typed_data(), sizeof(float) * batch * hidden);
  // Two state buffers: step s reads h[s % 2] and writes h[(s + 1) % 2].
  std::vector<float> h_buf(2 * batch * hidden);
  std::memcpy(h_buf.data(), h0.typed_data(), sizeof(float) * batch * hidden);
  // Each chunk's columns of w_h, gate by gate: [hidden, 4 * n].
  std::vector<std::vector<float>> w_chunk(chunks);
  for (int k = 0; k < chunks; ++k) {
    const int j0 = starts[k], n = starts[k + 1] - j0;
    w_chunk[k].resize(hidden * 4 * n);
    for (int64_t r = 0; r < hidden; ++r)
      for (int gate = 0; gate < 4; ++gate)
        std::memcpy(&w_chunk[k][(r * 4 + gate) * n], w + r * width + gate * hidden + j0,
                    sizeof(float) * n);
  }

  // scratch: the recurrent products [batch, 4 * n], then one row's discarded c, h and y, then
  // one row's discarded kept values when `kept` is empty.
  auto step = [&](int64_t s, int k, float* scratch) {
    const int j0 = starts[k], n = starts[k + 1] - j0;
    const int64_t t = order.At(s);
    const float* h_cur = &h_buf[(s % 2) * batch * hidden];
    float* h_next = &h_buf[((s + 1) % 2) * batch * hidden];
    float* acc = scratch;
    float *sc = acc + batch * 4 * n, *sh = sc + n, *sy = sh + n, *sk = sy + n;
    Gemm(false, batch, 4 * n, hidden, h_cur, hidden, w_chunk[k].data(), 4 * n, 0.0f, acc, 4 * n);
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t row = (t * batch + b) * hidden + j0;
      const float* x_row = x + XpOffset(time_major, t, b, steps, batch, width) + j0;
      float* c_row = c + b * hidden + j0;
      float* k_row = kept_out ? KeptRow(kept_out, steps, batch, j0, n, t, b) : sk;
      if (v[t * batch + b]) {
        LstmRow(n, x_row, bs + j0, hidden, acc + b * 4 * n, n, forget_bias, c_row,
                h_next + b * hidden + j0, y + row, k_row, k_row + n, k_row + 2 * n,
                k_row + 3 * n, k_row + 4 * n);
      } else {  // past the length: the state is copied and the output is zero
        std::memcpy(sc, c_row, sizeof(float) * n);
        LstmRow(n, x_row, bs + j0, hidden, acc + b * 4 * n, n, forget_bias, sc, sh, sy, k_row,
                k_row + n, k_row + 2 * n, k_row + 3 * n, k_row + 4 * n);
        std::memcpy(h_next + b * hidden + j0, h_cur + b * hidden + j0, sizeof(float) * n);
        std::fill_n(y + row, n, 0.0f);
      }
    }
  };
  RunRounds(pool, chunks - 1, steps, chunks, batch * 4 * widest + 8 * widest, step);
  std::memcpy(h_out->typed_data(), &h_buf[(steps % 2) * batch * hidden],
              sizeof(float) * batch * hidden);
  return ffi::Error::Success();
}

ffi::Error LstmBackwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> w_h,
                            ffi::Buffer<ffi::F32> kept, ffi::Buffer<ffi::PRED> valid,
                            ffi::Buffer<ffi::F32> d_ys, ffi::Buffer<ffi::F32> d_c,
                            ffi::Buffer<ffi::F32> d_h, ffi::Buffer<ffi::F32> ys,
                            ffi::Buffer<ffi::F32> h0, ffi::Buffer<ffi::F32> xs,
                            ffi::ResultBuffer<ffi::F32> d_z, ffi::ResultBuffer<ffi::F32> d_c0,
                            ffi::ResultBuffer<ffi::F32> d_h0, ffi::ResultBuffer<ffi::F32> d_w_h,
                            ffi::ResultBuffer<ffi::F32> d_w_i, ffi::ResultBuffer<ffi::F32> d_b,
                            int32_t reverse, int32_t time_major) {
  if (auto err = CheckGemm(); err.failure()) return err;
  const int64_t steps = valid.dimensions()[0], batch = valid.dimensions()[1];
  const int64_t hidden = w_h.dimensions()[0], width = 4 * hidden;
  // The backward pass runs the steps in the opposite order of the forward pass.
  const Steps order{steps, batch, reverse == 0};
  const std::vector<int> starts = SplitUnits(batch, hidden, 4);
  const int chunks = static_cast<int>(starts.size()) - 1;

  const float* w = w_h.typed_data();
  const float* kept_in = kept.typed_data();
  const bool* v = valid.typed_data();
  const float* dy = d_ys.typed_data();
  float* dz = d_z->typed_data();
  float* dc = d_c0->typed_data();  // running cotangents, updated in place
  float* dh = d_h0->typed_data();
  std::memcpy(dc, d_c.typed_data(), sizeof(float) * batch * hidden);
  std::memcpy(dh, d_h.typed_data(), sizeof(float) * batch * hidden);

  // Round u finishes step u - 1 for a chunk's units (dh += d_z @ w_h^T needs every unit's d_z
  // of that step: the previous round) and runs the pointwise part of step u; the last round
  // computes the chunk's columns of w_h's gradient and a part of w_i's and b's, once every d_z
  // is written.
  auto round = [&](int64_t u, int k, float*) {
    const int j0 = starts[k], n = starts[k + 1] - j0;
    if (u == steps + 1) {
      for (int gate = 0; gate < 4; ++gate)
        RecurrentWeightGradient(steps, batch, hidden, reverse != 0, ys.typed_data(),
                                h0.typed_data(), dz, width, gate * hidden + j0, n,
                                d_w_h->typed_data());
      const auto [c0, c1] = ColumnPart(width, k, chunks);
      InputWeightGradient(steps, batch, xs.dimensions()[2], time_major != 0, xs.typed_data(), dz,
                          width, c0, c1 - c0, d_w_i->typed_data(), d_b->typed_data());
      return;
    }
    if (u > 0) {
      const int64_t t = order.At(u - 1);
      Gemm(true, batch, n, width, dz + t * batch * width, width, w + j0 * width, width, 1.0f,
           dh + j0, hidden);
    }
    if (u == steps) return;
    const int64_t t = order.At(u);
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t row = (t * batch + b) * hidden + j0;
      float* dz_row = dz + (t * batch + b) * width + j0;
      if (v[t * batch + b]) {
        const float* k = KeptRow(kept_in, steps, batch, j0, n, t, b);
        LstmBackwardRow(n, k + n, k + 2 * n, k + 3 * n, k + 4 * n, k, dy + row,
                        dc + b * hidden + j0, dh + b * hidden + j0, dz_row, hidden);
      } else {  // a copied state: its cotangents pass through, the step gets none
        for (int gate = 0; gate < 4; ++gate) std::fill_n(dz_row + gate * hidden, n, 0.0f);
      }
    }
  };
  RunRounds(pool, chunks - 1, steps + 2, chunks, 0, round);
  return ffi::Error::Success();
}

// -------------------------------------------------------------------------- SimpleRNN

ffi::Error SimpleForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> xp,
                             ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> w_h, ffi::Buffer<ffi::F32> h0,
                             ffi::Buffer<ffi::PRED> valid, ffi::ResultBuffer<ffi::F32> ys,
                             ffi::ResultBuffer<ffi::F32> h_out, int32_t relu, int32_t reverse,
                             int32_t time_major) {
  if (auto err = CheckGemm(); err.failure()) return err;
  const int64_t steps = valid.dimensions()[0], batch = valid.dimensions()[1];
  const int64_t hidden = w_h.dimensions()[0];
  const Steps order{steps, batch, reverse != 0};
  const std::vector<int> starts = SplitUnits(batch, hidden, 1);
  const int chunks = static_cast<int>(starts.size()) - 1;
  int widest = 0;
  for (int k = 0; k < chunks; ++k) widest = std::max(widest, starts[k + 1] - starts[k]);

  const float* x = xp.typed_data();
  const float* bs = bias.typed_data();
  const float* w = w_h.typed_data();
  const bool* v = valid.typed_data();
  float* y = ys->typed_data();
  std::vector<float> h_buf(2 * batch * hidden);
  std::memcpy(h_buf.data(), h0.typed_data(), sizeof(float) * batch * hidden);

  auto step = [&](int64_t s, int k, float* acc) {
    const int j0 = starts[k], n = starts[k + 1] - j0;
    const int64_t t = order.At(s);
    const float* h_cur = &h_buf[(s % 2) * batch * hidden];
    float* h_next = &h_buf[((s + 1) % 2) * batch * hidden];
    Gemm(false, batch, n, hidden, h_cur, hidden, w + j0, hidden, 0.0f, acc, n);
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t row = (t * batch + b) * hidden + j0;
      const float* x_row = x + XpOffset(time_major, t, b, steps, batch, hidden) + j0;
      if (v[t * batch + b]) {
        SimpleRow(n, relu != 0, x_row, bs + j0, acc + b * n, h_next + b * hidden + j0, y + row);
      } else {
        std::memcpy(h_next + b * hidden + j0, h_cur + b * hidden + j0, sizeof(float) * n);
        std::fill_n(y + row, n, 0.0f);
      }
    }
  };
  RunRounds(pool, chunks - 1, steps, chunks, batch * widest, step);
  std::memcpy(h_out->typed_data(), &h_buf[(steps % 2) * batch * hidden],
              sizeof(float) * batch * hidden);
  return ffi::Error::Success();
}

ffi::Error SimpleBackwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> w_h,
                              ffi::Buffer<ffi::F32> ys, ffi::Buffer<ffi::PRED> valid,
                              ffi::Buffer<ffi::F32> d_ys, ffi::Buffer<ffi::F32> d_h,
                              ffi::Buffer<ffi::F32> h0, ffi::Buffer<ffi::F32> xs,
                              ffi::ResultBuffer<ffi::F32> d_z, ffi::ResultBuffer<ffi::F32> d_h0,
                              ffi::ResultBuffer<ffi::F32> d_w_h,
                              ffi::ResultBuffer<ffi::F32> d_w_i, ffi::ResultBuffer<ffi::F32> d_b,
                              int32_t relu, int32_t reverse, int32_t time_major) {
  if (auto err = CheckGemm(); err.failure()) return err;
  const int64_t steps = valid.dimensions()[0], batch = valid.dimensions()[1];
  const int64_t hidden = w_h.dimensions()[0];
  const Steps order{steps, batch, reverse == 0};
  const std::vector<int> starts = SplitUnits(batch, hidden, 1);
  const int chunks = static_cast<int>(starts.size()) - 1;

  const float* w = w_h.typed_data();
  const float* y = ys.typed_data();
  const bool* v = valid.typed_data();
  const float* dy = d_ys.typed_data();
  float* dz = d_z->typed_data();
  float* dh = d_h0->typed_data();
  std::memcpy(dh, d_h.typed_data(), sizeof(float) * batch * hidden);

  auto round = [&](int64_t u, int k, float*) {  // as in the LSTM's backward pass
    const int j0 = starts[k], n = starts[k + 1] - j0;
    if (u == steps + 1) {
      RecurrentWeightGradient(steps, batch, hidden, reverse != 0, y, h0.typed_data(), dz, hidden,
                              j0, n, d_w_h->typed_data());
      const auto [c0, c1] = ColumnPart(hidden, k, chunks);
      InputWeightGradient(steps, batch, xs.dimensions()[2], time_major != 0, xs.typed_data(), dz,
                          hidden, c0, c1 - c0, d_w_i->typed_data(), d_b->typed_data());
      return;
    }
    if (u > 0) {
      const int64_t t = order.At(u - 1);
      Gemm(true, batch, n, hidden, dz + t * batch * hidden, hidden, w + j0 * hidden, hidden,
           1.0f, dh + j0, hidden);
    }
    if (u == steps) return;
    const int64_t t = order.At(u);
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t row = (t * batch + b) * hidden + j0;
      if (v[t * batch + b]) {
        SimpleBackwardRow(n, relu != 0, y + row, dy + row, dh + b * hidden + j0, dz + row);
      } else {
        std::fill_n(dz + row, n, 0.0f);
      }
    }
  };
  RunRounds(pool, chunks - 1, steps + 2, chunks, 0, round);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxrnnLstmForward, LstmForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("forget_bias")
                                  .Attr<int32_t>("reverse")
                                  .Attr<int32_t>("time_major"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxrnnLstmBackward, LstmBackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int32_t>("reverse")
                                  .Attr<int32_t>("time_major"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxrnnSimpleForward, SimpleForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int32_t>("relu")
                                  .Attr<int32_t>("reverse")
                                  .Attr<int32_t>("time_major"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxrnnSimpleBackward, SimpleBackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int32_t>("relu")
                                  .Attr<int32_t>("reverse")
                                  .Attr<int32_t>("time_major"));

extern "C" {
// Called once from Python before any handler runs.
__attribute__((visibility("default"))) void jaxrnn_set_sgemm(void* fn) {
  g_sgemm = reinterpret_cast<Sgemm>(fn);
}
__attribute__((visibility("default"))) void jaxrnn_set_max_threads(int n) {
  g_max_threads = n < 1 ? 1 : n;
}
}
