#pragma once
// Parameterizations as data: standard (SP), NTK, muP (Tensor Programs V, in the mup library's
// "Table 8" form and in the Table 3 form) and depth-muP.
//
//   auto model = make_mlp(1024);
//   param::apply(*model, param::Preset::mup(1024, 256).zero_readout());   // re-init + multipliers
//   optim::Adam opt(optim::param_groups(*model, {.family = optim::Family::Adam}), {.lr = 1e-3});
//
// A preset turns every parameter into a ParamRecord (kern/param/record.hpp). In the abc form
// of Tensor Programs IV, W = n^-a w, w ~ N(0, n^-2b), lr = eta n^-c; here n enters through
// fan / base_fan ratios so that every rule is the identity at the base shapes. sigma below is
// the init gain: 1/sqrt(3) for uniform draws (PyTorch's U(-1/sqrt(fan_in), 1/sqrt(fan_in))),
// 1 for normal draws. m_in = fan_in / base_fan_in, m_out = fan_out / base_fan_out.
//
//   Standard (PyTorch defaults): std sigma/sqrt(fan_in) for weights and for biases (the
//     layer's fan_in); multiplier 1; lr multipliers 1.
//   NTK (Jacot et al.; TP4: a = 1/2, b = 0, c = 0): weights w ~ unit variance, multiplier
//     1/sqrt(fan_in) (hidden and output; the input layer's 1/sqrt(d) is a width-independent
//     constant, kept so the init matches SP); biases unit variance times ntk_bias_mult;
//     lr multipliers 1.
//   MuP (the mup library: MuReadout + MuAdam/MuSGD, Table 8 of TP5 with base shapes):
//                    init std                  multiplier             SGD lr         Adam lr
//     input weight   sigma/sqrt(fan_in)        1                      m_out          1
//     hidden weight  sigma/sqrt(fan_in)        1                      m_out / m_in   1 / m_in
//     output weight  sigma/sqrt(base_fan_in)   output_mult / m_in     m_in           1
//     bias           sigma/sqrt(base_fan_in)   1                      m_out          1
//     gain           (kept)                    1                      m_out          1
//   (an input weight is computed with the hidden rules: its fan_in is finite, m_in = 1, as
//   in the mup library, which classifies weights by which of their dims scale.)
//   MuPTable3 (TP5 Table 3 with base shapes; the same functions and updates as MuP):
//     output weight  sigma/sqrt(base_fan_in)/m_in, multiplier output_mult, SGD lr 1/m_in,
//     Adam lr 1/m_in; every other role as in MuP.
//   Depth (depth-muP, TP6 / Bordelon et al.): the layers that end a residual branch get
//     depth_mult = sqrt(base_depth / depth) in the forward pass; with Adam the parameters of
//     the residual blocks get lr * sqrt(base_depth / depth); SGD's lr is unchanged.
//
// Roles come from shapes, as in the mup library: with a base model (Preset::mup(base_model),
// the model built at the base width), a dim "grows with width" when its size differs from
// the base model's (with a delta model, Preset::mup(base, delta): when the base's and the
// delta's differ, so that the base model itself gets the same roles). A parameter's output and input channel dims are [out, in, k...] unless
// its module declared another layout (nn::ParamOptions::layout; record.hpp):
//   >= 2-D: out and in grow -> hidden; only out -> input (vector-like: depthwise convs, stems,
//           embeddings, per-channel filters); only in -> output (the readout); none -> finite
//           (SP rules); a receptive dim (conv taps) that grows -> error: undecidable.
//   1-D:    "bias" -> bias, else gain (norm gains, layer scales); 0-D: scalar.
// Without base shapes (Preset::mup(width, base_width), standard(), ntk()), roles fall back to
// registration order: matrix-like parameters (dim >= 2) in order -> the first is the input
// weight, the last the output weight, the others hidden (a single one is the output weight).
// With a width ratio that order also decides which dims grow, so it is only trusted for the
// weights of plain nn::Linear and groups = 1 nn::Conv2d layers; any other matrix-like
// parameter is an error naming it (give base shapes or override its role). Override by name
// with Preset::role("head.weight", Role::OutputWeight) ('*' matches any run of characters,
// dots included); an override is never second-guessed.
#include <kern/generator.hpp>
#include <kern/nn/module.hpp>
#include <kern/param/record.hpp>

#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace kern::param {

enum class InitDist { Uniform, Normal };

/// Parameter shapes of a base model (muP's base shapes), by dotted name, and optionally of a
/// delta model (the mup library's `delta`: the same model at another width), which tells the
/// dims that grow with width even when the model being parameterized is the base model itself.
struct BaseShapes {
  std::vector<std::pair<std::string, Shape>> shapes;
  std::vector<std::pair<std::string, Shape>> delta;  // empty: compare with the model instead
  const Shape* find(const std::string& name) const;
  const Shape* find_delta(const std::string& name) const;
};
/// The shapes of `base`'s parameters (a narrower copy of the model), and of `delta`'s.
BaseShapes base_shapes(const nn::Module& base);
BaseShapes base_shapes(const nn::Module& base, const nn::Module& delta);

struct DepthOptions {
  int64_t depth = 0;       // number of residual blocks L (0: no depth rule)
  int64_t base_depth = 1;  // L at which the depth rules are the identity
  /// Module-name patterns of the layers whose output ends a residual branch (Linear/Conv2d:
  /// their weight and bias terms are scaled by sqrt(base_depth / depth)).
  std::vector<std::string> branch_outputs;
  /// Parameter-name patterns of the residual blocks' parameters (Adam lr depth rule).
  /// Empty: the parameters of the branch_outputs modules only.
  std::vector<std::string> blocks;
};

