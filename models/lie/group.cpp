// GL+(2) / SL(2) machinery: polar decomposition, the chart xi^-1 = (log P, log R) and its
// inverse, the Haar density in those coordinates, and sampling. See lie_group.hpp.
#include <kern/models/lie_group.hpp>

#include <kern/autograd.hpp>
#include <kern/error.hpp>
#include <kern/forward_ad.hpp>
#include <kern/ops.hpp>

#include <algorithm>
#include <cmath>
#include <numbers>
#include <vector>

namespace kern::models::lie {

namespace {

constexpr double kPi = std::numbers::pi;

// g[..., i, j] -> [...]
Tensor at(const Tensor& g, int64_t i, int64_t j) { return g.select(-2, i).select(-1, j); }

// Four tensors [...] -> [..., 2, 2] = [[a, b], [c, d]].
Tensor mat(const Tensor& a, const Tensor& b, const Tensor& c, const Tensor& d) {
  return stack({stack({a, b}, -1), stack({c, d}, -1)}, -2);
}

void check_matrices(const Tensor& g, const char* op) {
  KERN_CHECK(g.defined() && g.dim() >= 2 && g.size(-1) == 2 && g.size(-2) == 2, "lie::", op,
             ": expected 2x2 matrices [..., 2, 2], got ",
             g.defined() ? fmt::format("{}", g.shape()) : std::string("an undefined tensor"));
  KERN_CHECK(is_floating(g.dtype()), "lie::", op, ": expected a floating dtype, got ", g.dtype());
}

void check_coords(const Tensor& v, Group group, const char* op) {
  const int64_t d = algebra_dim(group);
  KERN_CHECK(v.defined() && v.dim() >= 1 && v.size(-1) == d, "lie::", op, "(",
             group_name(group), "): expected coordinates [..., ", d, "], got ",
             v.defined() ? fmt::format("{}", v.shape()) : std::string("an undefined tensor"));
}

// f(s) = sinh(s) / s, safe (value and derivatives) at s = 0 through s^2: takes s2 = s^2.
Tensor sinhc_sq(const Tensor& s2) {
  const Tensor big = s2 > 1e-8;
  const Tensor s = sqrt(where(big, s2, 1.0));
  const Tensor exact = (exp(s) - exp(-s)) / (2.0 * s);
  return where(big, exact, 1.0 + s2 / 6.0 + s2 * s2 / 120.0);
}

// cosh(s) from s2 = s^2.
Tensor cosh_sq(const Tensor& s2) {
  const Tensor big = s2 > 1e-8;
  const Tensor s = sqrt(where(big, s2, 1.0));
  return where(big, (exp(s) + exp(-s)) / 2.0, 1.0 + s2 / 2.0 + s2 * s2 / 24.0);
}

// asinh(q) / q from q2 = q^2.
Tensor asinhc_sq(const Tensor& q2) {
  const Tensor big = q2 > 1e-8;
  const Tensor q = sqrt(where(big, q2, 1.0));
  return where(big, log(q + sqrt(q * q + 1.0)) / q, 1.0 - q2 / 6.0 + 3.0 * q2 * q2 / 40.0);
}

}  // namespace

Group parse_group(const std::string& name, const std::string& field) {
  if (name == "gl2") return Group::GL2;
  if (name == "sl2") return Group::SL2;
  KERN_CHECK(false, field, ": unknown group '", name, "' (expected 'gl2' or 'sl2')");
  return Group::GL2;
}

std::string group_name(Group g) { return g == Group::GL2 ? "gl2" : "sl2"; }

int64_t algebra_dim(Group g) { return g == Group::GL2 ? 4 : 3; }

Tensor atan2(const Tensor& y, const Tensor& x) {
  KERN_CHECK(y.shape() == x.shape() && y.dtype() == x.dtype() && is_floating(x.dtype()),
             "lie::atan2: y ", y.shape(), " ", y.dtype(), " and x ", x.shape(), " ", x.dtype(),
             " must have one shape and one floating dtype");
  const Tensor yc = y.contiguous(), xc = x.contiguous();
  Tensor out = empty(x.shape(), x.dtype());
  auto run = [&]<typename T>() {
    const T* py = yc.data_ptr<T>();
    const T* px = xc.data_ptr<T>();
    T* po = out.data_ptr<T>();
    for (int64_t i = 0; i < out.numel(); ++i) po[i] = std::atan2(py[i], px[i]);
  };
  if (x.dtype() == DType::Float64) run.template operator()<double>();
  else if (x.dtype() == DType::Float32) run.template operator()<float>();
  else KERN_CHECK(false, "lie::atan2: dtype ", x.dtype(), " is not supported (float32/float64)");
  // d atan2(y, x) = (x dy - y dx) / (x^2 + y^2), written with differentiable ops: the
  // backward gives (g x, -g y) / r^2, the forward rule (x t_y - y t_x) / r^2.
  return record_op(
      "lie_atan2", out, {y, x},
      [](const BackwardContext& c) {
        const Tensor& yy = c.inputs[0];
        const Tensor& xx = c.inputs[1];
        const Tensor gr = c.grad / (xx * xx + yy * yy);
        return std::vector<Tensor>{gr * xx, -(gr * yy)};
      },
      SavedValues::none().input(0).input(1), [](const JvpContext& c) -> Tensor {
        if (!c.has(0) && !c.has(1)) return {};
        const Tensor& yy = c.inputs[0];
        const Tensor& xx = c.inputs[1];
        return (xx * c.tangent_or_zeros(0) - yy * c.tangent_or_zeros(1)) / (xx * xx + yy * yy);
      });
}

Tensor det2(const Tensor& g) {
  check_matrices(g, "det2");
  return at(g, 0, 0) * at(g, 1, 1) - at(g, 0, 1) * at(g, 1, 0);
}

Tensor inverse2(const Tensor& g) {
  check_matrices(g, "inverse2");
  const Tensor d = det2(g);
  return mat(at(g, 1, 1) / d, -at(g, 0, 1) / d, -at(g, 1, 0) / d, at(g, 0, 0) / d);
}

Tensor matmul2(const Tensor& a, const Tensor& b) {
  check_matrices(a, "matmul2");
  check_matrices(b, "matmul2");
  auto e = [&](int64_t i, int64_t j) { return at(a, i, 0) * at(b, 0, j) + at(a, i, 1) * at(b, 1, j); };
  return mat(e(0, 0), e(0, 1), e(1, 0), e(1, 1));
}

Polar polar(const Tensor& g) {
  check_matrices(g, "polar");
  const Tensor a = at(g, 0, 0), b = at(g, 0, 1), c = at(g, 1, 0), d = at(g, 1, 1);
  // g + det(g) g^-T = [[a + d, b - c], [c - b, a + d]] = s R: the closest rotation.
  const Tensor x = a + d, y = c - b;
  const Tensor s = sqrt(x * x + y * y);
  const Tensor cs = x / s, sn = y / s;
  Polar out;
  out.R = mat(cs, -sn, sn, cs);
  // P = g R^T; its off-diagonal entries agree analytically, symmetrize the rounding.
  const Tensor p00 = a * cs - b * sn, p11 = c * sn + d * cs;
  const Tensor p01 = 0.5 * ((a * sn + b * cs) + (c * cs - d * sn));
  out.P = mat(p00, p01, p01, p11);
  return out;
}

Tensor log_spd(const Tensor& P) {
  check_matrices(P, "log_spd");
  const Tensor p00 = at(P, 0, 0), p01 = at(P, 0, 1), p11 = at(P, 1, 1);
  const Tensor det = p00 * p11 - p01 * p01;
  // P = e^a (cosh r I + sinh(r)/r B), B = [[b, c], [c, -b]], r = |(b, c)|: e^{2a} = det P and
  // the traceless part of P / e^a is sinh(r)/r B, whose norm is q = sinh r.
  const Tensor sd = sqrt(det);
  const Tensor hb = 0.5 * (p00 - p11);
  const Tensor q2 = (hb * hb + p01 * p01) / det;
  const Tensor f = asinhc_sq(q2) / sd;
  return stack({0.5 * log(det), hb * f, p01 * f}, -1);
}

Tensor exp_sym(const Tensor& abc) {
  KERN_CHECK(abc.defined() && abc.dim() >= 1 && abc.size(-1) == 3,
             "lie::exp_sym: expected (a, b, c) coordinates [..., 3], got ", abc.shape());
  const Tensor a = abc.select(-1, 0), b = abc.select(-1, 1), c = abc.select(-1, 2);
  const Tensor r2 = b * b + c * c;
  const Tensor ea = exp(a), ch = cosh_sq(r2) * ea, sh = sinhc_sq(r2) * ea;
  return mat(ch + sh * b, sh * c, sh * c, ch - sh * b);
}

Tensor rotation(const Tensor& theta) {
  const Tensor cs = cos(theta), sn = sin(theta);
  return mat(cs, -sn, sn, cs);
}

Tensor xi_inv(const Tensor& g, Group group) {
  check_matrices(g, "xi_inv");
  const Polar pr = polar(g);
  const Tensor abc = log_spd(pr.P);
  const Tensor x = at(g, 0, 0) + at(g, 1, 1), y = at(g, 1, 0) - at(g, 0, 1);
  Tensor theta = atan2(y, x);
  // (-pi, pi]: atan2(-0, x < 0) = -pi is the same rotation as pi.
  theta = where(theta <= -kPi, theta + 2 * kPi, theta);
  if (group == Group::GL2) return cat({abc, theta.unsqueeze(-1)}, -1);
  return cat({abc.narrow(-1, 1, 2), theta.unsqueeze(-1)}, -1);
}

Tensor xi(const Tensor& v, Group group) {
  check_coords(v, group, "xi");
  Tensor abc, theta;
  if (group == Group::GL2) {
    abc = v.narrow(-1, 0, 3);
    theta = v.select(-1, 3);
  } else {
    abc = cat({zeros_like(v.narrow(-1, 0, 1)), v.narrow(-1, 0, 2)}, -1);
    theta = v.select(-1, 2);
  }
  return matmul2(exp_sym(abc), rotation(theta));
}

Tensor haar_density(const Tensor& v, Group group) {
  check_coords(v, group, "haar_density");
  const int64_t off = group == Group::GL2 ? 1 : 0;
  const Tensor b = v.select(-1, off), c = v.select(-1, off + 1);
  return sinhc_sq(4.0 * (b * b + c * c));  // sinh(2r) / (2r)
}

Samples Samples::to(DType dtype) const {
  Samples s = *this;
  s.g = g.to(dtype);
  s.g_inv = g_inv.to(dtype);
  s.weight = weight.to(dtype);
  return s;
}

Samples sample(const SampleOptions& o, Generator* gen, DType dtype) {
  KERN_CHECK(o.num_samples >= 1, "lie::sample: num_samples must be >= 1, got ", o.num_samples);
  KERN_CHECK(o.rotations == "haar" || o.rotations == "equidistant",
             "lie::sample: rotations must be 'haar' or 'equidistant', got '", o.rotations, "'");
  KERN_CHECK(std::isfinite(o.log_std) && o.log_std >= 0, "lie::sample: log_std must be >= 0, got ",
             o.log_std);
  KERN_CHECK(is_floating(dtype), "lie::sample: dtype must be floating, got ", dtype);
  Generator& rng = gen ? *gen : default_generator();
  const int64_t S = o.num_samples;
  const double sa = o.group == Group::GL2 ? (o.log_det_std < 0 ? o.log_std : o.log_det_std) : 0.0;
  std::vector<double> g(S * 4), gi(S * 4), logw(S);
  for (int64_t k = 0; k < S; ++k) {
    const double a = sa > 0 ? sa * rng.normal() : 0.0;
    const double b = o.log_std > 0 ? o.log_std * rng.normal() : 0.0;
    const double c = o.log_std > 0 ? o.log_std * rng.normal() : 0.0;
    double cs, sn;
    if (o.rotations == "haar") {
      const double t = -kPi + 2 * kPi * rng.uniform();
      cs = std::cos(t), sn = std::sin(t);
    } else if (o.theta0 == 0.0 && (4 * k) % S == 0) {
      // Multiples of 90 degrees exactly (the p4 subgroup).
      static constexpr double kc[4] = {1, 0, -1, 0}, ks[4] = {0, 1, 0, -1};
      cs = kc[(4 * k / S) % 4], sn = ks[(4 * k / S) % 4];
    } else {
      const double t = o.theta0 + 2 * kPi * static_cast<double>(k) / static_cast<double>(S);
      cs = std::cos(t), sn = std::sin(t);
    }
    const double r = std::hypot(b, c);
    const double ch = std::cosh(r), shc = r > 0 ? std::sinh(r) / r : 1.0;
    const double ea = std::exp(a), eia = std::exp(-a);
    // P = e^a (ch I + shc B), P^-1 = exp(-log P) = e^-a (ch I - shc B).
    const double P[4] = {ea * (ch + shc * b), ea * shc * c, ea * shc * c, ea * (ch - shc * b)};
    const double Pi[4] = {eia * (ch - shc * b), -eia * shc * c, -eia * shc * c,
                          eia * (ch + shc * b)};
    const double R[4] = {cs, -sn, sn, cs}, Rt[4] = {cs, sn, -sn, cs};
    auto mul = [](const double* x, const double* y, double* z) {
      z[0] = x[0] * y[0] + x[1] * y[2], z[1] = x[0] * y[1] + x[1] * y[3];
      z[2] = x[2] * y[0] + x[3] * y[2], z[3] = x[2] * y[1] + x[3] * y[3];
    };
    mul(P, R, &g[4 * k]);
    mul(Rt, Pi, &gi[4 * k]);
    // log(w / q): w = sinh(2r) / (2r), q = the normal density of (a, b, c) (constants cancel).
    double lw = r > 0 ? std::log(std::sinh(2 * r) / (2 * r)) : 0.0;
    if (o.log_std > 0) lw += (b * b + c * c) / (2 * o.log_std * o.log_std);
    if (sa > 0) lw += a * a / (2 * sa * sa);
    logw[k] = lw;
  }
  std::vector<double> w(S, 1.0);
  if (o.haar_weights && o.log_std > 0) {
    const double m = *std::max_element(logw.begin(), logw.end());
    double total = 0;
    for (int64_t k = 0; k < S; ++k) total += (w[k] = std::exp(logw[k] - m));
    for (auto& x : w) x *= static_cast<double>(S) / total;
  }
  Samples s;
  s.group = o.group;
  s.g = from_vector(g, {S, 2, 2}).to(dtype);
  s.g_inv = from_vector(gi, {S, 2, 2}).to(dtype);
  s.weight = from_vector(w, {S}).to(dtype);
  return s;
}

Samples from_elements(const Tensor& g, Group group, const Tensor& weight) {
  check_matrices(g, "from_elements");
  KERN_CHECK(g.dim() == 3, "lie::from_elements: expected elements [S, 2, 2], got ", g.shape());
  KERN_CHECK(!weight.defined() || weight.shape() == Shape{g.size(0)},
             "lie::from_elements: weight must be [S = ", g.size(0), "], got ", weight.shape());
  Samples s;
  s.group = group;
  s.g = g.detach();
  s.g_inv = inverse2(s.g);
  s.weight = weight.defined() ? weight.detach().to(g.dtype()) : ones({g.size(0)}, g.dtype());
  return s;
}

Samples left_mul(const Tensor& h, const Samples& s) {
  check_matrices(h, "left_mul");
  KERN_CHECK(h.dim() == 2, "lie::left_mul: h must be one element [2, 2], got ", h.shape());
  Samples out = s;
  const Tensor hh = h.to(s.g.dtype()).unsqueeze(0);
  out.g = matmul2(hh, s.g);
  out.g_inv = matmul2(s.g_inv, inverse2(hh));
  return out;
}

}  // namespace kern::models::lie
