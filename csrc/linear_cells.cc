// MinGRU, MinLSTM and the RG-LRU over a sequence in one pass: each step's gates from its
// projected input, the coefficients (a, c) of h = a * h_prev + c, the sequence semantics, and
// the recurrence; and the derivative of all of it in one reverse pass. The linear-recurrence
// cells' parallel path runs these on a CPU (jaxrnn/cells/_linear_kernel.py binds them); the
// cells' definitions are their `coefficients` in jaxrnn/cells/minimal.py and rglru.py, which
// the tests hold these to.
//
// Shapes: `k` [B, T, G * H] (batch-first) or [T, B, G * H] (`time_major`): the projected
// input x @ w_i + b, G gate blocks of H columns (MinGRU [z | h~], MinLSTM [f | i | h~],
// RG-LRU [r | i | x~]); `unit` [H]: a per-unit parameter (the RG-LRU's c * softplus(-a_param)),
// empty for the others; `h0` [B, H]; `valid` [B, T] or [T, B] bool (in k's layout), or empty:
// a step where False keeps the state (a = 1, c = 0); `resets` in the same layout, or empty:
// a = 0 where True (the state is dropped, and no cotangent crosses the step); `keep` [B, H],
// or empty: the recurrent dropout's mask, a *= keep. The states h are [B, T, H] or [T, B, H],
// unmasked (the caller zeroes the outputs past each length). Attribute `reverse` (int32):
// visit the steps from the last to the first; `cell`: 0 MinGRU, 1 MinLSTM, 2 RG-LRU.
//
// JaxrnnLinearCellForward: k, unit, h0, valid, resets, keep -> h.
// JaxrnnLinearCellBackward: k, unit, h, h0, valid, resets, keep, and the cotangent g of h ->
// d_k, d_h0 and d_unit ([B, H], each batch element's share; empty without `unit`):
// d[t] = g[t] + a[next] * d[next], d_a = d * h[prev], d_c = d, then through the semantics and
// the gates to d_k. The recurrent dropout's mask gets no gradient.
// JaxrnnLinearCellSequenceForward / Backward: the same with x [B, T, I] (or [T, B, I]), w_i
// [I, G * H] and b [G * H] in place of k, which they compute a chunk of steps at a time and
// never write out; the backward pass returns d_x (or nothing, given an empty result), d_w_i,
// d_b, d_h0 and d_unit.

#include "linear_blocks.h"

// The row loops' arrays never overlap: vectorise them without run-time alias checks (inlined,
// the loops lose their arguments' __restrict__, and a row touches too many arrays for GCC's
// checks).
#if defined(__clang__)
#define JAXRNN_INDEPENDENT _Pragma("clang loop vectorize(assume_safety)")
#else
#define JAXRNN_INDEPENDENT _Pragma("GCC ivdep")
#endif

