// MinGRU and MinLSTM over a sequence in one pass: each step's gates from its projected input,
// the coefficients (a, c) of h = a * h_prev + c, the sequence semantics, and the recurrence;
// and the derivative of all of it in one reverse pass. The linear-recurrence cells' parallel
// path runs these on a CPU (jaxrnn/cells/_linear_kernel.py binds them); the cells' definitions
// are their `coefficients` in jaxrnn/cells/minimal.py, which the tests hold these to.
//
// Shapes: `k` [B, T, G * H] (batch-first) or [T, B, G * H] (`time_major`): the projected
// input x @ w_i + b, G gate blocks of H columns (MinGRU [z | h~], MinLSTM [f | i | h~]);
// `h0` [B, H]; `valid` [B, T] or [T, B] bool (in k's layout), or empty: a step where False
// keeps the state (a = 1, c = 0); `resets` in the same layout, or empty: a = 0 where True
// (the state is dropped, and no cotangent crosses the step); `keep` [B, H], or empty: the
// recurrent dropout's mask, a *= keep. The states h are [B, T, H] or [T, B, H], unmasked
// (the caller zeroes the outputs past each length). Attribute `reverse` (int32): visit the
// steps from the last to the first; `cell`: 0 MinGRU, 1 MinLSTM.
//
// JaxrnnLinearCellForward: k, h0, valid, resets, keep -> h.
// JaxrnnLinearCellBackward: k, h, h0, valid, resets, keep, and the cotangent g of h -> d_k
// and d_h0: d[t] = g[t] + a[next] * d[next], d_a = d * h[prev], d_c = d, then through the
// semantics and the gates to d_k. The recurrent dropout's mask gets no gradient.
// JaxrnnLinearCellSequenceForward / Backward: the same with x [B, T, I] (or [T, B, I]), w_i
// [I, G * H] and b [G * H] in place of k, which they compute a chunk of steps at a time and
// never write out; the backward pass returns d_x (or nothing, given an empty result), d_w_i,
// d_b and d_h0.

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
inline float Candidate(float v, float s) { return v >= 0.0f ? v + 0.5f : s; }
inline float CandidateSlope(float v, float s) { return v >= 0.0f ? 1.0f : s * (1.0f - s); }

// A cell: kGates blocks of `h` columns in k; Coefficients(k, h, j, a, c) gives column j's
// (a, c); Derivative(k, h, j, d_a, d_c, d_k) writes column j of d_k given the cotangents of
// (a, c), and returns a (the backward pass needs it next, and it shares the exps).

