// The recurrent loops' per-step products C[m, n] (+)= A[m, k] @ B, for the shapes they have:
// m the batch, k = H (forward) or gates * H (backward), n a thread's columns, all in the tens
// to hundreds, and B the same matrix at every step. B is packed once per call (PackedColumns)
// into panels of one tile's width, [k, width] each, so that a step reads it in order; a tile of
// C, kRows rows by two vectors, is accumulated in registers over all of k and written once.
// A general sgemm packs both operands again at every call; at these sizes that is a large part
// of its time (docs/design/cpu-kernels.md has the measurements).

#ifndef JAXRNN_CSRC_SMALL_MATMUL_H_
#define JAXRNN_CSRC_SMALL_MATMUL_H_

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "dispatch.h"

namespace jaxrnn {

typedef float Vec16 __attribute__((vector_size(64)));  // one AVX-512 register
typedef float Vec8 __attribute__((vector_size(32)));   // one AVX2 register (two SSE ones)

// The columns of a tile (two vectors) in the version of Multiply that this machine runs.
inline int TileWidth() { return g_vector_level >= 4 ? 32 : 16; }

// B [depth, cols], packed: tile p's columns [p * width, (p + 1) * width) as [depth, width],
// zeros past `cols`.
class PackedColumns {
 public:
  PackedColumns() = default;
  // B's row k is what row(k, out) writes to out[0:cols].
  template <typename Row>
  PackedColumns(int64_t depth, int64_t cols, const Row& row)
      : depth_(depth), cols_(cols), width_(TileWidth()) {
    const int64_t tiles = (cols + width_ - 1) / width_;
    data_.assign(tiles * depth * width_, 0.0f);
    std::vector<float> b(cols);
    for (int64_t k = 0; k < depth; ++k) {
      row(k, b.data());
      for (int64_t p = 0; p < tiles; ++p) {
        const int64_t n = std::min<int64_t>(width_, cols - p * width_);
        std::memcpy(&data_[(p * depth + k) * width_], &b[p * width_], sizeof(float) * n);
      }
    }
  }
  int64_t depth() const { return depth_; }
  int64_t cols() const { return cols_; }
  const float* data() const { return data_.data(); }

