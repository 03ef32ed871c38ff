// The GRU's forward and backward loops, reset_after=True (see recurrence.h for the shared
// parts). With xi = xp + b and hh = h @ w_h + b_h, gate blocks r, z, n:
// r = sigmoid(xi_r + hh_r), z = sigmoid(xi_z + hh_z), n = tanh(xi_n + r * hh_n),
// h' = (1 - z) * n + z * h.

#include "recurrence.h"

namespace jaxrnn {
namespace {

// One batch row of one GRU step over units [0, n): `xp`, `bias` and `bias_h` (the input
// projection and the two biases) have gate g of unit j at g * stride + j, `acc` (the recurrent
// product) at g * acc_stride + j. Keeps r, z, n and hh_n, the values the backward step needs.
JAXRNN_VECTOR_CLONES
void GruRow(int n, const float* __restrict__ xp, const float* __restrict__ bias,
            const float* __restrict__ bias_h, int64_t stride, const float* __restrict__ acc,
            int64_t acc_stride, const float* __restrict__ h_prev, float* __restrict__ h,
            float* __restrict__ y, float* __restrict__ kr, float* __restrict__ kz,
            float* __restrict__ kn, float* __restrict__ khn) {
  for (int j = 0; j < n; ++j) {
    float r = Sigmoid(xp[j] + bias[j] + (acc[j] + bias_h[j]));
    float z =
        Sigmoid(xp[stride + j] + bias[stride + j] + (acc[acc_stride + j] + bias_h[stride + j]));
    float hn = acc[2 * acc_stride + j] + bias_h[2 * stride + j];
    float c = Tanh(xp[2 * stride + j] + bias[2 * stride + j] + r * hn);
    float hv = (1.0f - z) * c + z * h_prev[j];
    kr[j] = r;
    kz[j] = z;
    kn[j] = c;
    khn[j] = hn;
    h[j] = hv;
    y[j] = hv;
  }
}

// One batch row of the GRU's backward step over units [0, n). On entry `dh` holds the
// cotangent of this step's h from later steps; on exit the part that reaches the previous h
// directly (g * z; the caller adds d_hh @ w_h^T). Writes the cotangents of the input
// pre-activations (`dxp`) and of the recurrent ones (`dhh`), gate g at g * dz_stride + j.
JAXRNN_VECTOR_CLONES
void GruBackwardRow(int n, const float* __restrict__ kr, const float* __restrict__ kz,
                    const float* __restrict__ kn, const float* __restrict__ khn,
                    const float* __restrict__ h_prev, const float* __restrict__ dy,
                    float* __restrict__ dh, float* __restrict__ dxp, float* __restrict__ dhh,
                    int64_t dz_stride) {
  for (int j = 0; j < n; ++j) {
    float r = kr[j], z = kz[j], c = kn[j], hn = khn[j];
    float g = dh[j] + dy[j];
    float dan = g * (1.0f - z) * (1.0f - c * c);
    float daz = g * (h_prev[j] - c) * z * (1.0f - z);
    float dar = dan * hn * r * (1.0f - r);
    dxp[j] = dar;
    dxp[dz_stride + j] = daz;
    dxp[2 * dz_stride + j] = dan;
    dhh[j] = dar;
    dhh[dz_stride + j] = daz;
    dhh[2 * dz_stride + j] = dan * r;
    dh[j] = g * z;
  }
}

constexpr int kKept = 4;  // r, z, n, hh_n per unit and step

ffi::Error GruForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> xp,
                          ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> w_h,
                          ffi::Buffer<ffi::F32> bias_h, ffi::Buffer<ffi::F32> h0,
                          ffi::Buffer<ffi::PRED> valid, ffi::Buffer<ffi::PRED> resets,
                          ffi::ResultBuffer<ffi::F32> ys, ffi::ResultBuffer<ffi::F32> h_out,
                          ffi::ResultBuffer<ffi::F32> kept,
                          int32_t reverse, int32_t time_major) {
  if (auto err = CheckGemm(); err.failure()) return err;
  const int64_t steps = valid.dimensions()[0], batch = valid.dimensions()[1];
  const int64_t hidden = w_h.dimensions()[0], width = 3 * hidden;
  const Steps order{steps, batch, reverse != 0};
  const std::vector<int> starts = SplitUnits(batch, hidden, 3);
  const int chunks = static_cast<int>(starts.size()) - 1;
  const int widest = WidestChunk(starts);

  const float* x = xp.typed_data();
  const float* bs = bias.typed_data();
  const float* bh = bias_h.typed_data();
  const float* w = w_h.typed_data();
  const bool* v = valid.typed_data();
  const bool* rs = ResetsOrNull(resets);
  float* y = ys->typed_data();
  // Empty (nothing will differentiate this call): the kept values go to a scratch row.
  float* kept_out = kept->element_count() > 0 ? kept->typed_data() : nullptr;
  std::vector<float> h_buf(2 * batch * hidden);  // step s reads h[s % 2], writes h[(s+1) % 2]
  std::memcpy(h_buf.data(), h0.typed_data(), sizeof(float) * batch * hidden);
  if (rs && steps > 0) ZeroResetRows(rs, order.At(0), batch, hidden, 0, hidden, h_buf.data());
  const std::vector<std::vector<float>> w_chunk = ChunkColumns(w, hidden, 3, starts);

  // scratch: the recurrent products [batch, 3 * n], one row's discarded h and y, and one
  // row's kept values when they are not kept.
  auto step = [&](int64_t s, int k, float* scratch) {
    const int j0 = starts[k], n = starts[k + 1] - j0;
    const int64_t t = order.At(s);
    const float* h_cur = &h_buf[(s % 2) * batch * hidden];
    float* h_next = &h_buf[((s + 1) % 2) * batch * hidden];
    float* acc = scratch;
    float *sh = acc + batch * 3 * n, *sy = sh + n, *sk = sy + n;
    Gemm(false, batch, 3 * n, hidden, h_cur, hidden, w_chunk[k].data(), 3 * n, 0.0f, acc, 3 * n);
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t row = (t * batch + b) * hidden + j0;
      const float* x_row = x + XpOffset(time_major, t, b, steps, batch, width) + j0;
      const float* hp = h_cur + b * hidden + j0;
      float* k_row = kept_out ? KeptRow<kKept>(kept_out, steps, batch, j0, n, t, b) : sk;
      const bool ok = v[t * batch + b];
      GruRow(n, x_row, bs + j0, bh + j0, hidden, acc + b * 3 * n, n, hp,
             ok ? h_next + b * hidden + j0 : sh, ok ? y + row : sy, k_row, k_row + n,
             k_row + 2 * n, k_row + 3 * n);
      if (!ok) {  // past the length: the state is copied and the output is zero
        std::memcpy(h_next + b * hidden + j0, hp, sizeof(float) * n);
        std::fill_n(y + row, n, 0.0f);
      }
    }
    // The next step starts from zeros where it resets (every chunk has read h_cur by now).
    if (rs && s + 1 < steps) ZeroResetRows(rs, order.At(s + 1), batch, hidden, j0, n, h_next);
  };
  RunRounds(pool, chunks - 1, steps, chunks, batch * 3 * widest + (2 + kKept) * widest, step);
  std::memcpy(h_out->typed_data(), &h_buf[(steps % 2) * batch * hidden],
              sizeof(float) * batch * hidden);
  return ffi::Error::Success();
}

