#pragma once
// The OpInfo-style table: one entry per differentiable op (or op variant), each with sample
// inputs, and flags saying which generic checks apply. tests/test_op_table.cpp runs every
// entry through gradcheck, gradgradcheck, fast-vs-reference and bad-input checks.
#include "backend_paths.hpp"
#include "gradcheck.hpp"

namespace kern::testing {

struct OpInfo {
  std::string name;
  Fn fn;                                                   // the op under test
  std::function<std::vector<Tensor>(Generator&)> inputs;   // float64 samples
  bool gradgrad = true;                                    // run the second-order check
  bool fast_path = false;                                  // has a float32 fast path to compare
  std::function<void()> bad_input;                         // must throw kern::Error
  std::string error_contains;                              // ...with a message containing this
  // For fast_path entries (the comparison must not compare the reference with itself):
  std::vector<backend::Primitive> fast_kernels;  // run their fast path on Backend::Fast
  std::vector<backend::Primitive> falls_back;    // run their reference loops even there (a
                                                 // dispatch rule under test)
};

/// Every registered op; families append through register_ops().
std::vector<OpInfo>& op_table();

struct OpRegistrar {
  explicit OpRegistrar(std::vector<OpInfo> ops) {
    for (auto& op : ops) op_table().push_back(std::move(op));
  }
};

}  // namespace kern::testing