 private:
  int64_t depth_ = 0, cols_ = 0;
  int width_ = 16;
  std::vector<float> data_;
};

// kRows rows of a tile of C: c[r, 0:cols] (+)= sum over k of a[r, k] * panel[k, 0:cols], where
// cols <= kVecs vectors (a panel's rows are two vectors apart; kVecs = 1 reads the first).
template <typename Vec, int kRows, int kVecs>
JAXRNN_ROW_LOOP void MultiplyTile(int64_t depth, const float* __restrict__ a, int64_t lda,
                                  const float* __restrict__ panel, int cols,
                                  float* __restrict__ c, int64_t ldc, bool accumulate) {
  constexpr int kLanes = sizeof(Vec) / sizeof(float);
  Vec acc[kRows][kVecs] = {};
  for (int64_t k = 0; k < depth; ++k) {
    Vec w[kVecs];
#pragma GCC unroll 2
    for (int v = 0; v < kVecs; ++v)
      std::memcpy(&w[v], panel + k * 2 * kLanes + v * kLanes, sizeof(Vec));
#pragma GCC unroll 16
    for (int r = 0; r < kRows; ++r) {
      const float x = a[r * lda + k];
#pragma GCC unroll 2
      for (int v = 0; v < kVecs; ++v) acc[r][v] += x * w[v];
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < kRows; ++r) {
    float* out = c + r * ldc;
    if (cols == kVecs * kLanes) {
#pragma GCC unroll 2
      for (int v = 0; v < kVecs; ++v) {
        if (accumulate) {
          Vec before;
          std::memcpy(&before, out + v * kLanes, sizeof(Vec));
          acc[r][v] += before;
        }
        std::memcpy(out + v * kLanes, &acc[r][v], sizeof(Vec));
      }
    } else {
      float row[kVecs * kLanes];
      std::memcpy(row, &acc[r][0], sizeof(acc[r]));
      for (int j = 0; j < cols; ++j) out[j] = accumulate ? out[j] + row[j] : row[j];
    }
  }
}

// The last rows of a block, `rest` < kRows of them, as one tile of kFewer rows or fewer.
// A function rather than a lambda: a lambda is compiled for the baseline, not for the target
// of the vector version that calls it.
template <typename Vec, int kFewer, int kVecs>
JAXRNN_ROW_LOOP void MultiplyRest(int rest, int64_t depth, const float* __restrict__ a,
                                  int64_t lda, const float* __restrict__ panel, int cols,
                                  float* __restrict__ c, int64_t ldc, bool accumulate) {
  if constexpr (kFewer > 0) {
    if (rest == kFewer)
      return MultiplyTile<Vec, kFewer, kVecs>(depth, a, lda, panel, cols, c, ldc, accumulate);
    MultiplyRest<Vec, kFewer - 1, kVecs>(rest, depth, a, lda, panel, cols, c, ldc, accumulate);
  }
}

// Tiles of kRows rows and kVecs vectors over m rows: the last block of fewer rows with a tile
// of its own size.
template <typename Vec, int kRows, int kVecs>
JAXRNN_ROW_LOOP void MultiplyRows(int64_t m, int64_t depth, const float* __restrict__ a,
                                  int64_t lda, const float* __restrict__ panel, int cols,
                                  float* __restrict__ c, int64_t ldc, bool accumulate) {
  int64_t r = 0;
  for (; r + kRows <= m; r += kRows)
    MultiplyTile<Vec, kRows, kVecs>(depth, a + r * lda, lda, panel, cols, c + r * ldc, ldc,
                                    accumulate);
  MultiplyRest<Vec, kRows - 1, kVecs>(static_cast<int>(m - r), depth, a + r * lda, lda, panel,
                                      cols, c + r * ldc, ldc, accumulate);
}

// C[m, cols] (+)= A[m, depth] @ B (`packed`, PackedColumns' layout): each tile of two vectors'
// columns, and a last tile of one vector where that holds the remaining columns.
template <typename Vec, int kRows>
JAXRNN_ROW_LOOP void MultiplyAll(int64_t m, const float* __restrict__ a, int64_t lda,
                                 int64_t depth, int64_t cols, const float* __restrict__ packed,
                                 float* __restrict__ c, int64_t ldc, bool accumulate) {
  constexpr int kLanes = sizeof(Vec) / sizeof(float);
  for (int64_t p = 0; p * 2 * kLanes < cols; ++p) {
    const float* panel = packed + p * depth * 2 * kLanes;
    const int n = static_cast<int>(std::min<int64_t>(2 * kLanes, cols - p * 2 * kLanes));
    float* c_tile = c + p * 2 * kLanes;
    if (n > kLanes) {
      MultiplyRows<Vec, kRows, 2>(m, depth, a, lda, panel, n, c_tile, ldc, accumulate);
    } else {
      MultiplyRows<Vec, kRows, 1>(m, depth, a, lda, panel, n, c_tile, ldc, accumulate);
    }
  }
}

// C[m, b.cols()] = A[m, b.depth()] @ b, or C += that where `accumulate`; A and C row-major
// with leading dimensions lda and ldc.
inline void Multiply(int64_t m, const float* a, int64_t lda, const PackedColumns& b, float* c,
                     int64_t ldc, bool accumulate) {
#if defined(JAXRNN_X86_V4)
  if (g_vector_level >= 4)  // 32 registers: 12 rows x 2 accumulators
    return RunV4<MultiplyAll<Vec16, 12>>(m, a, lda, b.depth(), b.cols(), b.data(), c, ldc,
                                         accumulate);
#endif
  // 16 registers (AVX2): 6 rows x 2 accumulators
  Vectorised<MultiplyAll<Vec8, 6>>(m, a, lda, b.depth(), b.cols(), b.data(), c, ldc,
                                   accumulate);
}

}  // namespace jaxrnn

#endif  // JAXRNN_CSRC_SMALL_MATMUL_H_