// a = 1 - z, c = z * g(k_h), z = sigmoid(k_z); k's blocks [z | h~].
struct MinGru {
  static constexpr int kGates = 2;
  static void Coefficients(const float* k, int64_t h, int j, float& a, float& c) {
    const float z = Sigmoid(k[j]), v = k[h + j];
    a = 1.0f - z;
    c = z * Candidate(v, Sigmoid(v));
  }
  static float Derivative(const float* k, int64_t h, int j, float d_a, float d_c, float* d_k) {
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
  static void Coefficients(const float* k, int64_t h, int j, float& a, float& c) {
    const float f = Sigmoid(k[j]), i = Sigmoid(k[h + j]), v = k[2 * h + j];
    const float total = f + i;
    a = f / total;
    c = i / total * Candidate(v, Sigmoid(v));
  }
  static float Derivative(const float* k, int64_t h, int j, float d_a, float d_c, float* d_k) {
    const float f = Sigmoid(k[j]), i = Sigmoid(k[h + j]), v = k[2 * h + j], s = Sigmoid(v);
    const float total = f + i, inverse = 1.0f / total;
    const float cross = (d_a - d_c * Candidate(v, s)) * inverse * inverse;
    d_k[j] = i * cross * f * (1.0f - f);  // d/df = i * cross, d/di = -f * cross
    d_k[h + j] = -f * cross * i * (1.0f - i);
    d_k[2 * h + j] = d_c * i * inverse * CandidateSlope(v, s);
    return f * inverse;
  }
};

// What every step of a block shares: its batch element's rows, columns [c0, c0 + n).
struct Lane {
  const float* k;          // k at the block's first column, row 0 of its batch element
  const float* keep;       // keep[b, c0:], or ones
  const bool* valid;       // valid at the batch element's first row, or null
  const bool* resets;      // likewise
  int64_t k_stride;        // floats between rows of k (G * H * row step)
  int64_t h_stride;        // floats between rows of h
  int64_t flag_stride;     // entries between rows of valid and resets
  int64_t hidden;          // H: columns between gate blocks
  int64_t steps;
  bool reverse;
  int64_t At(int64_t s) const { return reverse ? steps - 1 - s : s; }
  // 0 where the state resets before step t, else 1.
  float Carried(int64_t t) const {
    return resets != nullptr && resets[t * flag_stride] ? 0.0f : 1.0f;
  }
};

// One step: h = a * keep * carried * h_prev + c, `carried` 0 where the state resets, else 1.
template <typename Cell>
JAXRNN_ROW_LOOP void ForwardRow(int n, const float* __restrict__ k, int64_t hidden,
                                const float* __restrict__ keep, float carried,
                                const float* __restrict__ h_prev, float* __restrict__ h) {
  JAXRNN_INDEPENDENT
  for (int j = 0; j < n; ++j) {
    float a, c;
    Cell::Coefficients(k, hidden, j, a, c);
    h[j] = a * keep[j] * carried * h_prev[j] + c;
  }
}

template <typename Cell>
JAXRNN_ROW_LOOP void ForwardColumns(int n, Lane lane, const float* h0, float* h) {
  const float* h_prev = h0;
  for (int64_t s = 0; s < lane.steps; ++s) {
    const int64_t t = lane.At(s);
    float* row = h + t * lane.h_stride;
    if (lane.valid != nullptr && !lane.valid[t * lane.flag_stride]) {
      std::memcpy(row, h_prev, n * sizeof(float));
    } else {
      ForwardRow<Cell>(n, lane.k + t * lane.k_stride, lane.hidden, lane.keep, lane.Carried(t),
                       h_prev, row);
    }
    h_prev = row;
  }
}

// One step of the derivative: d = g + a_next * d_next (in place in `d`, `a` holding a_next),
// then the step's own effective a into `a`, and d_k.
template <typename Cell>
JAXRNN_ROW_LOOP void BackwardRow(int n, const float* __restrict__ k, int64_t hidden,
                                 const float* __restrict__ keep, float carried,
                                 const float* __restrict__ g, const float* __restrict__ h_prev,
                                 float* __restrict__ a, float* __restrict__ d,
                                 float* __restrict__ d_k) {
  JAXRNN_INDEPENDENT
  for (int j = 0; j < n; ++j) {
    const float dj = a[j] * d[j] + g[j];
    const float scale = keep[j] * carried;
    a[j] = Cell::Derivative(k, hidden, j, dj * h_prev[j] * scale, dj, d_k) * scale;
    d[j] = dj;
  }
}

struct BackwardArrays {
  const float *h, *h0, *g;
  float *d_k, *d_h0;
  float *a, *d;  // scratch, n floats each
};

template <typename Cell>
JAXRNN_ROW_LOOP void BackwardColumns(int n, Lane lane, BackwardArrays x) {
  std::fill_n(x.a, n, 0.0f);
  std::fill_n(x.d, n, 0.0f);
  for (int64_t s = lane.steps - 1; s >= 0; --s) {
    const int64_t t = lane.At(s);
    const float* h_prev = s == 0 ? x.h0 : x.h + lane.At(s - 1) * lane.h_stride;
    const float* g = x.g + t * lane.h_stride;
    float* d_k = x.d_k + t * lane.k_stride;
    if (lane.valid != nullptr && !lane.valid[t * lane.flag_stride]) {
      for (int j = 0; j < n; ++j) {  // a = 1, c = 0: the cotangent passes on whole
        x.d[j] = x.a[j] * x.d[j] + g[j];
        x.a[j] = 1.0f;
      }
      for (int gate = 0; gate < Cell::kGates; ++gate)
        std::fill_n(d_k + gate * lane.hidden, n, 0.0f);
      continue;
    }
    BackwardRow<Cell>(n, lane.k + t * lane.k_stride, lane.hidden, lane.keep, lane.Carried(t), g,
                      h_prev, x.a, x.d, d_k);
  }
  for (int j = 0; j < n; ++j) x.d_h0[j] = x.a[j] * x.d[j];
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

// The layout of k ([B, T, G * H] or [T, B, G * H]) into `layout`, or why the arrays do not fit.
ffi::Error CheckShapes(ffi::Span<const int64_t> k, int64_t h0_count, size_t valid,
                       size_t resets, size_t keep, int gates, bool time_major, Layout& layout) {
  if (k.size() != 3 || k[2] % gates != 0)
    return ffi::Error::InvalidArgument("jaxrnn_linear_cell: k must be [B, T, G * H]");
  layout = Layout{time_major ? k[1] : k[0], time_major ? k[0] : k[1], k[2] / gates, time_major};
  const int64_t rows = layout.batch * layout.steps, state = layout.batch * layout.hidden;
  if (h0_count != state || (valid != 0 && static_cast<int64_t>(valid) != rows) ||
      (resets != 0 && static_cast<int64_t>(resets) != rows) ||
      (keep != 0 && static_cast<int64_t>(keep) != state))
    return ffi::Error::InvalidArgument(
        "jaxrnn_linear_cell: h0 and keep must be [B, H], valid and resets [B, T] in k's layout "
        "or empty");
  return ffi::Error::Success();
}

// `keep` [B, H] (or [H] with `keep_stride` 0).
Lane LaneOf(const Layout& l, int gates, int64_t b, int c0, const float* k, const float* keep,
            int64_t keep_stride, const bool* valid, const bool* resets) {
  const int64_t row = l.Row(b), step = l.RowStep();
  return Lane{k + row * gates * l.hidden + c0,
              keep + b * keep_stride + c0,
              valid == nullptr ? nullptr : valid + row,
              resets == nullptr ? nullptr : resets + row,
              step * gates * l.hidden,
              step * l.hidden,
              step,
              l.hidden,
              l.steps,
              false};
}

template <typename T>
const T* OrNull(const ffi::AnyBuffer& x) {
  return x.element_count() == 0 ? nullptr : static_cast<const T*>(x.untyped_data());
}

// The recurrent dropout's mask [B, H], or ones [H] shared by every row where there is none.
struct Keep {
  Keep(const float* mask, int64_t hidden) {
    if (mask == nullptr) ones.assign(hidden, 1.0f);
    data = mask == nullptr ? ones.data() : mask;
    stride = mask == nullptr ? 0 : hidden;
  }
  std::vector<float> ones;
  const float* data;
  int64_t stride;
};

template <typename Cell>
ffi::Error Forward(ffi::ThreadPool& pool, const Layout& l, const float* k, const float* h0,
                   const bool* valid, const bool* resets, const float* mask, float* h,
                   bool reverse) {
  const Keep keep(mask, l.hidden);
  ForBlocks(pool, Split(l.batch, l.steps, l.hidden, kCost), [&](int64_t b, int c0, int c1) {
    Lane lane = LaneOf(l, Cell::kGates, b, c0, k, keep.data, keep.stride, valid, resets);
    lane.reverse = reverse;
    const int64_t row = l.Row(b);
    Vectorised<ForwardColumns<Cell>>(c1 - c0, lane, h0 + b * l.hidden + c0,
                                     h + row * l.hidden + c0);
  });
  return ffi::Error::Success();
}

template <typename Cell>
ffi::Error Backward(ffi::ThreadPool& pool, const Layout& l, const float* k, const float* h,
                    const float* h0, const bool* valid, const bool* resets, const float* mask,
                    const float* g, float* d_k, float* d_h0, bool reverse) {
  const Keep keep(mask, l.hidden);
  if (l.steps == 0) {
    std::fill_n(d_h0, l.batch * l.hidden, 0.0f);
    return ffi::Error::Success();
  }
  ForBlocks(pool, Split(l.batch, l.steps, l.hidden, kCost), [&](int64_t b, int c0, int c1) {
    Lane lane = LaneOf(l, Cell::kGates, b, c0, k, keep.data, keep.stride, valid, resets);
    lane.reverse = reverse;
    const int64_t at = l.Row(b) * l.hidden + c0;
    std::vector<float> scratch(2 * static_cast<size_t>(c1 - c0));
    BackwardArrays x{h + at,
                     h0 + b * l.hidden + c0,
                     g + at,
                     d_k + l.Row(b) * Cell::kGates * l.hidden + c0,
                     d_h0 + b * l.hidden + c0,
                     scratch.data(),
                     scratch.data() + (c1 - c0)};
    Vectorised<BackwardColumns<Cell>>(c1 - c0, lane, x);
  });
  return ffi::Error::Success();
}

ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> h0,
                       ffi::AnyBuffer valid, ffi::AnyBuffer resets, ffi::AnyBuffer keep,
                       ffi::ResultBuffer<ffi::F32> h, int32_t cell, int32_t reverse,
                       int32_t time_major) {
  const int gates = cell == 0 ? MinGru::kGates : MinLstm::kGates;
  Layout layout;
  const ffi::Error checked = CheckShapes(k.dimensions(), h0.element_count(),
                                         valid.element_count(), resets.element_count(),
                                         keep.element_count(), gates, time_major != 0, layout);
  if (checked.failure()) return checked;
  auto run = cell == 0 ? Forward<MinGru> : Forward<MinLstm>;
  return run(pool, layout, k.typed_data(), h0.typed_data(), OrNull<bool>(valid),
             OrNull<bool>(resets), OrNull<float>(keep), h->typed_data(), reverse != 0);
}

ffi::Error BackwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> h,
                        ffi::Buffer<ffi::F32> h0, ffi::AnyBuffer valid, ffi::AnyBuffer resets,
                        ffi::AnyBuffer keep, ffi::Buffer<ffi::F32> g,
                        ffi::ResultBuffer<ffi::F32> d_k, ffi::ResultBuffer<ffi::F32> d_h0,
                        int32_t cell, int32_t reverse, int32_t time_major) {
  const int gates = cell == 0 ? MinGru::kGates : MinLstm::kGates;
  Layout layout;
  const ffi::Error checked = CheckShapes(k.dimensions(), h0.element_count(),
                                         valid.element_count(), resets.element_count(),
                                         keep.element_count(), gates, time_major != 0, layout);
  if (checked.failure()) return checked;
  auto run = cell == 0 ? Backward<MinGru> : Backward<MinLstm>;
  return run(pool, layout, k.typed_data(), h.typed_data(), h0.typed_data(),
             OrNull<bool>(valid), OrNull<bool>(resets), OrNull<float>(keep), g.typed_data(),
             d_k->typed_data(), d_h0->typed_data(), reverse != 0);
}


