// The CPU kernels' parts timed one at a time on one thread, for benchmarks/kernel_parts.py
// (which compiles this file with setup.py's flags and reads the JSON it prints):
// the core's multiply-add peak (independent accumulators in registers), the recurrent loops'
// small matmul (small_matmul.h) at a tile's size and at the per-thread shapes of W1 and W3,
// and the LSTM's pointwise forward row (lstm.cc) with all its operands in L1.

#include <algorithm>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "harness.h"
#include "lstm.cc"

namespace {

using jaxrnn::PackedColumns;
using jaxrnn::Vec16;
using jaxrnn::Vec8;

using harness::PerSecond;
using harness::Time;

// `iterations` rounds of 12 multiply-adds on independent accumulators (more than an FMA's
// latency times the units that issue them), each started from its own value so that the
// compiler cannot merge them.
template <typename Vec>
JAXRNN_ROW_LOOP void MultiplyAddPeak(int64_t iterations, float* sum) {
  constexpr int kLanes = sizeof(Vec) / sizeof(float);
  Vec acc[12], w, x;
  for (int r = 0; r < 12; ++r)
    for (int l = 0; l < kLanes; ++l) acc[r][l] = static_cast<float>(r);
  for (int l = 0; l < kLanes; ++l) w[l] = 0.999f, x[l] = 1e-9f;
  for (int64_t i = 0; i < iterations; ++i) {
#pragma GCC unroll 12
    for (int r = 0; r < 12; ++r) acc[r] = acc[r] * w + x;
  }
  *sum = 0.0f;
  for (int r = 0; r < 12; ++r) *sum += acc[r][0];
}

// GFLOP/s of one thread's multiply-adds in the widest vectors the kernels use, and their lanes
// (none below x86-64-v3).
std::pair<std::vector<double>, int> Peak() {
  const int64_t iterations = 20000000;
  const double flop = iterations * 12.0 * 2 / 1e9;  // times the lanes: GFLOP a call
  float sum = 0.0f;
#if defined(JAXRNN_X86_V3)
  if (jaxrnn::g_vector_level >= 4) {
    auto t = Time(5, 1, [&] { jaxrnn::RunV4<MultiplyAddPeak<Vec16>>(iterations, &sum); });
    return {PerSecond(t, flop * 16), 16};
  }
  if (jaxrnn::g_vector_level >= 3) {
    auto t = Time(5, 1, [&] { jaxrnn::RunV3<MultiplyAddPeak<Vec8>>(iterations, &sum); });
    return {PerSecond(t, flop * 8), 8};
  }
#endif
  return {{0.0, 0.0, 0.0}, 0};
}

std::string Entry(const std::string& name, const std::string& unit, const std::vector<double>& t,
                  const std::string& extra = "") {
  char buffer[512];
  std::snprintf(buffer, sizeof buffer,
                "  {\"name\": \"%s\", \"unit\": \"%s\", \"median\": %.4g, \"min\": %.4g, "
                "\"max\": %.4g%s}",
                name.c_str(), unit.c_str(), t[0], t[1], t[2], extra.c_str());
  return buffer;
}

// C[m, cols] = A[m, depth] @ B, B packed once: GFLOP/s (median, and the range's ends).
std::vector<double> Matmul(int64_t m, int64_t depth, int64_t cols) {
  std::mt19937 gen(0);
  std::normal_distribution<float> normal;
  std::vector<float> a(m * depth), b(depth * cols), c(m * cols);
  for (float& v : a) v = normal(gen);
  for (float& v : b) v = normal(gen);
  const PackedColumns packed(depth, cols, [&](int64_t k, float* out) {
    std::copy_n(&b[k * cols], cols, out);
  });
  const int calls = static_cast<int>(std::max<int64_t>(1, 200000000 / (2 * m * depth * cols)));
  auto t = Time(7, calls, [&] {
    jaxrnn::Multiply(m, a.data(), depth, packed, c.data(), cols, false);
    __asm__ volatile("" ::: "memory");
  });
  return PerSecond(t, 2.0 * m * depth * cols / 1e9);
}

// The LSTM's forward row over `n` units (all operands in L1): nanoseconds a unit.
std::vector<double> LstmRowTime(int n) {
  std::vector<float> xp(4 * n, 0.3f), bias(4 * n, 0.1f), acc(4 * n, 0.2f), c(n, 0.5f), h(n),
      y(n), kept(5 * n);
  auto t = Time(7, 20000, [&] {
    jaxrnn::Vectorised<jaxrnn::LstmRow>(
        n, static_cast<const float*>(xp.data()), static_cast<const float*>(bias.data()),
        static_cast<int64_t>(n), static_cast<const float*>(acc.data()), n, 0.0f, c.data(),
        h.data(), y.data(), kept.data(), kept.data() + n, kept.data() + 2 * n,
        kept.data() + 3 * n, kept.data() + 4 * n);
    __asm__ volatile("" ::: "memory");
  });
  for (double& s : t) s = s / n * 1e9;
  return t;
}

}  // namespace

int main() {
  const auto [peak, lanes] = Peak();
  std::vector<std::string> entries{
      Entry("multiply-add peak, one core", "GFLOP/s", peak,
            ", \"lanes\": " + std::to_string(lanes))};
  struct Shape {
    const char* name;
    int64_t m, depth, cols;
  };
  for (const Shape& s : {Shape{"small matmul, one tile in L1 (6 x 512 x 16)", 6, 512, 16},
                         Shape{"small matmul, W1 forward a thread (50 x 128 x 512)", 50, 128, 512},
                         Shape{"small matmul, W1 backward a thread (50 x 512 x 128)", 50, 512, 128},
                         Shape{"small matmul, W3 a thread (75 x 150 x 150)", 75, 150, 150}}) {
    entries.push_back(Entry(s.name, "GFLOP/s", Matmul(s.m, s.depth, s.cols)));
  }
  entries.push_back(Entry("LSTM forward row, 128 units in L1", "ns a unit", LstmRowTime(128)));
  std::printf("{\"vector_level\": %d, \"parts\": [\n", jaxrnn::g_vector_level);
  for (size_t i = 0; i < entries.size(); ++i)
    std::printf("%s%s\n", entries[i].c_str(), i + 1 < entries.size() ? "," : "");
  std::printf("]}\n");
}
