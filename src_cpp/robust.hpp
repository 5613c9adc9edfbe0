// Robust aggregation kernels: the coordinate-wise median and trimmed mean of
// Yin et al. 2018 ("Byzantine-Robust Distributed Learning: Towards Optimal
// Statistical Rates"), and the pairwise squared distances that Krum scores
// (Blanchard et al. 2017, "Machine Learning with Adversaries: Byzantine
// Tolerant Gradient Descent").
//
// Pure functions, no Python: the binding (bindings.cpp) validates inputs,
// takes pointers to the K rows (each n floats) and releases the GIL. Work is
// spread over hardware threads with detail::parallel_for from
// weighted_average.hpp.
//
// Median and trimmed mean select among the K values of each coordinate. The
// rows are row-major, so a block of columns is first transposed into a
// per-thread buffer (each coordinate's K values contiguous, the buffer small
// enough for L2), then std::nth_element runs on each coordinate in place.
//
// The geometric median (Pillutla et al. 2022, "Robust Aggregation for
// Federated Learning", RFA) runs the smoothed Weiszfeld iteration: each step
// is one weighted average z = sum_i b_i x_i / sum_i b_i followed by the
// distances ||z - x_i||, fused into one pass over the data. A block of
// columns small enough for L2 is averaged into float64 and its contribution
// to the K squared distances summed while its rows are still in cache, so a
// step reads the K * N floats from memory once.
//
// Distances use the Gram matrix, d_ij = G_ii + G_jj - 2 G_ij: one pass over
// the data computing the upper triangle of G tile by tile (3x3 rows at a
// time, so each loaded vector feeds three FMAs). Products are summed in
// float32 lanes over runs of kGramFlush columns and every run is added into
// float64, which keeps the cancellation in d_ij small (the rounding error of
// a run is about 2^-24 times the run's own dot product, not the whole
// vector's) at the speed of float32 arithmetic.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <memory>
#include <vector>

#include "weighted_average.hpp"

#if FEDR_HAVE_AVX2_DISPATCH
#include <immintrin.h>
#endif

