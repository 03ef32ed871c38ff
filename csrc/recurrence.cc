// jaxrnn's CPU kernels: what Python sets before any handler runs, and what it may ask (see
// recurrence.h).

#include "recurrence.h"

extern "C" {
// Called once from Python before any handler runs.
__attribute__((visibility("default"))) void jaxrnn_set_sgemm(void* fn) {
  jaxrnn::g_sgemm = reinterpret_cast<jaxrnn::Sgemm>(fn);
}
__attribute__((visibility("default"))) void jaxrnn_set_max_threads(int n) {
  jaxrnn::g_max_threads = n < 1 ? 1 : n;
}
// The version of the row loops that runs (recurrence.h): the x86-64 level, 4, 3 or 1, or 0
// where there is one version (other machines).
__attribute__((visibility("default"))) int jaxrnn_vector_level() { return jaxrnn::g_vector_level; }
// How many threads split a loop's batch rows (SplitWork), or 1 where the threads split the
// units.
__attribute__((visibility("default"))) int jaxrnn_row_threads(int64_t steps, int64_t batch,
                                                              int64_t hidden, int gates) {
  const jaxrnn::WorkSplit split = jaxrnn::SplitWork(steps, batch, hidden, gates);
  return split.by_rows() ? split.items() : 1;
}
}