namespace jaxrnn {
namespace {

// g(v) = v + 0.5 for v >= 0, sigmoid(v) below: the papers' positive candidate activation.
// g(v) and g'(v) from s = sigmoid(v); both sides are computed, so that a loop over them has no
// branch and vectorises.
JAXRNN_INLINE float Candidate(float v, float s) { return v >= 0.0f ? v + 0.5f : s; }
JAXRNN_INLINE float CandidateSlope(float v, float s) { return v >= 0.0f ? 1.0f : s * (1.0f - s); }

// A cell: kGates blocks of `h` columns in k; Coefficients(k, h, j, u, a, c) gives column j's
// (a, c), u its unit's parameter where kUnit (else 0); Derivative(k, h, j, u, d_a, d_c, d_k,
// d_u) writes column j of d_k and the derivative d_u by u given the cotangents of (a, c), and
// returns a (the backward pass needs it next, and it shares the exps).

// a = 1 - z, c = z * g(k_h), z = sigmoid(k_z); k's blocks [z | h~].
struct MinGru {
  static constexpr int kGates = 2;
  static constexpr bool kUnit = false;
  JAXRNN_INLINE static void Coefficients(const float* k, int64_t h, int j, float, float& a,
                                         float& c) {
    const float z = Sigmoid(k[j]), v = k[h + j];
    a = 1.0f - z;
    c = z * Candidate(v, Sigmoid(v));
  }
  JAXRNN_INLINE static float Derivative(const float* k, int64_t h, int j, float, float d_a,
                                        float d_c, float* d_k, float&) {
    const float z = Sigmoid(k[j]), v = k[h + j], s = Sigmoid(v);
    const float d_z = d_c * Candidate(v, s) - d_a;
    d_k[j] = d_z * z * (1.0f - z);
    d_k[h + j] = d_c * z * CandidateSlope(v, s);
    return 1.0f - z;
  }
};

// a = f / (f + i), c = i / (f + i) * g(k_h), f = sigmoid(k_f), i = sigmoid(k_i); k's blocks
// [f | i | h~].
struct MinLstm {
  static constexpr int kGates = 3;
  static constexpr bool kUnit = false;
  JAXRNN_INLINE static void Coefficients(const float* k, int64_t h, int j, float, float& a,
                                         float& c) {
    const float f = Sigmoid(k[j]), i = Sigmoid(k[h + j]), v = k[2 * h + j];
    const float inverse = 1.0f / (f + i);
    a = f * inverse;
    c = i * inverse * Candidate(v, Sigmoid(v));
  }
  JAXRNN_INLINE static float Derivative(const float* k, int64_t h, int j, float, float d_a,
                                        float d_c, float* d_k, float&) {
    const float f = Sigmoid(k[j]), i = Sigmoid(k[h + j]), v = k[2 * h + j], s = Sigmoid(v);
    const float total = f + i, inverse = 1.0f / total;
    const float cross = (d_a - d_c * Candidate(v, s)) * inverse * inverse;
    d_k[j] = i * cross * f * (1.0f - f);  // d/df = i * cross, d/di = -f * cross
    d_k[h + j] = -f * cross * i * (1.0f - i);
    d_k[2 * h + j] = d_c * i * inverse * CandidateSlope(v, s);
    return f * inverse;
  }
};

// 1 - a^2 for a = exp(log_a), accurate as a nears 1: -expm1(2 log_a), a polynomial where
// |2 log_a| < 0.5 and 1 - a * a elsewhere (both sides computed, for the vectoriser).
JAXRNN_INLINE float OneMinusSquare(float log_a, float a) {
  const float x = 2.0f * log_a;
  const float series =
      x * (1.0f + x * (1.0f / 2 + x * (1.0f / 6 + x * (1.0f / 24 + x * (1.0f / 120 +
          x * (1.0f / 720 + x * (1.0f / 5040 + x * (1.0f / 40320))))))));
  return std::fabs(x) < 0.5f ? -series : 1.0f - a * a;
}

// log a = -u * r, a = exp(log a), c = sqrt(1 - a^2) * i * x~ (1 - a^2 = -expm1(2 log a), kept
// at least FLT_MIN), r = sigmoid(k_r), i = sigmoid(k_i), u = c_param * softplus(-a_param);
// k's blocks [r | i | x~].
struct Rglru {
  static constexpr int kGates = 3;
  static constexpr bool kUnit = true;
  static constexpr float kTiny = 1.17549435e-38f;
  JAXRNN_INLINE static void Coefficients(const float* k, int64_t h, int j, float u, float& a,
                                         float& c) {
    const float r = Sigmoid(k[j]), i = Sigmoid(k[h + j]), log_a = -u * r;
    a = Exp(log_a);
    c = std::sqrt(std::max(OneMinusSquare(log_a, a), kTiny)) * i * k[2 * h + j];
  }
  JAXRNN_INLINE static float Derivative(const float* k, int64_t h, int j, float u, float d_a,
                                        float d_c, float* d_k, float& d_u) {
    const float r = Sigmoid(k[j]), i = Sigmoid(k[h + j]), x = k[2 * h + j], log_a = -u * r;
    const float a = Exp(log_a), v = OneMinusSquare(log_a, a);
    const float s = std::sqrt(std::max(v, kTiny));
    // d s / d log a = -a^2 / s where v > FLT_MIN (below it s is held constant)
    const float d_log_a = d_a * a - (v > kTiny ? d_c * i * x * a * a / s : 0.0f);
    d_k[j] = -d_log_a * u * r * (1.0f - r);
    d_u = -d_log_a * r;
    d_k[h + j] = d_c * s * x * i * (1.0f - i);
    d_k[2 * h + j] = d_c * s * i;
    return a;
  }
};

// What every step of a block shares: its batch element's rows, columns [c0, c0 + n).
struct Lane {
  const float* keep;      // keep[b, c0:], or ones
  const float* unit;      // unit[c0:], or null
  float* d_unit;          // d_unit[b, c0:], or null (the forward pass, or no unit)
  const bool* valid;      // valid at the batch element's first row, or null
  const bool* resets;     // likewise
  int64_t h_stride;       // floats between rows of h
  int64_t flag_stride;    // entries between rows of valid and resets
  int64_t hidden;         // H: columns between gate blocks
  int64_t steps;
  bool reverse;
  // 0 where the state resets before step t, else 1.
  float Carried(int64_t t) const {
    return resets != nullptr && resets[t * flag_stride] ? 0.0f : 1.0f;
  }
  bool Skipped(int64_t t) const { return valid != nullptr && !valid[t * flag_stride]; }
};

// Steps t0..t0+count-1 of a lane, with their k (and d_k): the whole sequence in place, or a
// chunk of steps projected into a buffer.
struct Steps {
  const float* k;  // k of step t0, column c0
  float* d_k;      // likewise, or null in the forward pass
  int64_t k_stride;
  int64_t t0, count;
  // The step visited i-th of these in the forward pass.
  int64_t At(const Lane& lane, int64_t i) const {
    return t0 + (lane.reverse ? count - 1 - i : i);
  }
};

// One step: h = a * keep * carried * h_prev + c, `carried` 0 where the state resets, else 1.
template <typename Cell>
JAXRNN_ROW_LOOP void ForwardRow(int n, const float* __restrict__ k, int64_t hidden,
                                const float* __restrict__ unit, const float* __restrict__ keep,
                                float carried, const float* __restrict__ h_prev,
                                float* __restrict__ h) {
  JAXRNN_INDEPENDENT
  for (int j = 0; j < n; ++j) {
    float a, c;
    Cell::Coefficients(k, hidden, j, Cell::kUnit ? unit[j] : 0.0f, a, c);
    h[j] = a * keep[j] * carried * h_prev[j] + c;
  }
}

// The forward pass over `steps`, in the order of the lane's direction, from the state h_in
// before them; h at the lane's row 0.
template <typename Cell>
JAXRNN_ROW_LOOP void ForwardSteps(int n, const Lane& lane, Steps steps, const float* h_in,
                                  float* h) {
  const float* h_prev = h_in;
  for (int64_t i = 0; i < steps.count; ++i) {
    const int64_t t = steps.At(lane, i);
    float* row = h + t * lane.h_stride;
    if (lane.Skipped(t)) {
      std::memcpy(row, h_prev, n * sizeof(float));
    } else {
      ForwardRow<Cell>(n, steps.k + (t - steps.t0) * steps.k_stride, lane.hidden, lane.unit,
                       lane.keep, lane.Carried(t), h_prev, row);
    }
    h_prev = row;
  }
}

// One step of the derivative: d = g + a_next * d_next (in place in `d`, `a` holding a_next),
// then the step's own effective a into `a`, and d_k.
template <typename Cell>
JAXRNN_ROW_LOOP void BackwardRow(int n, const float* __restrict__ k, int64_t hidden,
                                 const float* __restrict__ unit, const float* __restrict__ keep,
                                 float carried, const float* __restrict__ g,
                                 const float* __restrict__ h_prev, float* __restrict__ a,
                                 float* __restrict__ d, float* __restrict__ d_k,
                                 float* __restrict__ d_unit) {
  JAXRNN_INDEPENDENT
  for (int j = 0; j < n; ++j) {
    const float dj = a[j] * d[j] + g[j];
    const float scale = keep[j] * carried;
    float d_u = 0.0f;
    a[j] = Cell::Derivative(k, hidden, j, Cell::kUnit ? unit[j] : 0.0f, dj * h_prev[j] * scale,
                            dj, d_k, d_u) *
           scale;
    if constexpr (Cell::kUnit) d_unit[j] += d_u;
    d[j] = dj;
  }
}

struct BackwardArrays {
  const float *h, *h0, *g;  // the lane's rows of h and g (row 0), and its h0
  float *a, *d;  // the effective a of the step visited next, and its cotangent (n floats each)
};

// The backward pass reads g and h a row per step, walking them from the last step to the
// first, faster than the hardware's prefetcher follows: each step asks for the rows it will
// read kAhead steps later (the MinGRU's backward kernel took 0.84x the time so).
constexpr int64_t kAhead = 8;

JAXRNN_INLINE void PrefetchRows(int n, const Lane& lane, const float* g, const float* h,
                                int64_t t) {
  const int64_t ahead = lane.reverse ? t + kAhead : t - kAhead;
  if (ahead < 0 || ahead >= lane.steps) return;
  for (int j = 0; j < n; j += 16) {  // a 64-byte line at a time
    __builtin_prefetch(g + ahead * lane.h_stride + j);
    __builtin_prefetch(h + ahead * lane.h_stride + j);
  }
}

// The derivative over `steps`, in the opposite order of their forward visit: d_k of each into
// steps.d_k, and x.a, x.d carried from the step visited after them to the first of them.
template <typename Cell>
JAXRNN_ROW_LOOP void BackwardSteps(int n, const Lane& lane, Steps steps, BackwardArrays x) {
  for (int64_t i = steps.count - 1; i >= 0; --i) {
    const int64_t t = steps.At(lane, i);
    const int64_t before = lane.reverse ? t + 1 : t - 1;  // the step visited before t
    const bool first = lane.reverse ? before == lane.steps : before < 0;
    const float* h_prev = first ? x.h0 : x.h + before * lane.h_stride;
    const float* g = x.g + t * lane.h_stride;
    float* d_k = steps.d_k + (t - steps.t0) * steps.k_stride;
    PrefetchRows(n, lane, x.g, x.h, t);
    if (lane.Skipped(t)) {
      for (int j = 0; j < n; ++j) {  // a = 1, c = 0: the cotangent passes on whole
        x.d[j] = x.a[j] * x.d[j] + g[j];
        x.a[j] = 1.0f;
      }
      for (int gate = 0; gate < Cell::kGates; ++gate)
        std::fill_n(d_k + gate * lane.hidden, n, 0.0f);
      continue;
    }
    BackwardRow<Cell>(n, steps.k + (t - steps.t0) * steps.k_stride, lane.hidden, lane.unit,
                      lane.keep, lane.Carried(t), g, h_prev, x.a, x.d, d_k, lane.d_unit);
  }
}

// A step of a cell's kernel costs some ten times a step of the plain recurrence (an exp per
// gate): measured 0.8-1.8 ns per state value on one AVX-512 core, against 0.1.
constexpr int64_t kCost = 10;

struct Layout {
  int64_t batch, steps, hidden;
  bool time_major;
  int64_t Row(int64_t b) const { return time_major ? b : b * steps; }  // row of (b, t = 0)
  int64_t RowStep() const { return time_major ? batch : 1; }           // rows between steps
};

// What a call passes besides k (or x, w_i and b): its arrays and attributes.
struct Call {
  const ffi::Buffer<ffi::F32>& unit;
  const ffi::Buffer<ffi::F32>& h0;
  const ffi::AnyBuffer &valid, &resets, &keep;
  int32_t cell, reverse, time_major;
};

// work(Cell{}) for the call's cell (its code checked by CheckShapes).
template <typename Work>
void ForCell(int32_t cell, const Work& work) {
  if (cell == 0) return work(MinGru{});
  if (cell == 1) return work(MinLstm{});
  work(Rglru{});
}

// The layout of k ([B, T, G * H] or [T, B, G * H], `k` its dimensions) into `layout`, or why
// the call's arrays do not fit.
ffi::Error CheckShapes(ffi::Span<const int64_t> k, const Call& call, Layout& layout) {
  if (call.cell < 0 || call.cell > 2)
    return ffi::Error::InvalidArgument("jaxrnn_linear_cell: cell must be 0, 1 or 2");
  int gates = 0;
  bool unit = false;
  ForCell(call.cell, [&](auto cell) {
    gates = decltype(cell)::kGates;
    unit = decltype(cell)::kUnit;
  });
  if (k.size() != 3 || k[2] % gates != 0)
    return ffi::Error::InvalidArgument("jaxrnn_linear_cell: k must be [B, T, G * H]");
  layout = Layout{call.time_major ? k[1] : k[0], call.time_major ? k[0] : k[1], k[2] / gates,
                  call.time_major != 0};
  const int64_t rows = layout.batch * layout.steps, state = layout.batch * layout.hidden;
  auto fits = [](const ffi::AnyBuffer& x, int64_t count) {
    return x.element_count() == 0 || static_cast<int64_t>(x.element_count()) == count;
  };
  if (static_cast<int64_t>(call.h0.element_count()) != state || !fits(call.valid, rows) ||
      !fits(call.resets, rows) || !fits(call.keep, state))
    return ffi::Error::InvalidArgument(
        "jaxrnn_linear_cell: h0 and keep must be [B, H], valid and resets [B, T] in k's layout "
        "or empty");
  if (static_cast<int64_t>(call.unit.element_count()) != (unit ? layout.hidden : 0))
    return ffi::Error::InvalidArgument(
        "jaxrnn_linear_cell: unit must be [H] for the RG-LRU and empty for the others");
  return ffi::Error::Success();
}

template <typename T>
const T* OrNull(const ffi::AnyBuffer& x) {
  return x.element_count() == 0 ? nullptr : static_cast<const T*>(x.untyped_data());
}

// A call's sequence semantics: valid and resets (or null), the recurrent dropout's mask [B, H]
// (or ones [H] shared by every row), the direction; and the per-unit parameter with, in the
// backward pass, its derivative d_unit [B, H] (null without one).
class Semantics {
 public:
  Semantics(const Layout& l, const Call& call, float* d_unit = nullptr)
      : layout_(l),
        valid_(OrNull<bool>(call.valid)),
        resets_(OrNull<bool>(call.resets)),
        keep_(OrNull<float>(call.keep)),
        keep_stride_(keep_ == nullptr ? 0 : l.hidden),
        unit_(call.unit.element_count() == 0 ? nullptr : call.unit.typed_data()),
        d_unit_(unit_ == nullptr ? nullptr : d_unit),
        reverse_(call.reverse != 0) {
    if (keep_ == nullptr) {
      ones_.assign(l.hidden, 1.0f);
      keep_ = ones_.data();
    }
    if (d_unit_ != nullptr) std::fill_n(d_unit_, l.batch * l.hidden, 0.0f);
  }
  Semantics(const Semantics&) = delete;
  Semantics& operator=(const Semantics&) = delete;

