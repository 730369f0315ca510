#pragma once
// kern::Error and KERN_CHECK: every public op validates its arguments and throws an
// Error whose message names the op, the shapes and the dtypes involved.
#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace kern {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

namespace detail {
// Concatenates the arguments with fmt ("{}" each), so Shape, DType and Tensor print well.
template <typename... Args>
std::string concat(const Args&... args) {
  std::string out;
  ((out += fmt::format("{}", args)), ...);
  return out;
}
}  // namespace detail

}  // namespace kern

/// KERN_CHECK(cond, "matmul: shapes ", a.shape(), " and ", b.shape(), " cannot be multiplied")
#define KERN_CHECK(cond, ...)                                  \
  do {                                                         \
    if (!(cond)) throw ::kern::Error(::kern::detail::concat(__VA_ARGS__)); \
  } while (0)