namespace fedr {

// Bytes of the transposed block each thread selects in: 128 KiB stays in L2
// with room for the rows streamed in. At K = 10 that is 3200 columns per
// block; at K = 100, 320.
inline constexpr std::size_t kSelectBufferBytes = std::size_t{128} * 1024;

// Selecting costs tens of nanoseconds per coordinate (far more than the
// memory traffic), so a second thread pays from a smaller size than in the
// weighted mean: one thread per 2^16 input elements.
inline constexpr std::size_t kSelectParallelMinElements = std::size_t{1} << 16;

// Columns summed in float32 lanes before the run is added into float64
// (64 products per lane), and the columns of a Gram block (all K rows of a
// block are re-read from cache by every tile).
inline constexpr std::size_t kGramFlush = 512;

// The columns are cut into at most this many pieces, each with its own K x K
// float64 accumulator, summed in piece order: the result does not depend on
// the number of threads or on which thread took which piece.
inline constexpr std::size_t kGramMaxPieces = 16;

// Memory for the piece accumulators (pieces * K * K doubles) stays under this.
inline constexpr std::size_t kGramAccumulatorBytes = std::size_t{32} << 20;

namespace detail {

inline std::size_t select_block_columns(std::size_t k) {
  const std::size_t cols = kSelectBufferBytes / (k * sizeof(float));
  return std::max(kChunkAlign, cols / kChunkAlign * kChunkAlign);
}

inline std::size_t select_threads(std::size_t k, std::size_t n, std::size_t requested) {
  std::size_t t = requested;
  if (t == 0) {
    const std::size_t hw = std::max<unsigned>(1u, std::thread::hardware_concurrency());
    t = std::min(hw, std::max<std::size_t>(1, k * n / kSelectParallelMinElements));
  }
  return std::max<std::size_t>(1, t);
}

// buf[(j - begin) * k + i] = rows[i][j] for j in [begin, end); returns true
// if any value is NaN (its order is undefined, so it must not reach
// nth_element).
template <typename T>
bool gather_columns(const T* const* rows, std::size_t k, std::size_t begin, std::size_t end,
                    T* FEDR_RESTRICT buf) {
  bool nan = false;
  const std::size_t len = end - begin;
  for (std::size_t i = 0; i < k; ++i) {
    const T* FEDR_RESTRICT src = rows[i] + begin;
    T* FEDR_RESTRICT dst = buf + i;
    for (std::size_t j = 0; j < len; ++j) {
      const T v = src[j];
      nan |= v != v;
      dst[j * k] = v;
    }
  }
  return nan;
}

// Up to this many values per coordinate are put in order by insertion sort
// rather than selected with std::nth_element: at K = 10 (one core, random
// floats) 141 ns against 182 ns per coordinate for a median, and one sort
// replaces the trimmed mean's two selections; from K = 32 nth_element wins.
inline constexpr std::size_t kInsertionSortMaxK = 16;

template <typename T>
void insertion_sort(T* v, std::size_t k) {
  for (std::size_t i = 1; i < k; ++i) {
    const T x = v[i];
    std::size_t j = i;
    for (; j > 0 && v[j - 1] > x; --j) v[j] = v[j - 1];
    v[j] = x;
  }
}

// The median of v[0, k), reordering v; for even k the mean of the two middle
// values (as numpy.median), computed in float64 so that it cannot overflow.
template <typename T>
T median_of(T* v, std::size_t k) {
  const std::size_t h = k / 2;
  if (k <= kInsertionSortMaxK) {
    insertion_sort(v, k);
  } else {
    std::nth_element(v, v + h, v + k);
  }
  if (k % 2 == 1) return v[h];
  // Sorted, the lower middle value is v[h - 1]; selected, the largest before v[h].
  const T lower = k <= kInsertionSortMaxK ? v[h - 1] : *std::max_element(v, v + h);
  return static_cast<T>((static_cast<double>(lower) + static_cast<double>(v[h])) * 0.5);
}

// The mean of v[0, k) without its `trim` smallest and `trim` largest values
// (0 < 2 * trim < k), reordering v; summed in float64.
template <typename T>
T trimmed_mean_of(T* v, std::size_t k, std::size_t trim) {
  if (k <= kInsertionSortMaxK) {
    insertion_sort(v, k);
  } else {
    std::nth_element(v, v + trim, v + k);
    // Within [trim, k), the value of rank k - trim - 1 goes to its place: the
    // `trim` largest are then after it, the kept ones in [trim, k - trim).
    std::nth_element(v + trim, v + (k - trim - 1), v + k);
  }
  double sum = 0.0;
  for (std::size_t i = trim; i < k - trim; ++i) sum += static_cast<double>(v[i]);
  return static_cast<T>(sum / static_cast<double>(k - 2 * trim));
}

// Runs select(v, k) on every column of the K rows, writing out[j]; returns
// false (leaving out partly written) if a NaN was found.
template <typename T, typename Select>
bool select_columns(const T* const* rows, std::size_t k, std::size_t n, T* out,
                    std::size_t threads, Select select) {
  if (n == 0) return true;
  const std::size_t block = std::min(n, select_block_columns(k));
  const std::size_t t =
      std::min(select_threads(k, n, threads), (n + block - 1) / block);
  std::unique_ptr<T[]> scratch(new T[block * k * t]);
  std::atomic<bool> nan{false};
  parallel_for(n, t, block, [&](std::size_t slot, std::size_t begin, std::size_t end) {
    if (nan.load(std::memory_order_relaxed)) return;
    T* buf = scratch.get() + slot * block * k;
    if (gather_columns(rows, k, begin, end, buf)) {
      nan.store(true, std::memory_order_relaxed);
      return;
    }
    for (std::size_t j = begin; j < end; ++j) out[j] = select(buf + (j - begin) * k, k);
  });
  return !nan.load();
}

// acc[i * k + j] += sum_{c in [begin, begin + len)} rows[i][c] * rows[j][c]
// for i <= j in the tile's rows; float64 throughout (the portable fallback).
template <std::size_t RI, std::size_t RJ>
FEDR_INLINE void gram_tile_base(const float* const* rows, std::size_t k, std::size_t i0,
                                std::size_t j0, std::size_t begin, std::size_t len,
                                double* acc) {
  double s[RI][RJ] = {};
  for (std::size_t c = begin; c < begin + len; ++c) {
    double y[RJ];
    for (std::size_t b = 0; b < RJ; ++b) y[b] = rows[j0 + b][c];
    for (std::size_t a = 0; a < RI; ++a) {
      const double x = rows[i0 + a][c];
      for (std::size_t b = 0; b < RJ; ++b) s[a][b] += x * y[b];
    }
  }
  for (std::size_t a = 0; a < RI; ++a) {
    for (std::size_t b = 0; b < RJ; ++b) acc[(i0 + a) * k + j0 + b] += s[a][b];
  }
}

#if FEDR_HAVE_AVX2_DISPATCH
__attribute__((target("avx2,fma"))) inline double hsum_ps_as_pd(__m256 v) {
  const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
  const __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
  const __m256d s = _mm256_add_pd(lo, hi);
  const __m128d h = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd(s, 1));
  return _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
}

// The AVX2 tile: 8 columns per step in float32 FMAs, each run of len columns
// (len <= kGramFlush) added into float64; columns past the last multiple of 8
// are summed in float64.
template <std::size_t RI, std::size_t RJ>
__attribute__((target("avx2,fma"))) inline void gram_tile_avx2(
    const float* const* rows, std::size_t k, std::size_t i0, std::size_t j0, std::size_t begin,
    std::size_t len, double* acc) {
  __m256 s[RI][RJ];
  for (std::size_t a = 0; a < RI; ++a) {
    for (std::size_t b = 0; b < RJ; ++b) s[a][b] = _mm256_setzero_ps();
  }
  const float* x[RI];
  const float* y[RJ];
  for (std::size_t a = 0; a < RI; ++a) x[a] = rows[i0 + a] + begin;
  for (std::size_t b = 0; b < RJ; ++b) y[b] = rows[j0 + b] + begin;
  const std::size_t vlen = len & ~std::size_t{7};
  for (std::size_t c = 0; c < vlen; c += 8) {
    __m256 yv[RJ];
    for (std::size_t b = 0; b < RJ; ++b) yv[b] = _mm256_loadu_ps(y[b] + c);
    for (std::size_t a = 0; a < RI; ++a) {
      const __m256 xv = _mm256_loadu_ps(x[a] + c);
      for (std::size_t b = 0; b < RJ; ++b) s[a][b] = _mm256_fmadd_ps(xv, yv[b], s[a][b]);
    }
  }
  for (std::size_t a = 0; a < RI; ++a) {
    for (std::size_t b = 0; b < RJ; ++b) {
      double tail = 0.0;
      for (std::size_t c = vlen; c < len; ++c) {
        tail += static_cast<double>(x[a][c]) * static_cast<double>(y[b][c]);
      }
      acc[(i0 + a) * k + j0 + b] += hsum_ps_as_pd(s[a][b]) + tail;
    }
  }
}
#endif

template <bool kAvx2, std::size_t RI, std::size_t RJ>
FEDR_INLINE void gram_tile(const float* const* rows, std::size_t k, std::size_t i0, std::size_t j0,
                           std::size_t begin, std::size_t len, double* acc) {
#if FEDR_HAVE_AVX2_DISPATCH
  if constexpr (kAvx2) return gram_tile_avx2<RI, RJ>(rows, k, i0, j0, begin, len, acc);
#endif
  gram_tile_base<RI, RJ>(rows, k, i0, j0, begin, len, acc);
}

// Adds the Gram entries i <= j (and some i > j on diagonal tiles) of columns
// [begin, begin + len) into acc, a k x k row-major matrix.
template <bool kAvx2>
void gram_block(const float* const* rows, std::size_t k, std::size_t begin, std::size_t len,
                double* acc) {
  constexpr std::size_t R = 3;
  for (std::size_t i0 = 0; i0 < k; i0 += R) {
    const std::size_t ri = std::min(R, k - i0);
    for (std::size_t j0 = i0; j0 < k; j0 += R) {
      const std::size_t rj = std::min(R, k - j0);
      // A tile unrolled at compile time for each (ri, rj) in {1, 2, 3}^2.
      switch (ri * 4 + rj) {
        case 15: gram_tile<kAvx2, 3, 3>(rows, k, i0, j0, begin, len, acc); break;
        case 14: gram_tile<kAvx2, 3, 2>(rows, k, i0, j0, begin, len, acc); break;
        case 13: gram_tile<kAvx2, 3, 1>(rows, k, i0, j0, begin, len, acc); break;
        case 11: gram_tile<kAvx2, 2, 3>(rows, k, i0, j0, begin, len, acc); break;
        case 10: gram_tile<kAvx2, 2, 2>(rows, k, i0, j0, begin, len, acc); break;
        case 9: gram_tile<kAvx2, 2, 1>(rows, k, i0, j0, begin, len, acc); break;
        case 7: gram_tile<kAvx2, 1, 3>(rows, k, i0, j0, begin, len, acc); break;
        case 6: gram_tile<kAvx2, 1, 2>(rows, k, i0, j0, begin, len, acc); break;
        default: gram_tile<kAvx2, 1, 1>(rows, k, i0, j0, begin, len, acc); break;
      }
    }
  }
}

#if FEDR_HAVE_AVX2_DISPATCH
__attribute__((target("avx2,fma"))) inline void gram_range_avx2(const float* const* rows,
                                                                 std::size_t k, std::size_t begin,
                                                                 std::size_t end, double* acc) {
  for (std::size_t b = begin; b < end; b += kGramFlush) {
    gram_block<true>(rows, k, b, std::min(kGramFlush, end - b), acc);
  }
}
#endif

inline void gram_range(const float* const* rows, std::size_t k, std::size_t begin,
                       std::size_t end, double* acc) {
#if FEDR_HAVE_AVX2_DISPATCH
  if (cpu_has_avx2_fma()) return gram_range_avx2(rows, k, begin, end, acc);
#endif
  for (std::size_t b = begin; b < end; b += kGramFlush) {
    gram_block<false>(rows, k, b, std::min(kGramFlush, end - b), acc);
  }
}

}  // namespace detail

