// Differentiates x^3 at 2 through an installed kern: prints 12 and exits 0 when right.
#include <kern/kern.hpp>

int main() {
  kern::Tensor x = kern::tensor({2.0}, kern::DType::Float64).requires_grad_();
  kern::Tensor y = kern::pow(x, 3.0).sum();
  y.backward();
  const double g = x.grad().item();
  fmt::print("d(x^3)/dx at 2 = {}\n", g);
  return g == 12.0 ? 0 : 1;
}
