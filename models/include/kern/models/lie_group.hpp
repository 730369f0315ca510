#pragma once
// The groups GL+(2, R) and SL(2, R) through the left polar (Cartan) decomposition, after
// Mironenco & Forre, "Lie Group Decompositions for Equivariant Neural Networks" (ICLR 2024):
//
//     g = P R,   P = sqrt(g g^T) symmetric positive definite,  R in SO(2)
//
// and the coordinate chart xi^-1(g) = (log P, log R) in vee coordinates:
//     log P = a I + b diag(1, -1) + c [[0, 1], [1, 0]],     log R = theta [[0, -1], [1, 0]]
//     GL+(2): v = (a, b, c, theta)  (dim 4),   SL(2): v = (b, c, theta)  (dim 3, a = 0)
// with theta in (-pi, pi]. xi(v) = exp(log P) R(theta) is its inverse.
//
// Elements are tensors [..., 2, 2] acting on plane coordinates u = (row, col) by u -> g u
// (the convention of equivariant.hpp: the rotation by 90 degrees is [[0, -1], [1, 0]]).
//
// Haar measure. In the coordinates v the (left and right) Haar measure of GL+(2) / SL(2) has
// the density (KAK decomposition; the Cartan root is the eigenvalue gap 2 r of log P)
//     w(v) = sinh(2 r) / (2 r),   r = sqrt(b^2 + c^2)
// times d theta (uniform on the rotation factor) and, for GL+(2), Lebesgue da. Sampling draws
// (a, b, c) from a normal (log-normal P) and theta equidistant or uniform (Haar on SO(2)); the
// Monte-Carlo weight of a sample is w(v) / q(v) (q its sampling density), normalized to mean 1
// over the set. A set left-multiplied by h keeps its weights (the measure is left invariant).
// The action on the plane changes areas by |det g|: layers divide by |det g| (volume
// correction, 1 for SL(2)).
//
//   auto s = kern::models::lie::sample({.group = lie::Group::GL2, .num_samples = 10}, &gen);
//   // s.g, s.g_inv: [10, 2, 2], s.weight: [10]
#include <kern/generator.hpp>
#include <kern/tensor.hpp>

#include <string>

namespace kern::models::lie {

enum class Group { GL2, SL2 };

/// "gl2" -> GL2, "sl2" -> SL2; anything else throws a kern::Error naming `field`.
Group parse_group(const std::string& name, const std::string& field = "group");
std::string group_name(Group g);
/// dim of the Lie algebra (length of v): 4 for GL+(2), 3 for SL(2).
int64_t algebra_dim(Group g);

/// atan2(y, x) elementwise, differentiable to any order (d theta = (x dy - y dx) / (x^2 + y^2)).
Tensor atan2(const Tensor& y, const Tensor& x);

/// g: [..., 2, 2] with det g > 0 -> P (SPD), R (rotation), g = P R. Closed form:
/// R is the normalized g + det(g) g^-T = [[x, -y], [y, x]] / |(x, y)|, x = a + d, y = c - b.
/// Differentiable (ops only).
struct Polar {
  Tensor P;  // [..., 2, 2]
  Tensor R;  // [..., 2, 2]
};
Polar polar(const Tensor& g);

/// log of an SPD P [..., 2, 2] in vee coordinates (a, b, c): [..., 3]. Differentiable.
Tensor log_spd(const Tensor& P);
/// exp of (a, b, c): [..., 3] -> SPD [..., 2, 2] = e^a (cosh r I + sinh(r)/r B). Differentiable.
Tensor exp_sym(const Tensor& abc);
/// The rotation [..., 2, 2] by theta [...]. Differentiable.
Tensor rotation(const Tensor& theta);

/// xi^-1: g [..., 2, 2] -> v [..., algebra_dim]. For SL(2) the a coordinate (log det / 2) is
/// dropped (g must have det 1). Differentiable.
Tensor xi_inv(const Tensor& g, Group group);
/// xi: v [..., algebra_dim] -> g [..., 2, 2]. Differentiable.
Tensor xi(const Tensor& v, Group group);

/// The Haar density w(v) = sinh(2r) / (2r) of the coordinates v [..., algebra_dim] -> [...].
Tensor haar_density(const Tensor& v, Group group);

/// [..., 2, 2] -> [..., 2, 2]: the inverse by the adjugate (exact for integer matrices).
Tensor inverse2(const Tensor& g);
/// [..., 2, 2] -> [...].
Tensor det2(const Tensor& g);
/// Batched 2x2 product a b (broadcasting leading dims).
Tensor matmul2(const Tensor& a, const Tensor& b);

struct SampleOptions {
  Group group = Group::GL2;
  int64_t num_samples = 10;
  /// "haar": theta uniform on (-pi, pi]; "equidistant": theta_k = theta0 + 2 pi k / S (exact
  /// matrices at multiples of 90 degrees).
  std::string rotations = "haar";
  double theta0 = 0.0;
  /// Standard deviation of each log P coordinate (a, b, c). 0: P = I (pure rotations).
  double log_std = 0.3;
  /// Standard deviation of a (log det / 2) for GL+(2); < 0: same as log_std.
  double log_det_std = -1.0;
  /// Monte-Carlo weights w / q (normalized to mean 1); false: all weights 1.
  bool haar_weights = true;
};

/// A set of group elements, their inverses and Monte-Carlo weights. A feature map on the
/// group [N, C, S, H, W] is defined on one such set (axis 2 follows its order).
struct Samples {
  Group group = Group::GL2;
  Tensor g;       // [S, 2, 2]
  Tensor g_inv;   // [S, 2, 2]
  Tensor weight;  // [S], mean 1
  int64_t size() const { return g.defined() ? g.size(0) : 0; }
  Samples to(DType dtype) const;
};

/// Draws a sample set (float64 internally, returned in dtype). gen: nullptr = the default.
Samples sample(const SampleOptions& options, Generator* gen = nullptr,
               DType dtype = DType::Float32);
/// The set {g_j} with the given weights (ones when undefined); inverses by the adjugate.
Samples from_elements(const Tensor& g, Group group, const Tensor& weight = {});
/// {h g_j}: the set transformed by h [2, 2], weights carried along.
Samples left_mul(const Tensor& h, const Samples& s);

}  // namespace kern::models::lie
