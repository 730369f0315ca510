#pragma once
// Which backend paths a piece of code ran (kern::backend::path_counts), for the [backend]
// tests: a fast-vs-reference comparison proves nothing unless the fast side really ran its
// fast kernel and the reference side only the reference loops.
#include <kern/backend.hpp>

#include <fmt/format.h>

#include <string>
#include <utility>

namespace kern::testing {

using backend::Path;
using backend::PathCounts;
using backend::Primitive;

/// Runs f() and returns the paths taken meanwhile.
template <typename F>
PathCounts paths_of(F&& f) {
  const PathCounts before = backend::path_counts();
  std::forward<F>(f)();
  return backend::path_counts() - before;
}

/// "conv2d fast 3 ref 0, ..." (non-zero entries only), for INFO messages.
inline std::string describe(const PathCounts& c) {
  std::string s;
  for (int p = 0; p < static_cast<int>(Primitive::Count); ++p) {
    const auto prim = static_cast<Primitive>(p);
    if (c(prim, Path::Fast) == 0 && c(prim, Path::Reference) == 0) continue;
    s += fmt::format("{}{} fast {} ref {}", s.empty() ? "" : ", ", backend::primitive_name(prim), c(prim, Path::Fast),
                     c(prim, Path::Reference));
  }
  return s.empty() ? "no counted primitive" : s;
}

}  // namespace kern::testing
