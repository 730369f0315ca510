// Empirical NTK (tools/ntk*.cpp): the three methods against PyTorch's fixture kernel, the
// dense-layer closed form, structured vs contraction on CNNs (both structured forms, groups,
// strides, dilation, 'same' padding, repeated calls, norm gains by their grad-sample rules, tied weights),
// traced / diagonal / cross kernels, the matrix-free operator, kernel metrics on hand-made
// kernels, and the rejection of batch-dependent modules.
#include <kern/io/safetensors.hpp>
#include <kern/kern.hpp>
#include <kern/param/param.hpp>
#include <kern/tools/ntk.hpp>

#include <catch2/catch.hpp>

#include "backend_paths.hpp"

#include <algorithm>
#include <cmath>

using namespace kern;
using namespace kern::tools;
namespace nn = kern::nn;

namespace {

const std::vector<NtkMethod> kMethods = {NtkMethod::Contraction, NtkMethod::Vector, NtkMethod::Structured};

std::string method_name(NtkMethod m) {
  switch (m) {
    case NtkMethod::Contraction: return "contraction";
    case NtkMethod::Vector: return "vector";
    case NtkMethod::Structured: return "structured";
    default: return "auto";
  }
}

// The fixture's MLP Linear(6,16) Tanh Linear(16,16) Tanh Linear(16,3), float64, with
// PyTorch's weights (param.{0,2,4}.{weight,bias} -> state_dict keys {0,2,4}.{weight,bias}).
struct FixtureMlp {
  io::SafetensorsFile file = io::load_safetensors(KERN_TEST_DATA_DIR "/mlp_tanh.safetensors");
  std::shared_ptr<nn::Sequential> model;
  FixtureMlp() {
    model = std::make_shared<nn::Sequential>(nn::Linear(6, 16), nn::Tanh(), nn::Linear(16, 16), nn::Tanh(),
                                             nn::Linear(16, 3));
    model->to(DType::Float64);
    nn::StateDict sd;
    for (auto& [k, t] : file.tensors)
      if (k.rfind("param.", 0) == 0) sd.emplace_back(k.substr(6), t);
    model->load_state_dict(sd);
  }
};

bool contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

// A small float64 CNN touching every conv feature the structured path handles.
std::shared_ptr<nn::Sequential> small_cnn() {
  manual_seed(7);
  auto m = std::make_shared<nn::Sequential>(
      nn::Conv2d(nn::Conv2dOptions(2, 4, 3).padding(1)), nn::ReLU(),
      nn::Conv2d(nn::Conv2dOptions(4, 6, 3).stride(2).padding(1)), nn::Tanh(),
      nn::Conv2d(nn::Conv2dOptions(6, 6, 3).padding(2).dilation(2).groups(3)), nn::Tanh(),
      nn::Conv2d(nn::Conv2dOptions(6, 4, {2, 3}).padding(nn::kSame).bias(false)), nn::Tanh(),
      nn::AdaptiveAvgPool2d(1), nn::Flatten(), nn::Linear(4, 3));
  m->to(DType::Float64);
  return m;
}

// Module that calls the same Linear twice and has a LayerNorm (gain/bias: its grad-sample rule).
struct Twice : nn::Module {
  Twice() {
    fc = register_module("fc", std::make_shared<nn::Linear>(5, 5));
    norm = register_module("norm", std::make_shared<nn::LayerNorm>(5));
    out = register_module("out", std::make_shared<nn::Linear>(5, 2));
  }
  Tensor forward(const Tensor& x) override {
    Tensor h = tanh((*fc)(x));
    h = tanh((*fc)(h));
    return (*out)((*norm)(h));
  }
  std::shared_ptr<nn::Linear> fc, out;
  std::shared_ptr<nn::LayerNorm> norm;
};

// Readout tied to the first layer's weight (used twice, once outside its module).
struct Tied : nn::Module {
  Tied() {
    fc = register_module("fc", std::make_shared<nn::Linear>(4, 4));
    mid = register_module("mid", std::make_shared<nn::Linear>(4, 4));
  }
  Tensor forward(const Tensor& x) override { return matmul(tanh((*mid)(tanh((*fc)(x)))), fc->weight.tensor()); }
  std::shared_ptr<nn::Linear> fc, mid;
};

Tensor kron_eye(const Tensor& g, int64_t O) {  // [N1, N2] -> [N1*O, N2*O], g (x) I_O
  const int64_t N1 = g.size(0), N2 = g.size(1);
  return (g.view({N1, 1, N2, 1}) * eye(O, g.dtype()).view({1, O, 1, O})).reshape({N1 * O, N2 * O});
}

}  // namespace