// ------------------------------------------------------------- with the input projection
// The whole layer over a sequence: k = x @ w_i + b computed a chunk of steps at a time (an
// sgemm into a buffer that stays in cache), then the chunk's steps as above; the backward
// pass likewise recomputes k, writes the chunk's d_k into a buffer and turns it into its
// share of d_w_i, d_b and d_x (two sgemms) before the next chunk. Nothing of the size of k
// is written to memory. The work is split over whole sequences (batch elements), each thread
// keeping its own d_w_i and d_b, added up at the end.

struct Projection {
  const float* x;  // [B, T, I] or [T, B, I]
  const float* w;  // [I, G * H]
  const float* b;  // [G * H]
  int64_t inputs;
  const PackedColumns* packed = nullptr;  // w, packed for the small matmul
};

// w [I, G * H] packed for Multiply (small_matmul.h), once per call.
inline PackedColumns Pack(const Projection& p, int64_t width) {
  return PackedColumns(p.inputs, width, [&](int64_t i, float* out) {
    std::memcpy(out, p.w + i * width, width * sizeof(float));
  });
}

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

// k[s, :] = x[t0 + s, :] @ w_i + b for the chunk's rows s = 0..count-1 (steps t0..t0+count-1
// of batch element `b`, in time order), into `k` [count, G * H].
inline void ProjectChunk(const Layout& l, const Projection& p, int gates, int64_t b, int64_t t0,
                         int64_t count, float* k) {
  const int64_t width = gates * l.hidden;
  for (int64_t s = 0; s < count; ++s) std::memcpy(k + s * width, p.b, width * sizeof(float));
  const int64_t row = l.Row(b) + t0 * l.RowStep();
  Multiply(count, p.x + row * p.inputs, l.RowStep() * p.inputs, *p.packed, k, width, true);
}