  // Batch element b's lane, columns from c0.
  Lane LaneOf(int64_t b, int c0) const {
    const int64_t row = layout_.Row(b), step = layout_.RowStep();
    return Lane{keep_ + b * keep_stride_ + c0,
                unit_ == nullptr ? nullptr : unit_ + c0,
                d_unit_ == nullptr ? nullptr : d_unit_ + b * layout_.hidden + c0,
                valid_ == nullptr ? nullptr : valid_ + row,
                resets_ == nullptr ? nullptr : resets_ + row,
                step * layout_.hidden,
                step,
                layout_.hidden,
                layout_.steps,
                reverse_};
  }

 private:
  Layout layout_;
  const bool *valid_, *resets_;
  const float* keep_;
  int64_t keep_stride_;
  const float* unit_;
  float* d_unit_;
  bool reverse_;
  std::vector<float> ones_;
};

// The whole sequence of a lane from k in place (batch element b's row 0, column c0).
Steps InPlace(const Layout& l, int gates, int64_t b, int c0, const float* k, float* d_k) {
  const int64_t at = l.Row(b) * gates * l.hidden + c0;
  return Steps{k + at, d_k == nullptr ? nullptr : d_k + at, l.RowStep() * gates * l.hidden, 0,
               l.steps};
}

template <typename Cell>
void Forward(ffi::ThreadPool& pool, const Layout& l, const Semantics& sem, const float* k,
             const float* h0, float* h) {
  ForBlocks(pool, Split(l.batch, l.steps, l.hidden, kCost), [&](int64_t b, int c0, int c1) {
    Vectorised<ForwardSteps<Cell>>(c1 - c0, sem.LaneOf(b, c0),
                                   InPlace(l, Cell::kGates, b, c0, k, nullptr),
                                   h0 + b * l.hidden + c0, h + l.Row(b) * l.hidden + c0);
  });
}

template <typename Cell>
void Backward(ffi::ThreadPool& pool, const Layout& l, const Semantics& sem, const float* k,
              const float* h, const float* h0, const float* g, float* d_k, float* d_h0) {
  ForBlocks(pool, Split(l.batch, l.steps, l.hidden, kCost), [&](int64_t b, int c0, int c1) {
    const int n = c1 - c0;
    const int64_t at = l.Row(b) * l.hidden + c0;
    std::vector<float> carried(2 * static_cast<size_t>(n), 0.0f);
    const BackwardArrays x{h + at, h0 + b * l.hidden + c0, g + at, carried.data(),
                           carried.data() + n};
    Vectorised<BackwardSteps<Cell>>(n, sem.LaneOf(b, c0),
                                    InPlace(l, Cell::kGates, b, c0, k, d_k), x);
    for (int j = 0; j < n; ++j) d_h0[b * l.hidden + c0 + j] = x.a[j] * x.d[j];
  });
}

ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> unit,
                       ffi::Buffer<ffi::F32> h0, ffi::AnyBuffer valid, ffi::AnyBuffer resets,
                       ffi::AnyBuffer keep, ffi::ResultBuffer<ffi::F32> h, int32_t cell,
                       int32_t reverse, int32_t time_major) {
  const Call call{unit, h0, valid, resets, keep, cell, reverse, time_major};
  Layout l;
  if (ffi::Error error = CheckShapes(k.dimensions(), call, l); error.failure()) return error;
  const Semantics sem(l, call);
  ForCell(cell, [&](auto c) {
    Forward<decltype(c)>(pool, l, sem, k.typed_data(), h0.typed_data(), h->typed_data());
  });
  return ffi::Error::Success();
}

ffi::Error BackwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> unit,
                        ffi::Buffer<ffi::F32> h, ffi::Buffer<ffi::F32> h0, ffi::AnyBuffer valid,
                        ffi::AnyBuffer resets, ffi::AnyBuffer keep, ffi::Buffer<ffi::F32> g,
                        ffi::ResultBuffer<ffi::F32> d_k, ffi::ResultBuffer<ffi::F32> d_h0,
                        ffi::ResultBuffer<ffi::F32> d_unit, int32_t cell, int32_t reverse,
                        int32_t time_major) {
  const Call call{unit, h0, valid, resets, keep, cell, reverse, time_major};
  Layout l;
  if (ffi::Error error = CheckShapes(k.dimensions(), call, l); error.failure()) return error;
  const Semantics sem(l, call, d_unit->typed_data());
  ForCell(cell, [&](auto c) {
    Backward<decltype(c)>(pool, l, sem, k.typed_data(), h.typed_data(), h0.typed_data(),
                          g.typed_data(), d_k->typed_data(), d_h0->typed_data());
  });
  return ffi::Error::Success();
}