// out[j] = median_i rows[i][j] for j < n (even k: the mean of the two middle
// values). Returns false if a value is NaN (out is then incomplete).
// Preconditions: k >= 1, every row holds n elements, out does not overlap them.
template <typename T>
bool coordinate_median(const T* const* rows, std::size_t k, std::size_t n, T* out,
                       std::size_t threads = 0) {
  if (k == 1) {
    // Nothing to select: a copy (NaN still reported).
    for (std::size_t j = 0; j < n; ++j) {
      if (rows[0][j] != rows[0][j]) return false;
      out[j] = rows[0][j];
    }
    return true;
  }
  return detail::select_columns(rows, k, n, out, threads,
                                [](T* v, std::size_t kk) { return detail::median_of(v, kk); });
}

// out[j] = the mean of rows[i][j] over i after dropping the `trim` smallest
// and the `trim` largest values of column j, summed in float64. Returns false
// if a value is NaN. Preconditions: 2 * trim < k, as coordinate_median.
template <typename T>
bool coordinate_trimmed_mean(const T* const* rows, std::size_t k, std::size_t n,
                             std::size_t trim, T* out, std::size_t threads = 0) {
  if (trim == 0) {
    // Nothing is cut: the plain mean, memory bound, with the weighted mean's loops.
    for (std::size_t i = 0; i < k; ++i) {
      for (std::size_t j = 0; j < n; ++j) {
        if (rows[i][j] != rows[i][j]) return false;
      }
    }
    std::vector<double> ones(k, 1.0);
    weighted_average(rows, ones.data(), k, n, out, threads);
    return true;
  }
  return detail::select_columns(rows, k, n, out, threads, [trim](T* v, std::size_t kk) {
    return detail::trimmed_mean_of(v, kk, trim);
  });
}

