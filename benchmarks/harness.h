// Timing shared by the C++ benchmark harnesses (kernel_parts.cc, matmul_libraries.cc).

#ifndef JAXRNN_BENCHMARKS_HARNESS_H_
#define JAXRNN_BENCHMARKS_HARNESS_H_

#include <algorithm>
#include <chrono>
#include <vector>

namespace harness {

inline double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Median, minimum and maximum seconds per call over `repeats` repeats of `calls` calls.
template <typename F>
std::vector<double> Time(int repeats, int calls, const F& f) {
  std::vector<double> seconds;
  for (int r = 0; r < repeats; ++r) {
    const double start = Now();
    for (int i = 0; i < calls; ++i) f();
    seconds.push_back((Now() - start) / calls);
  }
  std::sort(seconds.begin(), seconds.end());
  return {seconds[seconds.size() / 2], seconds.front(), seconds.back()};
}

// `work` a call over the seconds a call took (Time's median, minimum, maximum): the rate's
// median, minimum and maximum (the fastest call has the highest rate).
inline std::vector<double> PerSecond(const std::vector<double>& t, double work) {
  return {work / t[0], work / t[2], work / t[1]};
}

}  // namespace harness

#endif  // JAXRNN_BENCHMARKS_HARNESS_H_
