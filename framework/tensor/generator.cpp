// The seeded generator and the process-wide default one.
#include <kern/error.hpp>
#include <kern/generator.hpp>

#include <cmath>
#include <sstream>

namespace kern {

double Generator::normal() {
  if (has_spare_) {
    has_spare_ = false;
    return spare_;
  }
  double u1 = uniform();
  while (u1 <= 0.0) u1 = uniform();
  const double u2 = uniform();
  const double r = std::sqrt(-2.0 * std::log(u1));
  spare_ = r * std::sin(2.0 * M_PI * u2);
  has_spare_ = true;
  return r * std::cos(2.0 * M_PI * u2);
}

std::string Generator::state() const {
  std::ostringstream os;
  os << seed_ << ' ' << has_spare_ << ' ';
  os.precision(17);
  os << std::hexfloat << spare_ << ' ' << engine_;
  return os.str();
}

void Generator::set_state(const std::string& state) {
  std::istringstream is(state);
  std::string spare_text;
  is >> seed_ >> has_spare_ >> spare_text >> engine_;
  KERN_CHECK(!is.fail(), "Generator::set_state: malformed generator state");
  spare_ = std::strtod(spare_text.c_str(), nullptr);
}

Generator& default_generator() {
  static Generator gen(0);
  return gen;
}

void manual_seed(uint64_t seed) { default_generator().manual_seed(seed); }

}  // namespace kern
