// OpInfo entries for flip and rot90 (framework/ops/flip.cpp): contiguous, non-contiguous and
// non-square samples, every rotation count, and the bad dims that must be named in the error.
#include "op_table.hpp"

using namespace kern;
using namespace kern::testing;

namespace {

using Ins = std::vector<Tensor>;
const DType F64 = DType::Float64;

Tensor rn(Generator& g, Shape s) { return randn(s, F64, &g); }

OpInfo flip_op(std::string name, Dims dims, std::function<Tensor(Generator&)> make,
               std::function<void()> bad = {}, std::string msg = "") {
  return {std::move(name), [dims](const Ins& x) { return flip(x[0], dims); },
          [make](Generator& g) { return Ins{make(g)}; }, true, false, std::move(bad), std::move(msg)};
}

OpInfo rot_op(std::string name, int64_t k, Dims dims, std::function<Tensor(Generator&)> make,
              std::function<void()> bad = {}, std::string msg = "") {
  return {std::move(name), [k, dims](const Ins& x) { return rot90(x[0], k, dims); },
          [make](Generator& g) { return Ins{make(g)}; }, true, false, std::move(bad), std::move(msg)};
}

OpRegistrar flips({
    flip_op("flip dims {0, 2}", {0, 2}, [](Generator& g) { return rn(g, {2, 3, 4}); },
            [] { flip(zeros({2, 3}), {2}); }, "flip: dim 2 in dims [2] is out of range for a tensor of shape [2, 3]"),
    flip_op("flip last dim of a transposed input", {-1}, [](Generator& g) { return rn(g, {4, 3}).t(); },
            [] { flip(zeros({2, 3}), {1, -1}); }, "flip: dim -1 appears more than once in dims [1, -1]"),
    flip_op("flip no dims", {}, [](Generator& g) { return rn(g, {3}); }),
    rot_op("rot90 k=1 dims {1, 2} non-square", 1, {1, 2}, [](Generator& g) { return rn(g, {2, 3, 4}); },
           [] { rot90(zeros({2, 3}), 1, {0, -2}); }, "rot90: dims [0, -2] name the same dim 0 twice"),
    rot_op("rot90 k=2", 2, {-2, -1}, [](Generator& g) { return rn(g, {2, 3, 4}); },
           [] { rot90(zeros({3}), 1); }, "rot90: input must have at least 2 dims, got shape [3]"),
    rot_op("rot90 k=-1 dims {2, 0} permuted input", -1, {2, 0},
           [](Generator& g) { return rn(g, {4, 3, 2}).permute({1, 2, 0}); },
           [] { rot90(zeros({2, 3}), 1, {0, 2}); }, "rot90: dim 2 in dims [0, 2] is out of range"),
    rot_op("rot90 k=7", 7, {0, 1}, [](Generator& g) { return rn(g, {3, 5}); },
           [] { rot90(zeros({2, 3}), 1, {0}); }, "rot90: dims must name exactly 2 dims, got [0]"),
    rot_op("rot90 k=0", 0, {0, 1}, [](Generator& g) { return rn(g, {2, 2}); }),
});

}  // namespace