TEST_CASE("NTK: all three methods equal PyTorch's kernel on the tanh MLP fixture", "[ntk]") {
  FixtureMlp f;
  Tensor x = f.file.get("x").narrow(0, 0, 4);
  Tensor expected = f.file.get("ntk").reshape({12, 12});
  for (NtkMethod m : kMethods) {
    INFO(method_name(m));
    NtkInfo info;
    Tensor K = ntk(*f.model, x, NtkOptions().method(m), &info);
    REQUIRE(K.shape() == Shape({12, 12}));
    REQUIRE(max_abs_diff(K, expected) < 1e-10);
    REQUIRE(info.num_outputs == 3);
    REQUIRE(info.num_params == 435);
    if (m == NtkMethod::Structured) {
      REQUIRE(info.structured.size() == 6);  // every parameter in closed form
      REQUIRE(info.fallback.empty());
    }
  }
  // Auto is the structured method.
  NtkInfo info;
  REQUIRE(max_abs_diff(ntk(*f.model, x, {}, &info), expected) < 1e-10);
  REQUIRE(info.method == NtkMethod::Structured);
}

TEST_CASE("NTK: traced, diagonal and cross kernels agree across methods", "[ntk]") {
  FixtureMlp f;
  Tensor x1 = f.file.get("x").narrow(0, 0, 4), x2 = f.file.get("x").narrow(0, 4, 4);
  Tensor full = f.file.get("ntk").reshape({12, 12});
  Tensor k4 = full.view({4, 3, 4, 3});
  Tensor tr_sum = k4.select(3, 0).select(1, 0) + k4.select(3, 1).select(1, 1) + k4.select(3, 2).select(1, 2);
  std::vector<double> dv;
  for (int64_t i = 0; i < 12; ++i) dv.push_back(full.to_vector<double>()[i * 12 + i]);
  Tensor diag = from_vector(dv, {4, 3});
  Tensor cross_ref = ntk(*f.model, x1, x2, NtkOptions().method(NtkMethod::Contraction));
  REQUIRE(cross_ref.shape() == Shape({12, 12}));
  // K(x1, x2) must also equal the off-diagonal block of K([x1; x2]).
  Tensor both = ntk(*f.model, cat({x1, x2}, 0), NtkOptions().method(NtkMethod::Contraction));
  REQUIRE(max_abs_diff(both.narrow(0, 0, 12).narrow(1, 12, 12), cross_ref) < 1e-12);
  for (NtkMethod m : kMethods) {
    INFO(method_name(m));
    REQUIRE(max_abs_diff(ntk_traced(*f.model, x1, NtkOptions().method(m)), tr_sum / 3.0) < 1e-10);  // mean
    REQUIRE(max_abs_diff(ntk_traced(*f.model, x1, NtkOptions().method(m).trace(NtkTrace::Sum)), tr_sum) < 1e-10);
    REQUIRE(max_abs_diff(ntk_diagonal(*f.model, x1, NtkOptions().method(m)), diag) < 1e-10);
    REQUIRE(max_abs_diff(ntk(*f.model, x1, x2, NtkOptions().method(m)), cross_ref) < 1e-10);
    Tensor tr_cross = ntk_traced(*f.model, x1, x2, NtkOptions().method(m).trace(NtkTrace::Sum));
    REQUIRE(max_abs_diff(tr_cross, ntk_traced(*f.model, x1, x2, NtkOptions().method(NtkMethod::Contraction)
                                                                   .trace(NtkTrace::Sum))) < 1e-10);
  }
}

