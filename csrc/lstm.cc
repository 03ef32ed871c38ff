// The LSTM's forward and backward loops (see recurrence.h for the shared parts).

#include "recurrence.h"

namespace jaxrnn {
namespace {

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

// ------------------------------------------------------------------------------- LSTM

ffi::Error LstmForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> xp,
                           ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> w_h,
                           ffi::Buffer<ffi::F32> c0,
                           ffi::Buffer<ffi::F32> h0, ffi::Buffer<ffi::PRED> valid,
                           ffi::Buffer<ffi::PRED> resets, ffi::ResultBuffer<ffi::F32> ys, ffi::ResultBuffer<ffi::F32> c_out,
                           ffi::ResultBuffer<ffi::F32> h_out, ffi::ResultBuffer<ffi::F32> kept,
                           float forget_bias, int32_t reverse, int32_t time_major) {
  if (auto err = CheckGemm(); err.failure()) return err;
  const int64_t steps = valid.dimensions()[0], batch = valid.dimensions()[1];
  const int64_t hidden = w_h.dimensions()[0], width = 4 * hidden;
  const Steps order{steps, batch, reverse != 0};
  const std::vector<int> starts = SplitUnits(batch, hidden, 4);
  const int chunks = static_cast<int>(starts.size()) - 1;
  const int widest = WidestChunk(starts);

  const float* x = xp.typed_data();
  const float* bs = bias.typed_data();
  const float* w = w_h.typed_data();
  const bool* v = valid.typed_data();
  const bool* rs = ResetsOrNull(resets);
  float* y = ys->typed_data();
  // An empty `kept` (inference: nothing will differentiate this call): each row's kept values
  // go to a scratch row that stays in L1 instead.
  float* kept_out = kept->element_count() > 0 ? kept->typed_data() : nullptr;
  float* c = c_out->typed_data();  // the cell state, updated in place
  std::memcpy(c, c0.typed_data(), sizeof(float) * batch * hidden);
  // Two state buffers: step s reads h[s % 2] and writes h[(s + 1) % 2].
  std::vector<float> h_buf(2 * batch * hidden);
  std::memcpy(h_buf.data(), h0.typed_data(), sizeof(float) * batch * hidden);
  if (rs && steps > 0) {
    ZeroResetRows(rs, order.At(0), batch, hidden, 0, hidden, c);
    ZeroResetRows(rs, order.At(0), batch, hidden, 0, hidden, h_buf.data());
  }
  const std::vector<std::vector<float>> w_chunk = ChunkColumns(w, hidden, 4, starts);

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
      float* k_row = kept_out ? KeptRow<5>(kept_out, steps, batch, j0, n, t, b) : sk;
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
    // The next step starts from zeros where it resets (every chunk has read h_cur by now; the
    // chunk's units of c are its own).
    if (rs && s + 1 < steps) {
      ZeroResetRows(rs, order.At(s + 1), batch, hidden, j0, n, c);
      ZeroResetRows(rs, order.At(s + 1), batch, hidden, j0, n, h_next);
    }
  };
  RunRounds(pool, chunks - 1, steps, chunks, batch * 4 * widest + 8 * widest, step);
  std::memcpy(h_out->typed_data(), &h_buf[(steps % 2) * batch * hidden],
              sizeof(float) * batch * hidden);
  return ffi::Error::Success();
}

ffi::Error LstmBackwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> w_h,
                            ffi::Buffer<ffi::F32> kept, ffi::Buffer<ffi::PRED> valid,
                            ffi::Buffer<ffi::PRED> resets, ffi::Buffer<ffi::F32> d_ys,
                            ffi::Buffer<ffi::F32> d_c,
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
  const bool* rs = ResetsOrNull(resets);
  const ResetRows reset_rows(rs, steps, batch, hidden, reverse != 0, ys.typed_data(),
                             h0.typed_data());
  const float* dy = d_ys.typed_data();
  float* dz = d_z->typed_data();
  float* dc = d_c0->typed_data();  // running cotangents, updated in place
  float* dh = d_h0->typed_data();
  std::memcpy(dc, d_c.typed_data(), sizeof(float) * batch * hidden);
  std::memcpy(dh, d_h.typed_data(), sizeof(float) * batch * hidden);
  const int64_t features = xs.dimensions()[2];
  TimeMajorInputs inputs(xs.typed_data(), steps, batch, features, time_major != 0);

  // Round u finishes step u - 1 for a chunk's units (dh += d_z @ w_h^T needs every unit's d_z
  // of that step: the previous round; then dh and dc are zero in the rows where that step
  // reset) and runs the pointwise part of step u. Once every d_z is
  // written, round T + 1 computes the chunk's columns of w_h's gradient (and its part of the
  // time-major copy of batch-first inputs), round T + 2 its part of w_i's and b's columns.
  auto round = [&](int64_t u, int k, float*) {
    const int j0 = starts[k], n = starts[k + 1] - j0;
    if (u == steps + 2) {
      const auto [c0, c1] = ColumnPart(width, k, chunks);
      InputWeightGradient(steps * batch, features, inputs.data(), dz, width, c0, c1 - c0,
                          d_w_i->typed_data(), d_b->typed_data());
      return;
    }
    if (u == steps + 1) {
      for (int gate = 0; gate < 4; ++gate) {
        RecurrentWeightGradient(steps, batch, hidden, reverse != 0, ys.typed_data(),
                                h0.typed_data(), dz, width, gate * hidden + j0, n,
                                d_w_h->typed_data());
        reset_rows.Correct(dz, width, gate * hidden + j0, n, d_w_h->typed_data());
      }
      inputs.CopyPart(k, chunks);
      return;
    }
    if (u > 0) {
      const int64_t t = order.At(u - 1);
      Gemm(true, batch, n, width, dz + t * batch * width, width, w + j0 * width, width, 1.0f,
           dh + j0, hidden);
      if (rs) {
        ZeroResetRows(rs, t, batch, hidden, j0, n, dh);
        ZeroResetRows(rs, t, batch, hidden, j0, n, dc);
      }
    }
    if (u == steps) return;
    const int64_t t = order.At(u);
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t row = (t * batch + b) * hidden + j0;
      float* dz_row = dz + (t * batch + b) * width + j0;
      if (v[t * batch + b]) {
        const float* k = KeptRow<5>(kept_in, steps, batch, j0, n, t, b);
        LstmBackwardRow(n, k + n, k + 2 * n, k + 3 * n, k + 4 * n, k, dy + row,
                        dc + b * hidden + j0, dh + b * hidden + j0, dz_row, hidden);
      } else {  // a copied state: its cotangents pass through, the step gets none
        for (int gate = 0; gate < 4; ++gate) std::fill_n(dz_row + gate * hidden, n, 0.0f);
      }
    }
  };
  RunRounds(pool, chunks - 1, steps + 3, chunks, 0, round);
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
