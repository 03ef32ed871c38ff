// The LSTM's forward and backward loops (see recurrence.h for the shared parts).

#include "recurrence.h"

namespace jaxrnn {
namespace {

// One batch row of one LSTM step over units [0, n): `xp`, `bias` and `acc` hold the four
// gates' pre-activations (input projection, bias, recurrent product; gate g of unit j at
// g * stride + j, `bias` with `xp`'s stride).
JAXRNN_ROW_LOOP
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
JAXRNN_ROW_LOOP
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

// ------------------------------------------------------------------------------- LSTM

constexpr int kGates = 4, kKept = 5;  // kept: the previous cell state and gates i, f, g, o

ffi::Error LstmForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> xp,
                           ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> w_h,
                           ffi::Buffer<ffi::F32> c0, ffi::Buffer<ffi::F32> h0,
                           ffi::Buffer<ffi::PRED> valid, ffi::Buffer<ffi::PRED> resets,
                           ffi::ResultBuffer<ffi::F32> ys, ffi::ResultBuffer<ffi::F32> c_out,
                           ffi::ResultBuffer<ffi::F32> h_out, ffi::ResultBuffer<ffi::F32> kept,
                           float forget_bias, int32_t reverse, int32_t time_major) {
  if (auto err = CheckGemm(); err.failure()) return err;
  const ForwardLoop loop{
      .steps = valid.dimensions()[0], .batch = valid.dimensions()[1],
      .hidden = w_h.dimensions()[0], .reverse = reverse != 0, .time_major = time_major != 0,
      .xp = xp.typed_data(), .bias = bias.typed_data(), .w_h = w_h.typed_data(),
      .h0 = h0.typed_data(), .valid = valid.typed_data(), .resets = ResetsOrNull(resets),
      .ys = ys->typed_data(), .h_out = h_out->typed_data(), .c0 = c0.typed_data(),
      .c_out = c_out->typed_data(), .kept = KeptOrNull(kept)};
  RunForward<kGates, kKept>(pool, loop, [forget_bias](const ForwardRow& r) {
    const int n = r.n;
    Vectorised<LstmRow>(n, r.xp, r.bias, r.hidden, r.acc, n, forget_bias, r.c, r.h, r.y,
                        r.kept, r.kept + n, r.kept + 2 * n, r.kept + 3 * n, r.kept + 4 * n);
  });
  return ffi::Error::Success();
}

ffi::Error LstmBackwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> w_h,
                            ffi::Buffer<ffi::F32> kept, ffi::Buffer<ffi::PRED> valid,
                            ffi::Buffer<ffi::PRED> resets, ffi::Buffer<ffi::F32> d_ys,
                            ffi::Buffer<ffi::F32> d_c, ffi::Buffer<ffi::F32> d_h,
                            ffi::Buffer<ffi::F32> ys, ffi::Buffer<ffi::F32> h0,
                            ffi::Buffer<ffi::F32> xs, ffi::ResultBuffer<ffi::F32> d_z,
                            ffi::ResultBuffer<ffi::F32> d_c0, ffi::ResultBuffer<ffi::F32> d_h0,
                            ffi::ResultBuffer<ffi::F32> d_w_h, ffi::ResultBuffer<ffi::F32> d_w_i,
                            ffi::ResultBuffer<ffi::F32> d_b, int32_t reverse,
                            int32_t time_major) {
  if (auto err = CheckGemm(); err.failure()) return err;
  const BackwardLoop loop{
      .steps = valid.dimensions()[0], .batch = valid.dimensions()[1],
      .hidden = w_h.dimensions()[0], .reverse = reverse != 0, .time_major = time_major != 0,
      .w_h = w_h.typed_data(), .kept = kept.typed_data(), .valid = valid.typed_data(),
      .resets = ResetsOrNull(resets), .d_ys = d_ys.typed_data(), .d_h = d_h.typed_data(),
      .ys = ys.typed_data(), .h0 = h0.typed_data(), .xs = xs.typed_data(),
      .features = xs.dimensions()[2], .d_in = d_z->typed_data(), .d_rec = d_z->typed_data(),
      .d_h0 = d_h0->typed_data(), .d_w_h = d_w_h->typed_data(), .d_w_i = d_w_i->typed_data(),
      .d_b = d_b->typed_data(), .d_c = d_c.typed_data(), .d_c0 = d_c0->typed_data()};
  RunBackward<kGates, kKept>(pool, loop, [](const BackwardRow& r) {
    const int n = r.n;
    const float* k = r.kept;
    Vectorised<LstmBackwardRow>(n, k + n, k + 2 * n, k + 3 * n, k + 4 * n, k, r.dy, r.dc, r.dh,
                                r.d_in, r.hidden);
  });
  return ffi::Error::Success();
}

}  // namespace
}  // namespace jaxrnn

using jaxrnn::LstmBackwardImpl;
using jaxrnn::LstmForwardImpl;

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxrnnLstmForward, LstmForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
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
