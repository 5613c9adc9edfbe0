// Python bindings of the aggregation kernels (fedr._kernels).
//
// The only pybind11 file. Inputs are taken without copies: updates must
// already be C-contiguous float32 (anything else is rejected, never cast),
// pointers and the output are taken while holding the GIL, and the loops run
// with the GIL released. std::invalid_argument surfaces as ValueError.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "robust.hpp"
#include "weighted_average.hpp"

namespace py = pybind11;

#ifndef VERSION_INFO
#define VERSION_INFO "dev"
#endif

namespace {

using FloatArray = py::array_t<float, py::array::c_style>;

std::string shape_str(const py::array& a) {
  std::ostringstream s;
  s << "(";
  for (py::ssize_t d = 0; d < a.ndim(); ++d) {
    if (d > 0) s << ", ";
    s << a.shape(d);
  }
  if (a.ndim() == 1) s << ",";
  s << ")";
  return s.str();
}

std::string dtype_str(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

[[noreturn]] void fail(const std::string& msg) { throw std::invalid_argument(msg); }

// Returns `obj` as a float32 C-contiguous array without copying, or throws
// naming `what` and what was wrong (dtype, layout, alignment).
FloatArray as_float32(const py::handle& obj, const std::string& what) {
  if (!py::isinstance<py::array>(obj)) {
    throw py::type_error(what + " must be a numpy.ndarray of float32, got " +
                         py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
  }
  auto arr = py::reinterpret_borrow<py::array>(obj);
  if (!py::isinstance<py::array_t<float>>(arr)) {
    fail(what + " has dtype " + dtype_str(arr) + " and shape " + shape_str(arr) +
         "; expected float32 (convert once with numpy.asarray(x, dtype=numpy.float32))");
  }
  if (!py::isinstance<FloatArray>(arr)) {
    fail(what + " with shape " + shape_str(arr) +
         " is not C-contiguous (convert once with numpy.ascontiguousarray)");
  }
  if (reinterpret_cast<std::uintptr_t>(arr.data()) % alignof(float) != 0) {
    fail(what + " is not aligned to 4 bytes (copy it with numpy.array)");
  }
  return py::reinterpret_borrow<FloatArray>(arr);
}

// Converts `obj` to K float64 weights, checking each is finite and >= 0 and
// that their sum is finite and > 0.
std::vector<double> as_weights(const py::handle& obj, std::size_t k) {
  py::array raw;
  try {
    raw = py::array::ensure(obj);
  } catch (const py::error_already_set&) {
    raw = py::array();
  }
  if (!raw) {
    fail("weights must be a sequence of K non-negative numbers");
  }
  const char kind = raw.dtype().kind();
  if (kind != 'f' && kind != 'i' && kind != 'u') {
    fail("weights must be numbers, got dtype " + dtype_str(raw));
  }
  if (raw.ndim() != 1) {
    fail("weights must be 1-D with K=" + std::to_string(k) + " entries, got shape " +
         shape_str(raw));
  }
  if (static_cast<std::size_t>(raw.shape(0)) != k) {
    fail("weights has " + std::to_string(raw.shape(0)) + " entries but updates has K=" +
         std::to_string(k));
  }
  auto w = py::array_t<double, py::array::c_style | py::array::forcecast>::ensure(raw);
  if (!w) throw py::error_already_set();
  std::vector<double> out(w.data(), w.data() + k);
  double total = 0.0;
  for (std::size_t i = 0; i < k; ++i) {
    if (!std::isfinite(out[i])) {
      std::ostringstream s;
      s << "weights[" << i << "] is " << out[i] << "; weights must be finite";
      fail(s.str());
    }
    if (out[i] < 0.0) {
      std::ostringstream s;
      s << "weights[" << i << "] is " << out[i] << "; weights must be non-negative";
      fail(s.str());
    }
    total += out[i];
  }
  if (!(total > 0.0) || !std::isfinite(total)) {
    std::ostringstream s;
    s << "weights sum to " << total << "; the total weight must be positive and finite";
    fail(s.str());
  }
  return out;
}

std::size_t thread_count(py::ssize_t num_threads) {
  if (num_threads < 0) fail("num_threads must be >= 0, got " + std::to_string(num_threads));
  return static_cast<std::size_t>(num_threads);
}

// The K rows of `updates` (a (K, N) float32 C-contiguous matrix, or a list
// or tuple of K such 1-D arrays) as pointers, without copying; `keep` holds
// the arrays alive while the GIL is released. Throws on K = 0.
std::vector<const float*> update_rows(const py::object& updates, std::vector<FloatArray>& keep,
                                      std::size_t& n) {
  std::vector<const float*> rows;
  n = 0;
  if (py::isinstance<py::array>(updates)) {
    FloatArray m = as_float32(updates, "updates");
    if (m.ndim() != 2) {
      fail("updates must be a 2-D (K, N) array or a list of K 1-D arrays, got shape " +
           shape_str(m));
    }
    const auto k = static_cast<std::size_t>(m.shape(0));
    n = static_cast<std::size_t>(m.shape(1));
    if (k == 0) fail("updates is empty (shape " + shape_str(m) + "); need at least one update");
    rows.resize(k);
    for (std::size_t i = 0; i < k; ++i) rows[i] = m.data() + i * n;
    keep.push_back(std::move(m));
    return rows;
  }
  if (!py::isinstance<py::list>(updates) && !py::isinstance<py::tuple>(updates)) {
    throw py::type_error(
        "updates must be a 2-D float32 numpy array or a list of 1-D float32 arrays, got " +
        py::str(py::type::of(updates).attr("__name__")).cast<std::string>());
  }
  auto seq = py::reinterpret_borrow<py::sequence>(updates);
  const std::size_t k = seq.size();
  if (k == 0) fail("updates is empty (K=0); need at least one update");
  rows.resize(k);
  keep.reserve(k);
  for (std::size_t i = 0; i < k; ++i) {
    const std::string name = "updates[" + std::to_string(i) + "]";
    FloatArray x = as_float32(seq[i], name);
    if (x.ndim() != 1) fail(name + " must be 1-D, got shape " + shape_str(x));
    const auto len = static_cast<std::size_t>(x.shape(0));
    if (i == 0) {
      n = len;
    } else if (len != n) {
      fail("updates are ragged: updates[0] has shape (" + std::to_string(n) + ",) but " + name +
           " has shape " + shape_str(x));
    }
    rows[i] = x.data();
    keep.push_back(std::move(x));
  }
  return rows;
}

py::array_t<float> weighted_mean(const py::object& updates, const py::object& weights,
                                 py::ssize_t num_threads) {
  const std::size_t threads = thread_count(num_threads);
  std::size_t n = 0;
  // Holds the row arrays alive (and their buffers unmoved) while the GIL is released.
  std::vector<FloatArray> keep;
  const std::vector<const float*> rows = update_rows(updates, keep, n);

  const std::vector<double> w = as_weights(weights, rows.size());
  py::array_t<float> out(static_cast<py::ssize_t>(n));
  float* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    fedr::weighted_average(rows.data(), w.data(), rows.size(), n, dst, threads);
  }
  return out;
}

double check_weight(double weight) {
  if (!std::isfinite(weight)) {
    std::ostringstream s;
    s << "weight is " << weight << "; weights must be finite";
    fail(s.str());
  }
  if (weight < 0.0) {
    std::ostringstream s;
    s << "weight is " << weight << "; weights must be non-negative";
    fail(s.str());
  }
  return weight;
}

// A float64 running sum of n elements: memory stays n doubles however many
// updates are added, so a server can aggregate clients as they report.
class WeightedMeanAccumulator {
 public:
  WeightedMeanAccumulator(py::ssize_t n, py::ssize_t num_threads)
      : threads_(thread_count(num_threads)) {
    if (n < 0) fail("n must be >= 0, got " + std::to_string(n));
    // std::vector's own messages ("cannot create std::vector larger than
    // max_size()", "std::bad_alloc") do not say which size or why.
    const auto bytes = static_cast<double>(n) * sizeof(double);
    try {
      if (static_cast<std::size_t>(n) > sum_.max_size()) throw std::length_error("max_size");
      sum_.assign(static_cast<std::size_t>(n), 0.0);
    } catch (const std::exception&) {
      std::ostringstream s;
      s << "n: a running sum of " << n << " float64 values (" << bytes / (1024.0 * 1024 * 1024)
        << " GiB) cannot be allocated; n is the number of model weights";
      fail(s.str());
    }
  }

  void add(const py::object& update, double weight) {
    FloatArray x = as_float32(update, "update");
    if (x.ndim() != 1 || static_cast<std::size_t>(x.shape(0)) != sum_.size()) {
      fail("update must have shape (" + std::to_string(sum_.size()) + ",), got shape " +
           shape_str(x));
    }
    check_weight(weight);
    const float* src = x.data();
    py::gil_scoped_release release;
    std::lock_guard<std::mutex> lock(mutex_);
    const double total = total_ + weight;
    if (!std::isfinite(total)) {
      std::ostringstream s;
      s << "total weight would overflow to " << total;
      fail(s.str());
    }
    if (weight > 0.0) {
      // sum_ holds sum_i (w_i / 2^e) x_i with 2^e the largest weight's power
      // of two (see fedr::weight_exponent): tiny weights (a total of 1e-320)
      // neither underflow the sum nor make 1 / total Inf, and for normal
      // weights the power-of-two scaling is exact (the same bits as unscaled).
      int e = 0;
      std::frexp(weight, &e);
      if (scaled_total_ == 0.0) {
        exponent_ = e;
      } else if (e > exponent_) {
        const double shrink = std::ldexp(1.0, exponent_ - e);
        for (double& v : sum_) v *= shrink;
        scaled_total_ *= shrink;
        exponent_ = e;
      }
      const double w = std::ldexp(weight, -exponent_);
      fedr::accumulate_scaled(src, w, sum_.size(), sum_.data(), threads_);
      scaled_total_ += w;
    }
    total_ = total;
    ++count_;
  }

  py::array_t<float> result() {
    py::array_t<float> out(static_cast<py::ssize_t>(sum_.size()));
    float* dst = out.mutable_data();
    py::gil_scoped_release release;
    std::lock_guard<std::mutex> lock(mutex_);
    if (!(total_ > 0.0)) {
      std::ostringstream s;
      s << "total weight is " << total_ << " after " << count_
        << " update(s); add an update with a positive weight first";
      fail(s.str());
    }
    fedr::scale_into(sum_.data(), 1.0 / scaled_total_, sum_.size(), dst, threads_);
    return out;
  }

  void reset() {
    py::gil_scoped_release release;
    std::lock_guard<std::mutex> lock(mutex_);
    std::fill(sum_.begin(), sum_.end(), 0.0);
    total_ = 0.0;
    scaled_total_ = 0.0;
    exponent_ = 0;
    count_ = 0;
  }

  std::size_t n() const { return sum_.size(); }
  double total_weight() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return total_;
  }
  std::size_t count() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return count_;
  }
  std::size_t nbytes() const { return sum_.capacity() * sizeof(double); }

