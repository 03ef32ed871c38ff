// The linear recurrence h[t] = a[t] * h[t-1] + b[t], elementwise, over a whole sequence: the
// scan that the linear-recurrence cells (MinGRU, MinLSTM, RG-LRU) run forwards, and the
// derivative of it that their gradients run (jaxrnn/cells/_linear_kernel.py binds both).
//
// Layout [P, T, N] (row-major): P independent sequences of T steps of N columns each; a
// time-major [T, B, H] array is P = 1, N = B * H, a batch-first [B, T, H] one P = B, N = H.
// The state h0 is [P, N]. Attribute `reverse` (int32): 0 visits the steps t = 0..T-1 from
// h[-1] = h0, 1 visits t = T-1..0 from h[T] = h0 (h[t] = a[t] * h[t+1] + b[t]).
//
// JaxrnnLinearScan: a, b, h0 -> h [P, T, N].
// JaxrnnLinearScanBackward: a, h, h0 and the cotangent g of h -> d_a, d_b [P, T, N] and d_h0
// [P, N]: d_h[t] = g[t] + a[next] * d_h[next] (next: the step visited after t), d_b = d_h,
// d_a[t] = d_h[t] * h[prev] (prev: the step visited before t, or h0), d_h0 = a[first] *
// d_h[first]. Each step is one fused multiply-add where the CPU has FMA (the x86-64-v3 and v4
// versions: as XLA:CPU computes a lax.scan of the same step), else the product then the sum;
// NaN and infinities propagate as in a plain loop.
//
// It is memory-bound: sequences and columns are independent, so the work is cut into blocks of
// (sequence, columns), a multiple of 16 floats wide, and each thread walks every step over
// its blocks without synchronising with the others; the loop over a row is vectorised.

#include "linear_blocks.h"