// ------------------------------------------------------------- with the input projection
// The whole layer over a sequence: k = x @ w_i + b computed a chunk of steps at a time (the
// small matmul into a buffer that stays in cache), then the chunk's steps as above; the
// backward pass likewise recomputes k, writes the chunk's d_k into a buffer and turns it into
// its share of d_w_i, d_b and d_x (two sgemms) before the next chunk. Nothing of the size of
// k is written to memory. The work is split over whole sequences (batch elements), each
// thread keeping its own d_w_i and d_b, added up at the end.

struct Projection {
  const float* x;  // [B, T, I] or [T, B, I]
  const float* w;  // [I, G * H]
  const float* b;  // [G * H]
  int64_t inputs;
  PackedColumns packed;  // w, packed for the small matmul (small_matmul.h) once per call

  Projection(const float* x, const float* w, const float* b, int64_t inputs, int64_t width)
      : x(x), w(w), b(b), inputs(inputs), packed(inputs, width, [&](int64_t i, float* out) {
          std::memcpy(out, w + i * width, width * sizeof(float));
        }) {}
};

// The steps a chunk holds: its k buffer about 128 KiB.
inline int64_t ChunkSteps(int64_t width) {
  return std::clamp<int64_t>(32768 / std::max<int64_t>(width, 1), 8, 256);
}