TEST_CASE("NTK: the matrix-free operator gives K v without the kernel", "[ntk]") {
  FixtureMlp f;
  Tensor x = f.file.get("x").narrow(0, 0, 4);
  Tensor K = f.file.get("ntk").reshape({12, 12});
  NtkOperator op(*f.model, x);
  REQUIRE(op.rows() == 12);
  REQUIRE(op.cols() == 12);
  Generator gen(3);
  for (int k = 0; k < 3; ++k) {
    Tensor v = randn({12}, DType::Float64, &gen);
    REQUIRE(max_abs_diff(op.matvec(v), matmul(K, v)) < 1e-10);
    Tensor v2 = v.reshape({4, 3});
    REQUIRE(op.matvec(v2).shape() == Shape({4, 3}));
  }
  REQUIRE(max_abs_diff(op.dense(), K) < 1e-10);
  REQUIRE_THROWS_AS(op.matvec(zeros({5}, DType::Float64)), Error);
  // Parameter subset: the last layer alone is (h h^T + 1) (x) I with h the last hidden layer.
  auto last = std::dynamic_pointer_cast<nn::Linear>((*f.model)[4]);
  Tensor h = tanh((*(*f.model)[2])(tanh((*(*f.model)[0])(x)))).detach();
  Tensor expected = kron_eye(matmul(h, h.t()) + 1.0, 3);
  for (NtkMethod m : kMethods)
    REQUIRE(max_abs_diff(ntk(*f.model, x, NtkOptions().method(m).params({last->weight.tensor(), last->bias.tensor()})), expected) <
            1e-12);
  NtkOperator sub(*f.model, x, {last->weight.tensor(), last->bias.tensor()});
  REQUIRE(max_abs_diff(sub.dense(), expected) < 1e-12);
}

TEST_CASE("NTK: a dense layer's structured kernel equals its closed form (x x^T + 1) (x) I", "[ntk]") {
  manual_seed(11);
  Generator gen(12);
  Tensor x = randn({7, 5}, DType::Float64, &gen);
  for (bool bias : {true, false}) {
    INFO("bias " << bias);
    nn::Linear fc(nn::LinearOptions(5, 3).bias(bias));
    fc.to(DType::Float64);
    Tensor gram = matmul(x, x.t()) + (bias ? 1.0 : 0.0);
    Tensor expected = kron_eye(gram, 3);
    for (NtkMethod m : kMethods) {
      INFO(method_name(m));
      NtkInfo info;
      REQUIRE(max_abs_diff(ntk(fc, x, NtkOptions().method(m), &info), expected) < 1e-12);
      REQUIRE(max_abs_diff(ntk_traced(fc, x, NtkOptions().method(m)), gram) < 1e-12);  // mean of O equal blocks
    }
  }
  // Bias alone: 1 (x) I. Weight alone: x x^T (x) I.
  nn::Linear fc(5, 3);
  fc.to(DType::Float64);
  NtkInfo info;
  REQUIRE(max_abs_diff(ntk(fc, x, NtkOptions().params({fc.bias.tensor()}), &info), kron_eye(ones({7, 7}, DType::Float64), 3)) <
          1e-12);
  REQUIRE(info.structured == std::vector<std::string>{"bias"});
  REQUIRE(max_abs_diff(ntk(fc, x, NtkOptions().params({fc.weight.tensor()})), kron_eye(matmul(x, x.t()), 3)) < 1e-12);
  // On a sequence [N, L, in] the layer sees L positions per sample: sum over them.
  Tensor xs = randn({3, 4, 5}, DType::Float64, &gen);
  nn::Linear seq(5, 2);
  seq.to(DType::Float64);
  Tensor ref = ntk(seq, xs, NtkOptions().method(NtkMethod::Contraction));
  REQUIRE(ref.shape() == Shape({24, 24}));
  for (auto form : {NtkStructuredForm::PerSample, NtkStructuredForm::Pairwise})
    REQUIRE(max_abs_diff(ntk(seq, xs, NtkOptions().structured_form(form)), ref) < 1e-12);
}

