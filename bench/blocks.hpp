#pragma once
// The benchmark blocks, built from kern::nn modules with timm's parameter names.
#include <kern/kern.hpp>

namespace kern::bench {

/// timm ConvNeXtBlock (conv_mlp=False): dw7x7 -> NHWC -> LayerNorm(1e-6) -> fc1 -> GELU -> fc2
/// -> gamma -> NCHW -> + x.   x: [N, C, H, W] -> [N, C, H, W]
class ConvNeXtBlock : public nn::Module {
 public:
  explicit ConvNeXtBlock(int64_t dim) {
    conv_dw = register_module("conv_dw", std::make_shared<nn::Conv2d>(nn::Conv2dOptions(dim, dim, 7).padding(3).groups(dim)));
    norm = register_module("norm", std::make_shared<nn::LayerNorm>(nn::LayerNormOptions(dim).eps(1e-6)));
    mlp = register_module("mlp", std::make_shared<nn::Module>());
    fc1 = mlp->register_module("fc1", std::make_shared<nn::Linear>(dim, 4 * dim));
    fc2 = mlp->register_module("fc2", std::make_shared<nn::Linear>(4 * dim, dim));
    gamma = register_parameter("gamma", full({dim}, 1e-6));
  }
  Tensor forward(const Tensor& x) override {
    Tensor h = (*conv_dw)(x).permute({0, 2, 3, 1});    // [N, H, W, C]
    h = (*fc2)(gelu((*fc1)((*norm)(h)))) * gamma();    // [N, H, W, C]
    return h.permute({0, 3, 1, 2}) + x;
  }
  std::string name() const override { return "ConvNeXtBlock"; }
  std::shared_ptr<nn::Conv2d> conv_dw;
  std::shared_ptr<nn::LayerNorm> norm;
  std::shared_ptr<nn::Module> mlp;
  std::shared_ptr<nn::Linear> fc1, fc2;
  nn::Param gamma;
};

/// timm InceptionDWConv2d: channels split (C - 3gc, gc, gc, gc), identity on the first part,
/// depthwise 3x3 / 1x11 / 11x1 on the others.   x: [N, C, H, W] -> [N, C, H, W]
class InceptionDWConv2d : public nn::Module {
 public:
  explicit InceptionDWConv2d(int64_t dim) : gc_(dim / 8), dim_(dim) {
    dwconv_hw = register_module("dwconv_hw", std::make_shared<nn::Conv2d>(nn::Conv2dOptions(gc_, gc_, 3).padding(1).groups(gc_)));
    dwconv_w = register_module("dwconv_w", std::make_shared<nn::Conv2d>(
                                               nn::Conv2dOptions(gc_, gc_, std::array<int64_t, 2>{1, 11}).padding({0, 5}).groups(gc_)));
    dwconv_h = register_module("dwconv_h", std::make_shared<nn::Conv2d>(
                                               nn::Conv2dOptions(gc_, gc_, std::array<int64_t, 2>{11, 1}).padding({5, 0}).groups(gc_)));
  }
  Tensor forward(const Tensor& x) override {
    auto parts = split_with_sizes(x, {dim_ - 3 * gc_, gc_, gc_, gc_}, 1);
    return cat({parts[0], (*dwconv_hw)(parts[1]), (*dwconv_w)(parts[2]), (*dwconv_h)(parts[3])}, 1);
  }
  std::string name() const override { return "InceptionDWConv2d"; }
  std::shared_ptr<nn::Conv2d> dwconv_hw, dwconv_w, dwconv_h;

 private:
  int64_t gc_, dim_;
};

/// timm MetaNeXtBlock: token_mixer -> BatchNorm2d -> ConvMlp (1x1 convs, GELU) -> gamma -> + x.
class MetaNeXtBlock : public nn::Module {
 public:
  explicit MetaNeXtBlock(int64_t dim) {
    token_mixer = register_module("token_mixer", std::make_shared<InceptionDWConv2d>(dim));
    norm = register_module("norm", std::make_shared<nn::BatchNorm2d>(dim));
    mlp = register_module("mlp", std::make_shared<nn::Module>());
    fc1 = mlp->register_module("fc1", std::make_shared<nn::Conv2d>(nn::Conv2dOptions(dim, 4 * dim, 1)));
    fc2 = mlp->register_module("fc2", std::make_shared<nn::Conv2d>(nn::Conv2dOptions(4 * dim, dim, 1)));
    gamma = register_parameter("gamma", full({dim}, 1e-6));
  }
  Tensor forward(const Tensor& x) override {
    Tensor h = (*fc2)(gelu((*fc1)((*norm)((*token_mixer)(x)))));
    return h * gamma().reshape({1, -1, 1, 1}) + x;
  }
  std::string name() const override { return "MetaNeXtBlock"; }
  std::shared_ptr<InceptionDWConv2d> token_mixer;
  std::shared_ptr<nn::BatchNorm2d> norm;
  std::shared_ptr<nn::Module> mlp;
  std::shared_ptr<nn::Conv2d> fc1, fc2;
  nn::Param gamma;
};

}  // namespace kern::bench
