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
  // Parsed into temporaries: a malformed state throws and leaves this generator unchanged.
  // The format is state(): "<seed> <has_spare 0|1> <spare as hexfloat> <mt19937_64 state>".
  std::istringstream is(state);
  uint64_t seed = 0;
  int has_spare = -1;
  std::string spare_text;
  std::mt19937_64 engine;
  is >> seed;
  KERN_CHECK(!is.fail(), "Generator::set_state: malformed state: the seed is not an unsigned integer");
  is >> has_spare;
  KERN_CHECK(!is.fail() && (has_spare == 0 || has_spare == 1),
             "Generator::set_state: malformed state: the spare flag is not 0 or 1");
  is >> spare_text;
  char* end = nullptr;
  const double spare = std::strtod(spare_text.c_str(), &end);
  KERN_CHECK(!is.fail() && !spare_text.empty() && *end == '\0' && std::isfinite(spare),
             "Generator::set_state: malformed state: the spare normal '", spare_text.substr(0, 40),
             "' is not a finite number");
  is >> engine;
  KERN_CHECK(!is.fail(), "Generator::set_state: malformed state: the mt19937_64 engine state is ",
             "missing or not 312 words and an index");
  is >> std::ws;
  KERN_CHECK(is.eof(), "Generator::set_state: malformed state: unexpected text after the engine state");
  seed_ = seed;
  has_spare_ = has_spare == 1;
  spare_ = spare;
  engine_ = engine;
}

Generator& default_generator() {
  static Generator gen(0);
  return gen;
}

void manual_seed(uint64_t seed) { default_generator().manual_seed(seed); }

}  // namespace kern