TEST_CASE("NTK: structured equals contraction on a small CNN (both forms, all kernels)", "[ntk]") {
  auto model = small_cnn();
  Generator gen(21);
  Tensor x = randn({5, 2, 7, 6}, DType::Float64, &gen);
  Tensor x2 = randn({3, 2, 7, 6}, DType::Float64, &gen);
  const auto contraction = NtkOptions().method(NtkMethod::Contraction);
  Tensor ref = ntk(*model, x, contraction);
  REQUIRE(ref.shape() == Shape({15, 15}));
  Tensor ref_cross = ntk(*model, x, x2, contraction);
  Tensor ref_tr = ntk_traced(*model, x, contraction);
  Tensor ref_diag = ntk_diagonal(*model, x, contraction);
  for (auto form : {NtkStructuredForm::Auto, NtkStructuredForm::PerSample, NtkStructuredForm::Pairwise}) {
    INFO("form " << static_cast<int>(form));
    auto opt = NtkOptions().method(NtkMethod::Structured).structured_form(form);
    NtkInfo info;
    REQUIRE(max_abs_diff(ntk(*model, x, opt, &info), ref) < 1e-10);
    REQUIRE(info.fallback.empty());
    REQUIRE(info.structured.size() == model->parameters().size());
    REQUIRE(max_abs_diff(ntk(*model, x, x2, opt), ref_cross) < 1e-10);
    REQUIRE(max_abs_diff(ntk_traced(*model, x, opt), ref_tr) < 1e-10);
    REQUIRE(max_abs_diff(ntk_diagonal(*model, x, opt), ref_diag) < 1e-10);
  }
  REQUIRE(max_abs_diff(ntk(*model, x, NtkOptions().method(NtkMethod::Vector)), ref) < 1e-10);
}

TEST_CASE("NTK: structured paths (low memory, many outputs, float32) agree with contraction", "[ntk]") {
  Generator gen(23);
  SECTION("low_memory builds per-sample gradients during the backward passes") {
    auto model = small_cnn();
    Tensor x = randn({4, 2, 7, 6}, DType::Float64, &gen);
    Tensor ref = ntk(*model, x, NtkOptions().method(NtkMethod::Contraction));
    for (auto form : {NtkStructuredForm::Auto, NtkStructuredForm::PerSample})
      REQUIRE(max_abs_diff(ntk(*model, x, NtkOptions().low_memory(true).structured_form(form)), ref) < 1e-10);
    REQUIRE(max_abs_diff(ntk_diagonal(*model, x, NtkOptions().low_memory(true)),
                         ntk_diagonal(*model, x, NtkOptions().method(NtkMethod::Contraction))) < 1e-10);
  }
  SECTION("more than 16 outputs (generic pairwise block product)") {
    manual_seed(24);
    auto model = std::make_shared<nn::Sequential>(nn::Conv2d(nn::Conv2dOptions(2, 3, 3).stride(2)), nn::Tanh(),
                                                  nn::Flatten(), nn::Linear(18, 17));
    model->to(DType::Float64);
    Tensor x = randn({3, 2, 5, 7}, DType::Float64, &gen);
    Tensor ref = ntk(*model, x, NtkOptions().method(NtkMethod::Contraction));
    REQUIRE(ref.shape() == Shape({51, 51}));
    for (auto form : {NtkStructuredForm::PerSample, NtkStructuredForm::Pairwise})
      REQUIRE(max_abs_diff(ntk(*model, x, NtkOptions().structured_form(form)), ref) < 1e-10);
  }
  SECTION("float32 on the fast backend equals the float64 kernel to float precision") {
    auto model = small_cnn();  // float64 weights
    Tensor x = randn({6, 2, 7, 6}, DType::Float64, &gen);
    Tensor ref = ntk(*model, x, NtkOptions().method(NtkMethod::Contraction));
    model->to(DType::Float32);
    for (auto form : {NtkStructuredForm::PerSample, NtkStructuredForm::Pairwise}) {
      Tensor K = ntk(*model, x.to(DType::Float32), NtkOptions().structured_form(form));
      REQUIRE(K.dtype() == DType::Float32);
      REQUIRE(max_abs_diff(K.to(DType::Float64), ref) < 1e-5 * max(abs(ref)).item());
    }
    // Large enough for the per-sample products to run as kern::bmm (oneDNN) batches.
    manual_seed(25);
    auto wide = std::make_shared<nn::Sequential>(nn::Conv2d(nn::Conv2dOptions(8, 32, 3).padding(1)), nn::ReLU(),
                                                 nn::AdaptiveAvgPool2d(1), nn::Flatten(), nn::Linear(32, 10));
    wide->to(DType::Float64);
    Tensor xw = randn({3, 8, 16, 16}, DType::Float64, &gen);
    Tensor refw = ntk(*wide, xw, NtkOptions().method(NtkMethod::Contraction));
    wide->to(DType::Float32);
    Tensor Kw = ntk(*wide, xw.to(DType::Float32));
    REQUIRE(max_abs_diff(Kw.to(DType::Float64), refw) < 1e-5 * max(abs(refw)).item());
  }
}