// The chunk's steps t0..t0+count-1 in the order visited, from the state h_in before it.
template <typename Cell>
JAXRNN_ROW_LOOP void SequenceForwardChunk(int n, const float* k, int64_t count, bool reverse,
                                          const Lane& lane, int64_t t0, const float* h_in,
                                          float* h) {
  const float* h_prev = h_in;
  for (int64_t i = 0; i < count; ++i) {
    const int64_t s = reverse ? count - 1 - i : i, t = t0 + s;
    float* row = h + t * lane.h_stride;
    if (lane.valid != nullptr && !lane.valid[t * lane.flag_stride]) {
      std::memcpy(row, h_prev, n * sizeof(float));
    } else {
      ForwardRow<Cell>(n, k + s * Cell::kGates * lane.hidden, lane.hidden, lane.keep,
                       lane.Carried(t), h_prev, row);
    }
    h_prev = row;
  }
}

template <typename Cell>
ffi::Error SequenceForward(ffi::ThreadPool& pool, const Layout& l, const Projection& p,
                           const float* h0, const bool* valid, const bool* resets,
                           const float* mask, float* h, bool reverse) {
  const Keep keep(mask, l.hidden);
  const int items = SequenceItems(l);
  const int64_t width = Cell::kGates * l.hidden, chunk = ChunkSteps(width);
  const int64_t chunks = (l.steps + chunk - 1) / chunk;
  const PackedColumns packed = Pack(p, width);
  Projection pp = p;
  pp.packed = &packed;
  RunRounds(pool, items - 1, 1, items, 0, [&](int64_t, int item, float*) {
    std::vector<float> k(chunk * width);
    for (int64_t b = item; b < l.batch; b += items) {
      const Lane lane =
          LaneOf(l, Cell::kGates, b, 0, nullptr, keep.data, keep.stride, valid, resets);
      float* hb = h + l.Row(b) * l.hidden;
      const float* h_in = h0 + b * l.hidden;
      for (int64_t c = 0; c < chunks; ++c) {
        const int64_t first = (reverse ? chunks - 1 - c : c) * chunk;
        const int64_t count = std::min(chunk, l.steps - first);
        ProjectChunk(l, pp, Cell::kGates, b, first, count, k.data());
        Vectorised<SequenceForwardChunk<Cell>>(static_cast<int>(l.hidden), k.data(), count,
                                               reverse, lane, first, h_in, hb);
        h_in = hb + (reverse ? first : first + count - 1) * lane.h_stride;
      }
    }
  });
  return ffi::Error::Success();
}

