// kern::limits combinators: serial and fan_sum (FanOut + parallel + FanInSum), and the twin
// builder (Layer::twin).
#include "internal.hpp"

#include <kern/nn/container.hpp>

#include <fmt/format.h>

namespace kern::limits {
namespace {

class SerialImpl : public LayerImpl {
 public:
  explicit SerialImpl(std::vector<Layer> layers) : layers_(std::move(layers)) {
    KERN_CHECK(!layers_.empty(), "limits::serial: no layers");
    for (const Layer& l : layers_) l.impl();  // throws on an empty layer
  }
  std::string name() const override {
    std::string s = "serial(";
    for (size_t i = 0; i < layers_.size(); ++i) s += (i ? ", " : "") + layers_[i].name();
    return s + ")";
  }
  void apply(Kernel& k) const override {
    for (const Layer& l : layers_) l.impl().apply(k);
  }
  bool needs_full(bool output_full) const override {
    bool need = output_full;
    for (auto it = layers_.rbegin(); it != layers_.rend(); ++it) need = it->impl().needs_full(need);
    return need;
  }
  int64_t linear_layers() const override {
    int64_t n = 0;
    for (const Layer& l : layers_) n += l.impl().linear_layers();
    return n;
  }
  std::shared_ptr<nn::Module> twin(TwinShape& shape, TwinContext& ctx) const override {
    auto seq = std::make_shared<nn::Sequential>();
    for (const Layer& l : layers_) seq->push_back(l.impl().twin(shape, ctx));
    return seq;
  }

 private:
  std::vector<Layer> layers_;
};

// The twin of fan_sum: forward(x) = sum_b branch_b(x).
class FanSumModule : public nn::ModuleList {
 public:
  Tensor forward(const Tensor& x) override {
    Tensor y;
    for (const auto& m : modules_) {
      Tensor t = (*m)(x);
      y = y.defined() ? y + t : t;
    }
    return y;
  }
  std::string name() const override { return "FanSum"; }
};

class FanSumImpl : public LayerImpl {
 public:
  explicit FanSumImpl(std::vector<Layer> branches) : branches_(std::move(branches)) {
    KERN_CHECK(!branches_.empty(), "limits::fan_sum: no branches");
    for (const Layer& l : branches_) l.impl();
  }
  std::string name() const override {
    std::string s = "fan_sum(";
    for (size_t i = 0; i < branches_.size(); ++i) s += (i ? ", " : "") + branches_[i].name();
    return s + ")";
  }
  void apply(Kernel& k) const override {
    Kernel sum;
    for (size_t b = 0; b < branches_.size(); ++b) {
      Kernel kb = b + 1 == branches_.size() ? std::move(k) : k;
      branches_[b].impl().apply(kb);
      if (b == 0) {
        sum = std::move(kb);
        continue;
      }
      KERN_CHECK(kb.spatial == sum.spatial && kb.h == sum.h && kb.w == sum.w && kb.full == sum.full,
                 "limits::fan_sum: branch ", b, " (", branches_[b].name(), ") gives a ",
                 kb.h, "x", kb.w, " kernel, branch 0 a ", sum.h, "x", sum.w, " one");
      KERN_CHECK(kb.channels == sum.channels || kb.width == 0,
                 "limits::fan_sum: branches end with different channel counts");
      for (size_t e = 0; e < sum.nngp.size(); ++e) {
        sum.nngp[e] += kb.nngp[e];
        sum.ntk[e] += kb.ntk[e];
      }
      for (size_t e = 0; e < sum.cov1.size(); ++e) sum.cov1[e] += kb.cov1[e];
      for (size_t e = 0; e < sum.cov2.size(); ++e) sum.cov2[e] += kb.cov2[e];
      sum.is_gaussian = sum.is_gaussian && kb.is_gaussian;
    }
    k = std::move(sum);
  }
  bool needs_full(bool output_full) const override {
    bool need = false;
    for (const Layer& l : branches_) need = need || l.impl().needs_full(output_full);
    return need;
  }
  int64_t linear_layers() const override {
    int64_t n = 0;
    for (const Layer& l : branches_) n += l.impl().linear_layers();
    return n;
  }
  std::shared_ptr<nn::Module> twin(TwinShape& shape, TwinContext& ctx) const override {
    auto m = std::make_shared<FanSumModule>();
    TwinShape out;
    for (size_t b = 0; b < branches_.size(); ++b) {
      TwinShape s = shape;
      m->push_back(branches_[b].impl().twin(s, ctx));
      KERN_CHECK(b == 0 || (s.channels == out.channels && s.h == out.h && s.w == out.w),
                 "limits::fan_sum twin: branch ", b, " ends with ", s.channels, " channels of ",
                 s.h, "x", s.w, ", branch 0 with ", out.channels, " of ", out.h, "x", out.w);
      if (b == 0) out = s;
    }
    shape = out;
    return m;
  }

 private:
  std::vector<Layer> branches_;
};

}  // namespace

Layer serial(std::vector<Layer> layers) { return Layer(std::make_shared<SerialImpl>(std::move(layers))); }
Layer fan_sum(std::vector<Layer> branches) {
  return Layer(std::make_shared<FanSumImpl>(std::move(branches)));
}

std::shared_ptr<nn::Module> Layer::twin(int64_t in_channels, int64_t width, int64_t out_features,
                                        std::array<int64_t, 2> in_hw, Generator* gen) const {
  KERN_CHECK(in_channels >= 1 && width >= 1 && out_features >= 1,
             "limits::Layer::twin: in_channels ", in_channels, ", width ", width,
             " and out_features ", out_features, " must be >= 1");
  TwinShape shape{in_channels, in_hw[0], in_hw[1]};
  TwinContext ctx;
  ctx.width = width;
  ctx.gen = gen;
  ctx.linear_count = impl().linear_layers();
  ctx.out_features = out_features;
  KERN_CHECK(ctx.linear_count >= 1, "limits::Layer::twin: ", name(), " has no Dense/Conv layer");
  auto m = impl().twin(shape, ctx);
  return m;
}

}  // namespace kern::limits