namespace jaxrnn {
namespace {

// One forward step over columns [0, n).
JAXRNN_ROW_LOOP
void LinearRow(int n, const float* __restrict__ a, const float* __restrict__ b,
               const float* __restrict__ h_prev, float* __restrict__ h) {
  for (int j = 0; j < n; ++j) h[j] = a[j] * h_prev[j] + b[j];
}

// Columns [0, n) of every step, the rows `stride` floats apart, in the order of `reverse`.
JAXRNN_ROW_LOOP
void LinearColumns(int64_t steps, int64_t stride, int n, bool reverse, const float* a,
                   const float* b, const float* h0, float* h) {
  const float* h_prev = h0;
  for (int64_t s = 0; s < steps; ++s) {
    const int64_t row = (reverse ? steps - 1 - s : s) * stride;
    LinearRow(n, a + row, b + row, h_prev, h + row);
    h_prev = h + row;
  }
}

// One step of the derivative over columns [0, n): d = g + a_next * d_next (d = g where a_next
// is null: the last step visited), then d_b = d and d_a = d * h_prev.
JAXRNN_ROW_LOOP
void LinearBackwardRow(int n, const float* __restrict__ g, const float* __restrict__ a_next,
                       const float* __restrict__ d_next, const float* __restrict__ h_prev,
                       float* __restrict__ d_b, float* __restrict__ d_a) {
  if (a_next == nullptr) {
    for (int j = 0; j < n; ++j) {
      d_b[j] = g[j];
      d_a[j] = g[j] * h_prev[j];
    }
    return;
  }
  for (int j = 0; j < n; ++j) {
    const float d = a_next[j] * d_next[j] + g[j];
    d_b[j] = d;
    d_a[j] = d * h_prev[j];
  }
}

struct BackwardColumns {
  const float *a, *h, *h0, *g;
  float *d_a, *d_b, *d_h0;
};

// Columns [0, n) of every step of the derivative, visiting the steps in the opposite order.
JAXRNN_ROW_LOOP
void LinearBackwardColumns(int64_t steps, int64_t stride, int n, bool reverse,
                           BackwardColumns c) {
  auto row_of = [&](int64_t s) { return (reverse ? steps - 1 - s : s) * stride; };
  for (int64_t s = steps - 1; s >= 0; --s) {  // s: the order of the forward visit
    const int64_t row = row_of(s);
    const float* h_prev = s == 0 ? c.h0 : c.h + row_of(s - 1);
    const bool last = s == steps - 1;
    const float* a_next = last ? nullptr : c.a + row_of(s + 1);
    const float* d_next = last ? nullptr : c.d_b + row_of(s + 1);
    LinearBackwardRow(n, c.g + row, a_next, d_next, h_prev, c.d_b + row, c.d_a + row);
  }
  const int64_t first = row_of(0);
  for (int j = 0; j < n; ++j) c.d_h0[j] = c.a[first + j] * c.d_b[first + j];
}

ffi::Error LinearScanImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                          ffi::Buffer<ffi::F32> h0, ffi::ResultBuffer<ffi::F32> h,
                          int32_t reverse) {
  const auto dims = a.dimensions();
  if (dims.size() != 3 || !Shaped(b.dimensions(), dims) ||
      static_cast<int64_t>(h0.element_count()) != dims[0] * dims[2]) {
    return ffi::Error::InvalidArgument("jaxrnn_linear_scan: a, b must be [P, T, N], h0 [P, N]");
  }
  const int64_t sequences = dims[0], steps = dims[1], width = dims[2];
  if (sequences * steps * width == 0) return ffi::Error::Success();
  const float *pa = a.typed_data(), *pb = b.typed_data(), *ph0 = h0.typed_data();
  float* ph = h->typed_data();
  ForBlocks(pool, Split(sequences, steps, width), [&](int64_t p, int c0, int c1) {
    const int64_t at = p * steps * width + c0;
    Vectorised<LinearColumns>(steps, width, c1 - c0, reverse != 0, pa + at, pb + at,
                              ph0 + p * width + c0, ph + at);
  });
  return ffi::Error::Success();
}

ffi::Error LinearScanBackwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a,
                                  ffi::Buffer<ffi::F32> h, ffi::Buffer<ffi::F32> h0,
                                  ffi::Buffer<ffi::F32> g, ffi::ResultBuffer<ffi::F32> d_a,
                                  ffi::ResultBuffer<ffi::F32> d_b,
                                  ffi::ResultBuffer<ffi::F32> d_h0, int32_t reverse) {
  const auto dims = a.dimensions();
  if (dims.size() != 3 || !Shaped(h.dimensions(), dims) || !Shaped(g.dimensions(), dims) ||
      static_cast<int64_t>(h0.element_count()) != dims[0] * dims[2]) {
    return ffi::Error::InvalidArgument(
        "jaxrnn_linear_scan_backward: a, h, g must be [P, T, N], h0 [P, N]");
  }
  const int64_t sequences = dims[0], steps = dims[1], width = dims[2];
  if (sequences * width == 0) return ffi::Error::Success();
  if (steps == 0) {
    std::fill_n(d_h0->typed_data(), sequences * width, 0.0f);
    return ffi::Error::Success();
  }
  ForBlocks(pool, Split(sequences, steps, width), [&](int64_t p, int c0, int c1) {
    const int64_t at = p * steps * width + c0, state = p * width + c0;
    BackwardColumns c{a.typed_data() + at,    h.typed_data() + at,    h0.typed_data() + state,
                      g.typed_data() + at,    d_a->typed_data() + at, d_b->typed_data() + at,
                      d_h0->typed_data() + state};
    Vectorised<LinearBackwardColumns>(steps, width, c1 - c0, reverse != 0, c);
  });
  return ffi::Error::Success();
}

}  // namespace
}  // namespace jaxrnn

using jaxrnn::LinearScanBackwardImpl;
using jaxrnn::LinearScanImpl;

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxrnnLinearScan, LinearScanImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // a [P, T, N]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // b [P, T, N]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // h0 [P, N]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // h [P, T, N]
                                  .Attr<int32_t>("reverse"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxrnnLinearScanBackward, LinearScanBackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // a [P, T, N]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // h [P, T, N]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // h0 [P, N]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // g [P, T, N]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d_a [P, T, N]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d_b [P, T, N]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d_h0 [P, N]
                                  .Attr<int32_t>("reverse"));
