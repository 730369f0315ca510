// Kernel metrics: spectrum (Eigen's SelfAdjointEigenSolver), trace, condition number,
// effective rank, relative change, kernel distance, centered kernel-target alignment and
// Label-Gradient Alignment. Everything is computed in float64.
// Eigen's AVX-512 paths trip GCC 12's -Wmaybe-uninitialized inside the intrinsics headers.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <Eigen/Eigenvalues>

#include <cmath>
#include <limits>

#include "ntk_internal.hpp"

namespace kern::tools {
namespace {

using Mat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Vec = Eigen::VectorXd;

Mat to_matrix(const Tensor& K, const char* who) {
  KERN_CHECK(K.defined() && K.dim() == 2 && K.size(0) == K.size(1) && K.size(0) > 0, who,
             ": expected a square non-empty kernel [M, M], got ",
             K.defined() ? fmt::format("{}", K.shape()) : std::string("an undefined tensor"));
  KERN_CHECK(K.dtype() == DType::Float32 || K.dtype() == DType::Float64, who, ": kernel must be floating, got ",
             K.dtype());
  const auto v = K.to_vector<double>();
  Mat m(K.size(0), K.size(1));
  std::copy(v.begin(), v.end(), m.data());
  return m;
}

Vec spectrum(const Mat& m) {
  Eigen::SelfAdjointEigenSolver<Mat> es(m, Eigen::EigenvaluesOnly);
  KERN_CHECK(es.info() == Eigen::Success, "kernel_eigenvalues: the eigensolver did not converge (NaN/Inf in K?)");
  return es.eigenvalues();  // ascending
}

double condition(const Vec& ev) {
  const double lo = ev(0), hi = ev(ev.size() - 1);
  return lo > 0 ? hi / lo : std::numeric_limits<double>::infinity();
}

double participation_ratio(const Vec& ev) {
  const Vec l = ev.cwiseMax(0.0);
  const double s = l.sum(), s2 = l.squaredNorm();
  return s2 > 0 ? s * s / s2 : 0.0;
}

double entropy_rank(const Vec& ev) {
  const Vec l = ev.cwiseMax(0.0);
  const double s = l.sum();
  if (s <= 0) return 0.0;
  double h = 0;
  for (Eigen::Index i = 0; i < l.size(); ++i)
    if (l(i) > 0) h -= (l(i) / s) * std::log(l(i) / s);
  return std::exp(h);
}

Mat center(const Mat& m) {
  // H M H with H = I - 1 1^T / n: subtract row and column means, add back the grand mean.
  const Eigen::VectorXd rm = m.rowwise().mean(), cm = m.colwise().mean().transpose();
  const double g = m.mean();
  Mat c = m;
  c.colwise() -= rm;
  c.rowwise() -= cm.transpose();
  c.array() += g;
  return c;
}

Mat target_gram(const Tensor& targets, int64_t M, const char* who) {
  KERN_CHECK(targets.defined(), who, ": targets are undefined");
  Mat Y;
  if (targets.dtype() == DType::Int64) {
    KERN_CHECK(targets.numel() == M, who, ": ", M, " labels expected for a [", M, ", ", M, "] kernel, got ",
               targets.shape());
    const auto lab = targets.to_vector<int64_t>();
    int64_t C = 0;
    for (int64_t v : lab) {
      KERN_CHECK(v >= 0, who, ": labels must be >= 0, got ", v);
      C = std::max(C, v + 1);
    }
    Y = Mat::Zero(M, C);
    for (int64_t i = 0; i < M; ++i) Y(i, lab[i]) = 1.0;
  } else {
    KERN_CHECK(targets.numel() % M == 0 && targets.numel() > 0 &&
                   (targets.numel() == M || (targets.dim() == 2 && targets.size(0) == M)),
               who, ": targets must be [", M, "], [", M, ", d] or have ", M, " elements, got ", targets.shape());
    const int64_t d = targets.numel() / M;
    const auto v = targets.to_vector<double>();
    Y = Eigen::Map<const Mat>(v.data(), M, d);
  }
  return Y * Y.transpose();
}

double alignment(const Mat& K, const Mat& YY) {
  const Mat kc = center(K), yc = center(YY);
  const double den = kc.norm() * yc.norm();
  return den > 0 ? (kc.cwiseProduct(yc)).sum() / den : std::numeric_limits<double>::quiet_NaN();
}

double lga(const Mat& K, const Tensor& labels) {
  const int64_t N = K.rows();
  KERN_CHECK(labels.defined() && labels.dtype() == DType::Int64 && labels.numel() == N,
             "label_gradient_alignment: labels must be int64 [", N, "], got ",
             labels.defined() ? fmt::format("{} {}", labels.shape(), labels.dtype()) : std::string("undefined"));
  KERN_CHECK(N >= 2, "label_gradient_alignment: needs at least 2 samples");
  const auto lab = labels.to_vector<int64_t>();
  // Pearson correlation over the N(N-1) ordered pairs i != j.
  double sk = 0, sy = 0, skk = 0, syy = 0, sky = 0;
  const double cnt = static_cast<double>(N) * (N - 1);
  for (int64_t i = 0; i < N; ++i)
    for (int64_t j = 0; j < N; ++j) {
      if (i == j) continue;
      const double k = K(i, j), y = lab[i] == lab[j] ? 1.0 : -1.0;
      sk += k, sy += y, skk += k * k, syy += y * y, sky += k * y;
    }
  const double cov = sky / cnt - (sk / cnt) * (sy / cnt);
  const double vk = skk / cnt - (sk / cnt) * (sk / cnt), vy = syy / cnt - (sy / cnt) * (sy / cnt);
  return (vk > 0 && vy > 0) ? cov / std::sqrt(vk * vy) : std::numeric_limits<double>::quiet_NaN();
}

void check_same_shape(const Tensor& a, const Tensor& b, const char* who) {
  KERN_CHECK(a.defined() && b.defined() && a.shape() == b.shape(), who, ": kernels must have the same shape, got ",
             a.defined() ? fmt::format("{}", a.shape()) : std::string("undefined"), " and ",
             b.defined() ? fmt::format("{}", b.shape()) : std::string("undefined"));
}

}  // namespace

Tensor kernel_eigenvalues(const Tensor& K) {
  const Vec ev = spectrum(to_matrix(K, "kernel_eigenvalues"));
  return from_vector(std::vector<double>(ev.data(), ev.data() + ev.size()), {ev.size()});
}

double kernel_trace(const Tensor& K) { return to_matrix(K, "kernel_trace").trace(); }

double kernel_condition_number(const Tensor& K) {
  return condition(spectrum(to_matrix(K, "kernel_condition_number")));
}

double kernel_effective_rank(const Tensor& K, EffectiveRank kind) {
  const Vec ev = spectrum(to_matrix(K, "kernel_effective_rank"));
  return kind == EffectiveRank::Entropy ? entropy_rank(ev) : participation_ratio(ev);
}

double kernel_relative_change(const Tensor& K_t, const Tensor& K_0) {
  check_same_shape(K_t, K_0, "kernel_relative_change");
  const Mat a = to_matrix(K_t, "kernel_relative_change"), b = to_matrix(K_0, "kernel_relative_change");
  return (a - b).norm() / b.norm();
}

double kernel_distance(const Tensor& K1, const Tensor& K2) {
  check_same_shape(K1, K2, "kernel_distance");
  const Mat a = to_matrix(K1, "kernel_distance"), b = to_matrix(K2, "kernel_distance");
  return 1.0 - a.cwiseProduct(b).sum() / (a.norm() * b.norm());
}

double kernel_target_alignment(const Tensor& K, const Tensor& targets) {
  const Mat k = to_matrix(K, "kernel_target_alignment");
  return alignment(k, target_gram(targets, k.rows(), "kernel_target_alignment"));
}

double label_gradient_alignment(const Tensor& K, const Tensor& labels) {
  return lga(to_matrix(K, "label_gradient_alignment"), labels);
}

KernelSummary summarize_kernel(const Tensor& K, const Tensor& targets, const Tensor& reference) {
  const Mat k = to_matrix(K, "summarize_kernel");
  const Vec ev = spectrum(k);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  KernelSummary s;
  s.trace = k.trace();
  s.eig_min = ev(0);
  s.eig_max = ev(ev.size() - 1);
  s.condition_number = condition(ev);
  s.effective_rank = participation_ratio(ev);
  s.effective_rank_entropy = entropy_rank(ev);
  s.eigenvalues = from_vector(std::vector<double>(ev.data(), ev.data() + ev.size()), {ev.size()});
  s.relative_change = s.distance = s.target_alignment = s.label_gradient_alignment = nan;
  if (reference.defined()) {
    check_same_shape(K, reference, "summarize_kernel");
    const Mat r = to_matrix(reference, "summarize_kernel");
    s.relative_change = (k - r).norm() / r.norm();
    s.distance = 1.0 - k.cwiseProduct(r).sum() / (k.norm() * r.norm());
  }
  if (targets.defined()) {
    s.target_alignment = alignment(k, target_gram(targets, k.rows(), "summarize_kernel"));
    if (targets.dtype() == DType::Int64) s.label_gradient_alignment = lga(k, targets);
  }
  return s;
}

}  // namespace kern::tools