TEST_CASE("NTK: float32 sgemm paths on a ReLU CNN (stride 2, groups) equal the float64 kernel", "[ntk][backend]") {
  // Shapes like the ntk_cnn workload, scaled down, so that every float32 product runs as
  // oneDNN sgemm (per-sample gradients, blocked Gram straight into K, pairwise U = Q D) and
  // the ReLU zeros exercise the pairwise form's packed rows; also on the reference backend
  // (the same code with Eigen products), and for the cross kernel (unsymmetric Gram).
  manual_seed(71);
  auto model = std::make_shared<nn::Sequential>(
      nn::Conv2d(nn::Conv2dOptions(3, 8, 3).padding(1)), nn::ReLU(),
      nn::Conv2d(nn::Conv2dOptions(8, 16, 3).stride(2).padding(1)), nn::ReLU(),
      nn::Conv2d(nn::Conv2dOptions(16, 16, 3).stride(2).padding(1).groups(2)), nn::ReLU(),
      nn::AdaptiveAvgPool2d(1), nn::Flatten(), nn::Linear(16, 10));
  model->to(DType::Float64);
  Generator gen(72);
  Tensor x = randn({9, 3, 12, 12}, DType::Float64, &gen);
  Tensor x2 = randn({4, 3, 12, 12}, DType::Float64, &gen);
  const auto contraction = NtkOptions().method(NtkMethod::Contraction);
  Tensor ref = ntk(*model, x, contraction);
  Tensor ref_cross = ntk(*model, x, x2, contraction);
  REQUIRE(ref.shape() == Shape({90, 90}));
  for (auto form : {NtkStructuredForm::Auto, NtkStructuredForm::PerSample, NtkStructuredForm::Pairwise}) {
    INFO("form " << static_cast<int>(form));
    REQUIRE(max_abs_diff(ntk(*model, x, NtkOptions().structured_form(form)), ref) < 1e-10);
  }
  model->to(DType::Float32);
  Tensor xf = x.to(DType::Float32), x2f = x2.to(DType::Float32);
  const double scale = max(abs(ref)).item(), scale_cross = max(abs(ref_cross)).item();
  for (auto backend : {Backend::Fast, Backend::Reference}) {
    BackendGuard guard(backend);
    for (auto form : {NtkStructuredForm::Auto, NtkStructuredForm::PerSample, NtkStructuredForm::Pairwise}) {
      INFO("backend " << static_cast<int>(backend) << " form " << static_cast<int>(form));
      const auto opt = NtkOptions().structured_form(form);
      NtkInfo info;
      Tensor K;
      const auto paths = testing::paths_of([&] { K = ntk(*model, xf, opt, &info); });
      INFO("paths: " << testing::describe(paths));
      // sgemm ran on the fast backend; the reference backend ran Eigen products only.
      if (backend == Backend::Fast) REQUIRE(paths(testing::Primitive::Gemm, testing::Path::Fast) > 0);
      else REQUIRE((paths.total(testing::Path::Fast) == 0 && paths(testing::Primitive::Gemm, testing::Path::Reference) > 0));
      REQUIRE(info.fallback.empty());
      REQUIRE(max_abs_diff(K.to(DType::Float64), ref) < 1e-5 * scale);
      REQUIRE(max_abs_diff(K, K.t()) < 1e-6 * scale);
      REQUIRE(max_abs_diff(ntk(*model, xf, x2f, opt).to(DType::Float64), ref_cross) < 1e-5 * scale_cross);
    }
  }
}