// out (k x k, row-major) = squared Euclidean distances between the rows,
// ||x_i||^2 + ||x_j||^2 - 2 x_i.x_j clamped at 0, exactly symmetric with a
// zero diagonal. Identical rows give exactly 0. Non-finite inputs give
// non-finite distances (the caller checks). The result does not depend on
// `threads`.
inline void pairwise_sq_distances(const float* const* rows, std::size_t k, std::size_t n,
                                  double* out, std::size_t threads = 0) {
  const std::size_t kk = k * k;
  std::fill(out, out + kk, 0.0);
  if (k == 0) return;
  // Pieces: a multiple of kGramFlush columns each, their number set by n and
  // k only (never by the thread count).
  const std::size_t by_memory = std::max<std::size_t>(1, kGramAccumulatorBytes / (kk * 8));
  const std::size_t max_pieces = std::min({kGramMaxPieces, by_memory,
                                           std::max<std::size_t>(1, n / kGramFlush)});
  const std::size_t per = (n + max_pieces - 1) / max_pieces;
  const std::size_t unit = std::max(kGramFlush, (per + kGramFlush - 1) / kGramFlush * kGramFlush);
  const std::size_t pieces = n == 0 ? 0 : (n + unit - 1) / unit;
  if (pieces == 0) return;
  std::size_t t = threads;
  if (t == 0) {
    // Work is about k/2 multiply-adds per element; count it like the
    // weighted mean counts elements.
    const std::size_t hw = std::max<unsigned>(1u, std::thread::hardware_concurrency());
    const std::size_t work = k * n * std::max<std::size_t>(1, k / 2);
    t = std::min(hw, std::max<std::size_t>(1, work / kSelectParallelMinElements));
  }
  t = std::max<std::size_t>(1, std::min(t, pieces));
  std::unique_ptr<double[]> acc(new double[pieces * kk]());
  detail::parallel_for(n, t, unit, [&](std::size_t, std::size_t begin, std::size_t end) {
    detail::gram_range(rows, k, begin, end, acc.get() + (begin / unit) * kk);
  });
  std::vector<double> gram(kk, 0.0);
  for (std::size_t p = 0; p < pieces; ++p) {
    const double* a = acc.get() + p * kk;
    for (std::size_t i = 0; i < k; ++i) {
      for (std::size_t j = i; j < k; ++j) gram[i * k + j] += a[i * k + j];
    }
  }
  for (std::size_t i = 0; i < k; ++i) {
    for (std::size_t j = i + 1; j < k; ++j) {
      const double d = gram[i * k + i] + gram[j * k + j] - 2.0 * gram[i * k + j];
      // NaN stays NaN (std::max would turn it into 0).
      const double v = d < 0.0 ? 0.0 : d;
      out[i * k + j] = v;
      out[j * k + i] = v;
    }
  }
}