// Items of work (one per thread) and the batch elements each takes: b = item, item + items...
inline int SequenceItems(const Layout& l) {
  const int64_t work = l.batch * l.steps * l.hidden * kCost / kElementsPerThread;
  return static_cast<int>(std::clamp<int64_t>(std::min<int64_t>(work, l.batch), 1,
                                              std::max(g_max_threads, 1)));
}

// A lane's chunks of steps in the order the forward pass visits them, each the Steps of a k
// buffer [count, G * H] (and a d_k buffer likewise).
struct Chunks {
  int64_t steps, chunk, count;
  bool reverse;
  Chunks(const Layout& l, int64_t width, bool reverse)
      : steps(l.steps),
        chunk(ChunkSteps(width)),
        count((l.steps + chunk - 1) / chunk),
        reverse(reverse) {}
  // The c-th chunk visited.
  Steps Visited(int64_t c, const float* k, float* d_k, int64_t width) const {
    const int64_t first = (reverse ? count - 1 - c : c) * chunk;
    return Steps{k, d_k, width, first, std::min(chunk, steps - first)};
  }
};

// k[s, :] = x[t0 + s, :] @ w_i + b for the chunk's rows s = 0..count-1 (its steps of batch
// element `b`, in time order), into `k` [count, G * H].
inline void ProjectChunk(const Layout& l, const Projection& p, int64_t b, const Steps& steps,
                         float* k) {
  const int64_t width = steps.k_stride;
  for (int64_t s = 0; s < steps.count; ++s)
    std::memcpy(k + s * width, p.b, width * sizeof(float));
  const int64_t row = l.Row(b) + steps.t0 * l.RowStep();
  Multiply(steps.count, p.x + row * p.inputs, l.RowStep() * p.inputs, p.packed, k, width, true);
}