struct ChunkBackward {
  const float *h, *h0, *g;  // the batch element's rows (h, g) and its h0
  float *a, *d;             // the effective a of the step visited next, and its cotangent
  float* d_k;               // [count, G * H]
};

// The chunk's steps in the opposite order of their visit: d_k of each into x.d_k.
template <typename Cell>
JAXRNN_ROW_LOOP void SequenceBackwardChunk(int n, const float* k, int64_t count, bool reverse,
                                           const Lane& lane, int64_t t0, ChunkBackward x) {
  const int64_t width = Cell::kGates * lane.hidden;
  for (int64_t i = count - 1; i >= 0; --i) {  // i: the order of the forward visit
    const int64_t s = reverse ? count - 1 - i : i, t = t0 + s;
    const int64_t before = reverse ? t + 1 : t - 1;  // the step visited before t
    const bool first = reverse ? before == lane.steps : before < 0;
    const float* h_prev = first ? x.h0 : x.h + before * lane.h_stride;
    const float* g = x.g + t * lane.h_stride;
    float* d_k = x.d_k + s * width;
    if (lane.valid != nullptr && !lane.valid[t * lane.flag_stride]) {
      for (int j = 0; j < n; ++j) {  // a = 1, c = 0: the cotangent passes on whole
        x.d[j] = x.a[j] * x.d[j] + g[j];
        x.a[j] = 1.0f;
      }
      std::fill_n(d_k, width, 0.0f);
      continue;
    }
    BackwardRow<Cell>(n, k + s * width, lane.hidden, lane.keep, lane.Carried(t), g, h_prev, x.a,
                      x.d, d_k);
  }
}