  std::string repr() const {
    std::lock_guard<std::mutex> lock(mutex_);
    std::ostringstream s;
    s << "WeightedMeanAccumulator(n=" << sum_.size() << ", count=" << count_
      << ", total_weight=" << total_ << ")";
    return s.str();
  }

 private:
  std::vector<double> sum_;
  double total_ = 0.0;
  double scaled_total_ = 0.0;  // sum_i w_i / 2^exponent_
  int exponent_ = 0;
  std::size_t count_ = 0;
  std::size_t threads_;
  // add/result/reset run without the GIL, so the object guards itself.
  mutable std::mutex mutex_;
};

// --- robust aggregators (robust.hpp) ---------------------------------------


// Throws naming the first (row, column) of `rows` that is NaN (or, with
// `finite`, not finite). Only runs on the error path.
[[noreturn]] void fail_first_bad(const std::vector<const float*>& rows, std::size_t n, bool finite,
                                 const std::string& why) {
  for (std::size_t i = 0; i < rows.size(); ++i) {
    for (std::size_t j = 0; j < n; ++j) {
      const float v = rows[i][j];
      if (finite ? !std::isfinite(v) : std::isnan(v)) {
        std::ostringstream s;
        s << "updates[" << i << "] is " << v << " at index " << j << "; " << why;
        fail(s.str());
      }
    }
  }
  fail("updates: " + why);
}

