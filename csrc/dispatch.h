// jaxrnn's x86-64 dispatch: a loop compiled for x86-64-v4 (AVX-512), x86-64-v3 (AVX2, FMA)
// and the baseline, run in the widest version the machine supports. Included by
// recurrence.h and small_matmul.h.

#ifndef JAXRNN_CSRC_DISPATCH_H_
#define JAXRNN_CSRC_DISPATCH_H_

#include <algorithm>
#include <cstdlib>

#if defined(__x86_64__)
#include <cpuid.h>
#endif

namespace jaxrnn {

// ----------------------------------------------------------------------- vector versions
// One build serves every x86-64 machine: each cell's row loops (JAXRNN_ROW_LOOP functions,
// called as Vectorised<Loop>(args...)) are compiled for x86-64-v4 (AVX-512), x86-64-v3
// (AVX2, FMA) and the baseline, and every call runs the widest version that the CPU and the
// operating system support (g_vector_level, read once with cpuid when the library loads).
// Not target_clones (the GCC build's way until the wheel's): its dispatch reads the CPU's
// features from the compiler runtime, whose copy in the wheel's toolchain (zig c++) reports
// none, and under zig an arch= target still compiles for the baseline. Feature lists and a
// cpuid check of our own do the same under GCC and Clang.

#define JAXRNN_ROW_LOOP inline __attribute__((always_inline))
// What a row loop calls (the pointwise functions, a cell's arithmetic): inlined into each
// vector version, as a call would run code compiled for the baseline, one value at a time.
#define JAXRNN_INLINE inline __attribute__((always_inline))

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define JAXRNN_X86_V3 "avx2,fma,bmi,bmi2,f16c,lzcnt,movbe,popcnt"
#define JAXRNN_X86_V4 JAXRNN_X86_V3 ",avx512f,avx512bw,avx512cd,avx512dq,avx512vl"

// 4 where the CPU has x86-64-v4's features (AVX-512 F, BW, CD, DQ, VL) and the operating
// system saves the AVX-512 registers, 3 for x86-64-v3's (AVX2, FMA, BMI1, BMI2, F16C, LZCNT,
// MOVBE, POPCNT) and the AVX registers, else 1.
inline int DetectVectorLevel() {
  unsigned eax, ebx, ecx, edx;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return 1;
  const unsigned leaf1_ecx = ecx;
  auto has = [](unsigned reg, int bit) { return (reg >> bit) & 1u; };
  // FMA 12, MOVBE 22, POPCNT 23, OSXSAVE 27 (XGETBV works), AVX 28, F16C 29
  for (int bit : {12, 22, 23, 27, 28, 29})
    if (!has(leaf1_ecx, bit)) return 1;
  unsigned xcr0, xcr0_high;
  __asm__("xgetbv" : "=a"(xcr0), "=d"(xcr0_high) : "c"(0));
  if ((xcr0 & 0x6) != 0x6) return 1;  // the SSE and AVX registers
  if (!__get_cpuid(0x80000001, &eax, &ebx, &ecx, &edx) || !has(ecx, 5)) return 1;  // LZCNT
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return 1;
  for (int bit : {3, 5, 8})  // BMI1, AVX2, BMI2
    if (!has(ebx, bit)) return 1;
  for (int bit : {16, 17, 28, 30, 31})  // AVX-512 F, DQ, CD, BW, VL
    if (!has(ebx, bit)) return 3;
  return (xcr0 & 0xe6) == 0xe6 ? 4 : 3;  // and the opmask and ZMM registers
}

// DetectVectorLevel(), or less where JAXRNN_MAX_VECTOR_LEVEL asks for less (1, 3): tests run
// every version on one machine so.
inline int VectorLevel() {
  const int level = DetectVectorLevel();
  const char* cap = std::getenv("JAXRNN_MAX_VECTOR_LEVEL");
  return cap != nullptr && *cap != '\0' ? std::min(level, std::atoi(cap)) : level;
}

inline const int g_vector_level = VectorLevel();

template <auto Loop, typename... Args>
__attribute__((target(JAXRNN_X86_V4))) void RunV4(Args... args) {
  Loop(args...);
}
template <auto Loop, typename... Args>
__attribute__((target(JAXRNN_X86_V3))) void RunV3(Args... args) {
  Loop(args...);
}
// Not inlined either: inlined, GCC's baseline loop made W5's forward kernel 10% slower.
template <auto Loop, typename... Args>
__attribute__((noinline)) void RunBaseline(Args... args) {
  Loop(args...);
}

// Loop(args...), in the widest version this machine runs.
template <auto Loop, typename... Args>
void Vectorised(Args... args) {
  if (g_vector_level >= 4) return RunV4<Loop>(args...);
  if (g_vector_level >= 3) return RunV3<Loop>(args...);
  RunBaseline<Loop>(args...);
}
#else
inline const int g_vector_level = 0;  // one version, for the compiler's target

template <auto Loop, typename... Args>
void Vectorised(Args... args) {
  Loop(args...);
}
#endif

}  // namespace jaxrnn

#endif  // JAXRNN_CSRC_DISPATCH_H_
