#pragma once
#ifndef KERN_BUILDING_TOOLS  // private to kern_tools: see CMakeLists.txt (layering)
#error "tools/ntk_structured_internal.hpp is private to kern_tools"
#endif
// What the structured NTK's files share (tools/ntk_structured*.cpp; the method is described
// in ntk_structured.cpp): its layers, per-call uses, per-side captures and units, and the
// steps one file calls in another. Not installed.
//   ntk_structured_layers.cpp  which modules are layers, the calls check, the structure check
//   ntk_structured_grads.cpp   forward capture, units and their inputs A, backward passes (D, G)
//   ntk_structured.cpp         the evaluations' choice, the kernel assembly, structured_ntk
#include <string>
#include <vector>

#include <kern/nn/grad_sample.hpp>

#include "ntk_internal.hpp"

namespace kern::tools::detail::structured {

enum class Strategy { Dense, PerSample, Pairwise };

struct Layer {
  std::string name;
  nn::Module* module = nullptr;
  const nn::Linear* linear = nullptr;
  const nn::Conv2d* conv = nullptr;
  const nn::GradSampleRule* rule = nullptr;  // neither Linear nor Conv2d: the module's rule
  std::vector<std::string> rnames;           // rule: own parameter names in theta, in order
  std::vector<Tensor> rparams;               //       and the parameters
  Tensor w, b;  // Linear/Conv2d: the layer's parameters that are in theta (undefined otherwise)
  double mw = 1.0, mb = 1.0;  // forward multipliers of weight and bias
  bool ok = true;
};

struct Use {
  Tensor in, out;
};

struct Side {
  int64_t N = 0;
  Tensor out;                           // [N, O] with its graph
  std::vector<std::vector<Use>> uses;   // per layer, per call
};

// A unit of work: one Linear, or one group of a Conv2d (output channels [c0, c0 + og)).
struct Unit {
  size_t layer = 0;
  int64_t c0 = 0, og = 0;   // output channels
  int64_t ci0 = 0, cg = 0;  // input channels of the group (conv)
  int64_t F = 0, S = 0;     // features per position (incl. ones), positions (all calls)
  bool with_w = false, with_b = false;
  Strategy strategy = Strategy::PerSample;
  bool eager = false;  // PerSample with F < S: keep G (smaller than D), built during backward
  Tensor A[2];  // [N, S, F]
  Tensor D[2];  // Dense/PerSample: [N, O, og, S]; Pairwise: [N, S, og, O]
  Tensor G[2];  // eager: [N, O, og*F], the per-sample gradients
  // Rule units over the budget (not eager): d f_o / d output per o, per call.
  std::vector<std::vector<Tensor>> gout[2];
  std::vector<Use> ruses[2];  // rule units: the calls' inputs and outputs (detached)
  const Layer* rl = nullptr;  // rule units: the layer
  int64_t chunk = 0;          // rule units: features per chunk of G
};

// ---- ntk_structured_layers.cpp

// 1. Layers with a closed form or a rule and a parameter in theta; a parameter shared by two
// such modules is not one layer's (contraction handles it).
std::vector<Layer> find_layers(nn::Module& model, const ParamSet& ps, const NtkOptions& options, NtkInfo& info);
// After the forward passes: a layer whose calls the closed form cannot describe (not called
// through operator(), batch not first, called differently on x1 and x2) falls back.
void check_layer_calls(std::vector<Layer>& layers, const Side* side, bool cross, NtkInfo& info);
// Depthwise convolutions whose G fits the budget go through Conv2d's grad-sample rule.
void batch_depthwise(std::vector<Layer>& layers, int64_t N_total, int64_t O, const NtkOptions& options, DType dt);
// Marks a layer not ok (with a note) when autograd's gradient of sum_o f_o on sample 0
// differs from the layer-local sum_o G_{0,o} (its parameters are used outside it).
void check_structure(nn::Module& model, const Tensor& x, std::vector<Layer>& layers, const std::vector<Unit>& units,
                     int64_t O, NtkInfo& info);

// ---- ntk_structured_grads.cpp

// Forward of x with hooks recording every layer's calls; s.out [N, O] keeps its graph.
void capture(nn::Module& model, const Tensor& x, const std::vector<Layer>& layers, Side& s);
// Positions of one call of a layer, or -1 when its tensors do not have the batch first.
int64_t positions(const Layer& L, const Use& u, int64_t N);
// A rule layer's per-sample gradients for one output: [n, P_layer] (rows [n0, n0 + n)).
Tensor rule_grads(const Layer& L, const std::vector<Use>& uses, const std::vector<Tensor>& gs, int64_t n0,
                  int64_t n);
// 3. Units (a Linear, one group of a Conv2d, or a rule layer), their evaluation and buffers.
std::vector<Unit> make_units(const std::vector<Layer>& layers, const Side* side, bool cross, int64_t O,
                             const NtkOptions& options, DType dt);
// The O backward passes of side k, filling D or G of every unit.
void backprop(Side& s, const std::vector<Layer>& layers, std::vector<Unit>& units, int k, int64_t O);

// ---- ntk_structured.cpp

// The evaluation of a unit's kernel term with the fewest (weighted) multiply-adds.
Strategy choose(NtkStructuredForm form, int64_t N1, int64_t N2, bool cross, int64_t O, int64_t og, int64_t S,
                int64_t F);

}  // namespace kern::tools::detail::structured
