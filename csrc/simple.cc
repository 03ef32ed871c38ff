// The SimpleRNN's forward and backward loops (see recurrence.h for the shared parts).

#include "recurrence.h"

namespace jaxrnn {
namespace {


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


// -------------------------------------------------------------------------- SimpleRNN

ffi::Error SimpleForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> xp,
                             ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> w_h,
                             ffi::Buffer<ffi::F32> h0,
                             ffi::Buffer<ffi::PRED> valid, ffi::Buffer<ffi::PRED> resets,
                             ffi::ResultBuffer<ffi::F32> ys,
                             ffi::ResultBuffer<ffi::F32> h_out, int32_t relu, int32_t reverse,
                             int32_t time_major) {
  if (auto err = CheckGemm(); err.failure()) return err;
  const int64_t steps = valid.dimensions()[0], batch = valid.dimensions()[1];
  const int64_t hidden = w_h.dimensions()[0];
  const Steps order{steps, batch, reverse != 0};
  const std::vector<int> starts = SplitUnits(batch, hidden, 1);
  const int chunks = static_cast<int>(starts.size()) - 1;
  const int widest = WidestChunk(starts);

  const float* x = xp.typed_data();
  const float* bs = bias.typed_data();
  const float* w = w_h.typed_data();
  const bool* v = valid.typed_data();
  const bool* rs = ResetsOrNull(resets);
  float* y = ys->typed_data();
  std::vector<float> h_buf(2 * batch * hidden);
  std::memcpy(h_buf.data(), h0.typed_data(), sizeof(float) * batch * hidden);
  if (rs && steps > 0) ZeroResetRows(rs, order.At(0), batch, hidden, 0, hidden, h_buf.data());

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
    // The next step starts from zeros where it resets (every chunk has read h_cur by now).
    if (rs && s + 1 < steps) ZeroResetRows(rs, order.At(s + 1), batch, hidden, j0, n, h_next);
  };
  RunRounds(pool, chunks - 1, steps, chunks, batch * widest, step);
  std::memcpy(h_out->typed_data(), &h_buf[(steps % 2) * batch * hidden],
              sizeof(float) * batch * hidden);
  return ffi::Error::Success();
}

ffi::Error SimpleBackwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> w_h,
                              ffi::Buffer<ffi::F32> ys, ffi::Buffer<ffi::PRED> valid,
                              ffi::Buffer<ffi::PRED> resets, ffi::Buffer<ffi::F32> d_ys, ffi::Buffer<ffi::F32> d_h,
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
  const bool* rs = ResetsOrNull(resets);
  const ResetRows reset_rows(rs, steps, batch, hidden, reverse != 0, y, h0.typed_data());
  const float* dy = d_ys.typed_data();
  float* dz = d_z->typed_data();
  float* dh = d_h0->typed_data();
  std::memcpy(dh, d_h.typed_data(), sizeof(float) * batch * hidden);
  const int64_t features = xs.dimensions()[2];
  TimeMajorInputs inputs(xs.typed_data(), steps, batch, features, time_major != 0);

  auto round = [&](int64_t u, int k, float*) {  // as in the LSTM's backward pass
    const int j0 = starts[k], n = starts[k + 1] - j0;
    if (u == steps + 2) {
      const auto [c0, c1] = ColumnPart(hidden, k, chunks);
      InputWeightGradient(steps * batch, features, inputs.data(), dz, hidden, c0, c1 - c0,
                          d_w_i->typed_data(), d_b->typed_data());
      return;
    }
    if (u == steps + 1) {
      RecurrentWeightGradient(steps, batch, hidden, reverse != 0, y, h0.typed_data(), dz, hidden,
                              j0, n, d_w_h->typed_data());
      reset_rows.Correct(dz, hidden, j0, n, d_w_h->typed_data());
      inputs.CopyPart(k, chunks);
      return;
    }
    if (u > 0) {
      const int64_t t = order.At(u - 1);
      Gemm(true, batch, n, hidden, dz + t * batch * hidden, hidden, w + j0 * hidden, hidden,
           1.0f, dh + j0, hidden);
      if (rs) ZeroResetRows(rs, t, batch, hidden, j0, n, dh);  // none crosses a reset
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
  RunRounds(pool, chunks - 1, steps + 3, chunks, 0, round);
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