TEST_CASE("NTK: one output, one sample, phases", "[ntk]") {
  manual_seed(61);
  auto model = std::make_shared<nn::Sequential>(nn::Linear(4, 6), nn::Tanh(), nn::Linear(6, 1));
  model->to(DType::Float64);
  Generator gen(62);
  Tensor x = randn({5, 4}, DType::Float64, &gen);
  Tensor ref = ntk(*model, x, NtkOptions().method(NtkMethod::Contraction));
  REQUIRE(ref.shape() == Shape({5, 5}));
  NtkInfo info;
  REQUIRE(max_abs_diff(ntk(*model, x, {}, &info), ref) < 1e-12);
  REQUIRE(info.num_outputs == 1);
  REQUIRE(info.phases.size() >= 4);
  REQUIRE(info.phases.front().first == "forward");
  REQUIRE(max_abs_diff(ntk_traced(*model, x), ref) < 1e-12);  // one output: traced == full
  Tensor x1 = x.narrow(0, 2, 1);
  REQUIRE(max_abs_diff(ntk(*model, x1), ref.narrow(0, 2, 1).narrow(1, 2, 1)) < 1e-12);
  REQUIRE(max_abs_diff(ntk(*model, x1, NtkOptions().method(NtkMethod::Vector)), ref.narrow(0, 2, 1).narrow(1, 2, 1)) <
          1e-12);
}

TEST_CASE("NTK: parameterization multipliers (NTK, muP) stay in closed form", "[ntk]") {
  Generator gen(51);
  for (int which = 0; which < 2; ++which) {
    INFO((which == 0 ? "ntk" : "mup"));
    manual_seed(52);
    auto model = std::make_shared<nn::Sequential>(nn::Conv2d(nn::Conv2dOptions(2, 4, 3).padding(1)), nn::Tanh(),
                                                  nn::AdaptiveAvgPool2d(1), nn::Flatten(), nn::Linear(4, 8),
                                                  nn::Tanh(), nn::Linear(8, 3));
    param::apply(*model, which == 0 ? param::Preset::ntk() : param::Preset::mup(8, 2));
    model->to(DType::Float64);
    Tensor x = randn({4, 2, 5, 5}, DType::Float64, &gen);
    Tensor ref = ntk(*model, x, NtkOptions().method(NtkMethod::Contraction));
    NtkInfo info;
    REQUIRE(max_abs_diff(ntk(*model, x, {}, &info), ref) < 1e-10);
    REQUIRE(info.fallback.empty());  // the multipliers are part of the closed form
    REQUIRE(max_abs_diff(ntk(*model, x, NtkOptions().method(NtkMethod::Vector)), ref) < 1e-10);
  }
}

TEST_CASE("NTK: repeated calls, norm gains and tied weights stay exact", "[ntk]") {
  Generator gen(31);
  manual_seed(32);
  SECTION("a Linear called twice and a LayerNorm") {
    Twice m;
    m.to(DType::Float64);
    Tensor x = randn({4, 5}, DType::Float64, &gen);
    Tensor ref = ntk(m, x, NtkOptions().method(NtkMethod::Contraction));
    NtkInfo info;
    REQUIRE(max_abs_diff(ntk(m, x, NtkOptions().method(NtkMethod::Structured), &info), ref) < 1e-10);
    REQUIRE(contains(info.structured, "fc.weight"));  // both calls are positions of one layer
    REQUIRE(contains(info.structured, "norm.weight"));  // LayerNorm's grad-sample rule
    REQUIRE(contains(info.structured, "norm.bias"));
    REQUIRE(info.fallback.empty());
    REQUIRE(max_abs_diff(ntk(m, x, NtkOptions().method(NtkMethod::Vector)), ref) < 1e-10);
  }
  SECTION("a weight also used outside its module is caught by the structure check") {
    Tied m;
    m.to(DType::Float64);
    Tensor x = randn({3, 4}, DType::Float64, &gen);
    Tensor ref = ntk(m, x, NtkOptions().method(NtkMethod::Contraction));
    NtkInfo info;
    REQUIRE(max_abs_diff(ntk(m, x, {}, &info), ref) < 1e-10);
    REQUIRE(contains(info.fallback, "fc.weight"));
    REQUIRE(contains(info.structured, "mid.weight"));
    REQUIRE(!info.notes.empty());
  }
}

