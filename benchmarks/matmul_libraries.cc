// The recurrent loops' per-step products, and W1's weight gradient, by the kernels' packed
// small matmul and by the BLAS libraries given on the command line, one thread each.
// Built and run by matmul_libraries.py, which documents the arguments.

#include <dlfcn.h>

#include <algorithm>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "harness.h"
#include "small_matmul.h"

namespace {

constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112, kPacked = 151, kBMatrix = 162;

using CblasSgemm = void (*)(int, int, int, int, int, int, float, const float*, int, const float*,
                            int, float, float*, int);
using MklPackSize = size_t (*)(int, int, int, int);
using MklPack = void (*)(int, int, int, int, int, int, float, const float*, int, float*);
using MklCompute = void (*)(int, int, int, int, int, int, const float*, int, const float*, int,
                            float, float*, int);
using MklJitCreate = int (*)(void**, int, int, int, int, int, int, float, int, int, float, int);
using MklJitKernel = void (*)(void*, float*, float*, float*);
using MklJitGet = MklJitKernel (*)(const void*);
using DnnlSgemm = int (*)(char, char, int64_t, int64_t, int64_t, float, const float*, int64_t,
                          const float*, int64_t, float, float*, int64_t);
using BliSgemm = void (*)(int, int, int64_t, int64_t, int64_t, const float*, const float*,
                          int64_t, int64_t, const float*, int64_t, int64_t, const float*, float*,
                          int64_t, int64_t);

void* Open(const std::string& path) {
  if (path.empty()) return nullptr;
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL);
  if (handle == nullptr) {
    std::fprintf(stderr, "%s\n", dlerror());
    std::exit(2);
  }
  return handle;
}

template <typename T>
T Symbol(void* library, const char* name) {
  void* symbol = dlsym(library, name);
  if (symbol == nullptr) {
    std::fprintf(stderr, "no %s\n", name);
    std::exit(2);
  }
  return reinterpret_cast<T>(symbol);
}

// GFLOP/s of f() computing an m x depth x cols product: the median of 7 repeats, and its range.
template <typename F>
std::vector<double> Rate(int64_t m, int64_t depth, int64_t cols, const F& f) {
  const int calls = static_cast<int>(std::max<int64_t>(1, 200000000 / (2 * m * depth * cols)));
  f();  // a library's first call sets itself up (MKL, oneDNN): not timed
  const auto seconds = harness::Time(7, calls, [&] {
    f();
    __asm__ volatile("" ::: "memory");
  });
  return harness::PerSecond(seconds, 2.0 * m * depth * cols / 1e9);
}

std::string Entry(const char* shape, const char* how, const std::vector<double>& r) {
  char buffer[256];
  std::snprintf(buffer, sizeof buffer,
                "  {\"shape\": \"%s\", \"how\": \"%s\", \"median\": %.4g, \"min\": %.4g, "
                "\"max\": %.4g}",
                shape, how, r[0], r[1], r[2]);
  return buffer;
}

}  // namespace