struct SequenceGradients {
  float *d_x, *d_w, *d_b, *d_h0;  // d_x null: not asked for
};

template <typename Cell>
ffi::Error SequenceBackward(ffi::ThreadPool& pool, const Layout& l, const Projection& p,
                            const float* h, const float* h0, const bool* valid,
                            const bool* resets, const float* mask, const float* g,
                            SequenceGradients out, bool reverse) {
  const Keep keep(mask, l.hidden);
  const int items = SequenceItems(l);
  const int64_t width = Cell::kGates * l.hidden, chunk = ChunkSteps(width);
  const int64_t chunks = (l.steps + chunk - 1) / chunk;
  const int64_t w_size = p.inputs * width;
  // Item 0 accumulates into the outputs, the others into their own parts, added at the end.
  std::vector<float> parts((items - 1) * (w_size + width));
  std::fill_n(out.d_w, w_size, 0.0f);
  std::fill_n(out.d_b, width, 0.0f);
  const PackedColumns packed = Pack(p, width);
  Projection pp = p;
  pp.packed = &packed;
  RunRounds(pool, items - 1, 1, items, 0, [&](int64_t, int item, float*) {
    float* d_w = item == 0 ? out.d_w : parts.data() + (item - 1) * (w_size + width);
    float* d_b = item == 0 ? out.d_b : d_w + w_size;
    std::vector<float> k(chunk * width), d_k(chunk * width), carried(2 * l.hidden);
    const int ld_x = static_cast<int>(l.RowStep() * p.inputs);
    for (int64_t b = item; b < l.batch; b += items) {
      const Lane lane =
          LaneOf(l, Cell::kGates, b, 0, nullptr, keep.data, keep.stride, valid, resets);
      std::fill(carried.begin(), carried.end(), 0.0f);
      const ChunkBackward x{h + l.Row(b) * l.hidden, h0 + b * l.hidden, g + l.Row(b) * l.hidden,
                            carried.data(), carried.data() + l.hidden, d_k.data()};
      for (int64_t c = chunks - 1; c >= 0; --c) {  // the chunks in the opposite order
        const int64_t first = (reverse ? chunks - 1 - c : c) * chunk;
        const int64_t count = std::min(chunk, l.steps - first);
        ProjectChunk(l, pp, Cell::kGates, b, first, count, k.data());
        Vectorised<SequenceBackwardChunk<Cell>>(static_cast<int>(l.hidden), k.data(), count,
                                                reverse, lane, first, x);
        const int64_t row = l.Row(b) + first * l.RowStep();
        g_sgemm(kRowMajor, kTrans, kNoTrans, static_cast<int>(p.inputs),
                static_cast<int>(width), static_cast<int>(count), 1.0f, p.x + row * p.inputs,
                ld_x, d_k.data(), static_cast<int>(width), 1.0f, d_w, static_cast<int>(width));
        if (out.d_x != nullptr)
          g_sgemm(kRowMajor, kNoTrans, kTrans, static_cast<int>(count),
                  static_cast<int>(p.inputs), static_cast<int>(width), 1.0f, d_k.data(),
                  static_cast<int>(width), p.w, static_cast<int>(width), 0.0f,
                  out.d_x + row * p.inputs, ld_x);
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
  return ffi::Error::Success();
}

// The layout of x [B, T, I] (or [T, B, I]) with w_i [I, G * H], b [G * H], or why they do not
// fit.
ffi::Error CheckProjection(ffi::Span<const int64_t> x, ffi::Span<const int64_t> w,
                           int64_t b_count, int64_t h0_count, size_t valid, size_t resets,
                           size_t keep, int gates, bool time_major, Layout& layout,
                           Projection& p) {
  if (x.size() != 3 || w.size() != 2 || w[0] != x[2] || w[1] != b_count || w[1] % gates != 0)
    return ffi::Error::InvalidArgument(
        "jaxrnn_linear_cell_sequence: x must be [B, T, I], w_i [I, G * H], b [G * H]");
  const int64_t k[3] = {x[0], x[1], w[1]};
  p.inputs = x[2];
  return CheckShapes(ffi::Span<const int64_t>(k, 3), h0_count, valid, resets, keep, gates,
                     time_major, layout);
}

ffi::Error SequenceForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                               ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> b,
                               ffi::Buffer<ffi::F32> h0, ffi::AnyBuffer valid,
                               ffi::AnyBuffer resets, ffi::AnyBuffer keep,
                               ffi::ResultBuffer<ffi::F32> h, int32_t cell, int32_t reverse,
                               int32_t time_major) {
  if (ffi::Error error = CheckGemm(); error.failure()) return error;
  const int gates = cell == 0 ? MinGru::kGates : MinLstm::kGates;
  Layout layout;
  Projection p{x.typed_data(), w.typed_data(), b.typed_data(), 0};
  const ffi::Error checked = CheckProjection(
      x.dimensions(), w.dimensions(), b.element_count(), h0.element_count(),
      valid.element_count(), resets.element_count(), keep.element_count(), gates,
      time_major != 0, layout, p);
  if (checked.failure()) return checked;
  auto run = cell == 0 ? SequenceForward<MinGru> : SequenceForward<MinLstm>;
  return run(pool, layout, p, h0.typed_data(), OrNull<bool>(valid), OrNull<bool>(resets),
             OrNull<float>(keep), h->typed_data(), reverse != 0);
}

ffi::Error SequenceBackwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                                ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> b,
                                ffi::Buffer<ffi::F32> h, ffi::Buffer<ffi::F32> h0,
                                ffi::AnyBuffer valid, ffi::AnyBuffer resets, ffi::AnyBuffer keep,
                                ffi::Buffer<ffi::F32> g, ffi::ResultBuffer<ffi::F32> d_x,
                                ffi::ResultBuffer<ffi::F32> d_w, ffi::ResultBuffer<ffi::F32> d_b,
                                ffi::ResultBuffer<ffi::F32> d_h0, int32_t cell, int32_t reverse,
                                int32_t time_major) {
  if (ffi::Error error = CheckGemm(); error.failure()) return error;
  const int gates = cell == 0 ? MinGru::kGates : MinLstm::kGates;
  Layout layout;
  Projection p{x.typed_data(), w.typed_data(), b.typed_data(), 0};
  const ffi::Error checked = CheckProjection(
      x.dimensions(), w.dimensions(), b.element_count(), h0.element_count(),
      valid.element_count(), resets.element_count(), keep.element_count(), gates,
      time_major != 0, layout, p);
  if (checked.failure()) return checked;
  auto run = cell == 0 ? SequenceBackward<MinGru> : SequenceBackward<MinLstm>;
  float* wanted_d_x = d_x->element_count() == 0 ? nullptr : d_x->typed_data();
  const SequenceGradients out{wanted_d_x, d_w->typed_data(), d_b->typed_data(),
                              d_h0->typed_data()};
  return run(pool, layout, p, h.typed_data(), h0.typed_data(), OrNull<bool>(valid),
             OrNull<bool>(resets), OrNull<float>(keep), g.typed_data(), out, reverse != 0);
}

}  // namespace
}  // namespace jaxrnn

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxrnnLinearCellForward, jaxrnn::ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // k
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
                                  .Arg<ffi::Buffer<ffi::F32>>()  // h
                                  .Arg<ffi::Buffer<ffi::F32>>()  // h0 [B, H]
                                  .Arg<ffi::AnyBuffer>()         // valid (bool) or empty
                                  .Arg<ffi::AnyBuffer>()         // resets (bool) or empty
                                  .Arg<ffi::AnyBuffer>()         // keep (f32) [B, H] or empty
                                  .Arg<ffi::Buffer<ffi::F32>>()  // g, h's shape
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d_k, k's shape
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d_h0 [B, H]
                                  .Attr<int32_t>("cell")
                                  .Attr<int32_t>("reverse")
                                  .Attr<int32_t>("time_major"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxrnnLinearCellSequenceForward, jaxrnn::SequenceForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_i [I, G * H]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // b [G * H]
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
                                  .Attr<int32_t>("cell")
                                  .Attr<int32_t>("reverse")
                                  .Attr<int32_t>("time_major"));