py::array_t<float> coordinate_median(const py::object& updates, py::ssize_t num_threads) {
  const std::size_t threads = thread_count(num_threads);
  std::vector<FloatArray> keep;
  std::size_t n = 0;
  const std::vector<const float*> rows = update_rows(updates, keep, n);
  py::array_t<float> out(static_cast<py::ssize_t>(n));
  float* dst = out.mutable_data();
  bool ok = false;
  {
    py::gil_scoped_release release;
    ok = fedr::coordinate_median(rows.data(), rows.size(), n, dst, threads);
  }
  if (!ok) fail_first_bad(rows, n, false, "the median needs updates without NaN");
  return out;
}

py::array_t<float> coordinate_trimmed_mean(const py::object& updates, double beta,
                                           py::ssize_t num_threads) {
  const std::size_t threads = thread_count(num_threads);
  if (!(beta >= 0.0 && beta < 0.5)) {
    std::ostringstream s;
    s << "beta must be in [0, 0.5), got " << beta;
    fail(s.str());
  }
  std::vector<FloatArray> keep;
  std::size_t n = 0;
  const std::vector<const float*> rows = update_rows(updates, keep, n);
  const std::size_t k = rows.size();
  // floor(beta * K) as Python computes it, so both sides cut the same count.
  const auto trim = static_cast<std::size_t>(std::floor(beta * static_cast<double>(k)));
  py::array_t<float> out(static_cast<py::ssize_t>(n));
  float* dst = out.mutable_data();
  bool ok = false;
  {
    py::gil_scoped_release release;
    ok = fedr::coordinate_trimmed_mean(rows.data(), k, n, trim, dst, threads);
  }
  if (!ok) fail_first_bad(rows, n, false, "the trimmed mean needs updates without NaN");
  return out;
}

