// Weighted mean of K equal-length vectors: the server step of FedAvg
// (McMahan et al. 2016, "Communication-Efficient Learning of Deep Networks
// from Decentralized Data"), out = sum_i w_i x_i / sum_i w_i.
//
// Pure functions, no Python and no heap allocation in the kernels: the Python
// binding (bindings.cpp) validates inputs, takes pointers and releases the GIL.
//
// The operation is memory bound (one multiply-add per input element), so the
// layout is chosen for bandwidth: N is cut into blocks whose float64
// accumulator stays in L2, the K rows of a block are streamed into it four
// (or eight) at a time (one accumulator load/store per pass), and the block
// is written out once as T. Blocks are spread over hardware threads when the
// work is large enough to pay for starting them.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <memory>
#include <thread>
#include <vector>

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define FEDR_HAVE_AVX2_DISPATCH 1
#else
#define FEDR_HAVE_AVX2_DISPATCH 0
#endif

namespace fedr {

// Columns per block. Each pass streams kBlock contiguous floats from a few
// rows, and long runs matter: the hardware prefetcher restarts at every 4 KiB
// page it has not seen, so short runs from many rows (large K) stall on
// memory latency. At K = 1000, N = 100k on 2 cores (a C++ loop over a
// huge-page buffer): 2048 columns gave 17 GB/s, 8192 25 GB/s, 32768 31 GB/s.
// The float64 accumulator of a block (256 KiB) stays in L2.
inline constexpr std::size_t kBlock = 32768;

// Rows streamed together in one pass over a block; the accumulator is loaded
// and stored once per pass. 8 rows per pass saved 10% at K = 1000 but cost
// 5% at K <= 100, so it is used from kWideRowsMinK rows on.
inline constexpr std::size_t kWideRowsMinK = 512;
inline constexpr std::size_t rows_per_pass(std::size_t k) { return k >= kWideRowsMinK ? 8 : 4; }

// Threads get one per kParallelMinElements input elements (K * N), so two
// threads start at 1M elements (4 MiB). Below that, starting a thread (tens
// of microseconds when it must wake an idle core) costs more than it saves:
// at K = 10, N = 100k a second thread won 20% on data cold in cache and lost
// 30% on data hot in one core's L2.
inline constexpr std::size_t kParallelMinElements = std::size_t{1} << 19;

// Boundaries between pieces of work are multiples of this many elements, so
// no two threads write the same 64-byte cache line of the output.
inline constexpr std::size_t kChunkAlign = 64;

// Pieces of work per thread, handed out dynamically (see parallel_for): with
// 4, a thread that falls behind costs at most a quarter of its share.
inline constexpr std::size_t kPiecesPerThread = 4;

namespace detail {

#if defined(__GNUC__) || defined(__clang__)
#define FEDR_INLINE inline __attribute__((always_inline))
#define FEDR_RESTRICT __restrict__
#else
#define FEDR_INLINE inline
#define FEDR_RESTRICT
#endif

// acc[0, len) (=|+=) sum_{r < R} w[r] * xs[r][begin, begin + len). The loop
// over r is unrolled at compile time; the loop over j vectorises at -O3 on
// baseline x86-64 (cvtps2pd + mulpd/addpd) and with AVX2/FMA when inlined
// into a function compiled for that target.
template <typename T, bool kFirst, std::size_t R>
FEDR_INLINE void accumulate_group(double* FEDR_RESTRICT acc, const T* const* xs, const double* w,
                                  std::size_t begin, std::size_t len) {
  const T* FEDR_RESTRICT p[R];
  double c[R];
  for (std::size_t r = 0; r < R; ++r) {
    p[r] = xs[r] + begin;
    c[r] = w[r];
  }
  for (std::size_t j = 0; j < len; ++j) {
    double s = c[0] * static_cast<double>(p[0][j]);
    for (std::size_t r = 1; r < R; ++r) s += c[r] * static_cast<double>(p[r][j]);
    acc[j] = kFirst ? s : acc[j] + s;
  }
}

template <typename T, bool kFirst>
FEDR_INLINE void accumulate_rows(double* FEDR_RESTRICT acc, const T* const* xs, const double* w,
                                 std::size_t rows, std::size_t begin, std::size_t len) {
  switch (rows) {
    case 8: return accumulate_group<T, kFirst, 8>(acc, xs, w, begin, len);
    case 7: return accumulate_group<T, kFirst, 7>(acc, xs, w, begin, len);
    case 6: return accumulate_group<T, kFirst, 6>(acc, xs, w, begin, len);
    case 5: return accumulate_group<T, kFirst, 5>(acc, xs, w, begin, len);
    case 4: return accumulate_group<T, kFirst, 4>(acc, xs, w, begin, len);
    case 3: return accumulate_group<T, kFirst, 3>(acc, xs, w, begin, len);
    case 2: return accumulate_group<T, kFirst, 2>(acc, xs, w, begin, len);
    default: return accumulate_group<T, kFirst, 1>(acc, xs, w, begin, len);
  }
}

// out[begin, end) = scale * sum_i w[i] * xs[i][begin, end), block by block,
// with acc holding min(kBlock, end - begin) doubles.
template <typename T>
FEDR_INLINE void weighted_average_range_body(const T* const* xs, const double* w, std::size_t k,
                                             double scale, std::size_t begin, std::size_t end,
                                             T* FEDR_RESTRICT out, double* FEDR_RESTRICT acc) {
  const std::size_t rows = rows_per_pass(k);
  for (std::size_t b = begin; b < end; b += kBlock) {
    const std::size_t len = std::min(kBlock, end - b);
    const std::size_t first = std::min(k, rows);
    accumulate_rows<T, true>(acc, xs, w, first, b, len);
    for (std::size_t i = first; i < k; i += rows) {
      accumulate_rows<T, false>(acc, xs + i, w + i, std::min(k - i, rows), b, len);
    }
    for (std::size_t j = 0; j < len; ++j) out[b + j] = static_cast<T>(acc[j] * scale);
  }
}

// acc[0, n) += w * x[0, n).
template <typename T>
FEDR_INLINE void accumulate_scaled_body(const T* FEDR_RESTRICT x, double w, std::size_t n,
                                        double* FEDR_RESTRICT acc) {
  for (std::size_t j = 0; j < n; ++j) acc[j] += w * static_cast<double>(x[j]);
}

// out[0, n) = scale * acc[0, n).
template <typename T>
FEDR_INLINE void scale_into_body(const double* FEDR_RESTRICT acc, double scale, std::size_t n,
                                 T* FEDR_RESTRICT out) {
  for (std::size_t j = 0; j < n; ++j) out[j] = static_cast<T>(acc[j] * scale);
}

template <typename T>
void weighted_average_range_base(const T* const* xs, const double* w, std::size_t k, double scale,
                                 std::size_t begin, std::size_t end, T* out, double* acc) {
  weighted_average_range_body(xs, w, k, scale, begin, end, out, acc);
}

template <typename T>
void accumulate_scaled_base(const T* x, double w, std::size_t n, double* acc) {
  accumulate_scaled_body(x, w, n, acc);
}

template <typename T>
void scale_into_base(const double* acc, double scale, std::size_t n, T* out) {
  scale_into_body(acc, scale, n, out);
}

#if FEDR_HAVE_AVX2_DISPATCH
// The same bodies compiled for AVX2+FMA, chosen at run time so that the wheel
// stays portable to baseline x86-64 (no -march=native).
template <typename T>
__attribute__((target("avx2,fma"))) void weighted_average_range_avx2(
    const T* const* xs, const double* w, std::size_t k, double scale, std::size_t begin,
    std::size_t end, T* out, double* acc) {
  weighted_average_range_body(xs, w, k, scale, begin, end, out, acc);
}

template <typename T>
__attribute__((target("avx2,fma"))) void accumulate_scaled_avx2(const T* x, double w,
                                                                std::size_t n, double* acc) {
  accumulate_scaled_body(x, w, n, acc);
}

template <typename T>
__attribute__((target("avx2,fma"))) void scale_into_avx2(const double* acc, double scale,
                                                         std::size_t n, T* out) {
  scale_into_body(acc, scale, n, out);
}

inline bool cpu_has_avx2_fma() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return has;
}
#else
inline bool cpu_has_avx2_fma() { return false; }
#endif

template <typename T>
void weighted_average_range(const T* const* xs, const double* w, std::size_t k, double scale,
                            std::size_t begin, std::size_t end, T* out, double* acc) {
#if FEDR_HAVE_AVX2_DISPATCH
  if (cpu_has_avx2_fma()) {
    return weighted_average_range_avx2(xs, w, k, scale, begin, end, out, acc);
  }
#endif
  weighted_average_range_base(xs, w, k, scale, begin, end, out, acc);
}

template <typename T>
void accumulate_scaled_range(const T* x, double w, std::size_t begin, std::size_t end,
                             double* acc) {
#if FEDR_HAVE_AVX2_DISPATCH
  if (cpu_has_avx2_fma()) return accumulate_scaled_avx2(x + begin, w, end - begin, acc + begin);
#endif
  accumulate_scaled_base(x + begin, w, end - begin, acc + begin);
}

template <typename T>
void scale_into_range(const double* acc, double scale, std::size_t begin, std::size_t end,
                      T* out) {
#if FEDR_HAVE_AVX2_DISPATCH
  if (cpu_has_avx2_fma()) return scale_into_avx2(acc + begin, scale, end - begin, out + begin);
#endif
  scale_into_base(acc + begin, scale, end - begin, out + begin);
}

// Runs f(slot, begin, end) over [0, n) in pieces of `unit` columns on
// `threads` threads (slot 0 is the calling thread). Pieces are handed out in
// order from a shared counter, so a thread slowed down (by a busy core)
// takes fewer of them. If a thread cannot be started, the others do its part.
template <typename F>
void parallel_for(std::size_t n, std::size_t threads, std::size_t unit, F&& f) {
  if (threads <= 1 || unit >= n) {
    for (std::size_t begin = 0; begin < n; begin += unit) {
      f(std::size_t{0}, begin, std::min(n, begin + unit));
    }
    return;
  }
  std::atomic<std::size_t> next{0};
  auto work = [&f, &next, n, unit](std::size_t slot) {
    for (;;) {
      const std::size_t begin = next.fetch_add(unit, std::memory_order_relaxed);
      if (begin >= n) return;
      f(slot, begin, std::min(n, begin + unit));
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(threads - 1);
  for (std::size_t slot = 1; slot < threads; ++slot) {
    try {
      pool.emplace_back(work, slot);
    } catch (...) {
      break;
    }
  }
  work(0);
  for (auto& t : pool) t.join();
}

// Columns per piece of work: about n / (threads * kPiecesPerThread), a
// multiple of kChunkAlign, at most `cap`.
inline std::size_t piece_size(std::size_t n, std::size_t threads, std::size_t cap) {
  const std::size_t pieces = threads * kPiecesPerThread;
  const std::size_t per = (n + pieces - 1) / pieces;
  const std::size_t aligned = (per + kChunkAlign - 1) / kChunkAlign * kChunkAlign;
  return std::min(cap, std::max(kChunkAlign, aligned));
}

}  // namespace detail

// True when this CPU runs the AVX2+FMA variant of the loops.
inline bool uses_avx2() { return detail::cpu_has_avx2_fma(); }

// Threads to use for `elements` input elements over `n` output columns when
// the caller asks for `requested` (0 = choose): at most one per hardware
// thread, one per kParallelMinElements of work, and one per kChunkAlign
// columns.
inline std::size_t choose_threads(std::size_t elements, std::size_t n, std::size_t requested) {
  std::size_t t = requested;
  if (t == 0) {
    const std::size_t hw = std::max<unsigned>(1u, std::thread::hardware_concurrency());
    t = std::min(hw, std::max<std::size_t>(1, elements / kParallelMinElements));
  }
  const std::size_t max_pieces = std::max<std::size_t>(1, (n + kChunkAlign - 1) / kChunkAlign);
  return std::max<std::size_t>(1, std::min(t, max_pieces));
}

// The exponent e of the largest weight (max w = m 2^e, m in [0.5, 1)), or 0
// when every weight is zero: dividing the weights by 2^e is exact.
inline int weight_exponent(const double* w, std::size_t k) {
  double largest = 0.0;
  for (std::size_t i = 0; i < k; ++i) largest = std::max(largest, w[i]);
  int e = 0;
  if (largest > 0.0) std::frexp(largest, &e);
  return e;
}

// out[j] = sum_i w[i] * xs[i][j] / sum_i w[i] for j < n, accumulated in
// float64. Preconditions (checked by the caller): k >= 1, every w[i] finite
// and >= 0, sum_i w[i] finite and > 0, xs[i] and out hold n elements each,
// and out does not overlap any xs[i]. `threads` = 0 chooses the count.
// The loops do not allocate; this driver allocates the thread handles and one
// block accumulator per thread (up to 256 KiB each, too big for the stack of
// every thread it may run on) before starting any thread.
template <typename T>
void weighted_average(const T* const* xs, const double* w, std::size_t k, std::size_t n, T* out,
                      std::size_t threads = 0) {
  if (n == 0) return;
  // Weights scaled by a power of two so that the largest lies in [0.5, 1):
  // 1 / total then stays finite however small the weights are (a total of
  // 1e-320 would make it Inf), and for weights in the normal range the
  // scaling is exact, so the result is bit for bit that of the raw weights.
  std::unique_ptr<double[]> scaled(new double[k]);
  const int e = weight_exponent(w, k);
  double total = 0.0;
  for (std::size_t i = 0; i < k; ++i) {
    scaled[i] = std::ldexp(w[i], -e);
    total += scaled[i];
  }
  const double scale = 1.0 / total;
  const std::size_t t = choose_threads(k * n, n, threads);
  const std::size_t unit = t > 1 ? detail::piece_size(n, t, kBlock) : std::min(n, kBlock);
  std::unique_ptr<double[]> scratch(new double[unit * t]);
  const double* sw = scaled.get();
  detail::parallel_for(n, t, unit, [&](std::size_t slot, std::size_t begin, std::size_t end) {
    detail::weighted_average_range(xs, sw, k, scale, begin, end, out, scratch.get() + slot * unit);
  });
}

// acc[j] += w * x[j] for j < n (one streamed update into a float64 running sum).
template <typename T>
void accumulate_scaled(const T* x, double w, std::size_t n, double* acc, std::size_t threads = 0) {
  if (n == 0) return;
  const std::size_t t = choose_threads(n, n, threads);
  detail::parallel_for(n, t, t > 1 ? detail::piece_size(n, t, n) : n,
                       [&](std::size_t, std::size_t begin, std::size_t end) {
                         detail::accumulate_scaled_range(x, w, begin, end, acc);
                       });
}

// out[j] = T(scale * acc[j]) for j < n.
template <typename T>
void scale_into(const double* acc, double scale, std::size_t n, T* out, std::size_t threads = 0) {
  if (n == 0) return;
  const std::size_t t = choose_threads(n, n, threads);
  detail::parallel_for(n, t, t > 1 ? detail::piece_size(n, t, n) : n,
                       [&](std::size_t, std::size_t begin, std::size_t end) {
                         detail::scale_into_range(acc, scale, begin, end, out);
                       });
}

}  // namespace fedr
