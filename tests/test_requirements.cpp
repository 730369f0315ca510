// The rule of tests/requirements.hpp, checked from outside by CTest (tests/CMakeLists.txt runs
// this hidden test case twice): without KERN_ALLOW_MISSING_DATA a missing requirement fails
// the test, with KERN_ALLOW_MISSING_DATA=1 it is skipped with a warning.
#include "requirements.hpp"

TEST_CASE("a missing requirement fails the test unless KERN_ALLOW_MISSING_DATA=1", "[.missing_requirement]") {
  kern::testing::requirement_missing("/nonexistent/kern-requirement is absent", "kern-no-such-package");
}