py::array_t<double> pairwise_sq_distances(const py::object& updates, py::ssize_t num_threads) {
  const std::size_t threads = thread_count(num_threads);
  std::vector<FloatArray> keep;
  std::size_t n = 0;
  const std::vector<const float*> rows = update_rows(updates, keep, n);
  const std::size_t k = rows.size();
  py::array_t<double> out({static_cast<py::ssize_t>(k), static_cast<py::ssize_t>(k)});
  double* dst = out.mutable_data();
  bool finite = true;
  {
    py::gil_scoped_release release;
    fedr::pairwise_sq_distances(rows.data(), k, n, dst, threads);
    for (std::size_t i = 0; i < k * k; ++i) finite = finite && std::isfinite(dst[i]);
  }
  if (!finite) {
    // A non-finite input, or finite ones whose squares overflow float64.
    bool inputs_finite = true;
    for (std::size_t i = 0; i < k && inputs_finite; ++i) {
      for (std::size_t j = 0; j < n && inputs_finite; ++j) inputs_finite = std::isfinite(rows[i][j]);
    }
    if (!inputs_finite) fail_first_bad(rows, n, true, "distances need finite updates");
    fail("the squared distances between updates overflow float64");
  }
  return out;
}

py::tuple geometric_median(const py::object& updates, const py::object& weights, double smoothing,
                           py::ssize_t max_iterations, double tolerance, py::ssize_t num_threads) {
  const std::size_t threads = thread_count(num_threads);
  if (!(smoothing > 0.0) || !std::isfinite(smoothing)) {
    std::ostringstream s;
    s << "smoothing must be a finite number > 0, got " << smoothing;
    fail(s.str());
  }
  if (max_iterations < 0) fail("max_iterations must be >= 0, got " + std::to_string(max_iterations));
  if (!(tolerance >= 0.0) || !std::isfinite(tolerance)) {
    std::ostringstream s;
    s << "tolerance must be a finite number >= 0, got " << tolerance;
    fail(s.str());
  }
  std::vector<FloatArray> keep;
  std::size_t n = 0;
  const std::vector<const float*> rows = update_rows(updates, keep, n);
  const std::vector<double> w = as_weights(weights, rows.size());
  py::array_t<float> out(static_cast<py::ssize_t>(n));
  float* dst = out.mutable_data();
  fedr::GeometricMedianInfo info;
  {
    py::gil_scoped_release release;
    info = fedr::geometric_median(rows.data(), w.data(), rows.size(), n, smoothing,
                                  static_cast<std::size_t>(max_iterations), tolerance, dst, threads);
  }
  if (!info.finite) fail_first_bad(rows, n, true, "the geometric median needs finite updates");
  return py::make_tuple(out, info.iterations, info.objective, info.converged);
}

}  // namespace

