// Planted bugs, one per mode, for tests/sanitize/check_canaries.sh: each must be reported by
// the sanitizer build with the options `make test-sanitize` sets, and end the process with a
// non-zero status. A sanitizer job that stops seeing bugs (a flag dropped from CMake, an
// option dropped from the Makefile, a suppression that matches everything) fails here
// instead of passing silently. Built only with KERN_SANITIZE=ON.
//   canary MODE      MODE: none heap-overflow stack-use-after-return signed-overflow
//                          float-cast-overflow leak vector-bounds
// Sizes and values come from argc so that the compiler cannot fold the bug away.
#include <climits>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace {

volatile int sink;
int* volatile escaped;

// A pointer to a local that outlives its frame.
__attribute__((noinline)) int* local_address(int v) {
  int local[4] = {v, v, v, v};
  escaped = local;
  return escaped;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: canary MODE\n");
    return 2;
  }
  const std::string mode = argv[1];
  const int one = argc - 1;  // 1, unknown to the compiler
  if (mode == "none") {
    std::vector<int> v(4, one);
    sink = v[3];
    return 0;
  }
  if (mode == "heap-overflow") {  // ASan: heap-buffer-overflow
    int* p = new int[4 * one];
    p[4 * one] = 1;
    sink = p[0];
    delete[] p;
  } else if (mode == "stack-use-after-return") {  // ASan with detect_stack_use_after_return=1
    int* p = local_address(one);
    sink = p[one];
  } else if (mode == "signed-overflow") {  // UBSan: signed-integer-overflow
    int x = INT_MAX - 1 + one;
    x += one;
    sink = x;
  } else if (mode == "float-cast-overflow") {  // UBSan: float-cast-overflow (not in g++'s
    const double d = 1e300 * one;              // -fsanitize=undefined, named in CMake)
    volatile int64_t i = static_cast<int64_t>(d);
    sink = static_cast<int>(i & 1);
  } else if (mode == "leak") {  // LSan at exit
    escaped = new int[100 * one];
    escaped = nullptr;
  } else if (mode == "vector-bounds") {  // _GLIBCXX_ASSERTIONS: inside the capacity, which
    std::vector<int> v;                     // ASan alone does not see
    v.reserve(16);
    v.push_back(one);
    sink = v[2 * one];
  } else {
    std::fprintf(stderr, "canary: unknown mode %s\n", mode.c_str());
    return 2;
  }
  std::fprintf(stderr, "canary: %s was not reported\n", mode.c_str());
  return 0;
}
