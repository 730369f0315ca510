// Uses an installed kern through find_package(kern): differentiates x^3 at 2 (prints 12),
// takes one SGD step, builds a zoo model, and finds the installed plotting script. Exits 0
// only when every answer is right. Argument: the install prefix.
#include <kern/kern.hpp>
#include <kern/models/models.hpp>
#include <kern/optim/optim.hpp>
#include <kern/tools/tools.hpp>

#include <filesystem>
#include <string>

int main(int argc, char** argv) {
  kern::Tensor x = kern::tensor({2.0}, kern::DType::Float64).requires_grad_();
  kern::Tensor y = kern::pow(x, 3.0).sum();
  y.backward();
  const double g = x.grad().item();
  fmt::print("d(x^3)/dx at 2 = {}\n", g);

  // kern_optim: x <- x - 0.5 * 12 = -4
  kern::optim::SGD opt(std::vector<kern::Tensor>{x}, {.lr = 0.5});
  opt.step();
  const double stepped = x.item();

  // kern_models: the registry is populated in the installed library
  const bool zoo = !kern::models::list_models("convnext_*").empty();

  // kern_tools: the plotting script is found in <prefix>/share/kern
  const std::string script = kern::tools::default_plot_script();
  bool installed_script = std::filesystem::exists(script);
  if (argc > 1) {
    const auto want = std::filesystem::weakly_canonical(std::filesystem::path(argv[1]) / "share/kern/plot_coord_check.py");
    installed_script = installed_script && std::filesystem::weakly_canonical(script) == want;
  }
  fmt::print("sgd step: {}, convnext in zoo: {}, plot script: {} ({})\n", stepped, zoo, script,
             installed_script ? "installed" : "NOT the installed one");
  return g == 12.0 && stepped == -4.0 && zoo && installed_script ? 0 : 1;
}