PYBIND11_MODULE(_kernels, m) {
  m.doc() = R"pbdoc(
    C++ aggregation kernels of fedr (weighted mean of client updates).

    Updates are read in place: they must be C-contiguous float32 arrays.
    Sums are accumulated in float64 and the GIL is released while looping.
  )pbdoc";

  m.def("weighted_mean", &weighted_mean, py::arg("updates"), py::arg("weights"), py::kw_only(),
        py::arg("num_threads") = 0,
        R"pbdoc(
    Return the weighted mean of K updates, sum_i w_i x_i / sum_i w_i.

    Args:
      updates: a (K, N) C-contiguous float32 array, or a list of K 1-D
        C-contiguous float32 arrays of length N. Never copied or cast.
      weights: K finite non-negative numbers with a positive sum.
      num_threads: threads to use; 0 chooses from the size of the work.

    Returns:
      A float32 array of shape (N,), accumulated in float64.

    Raises:
      ValueError: on a wrong dtype, layout or shape, K=0, ragged rows, a
        weights length other than K, a negative or non-finite weight, or a
        zero total weight.
  )pbdoc");

  py::class_<WeightedMeanAccumulator>(m, "WeightedMeanAccumulator", R"pbdoc(
    Streaming weighted mean over updates of n float32 elements.

    Keeps a float64 running sum of n elements, so memory does not grow with
    the number of updates added.
  )pbdoc")
      .def(py::init<py::ssize_t, py::ssize_t>(), py::arg("n"), py::kw_only(),
           py::arg("num_threads") = 0)
      .def("add", &WeightedMeanAccumulator::add, py::arg("update"), py::arg("weight"),
           R"pbdoc(
    Add one update, a 1-D C-contiguous float32 array of length n, with a
    finite non-negative weight.
  )pbdoc")
      .def("result", &WeightedMeanAccumulator::result,
           "Return the weighted mean so far as float32 (n,); ValueError if the total weight is 0.")
      .def("reset", &WeightedMeanAccumulator::reset, "Forget every update added.")
      .def_property_readonly("n", &WeightedMeanAccumulator::n, "Length of each update.")
      .def_property_readonly("total_weight", &WeightedMeanAccumulator::total_weight,
                             "Sum of the weights added.")
      .def_property_readonly("count", &WeightedMeanAccumulator::count,
                             "Number of updates added.")
      .def_property_readonly("nbytes", &WeightedMeanAccumulator::nbytes,
                             "Bytes held by the running sum (8 * n).")
      .def("__repr__", &WeightedMeanAccumulator::repr);

  m.def("coordinate_median", &coordinate_median, py::arg("updates"), py::kw_only(),
        py::arg("num_threads") = 0,
        R"pbdoc(
    Return the coordinate-wise median of K updates (Yin et al. 2018).

    For even K each coordinate is the mean of its two middle values, as
    numpy.median (computed in float64, then rounded to float32).

    Args:
      updates: a (K, N) C-contiguous float32 array, or a list of K 1-D
        C-contiguous float32 arrays of length N. Never copied or cast.
      num_threads: threads to use; 0 chooses from the size of the work.

    Returns:
      A float32 array of shape (N,).

    Raises:
      ValueError: on a wrong dtype, layout or shape, K=0, ragged rows, or a
        NaN (named by row and index).
  )pbdoc");

  m.def("coordinate_trimmed_mean", &coordinate_trimmed_mean, py::arg("updates"), py::arg("beta"),
        py::kw_only(), py::arg("num_threads") = 0,
        R"pbdoc(
    Return the coordinate-wise beta-trimmed mean of K updates (Yin et al. 2018).

    Each coordinate drops its floor(beta * K) smallest and floor(beta * K)
    largest values and averages the rest, summed in float64.

    Args:
      updates: as in coordinate_median.
      beta: the fraction cut from each tail, in [0, 0.5).
      num_threads: threads to use; 0 chooses from the size of the work.

    Returns:
      A float32 array of shape (N,).

    Raises:
      ValueError: beta outside [0, 0.5), or as coordinate_median.
  )pbdoc");

  m.def("pairwise_sq_distances", &pairwise_sq_distances, py::arg("updates"), py::kw_only(),
        py::arg("num_threads") = 0,
        R"pbdoc(
    Return the (K, K) float64 squared Euclidean distances between K updates.

    Computed as |x_i|^2 + |x_j|^2 - 2 x_i.x_j from one pass over the data
    (float32 products summed in runs of 512 columns, runs summed in float64),
    clamped at 0; symmetric with a zero diagonal, the same whatever the
    number of threads. Used by Krum (Blanchard et al. 2017).

    Args:
      updates: as in coordinate_median.
      num_threads: threads to use; 0 chooses from the size of the work.

    Returns:
      A float64 array of shape (K, K).

    Raises:
      ValueError: a non-finite value (named by row and index), or as
        coordinate_median.
  )pbdoc");

  m.def("geometric_median", &geometric_median, py::arg("updates"), py::arg("weights"),
        py::kw_only(), py::arg("smoothing") = 1e-6, py::arg("max_iterations") = 100,
        py::arg("tolerance") = 1e-6, py::arg("num_threads") = 0,
        R"pbdoc(
    Return the smoothed Weiszfeld geometric median of K updates (RFA, Pillutla et al. 2022).

    From the weighted mean z, repeats z <- sum_i b_i x_i / sum_i b_i with
    b_i = w_i / max(smoothing, ||z - x_i||) until the objective
    g(z) = sum_i w_i ||z - x_i|| (weights scaled to sum 1) changes by at most
    tolerance * g, or max_iterations steps. Float64 sums, the same result
    whatever the number of threads.

    Args:
      updates: as in coordinate_median.
      weights: K finite non-negative numbers with a positive sum (alpha_i).
      smoothing: nu > 0, the smallest distance a weight divides by.
      max_iterations: Weiszfeld steps after the initial mean (>= 0).
      tolerance: the relative change of the objective that stops it (>= 0).
      num_threads: threads to use; 0 chooses from the size of the work.

    Returns:
      (median, iterations, objective, converged): float32 (N,), the steps
      taken, g at the result, and whether the tolerance was met.

    Raises:
      ValueError: a non-finite value (named by row and index), bad weights
        or parameters, or as coordinate_median.
  )pbdoc");

  m.def("uses_avx2", &fedr::uses_avx2, "Return True if the AVX2+FMA loops run on this CPU.");
  m.attr("BLOCK") = fedr::kBlock;
  m.attr("PARALLEL_MIN_ELEMENTS") = fedr::kParallelMinElements;
  m.attr("__version__") = VERSION_INFO;
}
