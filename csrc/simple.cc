// The SimpleRNN's forward and backward loops (see recurrence.h for the shared parts).

#include "recurrence.h"

namespace jaxrnn {
namespace {

// One batch row of one step over units [0, n).
JAXRNN_ROW_LOOP
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

// One batch row of the backward step over units [0, n). On entry `dh` holds the cotangent of
// this step's h from later steps; on exit it is zero (the caller adds d_z @ w_h^T).
JAXRNN_ROW_LOOP
void SimpleBackwardRow(int n, bool relu, const float* __restrict__ y,
                       const float* __restrict__ dy, float* __restrict__ dh,
                       float* __restrict__ dz) {
  for (int j = 0; j < n; ++j) {
    float g = dh[j] + dy[j];
    dz[j] = relu ? (y[j] > 0.0f ? g : 0.0f) : g * (1.0f - y[j] * y[j]);
    dh[j] = 0.0f;
  }
}

// -------------------------------------------------------------------------- SimpleRNN

constexpr int kGates = 1, kKept = 0;

ffi::Error SimpleForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> xp,
                             ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> w_h,
                             ffi::Buffer<ffi::F32> h0, ffi::Buffer<ffi::PRED> valid,
                             ffi::Buffer<ffi::PRED> resets, ffi::ResultBuffer<ffi::F32> ys,
                             ffi::ResultBuffer<ffi::F32> h_out, int32_t relu, int32_t reverse,
                             int32_t time_major) {
  if (auto err = CheckGemm(); err.failure()) return err;
  const ForwardLoop loop{
      .steps = valid.dimensions()[0], .batch = valid.dimensions()[1],
      .hidden = w_h.dimensions()[0], .reverse = reverse != 0, .time_major = time_major != 0,
      .xp = xp.typed_data(), .bias = bias.typed_data(), .w_h = w_h.typed_data(),
      .h0 = h0.typed_data(), .valid = valid.typed_data(), .resets = ResetsOrNull(resets),
      .ys = ys->typed_data(), .h_out = h_out->typed_data()};
  RunForward<kGates, kKept>(pool, loop, [relu](const ForwardRow& r) {
    Vectorised<SimpleRow>(r.n, relu != 0, r.xp, r.bias, r.acc, r.h, r.y);
  });
  return ffi::Error::Success();
}

ffi::Error SimpleBackwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> w_h,
                              ffi::Buffer<ffi::F32> ys, ffi::Buffer<ffi::PRED> valid,
                              ffi::Buffer<ffi::PRED> resets, ffi::Buffer<ffi::F32> d_ys,
                              ffi::Buffer<ffi::F32> d_h, ffi::Buffer<ffi::F32> h0,
                              ffi::Buffer<ffi::F32> xs, ffi::ResultBuffer<ffi::F32> d_z,
                              ffi::ResultBuffer<ffi::F32> d_h0, ffi::ResultBuffer<ffi::F32> d_w_h,
                              ffi::ResultBuffer<ffi::F32> d_w_i, ffi::ResultBuffer<ffi::F32> d_b,
                              int32_t relu, int32_t reverse, int32_t time_major) {
  if (auto err = CheckGemm(); err.failure()) return err;
  const BackwardLoop loop{
      .steps = valid.dimensions()[0], .batch = valid.dimensions()[1],
      .hidden = w_h.dimensions()[0], .reverse = reverse != 0, .time_major = time_major != 0,
      .w_h = w_h.typed_data(), .kept = nullptr, .valid = valid.typed_data(),
      .resets = ResetsOrNull(resets), .d_ys = d_ys.typed_data(), .d_h = d_h.typed_data(),
      .ys = ys.typed_data(), .h0 = h0.typed_data(), .xs = xs.typed_data(),
      .features = xs.dimensions()[2], .d_in = d_z->typed_data(), .d_rec = d_z->typed_data(),
      .d_h0 = d_h0->typed_data(), .d_w_h = d_w_h->typed_data(), .d_w_i = d_w_i->typed_data(),
      .d_b = d_b->typed_data()};
  RunBackward<kGates, kKept>(pool, loop, [relu](const BackwardRow& r) {
    Vectorised<SimpleBackwardRow>(r.n, relu != 0, r.y, r.dy, r.dh, r.d_in);
  });
  return ffi::Error::Success();
}

}  // namespace
}  // namespace jaxrnn

using jaxrnn::SimpleBackwardImpl;
using jaxrnn::SimpleForwardImpl;

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxrnnSimpleForward, SimpleForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
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
