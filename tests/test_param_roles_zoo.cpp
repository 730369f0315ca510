// The roles muP gives every zoo family's parameters (README, "Roles of the zoo's parameters").
// Each table below is the README's table for that family, written from the mup library's rule
// (which dims grow with width: both channel dims -> hidden; only the output channels -> input,
// i.e. vector-like; only the input channels -> output; none -> finite; 1-D: bias or gain), not
// from kern's output. Every parameter must be matched by a row (first match wins) and get that
// row's role. Base shapes come from the model at width 8 with a delta model at width 16; the
// model is at width 32.
#include <catch2/catch.hpp>

#include <kern/kern.hpp>
#include <kern/models/models.hpp>
#include <kern/param/param.hpp>

#include <string>
#include <utility>
#include <vector>

namespace nn = kern::nn;
namespace models = kern::models;
namespace param = kern::param;
using param::Role;

namespace {

using Table = std::vector<std::pair<std::string, Role>>;

void check_roles(const nn::Module& model, const param::Preset& preset, const Table& table) {
  const param::Records recs = param::compute_records(model, preset);
  REQUIRE(!recs.empty());
  std::vector<int> used(table.size(), 0);
  for (const auto& [name, rec] : recs) {
    CAPTURE(name, param::role_name(rec.role));
    size_t row = table.size();
    for (size_t i = 0; i < table.size() && row == table.size(); ++i)
      if (param::glob_match(table[i].first, name)) row = i;
    REQUIRE(row < table.size());  // the table covers every parameter
    CAPTURE(table[row].first);
    CHECK(rec.role == table[row].second);
    ++used[row];
  }
  for (size_t i = 0; i < table.size(); ++i) {
    CAPTURE(table[i].first);
    CHECK(used[i] > 0);  // no stale rows
  }
}

std::shared_ptr<nn::Module> at(const std::string& name, int64_t width) {
  return models::create_model_at_width(name, width, {.num_classes = 10, .in_chans = 1});
}

void check_zoo_roles(const std::string& name, const Table& table) {
  auto base = at(name, 8), delta = at(name, 16), model = at(name, 32);
  check_roles(*model, param::Preset::mup(*base, *delta), table);
  // The base model itself gets the same roles (the delta tells which dims grow).
  check_roles(*base, param::Preset::mup(*base, *delta), table);
}

}  // namespace

TEST_CASE("param roles: ConvNeXt", "[param][roles][models]") {
  check_zoo_roles("convnext_atto", {
      {"stem.0.weight", Role::InputWeight},                    // [C, in, 4, 4] patchify
      {"stages.*.blocks.*.conv_dw.weight", Role::InputWeight},  // depthwise [C, 1, 7, 7]
      {"stages.*.downsample.1.weight", Role::HiddenWeight},     // [2C, C, 2, 2]
      {"stages.*.blocks.*.mlp.fc*.weight", Role::HiddenWeight}, // pointwise (Linear on NHWC)
      {"head.fc.weight", Role::OutputWeight},
      {"*.gamma", Role::NormGain},                              // layer scale
      {"*.bias", Role::Bias},
      {"*.weight", Role::NormGain},                             // LayerNorm / LayerNorm2d gains
  });
}

TEST_CASE("param roles: InceptionNeXt", "[param][roles][models]") {
  check_zoo_roles("inception_next_atto", {
      {"stem.0.weight", Role::InputWeight},
      {"stages.*.blocks.*.token_mixer.dwconv_*.weight", Role::InputWeight},  // depthwise k x k, 1 x k, k x 1
      {"stages.*.downsample.1.weight", Role::HiddenWeight},
      {"stages.*.blocks.*.mlp.fc*.weight", Role::HiddenWeight},             // 1x1 convs
      {"head.fc1.weight", Role::HiddenWeight},                              // MLP head hidden layer
      {"head.fc2.weight", Role::OutputWeight},
      {"*.gamma", Role::NormGain},
      {"*.bias", Role::Bias},
      {"*.weight", Role::NormGain},                                         // BatchNorm / LayerNorm gains
  });
}

TEST_CASE("param roles: p4cnn (5-D group-conv filter banks)", "[param][roles][models][equivariant]") {
  check_zoo_roles("p4cnn", {
      {"blocks.0.conv.weight", Role::InputWeight},   // lifting [C, in, k, k]
      {"blocks.*.conv.weight", Role::HiddenWeight},  // group conv [C, C, |G|, k, k]
      {"head.weight", Role::OutputWeight},
      {"*.bias", Role::Bias},
      {"*.bn.weight", Role::NormGain},
  });
}

TEST_CASE("param roles: long convolutions and SGConv kernels", "[param][roles][models][longconv]") {
  const Table common = {
      {"encoder.weight", Role::InputWeight},
      {"layers.*.layer.D", Role::InputWeight},                       // per-channel [1, H] skip
      {"layers.*.layer.kernel.kernel", Role::InputWeight},           // per-channel [1, H, L]
      {"layers.*.layer.kernel.kernel_list.*", Role::InputWeight},    // SGConv [1, H, d] pieces
      {"layers.*.layer.output_linear.0.weight", Role::HiddenWeight}, // [2H, H] (GLU)
      {"decoder.weight", Role::OutputWeight},
      {"*.bias", Role::Bias},
      {"*.weight", Role::NormGain},
  };
  Table longconv = common, sgconv = common;
  longconv.erase(longconv.begin() + 3);
  sgconv.erase(sgconv.begin() + 2);
  check_zoo_roles("longconv_small", longconv);
  check_zoo_roles("sgconv_small", sgconv);
}