// The columns of a Weiszfeld step are cut into at most this many pieces,
// each summing its own K squared distances, added in piece order: the result
// does not depend on the number of threads.
inline constexpr std::size_t kWeiszfeldMaxPieces = 32;

namespace detail {

// dist[i] += sum_j (z[j] - rows[i][b + j])^2 for j < len: four independent
// sums per row (no reassociation needed, so no -ffast-math). A step costs
// about 2.5 - 3 weighted means of the same data (K = 100, N = 1M, one core;
// an explicit AVX2 version of this loop measured no clear gain).
FEDR_INLINE void sq_distances_add(const float* const* rows, std::size_t k, std::size_t b,
                                       std::size_t len, const double* FEDR_RESTRICT z,
                                       double* FEDR_RESTRICT dist) {
  for (std::size_t i = 0; i < k; ++i) {
    const float* FEDR_RESTRICT x = rows[i] + b;
    double s[4] = {0.0, 0.0, 0.0, 0.0};
    std::size_t j = 0;
    for (; j + 4 <= len; j += 4) {
      for (std::size_t l = 0; l < 4; ++l) {
        const double d = z[j + l] - static_cast<double>(x[j + l]);
        s[l] += d * d;
      }
    }
    for (; j < len; ++j) {
      const double d = z[j] - static_cast<double>(x[j]);
      s[0] += d * d;
    }
    dist[i] += (s[0] + s[1]) + (s[2] + s[3]);
  }
}

// z[0, len) = scale * sum_i w[i] rows[i][b, b + len) in float64 (the weighted
// mean's loops), out[b, b + len) = float(z), and dist[i] += sum_j (z[j] -
// rows[i][b + j])^2 while the block's rows are in cache.
FEDR_INLINE void weiszfeld_block_body(const float* const* rows, const double* w, std::size_t k,
                                      double scale, std::size_t b, std::size_t len,
                                      double* FEDR_RESTRICT z, float* FEDR_RESTRICT out,
                                      double* FEDR_RESTRICT dist) {
  const std::size_t rpp = rows_per_pass(k);
  const std::size_t first = std::min(k, rpp);
  accumulate_rows<float, true>(z, rows, w, first, b, len);
  for (std::size_t i = first; i < k; i += rpp) {
    accumulate_rows<float, false>(z, rows + i, w + i, std::min(k - i, rpp), b, len);
  }
  for (std::size_t j = 0; j < len; ++j) {
    z[j] *= scale;
    out[b + j] = static_cast<float>(z[j]);
  }
  sq_distances_add(rows, k, b, len, z, dist);
}

inline void weiszfeld_range_base(const float* const* rows, const double* w, std::size_t k,
                                 double scale, std::size_t begin, std::size_t end,
                                 std::size_t block, double* z, float* out, double* dist) {
  for (std::size_t b = begin; b < end; b += block) {
    weiszfeld_block_body(rows, w, k, scale, b, std::min(block, end - b), z, out, dist);
  }
}

#if FEDR_HAVE_AVX2_DISPATCH
__attribute__((target("avx2,fma"))) inline void weiszfeld_range_avx2(
    const float* const* rows, const double* w, std::size_t k, double scale, std::size_t begin,
    std::size_t end, std::size_t block, double* z, float* out, double* dist) {
  for (std::size_t b = begin; b < end; b += block) {
    weiszfeld_block_body(rows, w, k, scale, b, std::min(block, end - b), z, out, dist);
  }
}
#endif

inline void weiszfeld_range(const float* const* rows, const double* w, std::size_t k,
                            double scale, std::size_t begin, std::size_t end, std::size_t block,
                            double* z, float* out, double* dist) {
#if FEDR_HAVE_AVX2_DISPATCH
  if (cpu_has_avx2_fma()) {
    return weiszfeld_range_avx2(rows, w, k, scale, begin, end, block, z, out, dist);
  }
#endif
  weiszfeld_range_base(rows, w, k, scale, begin, end, block, z, out, dist);
}

}  // namespace detail