struct Preset {
  Scheme scheme = Scheme::Standard;
  /// Base shapes from a width ratio: every width dim (both dims of hidden weights, fan_out of
  /// input weights and biases, fan_in of output weights; not dims of size 1) of the base
  /// model is the model's dim * base_width / width. For other architectures give `base`.
  int64_t width = 0;
  int64_t base_width = 0;
  /// Base shapes from a narrower model (takes precedence over width/base_width).
  std::optional<BaseShapes> base;
  double output_mult = 1.0;    // mup's output_mult (readout multiplier constant)
  double ntk_bias_mult = 1.0;  // NTK: beta, the bias multiplier
  bool readout_zero_init = false;  // output weight and its bias start at 0 (mup's coord checks)
  bool bias_zero_init = false;     // every layer bias starts at 0
  InitDist dist = InitDist::Uniform;
  std::optional<double> init_gain;  // sigma; default 1/sqrt(3) (Uniform) or 1 (Normal)
  DepthOptions depth;
  std::vector<std::pair<std::string, Role>> roles;  // name pattern -> role overrides
  std::vector<std::string> keep_init;               // name patterns apply() does not re-draw

  static Preset standard();
  static Preset ntk();
  /// The mup library's form (Table 8): base shapes from widths or from a base model.
  static Preset mup(int64_t width, int64_t base_width);
  static Preset mup(const nn::Module& base_model);
  /// With a delta model (another width): roles are right at the base width too.
  static Preset mup(const nn::Module& base_model, const nn::Module& delta_model);
  /// TP5 Table 3 form.
  static Preset mup_table3(int64_t width, int64_t base_width);
  static Preset mup_table3(const nn::Module& base_model);
  static Preset mup_table3(const nn::Module& base_model, const nn::Module& delta_model);
  /// Adds depth-muP to any preset (usually muP): L = depth residual blocks.
  static Preset depth_mup(Preset width_preset, int64_t depth, int64_t base_depth,
                          std::vector<std::string> branch_outputs,
                          std::vector<std::string> blocks = {});

  // chained setters
  Preset& zero_readout(bool on = true) { readout_zero_init = on; return *this; }
  Preset& zero_biases(bool on = true) { bias_zero_init = on; return *this; }
  Preset& normal(bool on = true) { dist = on ? InitDist::Normal : InitDist::Uniform; return *this; }
  Preset& gain(double sigma) { init_gain = sigma; return *this; }
  Preset& out_mult(double m) { output_mult = m; return *this; }
  Preset& role(std::string pattern, Role r) { roles.emplace_back(std::move(pattern), r); return *this; }
  Preset& keep(std::string pattern) { keep_init.push_back(std::move(pattern)); return *this; }
};

using Records = std::vector<std::pair<std::string, ParamRecord>>;

/// The records `preset` gives `model`'s parameters (by dotted name, in named_parameters
/// order). Pure: the model is not changed.
Records compute_records(const nn::Module& model, const Preset& preset);
/// Computes the records, re-draws every parameter whose record says so (in named_parameters
/// order, from `gen` or the default generator) and stores the records in the owning modules
/// (replacing earlier ones), so forward multipliers and optimizer groups follow them.
Records apply(nn::Module& model, const Preset& preset, Generator* gen = nullptr);
/// The records stored in `model` by apply() (parameters without one are left out).
Records records(const nn::Module& model);
/// Removes every stored record (the model becomes plain SP-forward again; values are kept).
void clear(nn::Module& model);
/// A table of the records (one line per parameter).
std::string describe(const Records& records);
/// The table of the records stored in `model` (param::records(model)).
std::string describe(const nn::Module& model);

// ---- records saved with the weights (checkpoints store them under the metadata key
// "kern.param"; see kern/io/checkpoint.hpp)

/// The safetensors metadata key that holds a model's records.
inline constexpr const char* kMetadataKey = "kern.param";
/// JSON text of records: {"scheme": ..., "params": {name: {role, fan_in, ..., base_shape}}}.
std::string to_json(const Records& records);
/// Parses to_json's text; `where` (e.g. the file name) prefixes every error, which names the
/// parameter and field.
Records from_json(const std::string& text, const std::string& where = "param::from_json");
/// What differs between the records a file carries and the records a model has, one line per
/// parameter (empty when they agree). Compared: scheme, role, fans, base fans, forward and
/// depth multipliers, lr and weight-decay multipliers (not the init, which loading replaces).
std::vector<std::string> compare(const Records& stored, const Records& model);
/// Stores `records` in the model's slots by name, without re-drawing anything (what loading
/// a checkpoint's records does). Throws for a name the model does not have; the model's
/// parameters not named keep no record.
void set_records(nn::Module& model, const Records& records);
/// True when a record changes nothing a model computes or an optimizer does: forward, depth,
/// learning-rate and weight-decay multipliers all 1 (a parameter without a record behaves
/// the same, e.g. every record of param::apply(model, Preset::standard())).
bool is_neutral(const ParamRecord& record);
/// What differs in behaviour between the records a file carries and a model's: compare()
/// with neutral records treated as absent on both sides (a model saved under SP loads into a
/// fresh model; a muP checkpoint does not). Empty when loading is safe.
std::vector<std::string> compare_behaviour(const Records& stored, const Records& model);

/// '*'-glob match (a '*' matches any run of characters, including dots).
bool glob_match(std::string_view pattern, std::string_view name);

}  // namespace kern::param