TEST_CASE("param roles: RepLKNet before and after reparameterize", "[param][roles][models][reparam]") {
  const Table branches = {
      {"stem.0.conv.weight", Role::InputWeight},                                  // [C, in, 3, 3]
      {"stem.1.conv.weight", Role::InputWeight},                                  // depthwise 3x3
      {"stem.3.conv.weight", Role::InputWeight},                                  // depthwise 3x3 stride 2
      {"stem.2.conv.weight", Role::HiddenWeight},                                 // 1x1
      {"stages.*.blocks.*.large_kernel.lkb_origin.conv.weight", Role::InputWeight},  // depthwise 31x31
      {"stages.*.blocks.*.large_kernel.small_conv.conv.weight", Role::InputWeight},  // depthwise 5x5
      {"stages.*.blocks.*.pw*.conv.weight", Role::HiddenWeight},                  // 1x1
      {"transitions.*.0.conv.weight", Role::HiddenWeight},                        // 1x1, C -> 2C
      {"transitions.*.1.conv.weight", Role::InputWeight},                         // depthwise 3x3 stride 2
      {"head.weight", Role::OutputWeight},
      {"*.bias", Role::Bias},
      {"*.weight", Role::NormGain},                                               // BatchNorm gains
  };
  check_zoo_roles("replknet_31b", branches);

  // After fusion the block holds one depthwise conv with bias, lkb_reparam: it is input-like
  // (vector-like) as its branches were. Base and delta models are fused too (same names).
  auto base = at("replknet_31b", 8), delta = at("replknet_31b", 16), model = at("replknet_31b", 32);
  for (auto* m : {base.get(), delta.get(), model.get()}) {
    m->eval();
    models::reparameterize(*m);
  }
  check_roles(*model, param::Preset::mup(*base, *delta), {
      {"stem.0.conv.weight", Role::InputWeight},
      {"stem.1.conv.weight", Role::InputWeight},
      {"stem.3.conv.weight", Role::InputWeight},
      {"stem.2.conv.weight", Role::HiddenWeight},
      {"stages.*.blocks.*.large_kernel.lkb_reparam.weight", Role::InputWeight},  // fused 31x31
      {"stages.*.blocks.*.large_kernel.lkb_reparam.bias", Role::Bias},
      {"stages.*.blocks.*.pw*.conv.weight", Role::HiddenWeight},
      {"transitions.*.0.conv.weight", Role::HiddenWeight},
      {"transitions.*.1.conv.weight", Role::InputWeight},
      {"head.weight", Role::OutputWeight},
      {"*.bias", Role::Bias},
      {"*.weight", Role::NormGain},
  });
}

TEST_CASE("param roles: LieConv (channels grow, the kernel MLP does not)", "[param][roles][models][lieconv]") {
  auto net = [](int64_t c) {
    return std::make_shared<models::LieConvNet>(models::LieConvNetOptions{.channels = c, .num_layers = 3});
  };
  auto base = net(8), delta = net(16), model = net(32);
  check_roles(*model, param::Preset::mup(*base, *delta), {
      {"blocks.*.conv.weightnet.*.weight", Role::FiniteWeight},  // Linear(D, m), (m, m): m fixed
      {"blocks.0.conv.linear.weight", Role::InputWeight},        // [C, m * in_chans]
      {"blocks.*.conv.linear.weight", Role::HiddenWeight},       // [C, m * C]
      {"head.weight", Role::OutputWeight},
      {"*.bias", Role::Bias},
      {"*.norm.weight", Role::NormGain},
  });
}

TEST_CASE("param roles: undecidable parameters are an error naming them", "[param][roles][errors]") {
  // A user module whose kernel-tap dim grows with width: neither [out, in, k...] nor declared.
  struct Odd : nn::Module {
    explicit Odd(int64_t w) { k = register_parameter("k", kern::zeros({4, 3, w})); }
    kern::Tensor forward(const kern::Tensor& x) override { return x; }
    nn::Param k;
  };
  Odd base(8), delta(16), model(32);
  CHECK_THROWS_WITH(param::compute_records(model, param::Preset::mup(base, delta)),
                    Catch::Contains("cannot decide the role of 'k'") &&
                        Catch::Contains("dim 2 grows with width") && Catch::Contains("Preset::role"));
  // An override decides it.
  const auto recs = param::compute_records(model, param::Preset::mup(base, delta).role("k", Role::HiddenWeight));
  CHECK(recs[0].second.role == Role::HiddenWeight);

  // The registration-order fallback (width ratio) refuses a depthwise conv.
  nn::Sequential convs(nn::Conv2d(nn::Conv2dOptions(1, 8, 3)), nn::Conv2d(nn::Conv2dOptions(8, 8, 3).groups(8)),
                       nn::Flatten(), nn::Linear(8, 10));
  CHECK_THROWS_WITH(param::compute_records(convs, param::Preset::mup(8, 4)),
                    Catch::Contains("cannot decide the role of '1.weight'") &&
                        Catch::Contains("Preset::mup(base_model)"));
}