template <typename Cell>
void SequenceForward(ffi::ThreadPool& pool, const Layout& l, const Semantics& sem,
                     const Projection& p, const float* h0, float* h) {
  const int items = SequenceItems(l);
  const int64_t width = Cell::kGates * l.hidden;
  RunRounds(pool, items - 1, 1, items, 0, [&](int64_t, int item, float*) {
    std::vector<float> k(ChunkSteps(width) * width);
    for (int64_t b = item; b < l.batch; b += items) {
      const Lane lane = sem.LaneOf(b, 0);
      const Chunks chunks(l, width, lane.reverse);
      float* hb = h + l.Row(b) * l.hidden;
      const float* h_in = h0 + b * l.hidden;
      for (int64_t c = 0; c < chunks.count; ++c) {
        const Steps steps = chunks.Visited(c, k.data(), nullptr, width);
        ProjectChunk(l, p, b, steps, k.data());
        Vectorised<ForwardSteps<Cell>>(static_cast<int>(l.hidden), lane, steps, h_in, hb);
        h_in = hb + steps.At(lane, steps.count - 1) * lane.h_stride;
      }
    }
  });
}

struct SequenceGradients {
  float *d_x, *d_w, *d_b, *d_h0;  // d_x null: not asked for
};

template <typename Cell>
void SequenceBackward(ffi::ThreadPool& pool, const Layout& l, const Semantics& sem,
                      const Projection& p, const float* h, const float* h0, const float* g,
                      SequenceGradients out) {
  const int items = SequenceItems(l);
  const int64_t width = Cell::kGates * l.hidden;
  const int64_t w_size = p.inputs * width;
  // Item 0 accumulates into the outputs, the others into their own parts, added at the end.
  std::vector<float> parts((items - 1) * (w_size + width));
  std::fill_n(out.d_w, w_size, 0.0f);
  std::fill_n(out.d_b, width, 0.0f);
  RunRounds(pool, items - 1, 1, items, 0, [&](int64_t, int item, float*) {
    float* d_w = item == 0 ? out.d_w : parts.data() + (item - 1) * (w_size + width);
    float* d_b = item == 0 ? out.d_b : d_w + w_size;
    const int64_t buffer = ChunkSteps(width) * width;
    std::vector<float> k(buffer), d_k(buffer), carried(2 * l.hidden);
    const int ld_x = static_cast<int>(l.RowStep() * p.inputs);
    for (int64_t b = item; b < l.batch; b += items) {
      const Lane lane = sem.LaneOf(b, 0);
      const Chunks chunks(l, width, lane.reverse);
      std::fill(carried.begin(), carried.end(), 0.0f);
      const BackwardArrays x{h + l.Row(b) * l.hidden, h0 + b * l.hidden,
                             g + l.Row(b) * l.hidden, carried.data(), carried.data() + l.hidden};
      for (int64_t c = chunks.count - 1; c >= 0; --c) {  // the chunks in the opposite order
        const Steps steps = chunks.Visited(c, k.data(), d_k.data(), width);
        const int count = static_cast<int>(steps.count);
        ProjectChunk(l, p, b, steps, k.data());
        Vectorised<BackwardSteps<Cell>>(static_cast<int>(l.hidden), lane, steps, x);
        const int64_t x_at = (l.Row(b) + steps.t0 * l.RowStep()) * p.inputs;
        g_sgemm(kRowMajor, kTrans, kNoTrans, static_cast<int>(p.inputs),
                static_cast<int>(width), count, 1.0f, p.x + x_at, ld_x, d_k.data(),
                static_cast<int>(width), 1.0f, d_w, static_cast<int>(width));
        if (out.d_x != nullptr)
          g_sgemm(kRowMajor, kNoTrans, kTrans, count, static_cast<int>(p.inputs),
                  static_cast<int>(width), 1.0f, d_k.data(), static_cast<int>(width), p.w,
                  static_cast<int>(width), 0.0f, out.d_x + x_at, ld_x);
        for (int64_t s = 0; s < count; ++s)
          for (int64_t j = 0; j < width; ++j) d_b[j] += d_k[s * width + j];
      }
      for (int64_t j = 0; j < l.hidden; ++j)
        out.d_h0[b * l.hidden + j] = carried[j] * carried[l.hidden + j];
    }
  });
  for (int item = 1; item < items; ++item) {
    const float* part = parts.data() + (item - 1) * (w_size + width);
    for (int64_t j = 0; j < w_size; ++j) out.d_w[j] += part[j];
    for (int64_t j = 0; j < width; ++j) out.d_b[j] += part[w_size + j];
  }
}

