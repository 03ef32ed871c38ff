// jaxrnn's CPU kernels: what Python sets before any handler runs (see recurrence.h).

#include "recurrence.h"

extern "C" {
// Called once from Python before any handler runs.
__attribute__((visibility("default"))) void jaxrnn_set_sgemm(void* fn) {
  jaxrnn::g_sgemm = reinterpret_cast<jaxrnn::Sgemm>(fn);
}
__attribute__((visibility("default"))) void jaxrnn_set_max_threads(int n) {
  jaxrnn::g_max_threads = n < 1 ? 1 : n;
}
}

