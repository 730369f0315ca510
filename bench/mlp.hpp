#pragma once
// The mlp_train network, shared by kern_bench (bench/wl_train.cpp) and kern_bench_dist
// (bench/dist/ddp_mlp_train.cpp): 784-1024-1024-10 with ReLU between, PyTorch's names fc1,
// fc2, fc3.   x: [B, 784] -> [B, 10]
#include <kern/kern.hpp>

#include <memory>

namespace kern::bench {

class Mlp : public nn::Module {
 public:
  Mlp() {
    fc1 = register_module("fc1", std::make_shared<nn::Linear>(784, 1024));
    fc2 = register_module("fc2", std::make_shared<nn::Linear>(1024, 1024));
    fc3 = register_module("fc3", std::make_shared<nn::Linear>(1024, 10));
  }
  Tensor forward(const Tensor& x) override { return (*fc3)(relu((*fc2)(relu((*fc1)(x))))); }
  std::shared_ptr<nn::Linear> fc1, fc2, fc3;
};

}  // namespace kern::bench
