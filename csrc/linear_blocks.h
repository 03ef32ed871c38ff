// How the linear-recurrence kernels (linear.cc, linear_cells.cc) split their work: blocks of
// (sequence, columns), each walked over every step by one thread, without synchronising with
// the others (the sequences and columns of a linear recurrence are independent).

#ifndef JAXRNN_CSRC_LINEAR_BLOCKS_H_
#define JAXRNN_CSRC_LINEAR_BLOCKS_H_

#include "recurrence.h"

namespace jaxrnn {

// The fewest elements (P * T * N) worth a thread for the plain recurrence: some 0.1 ms of
// work, to pay for waking it.
constexpr int64_t kElementsPerThread = int64_t{1} << 19;

struct Blocks {
  int64_t sequences, steps, width;
  int per_sequence;  // column blocks per sequence
  int64_t cost;      // the work per element, in units of the plain recurrence's
  int count() const { return static_cast<int>(sequences) * per_sequence; }
  int threads() const {
    const int64_t work = sequences * steps * width * cost / kElementsPerThread;
    const int64_t most = std::min<int64_t>({g_max_threads, work, count()});
    return static_cast<int>(std::max<int64_t>(1, most));
  }
};

// Blocks of (sequence, columns) for the threads: whole sequences where there are enough of
// them, else each sequence's columns cut in multiples of 16 floats. `cost`: the work per
// element, in units of the plain recurrence's.
inline Blocks Split(int64_t sequences, int64_t steps, int64_t width, int64_t cost = 1) {
  Blocks blocks{sequences, steps, width, 1, cost};
  const int64_t threads = blocks.threads();
  if (sequences < threads)
    blocks.per_sequence = static_cast<int>(
        std::max<int64_t>(1, std::min((threads + sequences - 1) / sequences, width / 16)));
  return blocks;
}

// Runs work(sequence, c0, c1) on every block, over the threads.
template <typename Work>
void ForBlocks(ffi::ThreadPool& pool, const Blocks& blocks, const Work& work) {
  RunRounds(pool, blocks.threads() - 1, 1, blocks.count(), 0, [&](int64_t, int k, float*) {
    const int64_t p = k / blocks.per_sequence;
    const auto [c0, c1] = ColumnPart(blocks.width, k % blocks.per_sequence, blocks.per_sequence);
    work(p, c0, c1);
  });
}

inline bool Shaped(ffi::Span<const int64_t> dims, ffi::Span<const int64_t> like) {
  return dims.size() == like.size() && std::equal(dims.begin(), dims.end(), like.begin());
}

}  // namespace jaxrnn

#endif  // JAXRNN_CSRC_LINEAR_BLOCKS_H_
