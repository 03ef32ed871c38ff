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
JAXRNN_ROW_LOOP
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
JAXRNN_ROW_LOOP
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

constexpr int kGates = 3, kKept = 4;  // kept: r, z, n and hh_n

ffi::Error GruForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> xp,
                          ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> w_h,
                          ffi::Buffer<ffi::F32> bias_h, ffi::Buffer<ffi::F32> h0,
                          ffi::Buffer<ffi::PRED> valid, ffi::Buffer<ffi::PRED> resets,
                          ffi::ResultBuffer<ffi::F32> ys, ffi::ResultBuffer<ffi::F32> h_out,
                          ffi::ResultBuffer<ffi::F32> kept, int32_t reverse, int32_t time_major) {
  if (auto err = CheckGemm(); err.failure()) return err;
  const ForwardLoop loop{
      .steps = valid.dimensions()[0], .batch = valid.dimensions()[1],
      .hidden = w_h.dimensions()[0], .reverse = reverse != 0, .time_major = time_major != 0,
      .xp = xp.typed_data(), .bias = bias.typed_data(), .w_h = w_h.typed_data(),
      .h0 = h0.typed_data(), .valid = valid.typed_data(), .resets = ResetsOrNull(resets),
      .ys = ys->typed_data(), .h_out = h_out->typed_data(), .kept = KeptOrNull(kept)};
  const float* bh = bias_h.typed_data();
  RunForward<kGates, kKept>(pool, loop, [bh](const ForwardRow& r) {
    const int n = r.n;
    Vectorised<GruRow>(n, r.xp, r.bias, bh + r.j0, r.hidden, r.acc, n, r.h_prev, r.h, r.y,
                       r.kept, r.kept + n, r.kept + 2 * n, r.kept + 3 * n);
  });
  return ffi::Error::Success();
}

ffi::Error GruBackwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> w_h,
                           ffi::Buffer<ffi::F32> kept, ffi::Buffer<ffi::PRED> valid,
                           ffi::Buffer<ffi::PRED> resets, ffi::Buffer<ffi::F32> d_ys,
                           ffi::Buffer<ffi::F32> d_h, ffi::Buffer<ffi::F32> ys,
                           ffi::Buffer<ffi::F32> h0, ffi::Buffer<ffi::F32> xs,
                           ffi::ResultBuffer<ffi::F32> d_xp, ffi::ResultBuffer<ffi::F32> d_h0,
                           ffi::ResultBuffer<ffi::F32> d_w_h, ffi::ResultBuffer<ffi::F32> d_b_h,
                           ffi::ResultBuffer<ffi::F32> d_w_i, ffi::ResultBuffer<ffi::F32> d_b,
                           int32_t reverse, int32_t time_major) {
  if (auto err = CheckGemm(); err.failure()) return err;
  // The recurrent pre-activations' cotangents (r * hh_n's in the n block); every row is
  // written before it is read.
  std::unique_ptr<float[]> d_hh(new float[d_xp->element_count()]);
  const BackwardLoop loop{
      .steps = valid.dimensions()[0], .batch = valid.dimensions()[1],
      .hidden = w_h.dimensions()[0], .reverse = reverse != 0, .time_major = time_major != 0,
      .w_h = w_h.typed_data(), .kept = kept.typed_data(), .valid = valid.typed_data(),
      .resets = ResetsOrNull(resets), .d_ys = d_ys.typed_data(), .d_h = d_h.typed_data(),
      .ys = ys.typed_data(), .h0 = h0.typed_data(), .xs = xs.typed_data(),
      .features = xs.dimensions()[2], .d_in = d_xp->typed_data(), .d_rec = d_hh.get(),
      .d_h0 = d_h0->typed_data(), .d_w_h = d_w_h->typed_data(), .d_w_i = d_w_i->typed_data(),
      .d_b = d_b->typed_data(), .d_b_rec = d_b_h->typed_data()};
  RunBackward<kGates, kKept>(pool, loop, [](const BackwardRow& r) {
    const int n = r.n;
    const float* k = r.kept;
    Vectorised<GruBackwardRow>(n, k, k + n, k + 2 * n, k + 3 * n, r.h_prev, r.dy, r.dh, r.d_in,
                               r.d_rec, r.hidden);
  });
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