// argv: OpenBLAS (scipy-openblas32), MKL's libmkl_rt, oneDNN's libdnnl, libpython and BLIS's
// extension module (cython-blis): each a path, or "" where not measured.
int main(int argc, char** argv) {
  if (argc != 6) return 2;
  void* openblas = Open(argv[1]);
  void* mkl = Open(argv[2]);
  void* dnnl = Open(argv[3]);
  Open(argv[4]);  // libpython: the symbols BLIS's extension module links against
  void* blis = Open(argv[5]);
  Symbol<void (*)(int)>(openblas, "scipy_openblas_set_num_threads")(1);
  auto openblas_sgemm = Symbol<CblasSgemm>(openblas, "scipy_cblas_sgemm");
  if (mkl) Symbol<int (*)(int)>(mkl, "MKL_Set_Threading_Layer")(1);  // sequential

  struct Shape {
    const char* name;
    int64_t m, depth, cols;
    bool transpose_a;  // A given as [depth, m]
  };
  {  // the core at its working clock before the first measurement
    std::vector<float> a(64 * 512, 1.0f), c(64 * 256);
    const jaxrnn::PackedColumns packed(512, 256, [](int64_t, float* out) {
      std::fill_n(out, 256, 0.5f);
    });
    const double start = harness::Now();
    while (harness::Now() - start < 1.0)
      jaxrnn::Multiply(64, a.data(), 512, packed, c.data(), 256, false);
  }
  std::vector<std::string> entries;
  for (const Shape& s : {Shape{"W1 forward a thread (50 x 128 x 512)", 50, 128, 512, false},
                         Shape{"W1 backward a thread (50 x 512 x 128)", 50, 512, 128, false},
                         Shape{"W3 a thread (75 x 150 x 150)", 75, 150, 150, false},
                         Shape{"W5 forward (64 x 32 x 128)", 64, 32, 128, false},
                         Shape{"W6 forward a thread (64 x 512 x 1024)", 64, 512, 1024, false},
                         Shape{"W1 w_h gradient a thread (128 x 2800 x 256, A^T)", 128, 2800,
                               256, true}}) {
    std::mt19937 gen(0);
    std::normal_distribution<float> normal;
    std::vector<float> a(s.m * s.depth), b(s.depth * s.cols), c(s.m * s.cols);
    for (float& v : a) v = normal(gen);
    for (float& v : b) v = normal(gen);
    const int m = static_cast<int>(s.m), k = static_cast<int>(s.depth),
              n = static_cast<int>(s.cols);
    const int trans_a = s.transpose_a ? kTrans : kNoTrans, lda = s.transpose_a ? m : k;
    if (!s.transpose_a) {
      const jaxrnn::PackedColumns packed(s.depth, s.cols, [&](int64_t row, float* out) {
        std::copy_n(&b[row * s.cols], s.cols, out);
      });
      entries.push_back(Entry(s.name, "jaxrnn packed small matmul", Rate(m, k, n, [&] {
        jaxrnn::Multiply(m, a.data(), k, packed, c.data(), n, false);
      })));
    }
    entries.push_back(Entry(s.name, "OpenBLAS sgemm", Rate(m, k, n, [&] {
      openblas_sgemm(kRowMajor, trans_a, kNoTrans, m, n, k, 1.0f, a.data(), lda, b.data(), n,
                     0.0f, c.data(), n);
    })));
    if (mkl) {
      auto sgemm = Symbol<CblasSgemm>(mkl, "cblas_sgemm");
      entries.push_back(Entry(s.name, "MKL sgemm", Rate(m, k, n, [&] {
        sgemm(kRowMajor, trans_a, kNoTrans, m, n, k, 1.0f, a.data(), lda, b.data(), n, 0.0f,
              c.data(), n);
      })));
      const size_t bytes = Symbol<MklPackSize>(mkl, "cblas_sgemm_pack_get_size")(kBMatrix, m, n, k);
      std::vector<float> packed(bytes / sizeof(float) + 16);
      Symbol<MklPack>(mkl, "cblas_sgemm_pack")(kRowMajor, kBMatrix, kNoTrans, m, n, k, 1.0f,
                                               b.data(), n, packed.data());
      auto compute = Symbol<MklCompute>(mkl, "cblas_sgemm_compute");
      entries.push_back(Entry(s.name, "MKL sgemm, B packed once", Rate(m, k, n, [&] {
        compute(kRowMajor, trans_a, kPacked, m, n, k, a.data(), lda, packed.data(), n, 0.0f,
                c.data(), n);
      })));
      void* jitter = nullptr;
      const int status = Symbol<MklJitCreate>(mkl, "mkl_cblas_jit_create_sgemm")(
          &jitter, kRowMajor, trans_a, kNoTrans, m, n, k, 1.0f, lda, n, 0.0f, n);
      // 0: a kernel was generated for this CPU; 1: none (MKL's sgemm runs instead).
      if (status == 0 && jitter != nullptr) {
        MklJitKernel kernel = Symbol<MklJitGet>(mkl, "mkl_jit_get_sgemm_ptr")(jitter);
        entries.push_back(Entry(s.name, "MKL JIT sgemm", Rate(m, k, n, [&] {
          kernel(jitter, a.data(), b.data(), c.data());
        })));
      }
    }
    if (dnnl) {
      auto sgemm = Symbol<DnnlSgemm>(dnnl, "dnnl_sgemm");
      entries.push_back(Entry(s.name, "oneDNN sgemm", Rate(m, k, n, [&] {
        sgemm(s.transpose_a ? 'T' : 'N', 'N', m, n, k, 1.0f, a.data(), lda, b.data(), n, 0.0f,
              c.data(), n);
      })));
    }
    if (blis) {
      auto sgemm = Symbol<BliSgemm>(blis, "bli_sgemm");
      const float one = 1.0f, zero = 0.0f;
      const int64_t row_stride = s.transpose_a ? 1 : k, col_stride = s.transpose_a ? m : 1;
      entries.push_back(Entry(s.name, "BLIS sgemm", Rate(m, k, n, [&] {
        sgemm(0, 0, m, n, k, &one, a.data(), row_stride, col_stride, b.data(), n, 1, &zero,
              c.data(), n, 1);
      })));
    }
    std::fprintf(stderr, "%s: done\n", s.name);
  }
  std::printf("{\"vector_level\": %d, \"results\": [\n", jaxrnn::g_vector_level);
  for (size_t i = 0; i < entries.size(); ++i)
    std::printf("%s%s\n", entries[i].c_str(), i + 1 < entries.size() ? "," : "");
  std::printf("]}\n");
}
