// kern_dist_tests: run under `mpirun -np 2 kern_dist_tests <test>...` (ctest does, see
// tests/CMakeLists.txt). Each test is a function registered in test_*.cpp; every rank runs
// the same ones in the same order. Exit 0 when all passed; a failure aborts the job.
#include "check.hpp"

#include <cstdio>

std::map<std::string, std::function<void()>>& registry() {
  static std::map<std::string, std::function<void()>> r;
  return r;
}

int main(int argc, char** argv) {
  kern::dist::Environment env(argc, argv);
  return kern::dist::run_or_abort([&] {
    std::vector<std::string> names;
    for (int i = 1; i < argc; ++i) names.push_back(argv[i]);
    if (names.empty())  // all but the fault tests, which end the job on purpose
      for (auto& [n, f] : registry())
        if (n.rfind("fault", 0) != 0) names.push_back(n);
    for (auto& n : names) {
      auto it = registry().find(n);
      KERN_CHECK(it != registry().end(), "kern_dist_tests: no test named '", n, "'");
      it->second();
      kern::dist::barrier();
      if (kern::dist::rank() == 0) std::printf("passed: %s (%d ranks)\n", n.c_str(), kern::dist::world_size());
    }
  });
}