TEST_CASE("NTK: batch-dependent modules are rejected with a clear error", "[ntk][errors]") {
  manual_seed(41);
  auto model = std::make_shared<nn::Sequential>(nn::Conv2d(nn::Conv2dOptions(2, 3, 3).padding(1)),
                                                nn::BatchNorm2d(3), nn::ReLU(), nn::AdaptiveAvgPool2d(1),
                                                nn::Flatten(), nn::Linear(3, 2));
  model->to(DType::Float64);
  Generator gen(42);
  Tensor x = randn({4, 2, 5, 5}, DType::Float64, &gen);
  for (NtkMethod m : kMethods) {
    INFO(method_name(m));
    REQUIRE_THROWS_WITH(ntk(*model, x, NtkOptions().method(m)),
                        Catch::Contains("BatchNorm2d") && Catch::Contains("eval()") && Catch::Contains("'1'"));
  }
  REQUIRE_THROWS_WITH(NtkOperator(*model, x), Catch::Contains("eval()"));
  // In eval mode BatchNorm uses its running statistics: allowed, gains by its rule, exact.
  model->eval();
  Tensor ref = ntk(*model, x, NtkOptions().method(NtkMethod::Contraction));
  NtkInfo info;
  REQUIRE(max_abs_diff(ntk(*model, x, {}, &info), ref) < 1e-10);
  REQUIRE(contains(info.structured, "1.weight"));
  REQUIRE(contains(info.structured, "0.weight"));
  // Dropout in training mode makes f random.
  auto drop = std::make_shared<nn::Sequential>(nn::Linear(3, 3), nn::Dropout(0.5), nn::Linear(3, 1));
  drop->to(DType::Float64);
  REQUIRE_THROWS_WITH(ntk(*drop, randn({2, 3}, DType::Float64, &gen)), Catch::Contains("Dropout"));
}

TEST_CASE("NTK: bad arguments throw kern::Error", "[ntk][errors]") {
  nn::Linear fc(3, 2);
  fc.to(DType::Float64);
  nn::Linear other(3, 2);
  Tensor x = zeros({4, 3}, DType::Float64);
  REQUIRE_THROWS_WITH(ntk(fc, zeros({4, 3})), Catch::Contains("float32") && Catch::Contains("float64"));
  REQUIRE_THROWS_WITH(ntk(fc, x, NtkOptions().params({other.weight.tensor()})), Catch::Contains("not a parameter"));
  REQUIRE_THROWS_WITH(ntk(fc, x, zeros({2, 4}, DType::Float64)), Catch::Contains("differ beyond the batch"));
  REQUIRE_THROWS_AS(ntk(fc, zeros({0, 3}, DType::Float64)), Error);
  REQUIRE_THROWS_WITH(kernel_eigenvalues(zeros({2, 3})), Catch::Contains("square"));
  REQUIRE_THROWS_WITH(kernel_distance(eye(2), eye(3)), Catch::Contains("same shape"));
  REQUIRE_THROWS_WITH(label_gradient_alignment(eye(3), zeros({3})), Catch::Contains("int64"));
}

