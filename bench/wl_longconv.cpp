// longconv_train: per-channel long convolution by FFT, y = irfft(rfft(u, 2L) * rfft(k, 2L), 2L)[..., :L]
// + D * u, loss = sum(y * g); u: [8, 64, L], k: [64, L], D: [64].
#include "harness.hpp"

namespace kern::bench {
namespace {

Tensor long_conv(const Tensor& u, const Tensor& k, const Tensor& D) {
  const int64_t L = u.size(-1), n = 2 * L;
  Tensor spec = complex_mul(rfft(u, n), rfft(k, n));  // [B, H, L + 1, 2] (k broadcasts over B)
  return irfft(spec, n).narrow(-1, 0, L) + D.reshape({-1, 1}) * u;
}

Workload longconv(const io::SafetensorsFile& in, const Args& args) {
  Tensor u = in.get("u").clone().detach().requires_grad_(true);
  Tensor k = in.get("k").clone().detach().requires_grad_(true);
  Tensor D = in.get("D").clone().detach().requires_grad_(true);
  Tensor g = in.get("g");
  KERN_CHECK(u.size(-1) == args.length, "longconv_train: --length ", args.length, " but u has L = ", u.size(-1));
  auto run = [u, k, D, g]() mutable {
    u.zero_grad();
    k.zero_grad();
    D.zero_grad();
    Tensor y = long_conv(u, k, D);
    sum(y * g).backward();
    return y;
  };
  Workload w;
  w.step = [run]() mutable { (void)run(); };
  w.check = [run, u, k, D, in]() mutable {
    Tensor y = run();
    Comparator c(1e-4);
    c.compare("y", y, in.get("y"));
    c.compare("grad.u", u.grad(), in.get("grad.u"));
    c.compare("grad.k", k.grad(), in.get("grad.k"));
    c.compare("grad.D", D.grad(), in.get("grad.D"));
    return c.result();
  };
  return w;
}

Register longconv_reg("longconv_train", longconv);

}  // namespace
}  // namespace kern::bench