// What geometric_median reports: the Weiszfeld steps taken after the initial
// weighted mean, the final objective sum_i alpha_i ||z - x_i|| (alpha summing
// to 1), and whether the relative change of the objective fell to the
// tolerance (false: max_iterations was reached first, or the input was not
// finite).
struct GeometricMedianInfo {
  std::size_t iterations = 0;
  double objective = 0.0;
  bool converged = false;
  bool finite = true;
};

// out = the smoothed Weiszfeld approximation of the weighted geometric median
// of the k rows (RFA, Pillutla et al. 2022): from the alpha-weighted mean z,
// repeat z <- sum_i b_i x_i / sum_i b_i with b_i = alpha_i / max(nu, ||z -
// x_i||) until |g_prev - g| <= tol * g, g(z) = sum_i alpha_i ||z - x_i||, or
// max_iter steps. Rows are float32, z and the distances float64; the result
// does not depend on `threads`. A non-finite input stops it after the first
// pass with info.finite = false (out is then meaningless).
// Preconditions: k >= 1, alpha[i] finite and >= 0 with a positive finite sum,
// nu > 0, tol >= 0; out does not overlap the rows.
inline GeometricMedianInfo geometric_median(const float* const* rows, const double* alpha,
                                            std::size_t k, std::size_t n, double nu,
                                            std::size_t max_iter, double tol, float* out,
                                            std::size_t threads = 0) {
  GeometricMedianInfo info;
  if (n == 0) {
    info.converged = true;
    return info;
  }
  // alpha scaled to sum 1 (via the largest weight's power of two first, so a
  // total of 1e-320 neither underflows nor makes 1 / total Inf).
  std::vector<double> a(k);
  const int e = weight_exponent(alpha, k);
  double total = 0.0;
  for (std::size_t i = 0; i < k; ++i) total += (a[i] = std::ldexp(alpha[i], -e));
  for (std::size_t i = 0; i < k; ++i) a[i] /= total;

  const std::size_t block = std::min(n, detail::select_block_columns(k));
  const std::size_t blocks = (n + block - 1) / block;
  const std::size_t pieces = std::min(kWeiszfeldMaxPieces, blocks);
  const std::size_t unit = (blocks + pieces - 1) / pieces * block;  // whole blocks per piece
  const std::size_t used = (n + unit - 1) / unit;
  const std::size_t t = std::min(choose_threads(k * n * 2, n, threads), used);
  std::unique_ptr<double[]> z(new double[block * t]);
  std::vector<double> part(used * k);
  std::vector<double> dist(k), beta(k);

  // One step with weights w: out = z(w), dist = the distances ||z - x_i||.
  auto step = [&](const double* w, double w_total) {
    std::fill(part.begin(), part.end(), 0.0);
    const double scale = 1.0 / w_total;
    detail::parallel_for(n, t, unit, [&](std::size_t slot, std::size_t begin, std::size_t end) {
      detail::weiszfeld_range(rows, w, k, scale, begin, end, block, z.get() + slot * block, out,
                              part.data() + (begin / unit) * k);
    });
    double g = 0.0;
    for (std::size_t i = 0; i < k; ++i) {
      double s = 0.0;
      for (std::size_t p = 0; p < used; ++p) s += part[p * k + i];
      dist[i] = std::sqrt(s);
      g += a[i] * dist[i];
    }
    return g;
  };

  double g = step(a.data(), 1.0);
  if (!std::isfinite(g)) {
    info.finite = false;
    return info;
  }
  for (std::size_t it = 0; it < max_iter; ++it) {
    double b_total = 0.0;
    for (std::size_t i = 0; i < k; ++i) b_total += (beta[i] = a[i] / std::max(nu, dist[i]));
    // Weights as large as 1 / nu (1e6): rescaled so that their sum is 1.
    for (std::size_t i = 0; i < k; ++i) beta[i] /= b_total;
    const double prev = g;
    g = step(beta.data(), 1.0);
    info.iterations = it + 1;
    if (std::abs(prev - g) <= tol * g) {
      info.converged = true;
      break;
    }
  }
  info.objective = g;
  return info;
}

}  // namespace fedr