// The layout of x [B, T, I] (or [T, B, I]) with w_i [I, G * H] and b [G * H], and the
// call's other arrays, into `layout`; or why they do not fit.
ffi::Error CheckProjection(const ffi::Buffer<ffi::F32>& x, const ffi::Buffer<ffi::F32>& w,
                           const ffi::Buffer<ffi::F32>& b, const Call& call, Layout& layout) {
  if (ffi::Error error = CheckGemm(); error.failure()) return error;
  const auto xd = x.dimensions(), wd = w.dimensions();
  if (xd.size() != 3 || wd.size() != 2 || wd[0] != xd[2] ||
      wd[1] != static_cast<int64_t>(b.element_count()))
    return ffi::Error::InvalidArgument(
        "jaxrnn_linear_cell_sequence: x must be [B, T, I], w_i [I, G * H], b [G * H]");
  const int64_t k[3] = {xd[0], xd[1], wd[1]};
  return CheckShapes(ffi::Span<const int64_t>(k, 3), call, layout);
}

ffi::Error SequenceForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                               ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> b,
                               ffi::Buffer<ffi::F32> unit, ffi::Buffer<ffi::F32> h0,
                               ffi::AnyBuffer valid, ffi::AnyBuffer resets, ffi::AnyBuffer keep,
                               ffi::ResultBuffer<ffi::F32> h, int32_t cell, int32_t reverse,
                               int32_t time_major) {
  const Call call{unit, h0, valid, resets, keep, cell, reverse, time_major};
  Layout l;
  if (ffi::Error error = CheckProjection(x, w, b, call, l); error.failure()) return error;
  const Semantics sem(l, call);
  const Projection p(x.typed_data(), w.typed_data(), b.typed_data(), x.dimensions()[2],
                     w.dimensions()[1]);
  ForCell(cell, [&](auto c) {
    SequenceForward<decltype(c)>(pool, l, sem, p, h0.typed_data(), h->typed_data());
  });
  return ffi::Error::Success();
}