ffi::Error GruBackwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> w_h,
                           ffi::Buffer<ffi::F32> kept, ffi::Buffer<ffi::PRED> valid,
                           ffi::Buffer<ffi::PRED> resets, ffi::Buffer<ffi::F32> d_ys,
                           ffi::Buffer<ffi::F32> d_h,
                           ffi::Buffer<ffi::F32> ys, ffi::Buffer<ffi::F32> h0,
                           ffi::Buffer<ffi::F32> xs, ffi::ResultBuffer<ffi::F32> d_xp,
                           ffi::ResultBuffer<ffi::F32> d_h0, ffi::ResultBuffer<ffi::F32> d_w_h,
                           ffi::ResultBuffer<ffi::F32> d_b_h, ffi::ResultBuffer<ffi::F32> d_w_i,
                           ffi::ResultBuffer<ffi::F32> d_b, int32_t reverse,
                           int32_t time_major) {
  if (auto err = CheckGemm(); err.failure()) return err;
  const int64_t steps = valid.dimensions()[0], batch = valid.dimensions()[1];
  const int64_t hidden = w_h.dimensions()[0], width = 3 * hidden;
  const Steps order{steps, batch, reverse == 0};  // the forward pass's steps, last first
  const int64_t first = reverse ? steps - 1 : 0;   // the step whose previous state is h0
  const std::vector<int> starts = SplitUnits(batch, hidden, 3);
  const int chunks = static_cast<int>(starts.size()) - 1;

  const float* w = w_h.typed_data();
  const float* kept_in = kept.typed_data();
  const bool* v = valid.typed_data();
  const float* dy = d_ys.typed_data();
  const float* y = ys.typed_data();
  const bool* rs = ResetsOrNull(resets);
  const ResetRows reset_rows(rs, steps, batch, hidden, reverse != 0, y, h0.typed_data());
  const std::vector<float> zeros(hidden, 0.0f);  // the state before a reset
  float* dx = d_xp->typed_data();
  float* dh = d_h0->typed_data();  // the running cotangent of h, updated in place
  std::memcpy(dh, d_h.typed_data(), sizeof(float) * batch * hidden);
  // The recurrent pre-activations' cotangents; every row is written before it is read.
  std::unique_ptr<float[]> dhh(new float[steps * batch * width]);
  const int64_t features = xs.dimensions()[2];
  TimeMajorInputs inputs(xs.typed_data(), steps, batch, features, time_major != 0);

  // As in the LSTM's backward pass: round u adds step u - 1's d_hh @ w_h^T to the chunk's
  // units of dh (zero where that step reset), then runs the pointwise part of step u; rounds
  // T + 1 and T + 2, the weights' gradients.
  auto round = [&](int64_t u, int k, float*) {
    const int j0 = starts[k], n = starts[k + 1] - j0;
    if (u == steps + 2) {
      const auto [c0, c1] = ColumnPart(width, k, chunks);
      InputWeightGradient(steps * batch, features, inputs.data(), dx, width, c0, c1 - c0,
                          d_w_i->typed_data(), d_b->typed_data());
      ColumnSums(steps * batch, dhh.get(), width, c0, c1 - c0, d_b_h->typed_data());
      return;
    }
    if (u == steps + 1) {
      for (int gate = 0; gate < 3; ++gate) {
        RecurrentWeightGradient(steps, batch, hidden, reverse != 0, y, h0.typed_data(),
                                dhh.get(), width, gate * hidden + j0, n, d_w_h->typed_data());
        reset_rows.Correct(dhh.get(), width, gate * hidden + j0, n, d_w_h->typed_data());
      }
      inputs.CopyPart(k, chunks);
      return;
    }
    if (u > 0) {
      const int64_t t = order.At(u - 1);
      Gemm(true, batch, n, width, dhh.get() + t * batch * width, width, w + j0 * width, width,
           1.0f, dh + j0, hidden);
      if (rs) ZeroResetRows(rs, t, batch, hidden, j0, n, dh);  // none crosses a reset
    }
    if (u == steps) return;
    const int64_t t = order.At(u);
    const int64_t prev = reverse ? t + 1 : t - 1;
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t row = (t * batch + b) * hidden + j0;
      float* dx_row = dx + (t * batch + b) * width + j0;
      float* dhh_row = dhh.get() + (t * batch + b) * width + j0;
      if (v[t * batch + b]) {
        const float* k = KeptRow<kKept>(kept_in, steps, batch, j0, n, t, b);
        const float* hp =
            rs && rs[t * batch + b]
                ? zeros.data()
                : (t == first ? h0.typed_data() + b * hidden : y + (prev * batch + b) * hidden) +
                      j0;
        GruBackwardRow(n, k, k + n, k + 2 * n, k + 3 * n, hp, dy + row, dh + b * hidden + j0,
                       dx_row, dhh_row, hidden);
      } else {  // a copied state: its cotangent passes through, the step gets none
        for (int gate = 0; gate < 3; ++gate) {
          std::fill_n(dx_row + gate * hidden, n, 0.0f);
          std::fill_n(dhh_row + gate * hidden, n, 0.0f);
        }
      }
    }
  };
  RunRounds(pool, chunks - 1, steps + 3, chunks, 0, round);
  return ffi::Error::Success();
}

}  // namespace
}  // namespace jaxrnn

