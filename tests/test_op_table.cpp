// Runs every OpInfo entry (see op_table.hpp and the ops_*.cpp registration files) through
// the generic checks: float64 gradcheck, gradgradcheck, float32 fast-vs-reference agreement
// of values and gradients, and one bad-input case that must throw a named error.
#include "op_table.hpp"

using namespace kern;
using namespace kern::testing;

namespace kern::testing {
std::vector<OpInfo>& op_table() {
  static std::vector<OpInfo> table;
  return table;
}
}  // namespace kern::testing

TEST_CASE("op table: first derivatives match finite differences", "[gradcheck]") {
  REQUIRE(op_table().size() > 40);
  for (auto& op : op_table()) {
    DYNAMIC_SECTION(op.name) {
      Generator gen(7);
      KERN_GRADCHECK(op.fn, op.inputs(gen));
    }
  }
}

TEST_CASE("op table: second derivatives match finite differences of gradients", "[gradgradcheck]") {
  for (auto& op : op_table()) {
    if (!op.gradgrad) continue;
    DYNAMIC_SECTION(op.name) {
      Generator gen(7);
      KERN_GRADGRADCHECK(op.fn, op.inputs(gen));
    }
  }
}

TEST_CASE("op table: float32 fast path agrees with the reference path", "[backend]") {
  int checked = 0;
  for (auto& op : op_table()) {
    if (!op.fast_path) continue;
    ++checked;
    DYNAMIC_SECTION(op.name) {
      Generator gen(7);
      std::vector<Tensor> in32;
      for (auto& t : op.inputs(gen)) in32.push_back(is_floating(t.dtype()) ? t.to(DType::Float32) : t);
      auto run = [&](Backend b, PathCounts& paths) {
        BackendGuard guard(b);
        auto xs = leaves(in32);
        std::vector<Tensor> g;
        paths = paths_of([&] {
          Tensor out = op.fn(xs);
          std::vector<Tensor> diff;
          for (auto& x : xs)
            if (x.requires_grad()) diff.push_back(x);
          Generator vg(11);
          Tensor v = randn(out.shape(), out.dtype(), &vg);
          g = grad({out}, diff, {v}, {.allow_unused = true});
          g.insert(g.begin(), out.detach());
        });
        return g;
      };
      PathCounts fast_paths, ref_paths;
      auto fast = run(Backend::Fast, fast_paths), ref = run(Backend::Reference, ref_paths);
      INFO("fast side: " << describe(fast_paths) << "; reference side: " << describe(ref_paths));
      // The sides really took different paths: the entry's fast kernels ran (or, for an
      // input the fast backend hands to the loops, did not), the reference side ran none.
      REQUIRE(op.fast_kernels.size() + op.falls_back.size() > 0);
      for (Primitive p : op.fast_kernels) {
        INFO(backend::primitive_name(p));
        REQUIRE(fast_paths(p, Path::Fast) > 0);
        REQUIRE(ref_paths(p, Path::Reference) > 0);
      }
      for (Primitive p : op.falls_back) {
        INFO(backend::primitive_name(p) << " (falls back)");
        REQUIRE(fast_paths(p, Path::Fast) == 0);
        REQUIRE(fast_paths(p, Path::Reference) > 0);
      }
      REQUIRE(ref_paths.total(Path::Fast) == 0);
      REQUIRE(fast.size() == ref.size());
      for (size_t i = 0; i < fast.size(); ++i) {
        INFO("result " << i << " (0 = output, then gradients)");
        const double scale = std::max(1.0, max_abs_diff(ref[i], zeros_like(ref[i])));
        REQUIRE(max_abs_diff(fast[i], ref[i]) <= 1e-4 * scale);
      }
    }
  }
  REQUIRE(checked > 0);
}

TEST_CASE("op table: bad input throws an error naming the op", "[errors]") {
  for (auto& op : op_table()) {
    if (!op.bad_input) continue;
    DYNAMIC_SECTION(op.name) { REQUIRE_THROWS_WITH(op.bad_input(), Catch::Contains(op.error_contains)); }
  }
}