ffi::Error SequenceBackwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                                ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> b,
                                ffi::Buffer<ffi::F32> unit, ffi::Buffer<ffi::F32> h,
                                ffi::Buffer<ffi::F32> h0, ffi::AnyBuffer valid,
                                ffi::AnyBuffer resets, ffi::AnyBuffer keep,
                                ffi::Buffer<ffi::F32> g, ffi::ResultBuffer<ffi::F32> d_x,
                                ffi::ResultBuffer<ffi::F32> d_w, ffi::ResultBuffer<ffi::F32> d_b,
                                ffi::ResultBuffer<ffi::F32> d_h0,
                                ffi::ResultBuffer<ffi::F32> d_unit, int32_t cell,
                                int32_t reverse, int32_t time_major) {
  const Call call{unit, h0, valid, resets, keep, cell, reverse, time_major};
  Layout l;
  if (ffi::Error error = CheckProjection(x, w, b, call, l); error.failure()) return error;
  const Semantics sem(l, call, d_unit->typed_data());
  const Projection p(x.typed_data(), w.typed_data(), b.typed_data(), x.dimensions()[2],
                     w.dimensions()[1]);
  float* wanted_d_x = d_x->element_count() == 0 ? nullptr : d_x->typed_data();
  const SequenceGradients out{wanted_d_x, d_w->typed_data(), d_b->typed_data(),
                              d_h0->typed_data()};
  ForCell(cell, [&](auto c) {
    SequenceBackward<decltype(c)>(pool, l, sem, p, h.typed_data(), h0.typed_data(),
                                  g.typed_data(), out);
  });
  return ffi::Error::Success();
}

}  // namespace
}  // namespace jaxrnn

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxrnnLinearCellForward, jaxrnn::ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // k
                                  .Arg<ffi::Buffer<ffi::F32>>()  // unit [H] or empty
                                  .Arg<ffi::Buffer<ffi::F32>>()  // h0 [B, H]
                                  .Arg<ffi::AnyBuffer>()         // valid (bool) or empty
                                  .Arg<ffi::AnyBuffer>()         // resets (bool) or empty
                                  .Arg<ffi::AnyBuffer>()         // keep (f32) [B, H] or empty
                                  .Ret<ffi::Buffer<ffi::F32>>()  // h
                                  .Attr<int32_t>("cell")
                                  .Attr<int32_t>("reverse")
                                  .Attr<int32_t>("time_major"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxrnnLinearCellBackward, jaxrnn::BackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // k
                                  .Arg<ffi::Buffer<ffi::F32>>()  // unit [H] or empty
                                  .Arg<ffi::Buffer<ffi::F32>>()  // h
                                  .Arg<ffi::Buffer<ffi::F32>>()  // h0 [B, H]
                                  .Arg<ffi::AnyBuffer>()         // valid (bool) or empty
                                  .Arg<ffi::AnyBuffer>()         // resets (bool) or empty
                                  .Arg<ffi::AnyBuffer>()         // keep (f32) [B, H] or empty
                                  .Arg<ffi::Buffer<ffi::F32>>()  // g, h's shape
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d_k, k's shape
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d_h0 [B, H]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d_unit [B, H] or empty
                                  .Attr<int32_t>("cell")
                                  .Attr<int32_t>("reverse")
                                  .Attr<int32_t>("time_major"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxrnnLinearCellSequenceForward, jaxrnn::SequenceForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_i [I, G * H]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // b [G * H]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // unit [H] or empty
                                  .Arg<ffi::Buffer<ffi::F32>>()  // h0 [B, H]
                                  .Arg<ffi::AnyBuffer>()         // valid (bool) or empty
                                  .Arg<ffi::AnyBuffer>()         // resets (bool) or empty
                                  .Arg<ffi::AnyBuffer>()         // keep (f32) [B, H] or empty
                                  .Ret<ffi::Buffer<ffi::F32>>()  // h
                                  .Attr<int32_t>("cell")
                                  .Attr<int32_t>("reverse")
                                  .Attr<int32_t>("time_major"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxrnnLinearCellSequenceBackward, jaxrnn::SequenceBackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_i
                                  .Arg<ffi::Buffer<ffi::F32>>()  // b
                                  .Arg<ffi::Buffer<ffi::F32>>()  // unit
                                  .Arg<ffi::Buffer<ffi::F32>>()  // h
                                  .Arg<ffi::Buffer<ffi::F32>>()  // h0
                                  .Arg<ffi::AnyBuffer>()         // valid (bool) or empty
                                  .Arg<ffi::AnyBuffer>()         // resets (bool) or empty
                                  .Arg<ffi::AnyBuffer>()         // keep (f32) or empty
                                  .Arg<ffi::Buffer<ffi::F32>>()  // g, h's shape
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d_x, x's shape, or empty
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d_w_i
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d_b
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d_h0
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d_unit [B, H] or empty
                                  .Attr<int32_t>("cell")
                                  .Attr<int32_t>("reverse")
                                  .Attr<int32_t>("time_major"));