using jaxrnn::GruBackwardImpl;
using jaxrnn::GruForwardImpl;

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxrnnGruForward, GruForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // xp
                                  .Arg<ffi::Buffer<ffi::F32>>()  // b
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_h
                                  .Arg<ffi::Buffer<ffi::F32>>()  // b_h
                                  .Arg<ffi::Buffer<ffi::F32>>()  // h0
                                  .Arg<ffi::Buffer<ffi::PRED>>()  // valid
                                  .Arg<ffi::Buffer<ffi::PRED>>()  // resets
                                  .Ret<ffi::Buffer<ffi::F32>>()  // ys
                                  .Ret<ffi::Buffer<ffi::F32>>()  // h
                                  .Ret<ffi::Buffer<ffi::F32>>()  // kept
                                  .Attr<int32_t>("reverse")
                                  .Attr<int32_t>("time_major"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxrnnGruBackward, GruBackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_h
                                  .Arg<ffi::Buffer<ffi::F32>>()  // kept
                                  .Arg<ffi::Buffer<ffi::PRED>>()  // valid
                                  .Arg<ffi::Buffer<ffi::PRED>>()  // resets
                                  .Arg<ffi::Buffer<ffi::F32>>()  // d_ys
                                  .Arg<ffi::Buffer<ffi::F32>>()  // d_h
                                  .Arg<ffi::Buffer<ffi::F32>>()  // ys
                                  .Arg<ffi::Buffer<ffi::F32>>()  // h0
                                  .Arg<ffi::Buffer<ffi::F32>>()  // xs
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d_xp
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d_h0
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d_w_h
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d_b_h
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d_w_i
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d_b
                                  .Attr<int32_t>("reverse")
                                  .Attr<int32_t>("time_major"));