TEST_CASE("NTK metrics on hand-made kernels", "[ntk]") {
  // K = R diag(1, 2, 3, 4) R^T with a rotation R: known spectrum.
  const double c = std::cos(0.3), s = std::sin(0.3);
  Tensor R = from_vector<double>({c, -s, 0, 0, s, c, 0, 0, 0, 0, c, -s, 0, 0, s, c}, {4, 4});
  Tensor L = from_vector<double>({1, 0, 0, 0, 0, 2, 0, 0, 0, 0, 3, 0, 0, 0, 0, 4}, {4, 4});
  Tensor K = matmul(matmul(R, L), R.t());
  REQUIRE(max_abs_diff(kernel_eigenvalues(K), from_vector<double>({1, 2, 3, 4}, {4})) < 1e-12);
  REQUIRE(kernel_trace(K) == Approx(10.0).epsilon(1e-12));
  REQUIRE(kernel_condition_number(K) == Approx(4.0).epsilon(1e-12));
  REQUIRE(kernel_effective_rank(K) == Approx(100.0 / 30.0).epsilon(1e-12));
  double h = 0;
  for (double l : {1.0, 2.0, 3.0, 4.0}) h -= l / 10 * std::log(l / 10);
  REQUIRE(kernel_effective_rank(K, EffectiveRank::Entropy) == Approx(std::exp(h)).epsilon(1e-12));
  REQUIRE(kernel_effective_rank(eye(5, DType::Float64)) == Approx(5.0));
  REQUIRE(std::isinf(kernel_condition_number(from_vector<double>({1, 1, 1, 1}, {2, 2}))));
  // Relative change and distance.
  REQUIRE(kernel_relative_change(K * 1.1, K) == Approx(0.1).epsilon(1e-12));
  REQUIRE(std::abs(kernel_distance(K * 3.0, K)) < 1e-14);
  REQUIRE(kernel_distance(eye(2, DType::Float64), from_vector<double>({0, 1, 1, 0}, {2, 2})) == Approx(1.0));
  // The ideal kernel Y Y^T is perfectly aligned with its labels.
  Tensor labels = from_vector<int64_t>({0, 1, 0, 2, 1, 2}, {6});
  Tensor Y = one_hot(labels, 3, DType::Float64);
  Tensor ideal = matmul(Y, Y.t());
  REQUIRE(kernel_target_alignment(ideal, labels) == Approx(1.0).epsilon(1e-12));
  REQUIRE(kernel_target_alignment(ideal, Y) == Approx(1.0).epsilon(1e-12));
  REQUIRE(label_gradient_alignment(ideal, labels) == Approx(1.0).epsilon(1e-12));
  REQUIRE(label_gradient_alignment(ideal * -2.0 + 5.0, labels) == Approx(-1.0).epsilon(1e-12));
  // A kernel blind to the labels: constant off the diagonal -> no correlation defined.
  REQUIRE(std::isnan(label_gradient_alignment(ones({6, 6}, DType::Float64), labels)));
  // Centered alignment by hand for a small case: K = diag(1, 2), y = (1, -1).
  // H K H = [[.75, -.75], [-.75, .75]], H y y^T H = [[1, -1], [-1, 1]] -> alignment 1.
  REQUIRE(kernel_target_alignment(from_vector<double>({1, 0, 0, 2}, {2, 2}), from_vector<double>({1, -1}, {2})) ==
          Approx(1.0));
  // Summary.
  KernelSummary sum = summarize_kernel(ideal, labels, ideal * 2.0);
  REQUIRE(sum.target_alignment == Approx(1.0));
  REQUIRE(sum.label_gradient_alignment == Approx(1.0));
  REQUIRE(sum.relative_change == Approx(0.5));
  REQUIRE(std::abs(sum.distance) < 1e-14);
  REQUIRE(sum.eig_max == Approx(2.0));
  REQUIRE(sum.trace == Approx(6.0));
}

TEST_CASE("NTK metrics on a real kernel: label alignment of the fixture MLP", "[ntk]") {
  FixtureMlp f;
  Tensor x = f.file.get("x"), labels = f.file.get("labels");
  Tensor K = ntk_traced(*f.model, x);
  KernelSummary s = summarize_kernel(K, labels);
  REQUIRE(s.eig_min > 0);
  REQUIRE(s.trace == Approx(kernel_trace(K)));
  REQUIRE(s.effective_rank >= 1.0);
  REQUIRE(s.effective_rank <= 8.0);
  REQUIRE(std::abs(s.label_gradient_alignment) <= 1.0);
  REQUIRE(std::abs(s.target_alignment) <= 1.0);
}
