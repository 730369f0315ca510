// Structural re-parameterization: conv+BN fusion, kernel padding / dilation, branch sums, and
// the reparameterizable large-kernel convolutions of RepLKNet and UniRepLKNet.
#include <kern/models/reparam.hpp>

#include <kern/autograd.hpp>
#include <kern/nn/activation.hpp>
#include <kern/ops/elementwise.hpp>
#include <kern/ops/shape_ops.hpp>

#include <algorithm>
#include <string>
#include <utility>

namespace kern::models {

namespace {

using Children = std::vector<std::pair<std::string, std::shared_ptr<nn::Module>>>;

// Drops a registered child by name (modules only expose registration, and a fused block must
// lose its branches so that state_dict() and parameters() show the deploy structure).
void erase_child(Children& children, const std::string& name) {
  std::erase_if(children, [&](const auto& c) { return c.first == name; });
}

// A Conv2d like `options` but with a bias, holding `kernel` (in the kernel's dtype) and in the
// given mode. Conv2d's constructor draws an init from the default generator that is overwritten
// right away; the generator is restored so fusing does not shift the user's random stream.
std::shared_ptr<nn::Conv2d> make_fused_conv(nn::Conv2dOptions options, const ConvKernel& kernel,
                                            bool training) {
  const std::string rng_state = default_generator().state();
  auto conv = std::make_shared<nn::Conv2d>(options.bias(true));
  default_generator().set_state(rng_state);
  conv->to(kernel.weight.dtype());
  {
    NoGradGuard ng;
    Tensor(conv->weight.tensor()).copy_(kernel.weight);
    if (kernel.bias.defined()) Tensor(conv->bias.tensor()).copy_(kernel.bias);
    else Tensor(conv->bias.tensor()).fill_(0.0);
  }
  conv->train(training);
  return conv;
}

// "(5,1) (7,2) ..." for reprs and errors.
std::string branch_list(const std::vector<int64_t>& ks, const std::vector<int64_t>& ds) {
  std::string s;
  for (size_t i = 0; i < ks.size() && i < ds.size(); ++i)
    s += fmt::format("{}({}, {})", i ? " " : "", ks[i], ds[i]);
  return s;
}

// UniRepLKNet's default dilated branches per large kernel size: {kernel sizes, dilations}.
bool default_branches(int64_t k, std::vector<int64_t>& ks, std::vector<int64_t>& ds) {
  switch (k) {
    case 17: ks = {5, 9, 3, 3, 3}; ds = {1, 2, 4, 5, 7}; return true;
    case 15: ks = {5, 7, 3, 3, 3}; ds = {1, 2, 3, 5, 7}; return true;
    case 13: ks = {5, 7, 3, 3, 3}; ds = {1, 2, 3, 4, 5}; return true;
    case 11: ks = {5, 5, 3, 3, 3}; ds = {1, 2, 3, 4, 5}; return true;
    case 9: ks = {5, 5, 3, 3}; ds = {1, 2, 3, 4}; return true;
    case 7: ks = {5, 3, 3}; ds = {1, 2, 3}; return true;
    case 5: ks = {3, 3}; ds = {1, 2}; return true;
    default: return false;
  }
}

// [..., k] -> [..., d*(k-1)+1]: each tap followed by d-1 zeros (the trailing zeros cut off).
Tensor dilate_last_dim(const Tensor& w, int64_t d) {
  if (d == 1) return w;
  const int64_t last = w.dim() - 1, k = w.size(last);
  Tensor spread = pad(w.unsqueeze(w.dim()), {0, d - 1});  // [..., k, d]
  Shape flat = w.shape();
  flat.back() = k * d;
  return spread.reshape(flat).narrow(last, 0, d * (k - 1) + 1);
}

// The module's fused kernel and bias as plain tensors (no graph): what goes into the deploy
// conv. M: ReparamLargeKernelConv or DilatedReparamBlock, both eval-mode checked by the caller.
template <class M>
ConvKernel detached_kernel(const M& module) {
  NoGradGuard ng;
  ConvKernel k = module.equivalent_kernel_bias();
  return {k.weight.detach(), k.bias.detach()};
}

}  // namespace

// ---------------------------------------------------------------- fusion utilities

ConvKernel fuse_conv_bn(const Tensor& weight, const Tensor& bias, const nn::BatchNorm2d& bn) {
  KERN_CHECK(weight.defined() && weight.dim() == 4,
             "fuse_conv_bn: weight must be [C_out, C_in/groups, kH, kW], got ",
             weight.defined() ? fmt::format("{}", weight.shape()) : std::string("undefined"));
  const int64_t c = weight.size(0);
  const auto& o = bn.options();
  KERN_CHECK(o.num_features() == c, "fuse_conv_bn: BatchNorm2d(", o.num_features(),
             ") cannot follow a conv with ", c, " output channels (weight ", weight.shape(), ")");
  KERN_CHECK(!bn.is_training(), "fuse_conv_bn: BatchNorm2d(", c,
             ") is in training mode; call eval() first (in training mode it normalizes with ",
             "batch statistics, which no fixed kernel reproduces; its running statistics are ",
             "what gets fused)");
  KERN_CHECK(o.track_running_stats(), "fuse_conv_bn: BatchNorm2d(", c,
             ") keeps no running statistics (track_running_stats=False), so it has no fixed ",
             "affine map to fuse");
  KERN_CHECK(!bias.defined() || bias.shape() == Shape{c}, "fuse_conv_bn: bias must be [", c,
             "], got ", bias.shape());
  const DType dt = weight.dtype();
  // t = gamma / sqrt(var + eps): [C_out]
  Tensor t = rsqrt(bn.running_var().to(dt) + o.eps());
  if (o.affine()) t = t * bn.weight().to(dt);
  const Tensor mean = bn.running_mean().to(dt);
  Tensor b = (bias.defined() ? bias.to(dt) - mean : -mean) * t;
  if (o.affine()) b = b + bn.bias().to(dt);
  return {weight * t.reshape({c, 1, 1, 1}), b};
}

ConvKernel fuse_conv_bn(const nn::Conv2d& conv, const nn::BatchNorm2d& bn) {
  // The slots' reads include the parameterization multipliers (kern::param records).
  return fuse_conv_bn(conv.weight(), conv.bias(), bn);
}

Tensor pad_kernel_to(const Tensor& kernel, std::array<int64_t, 2> size) {
  KERN_CHECK(kernel.defined() && kernel.dim() == 4, "pad_kernel_to: kernel must be [O, I, kH, kW], got ",
             kernel.defined() ? fmt::format("{}", kernel.shape()) : std::string("undefined"));
  const int64_t dh = size[0] - kernel.size(2), dw = size[1] - kernel.size(3);
  KERN_CHECK(dh >= 0 && dw >= 0 && dh % 2 == 0 && dw % 2 == 0, "pad_kernel_to: cannot center a ",
             kernel.size(2), "x", kernel.size(3), " kernel (", kernel.shape(), ") in ", size[0], "x",
             size[1], ": the size difference must be even and >= 0 in each dim");
  if (dh == 0 && dw == 0) return kernel;
  return pad(kernel, {dw / 2, dw / 2, dh / 2, dh / 2});
}

Tensor dilate_kernel(const Tensor& kernel, std::array<int64_t, 2> dilation) {
  KERN_CHECK(kernel.defined() && kernel.dim() == 4 && kernel.size(2) >= 1 && kernel.size(3) >= 1,
             "dilate_kernel: kernel must be [O, I, kH, kW] with kH, kW >= 1, got ",
             kernel.defined() ? fmt::format("{}", kernel.shape()) : std::string("undefined"));
  KERN_CHECK(dilation[0] >= 1 && dilation[1] >= 1, "dilate_kernel: dilation must be >= 1, got (",
             dilation[0], ", ", dilation[1], ") for kernel ", kernel.shape());
  if (dilation[0] == 1 && dilation[1] == 1) return kernel;
  Tensor w = dilate_last_dim(kernel, dilation[1]);                  // [O, I, kH, KW]
  w = dilate_last_dim(w.transpose(2, 3), dilation[0]).transpose(2, 3);  // [O, I, KH, KW]
  return w.contiguous();
}

ConvKernel sum_branches(const std::vector<ConvKernel>& branches) {
  KERN_CHECK(!branches.empty(), "sum_branches: no branches given");
  int64_t kh = 0, kw = 0;
  const Tensor& first = branches.front().weight;
  for (size_t i = 0; i < branches.size(); ++i) {
    const Tensor& w = branches[i].weight;
    KERN_CHECK(w.defined() && w.dim() == 4 && first.defined() && w.size(0) == first.size(0) &&
                   w.size(1) == first.size(1) && w.dtype() == first.dtype(),
               "sum_branches: branch ", i, " has weight ",
               w.defined() ? fmt::format("{} {}", w.shape(), w.dtype()) : std::string("undefined"),
               "; every branch needs a [O, I, kH, kW] weight with the O, I and dtype of branch 0 (",
               first.defined() ? fmt::format("{} {}", first.shape(), first.dtype()) : std::string("undefined"), ")");
    const Tensor& b = branches[i].bias;
    KERN_CHECK(!b.defined() || b.shape() == Shape{first.size(0)}, "sum_branches: branch ", i,
               " has bias ", b.defined() ? fmt::format("{}", b.shape()) : std::string(""),
               ", expected [", first.size(0), "]");
    kh = std::max(kh, w.size(2));
    kw = std::max(kw, w.size(3));
  }
  ConvKernel out;
  for (const auto& br : branches) {
    Tensor w = pad_kernel_to(br.weight, {kh, kw});
    out.weight = out.weight.defined() ? out.weight + w : w;
    if (br.bias.defined()) out.bias = out.bias.defined() ? out.bias + br.bias : br.bias;
  }
  return out;
}

int64_t reparameterize(nn::Module& module) {
  // Validate the whole tree first so that an error leaves the model untouched.
  std::vector<Reparameterizable*> to_fuse;
  for (const auto& [name, m] : module.named_modules()) {
    auto* r = dynamic_cast<Reparameterizable*>(m.get());
    if (r == nullptr || r->is_reparameterized()) continue;
    for (const auto& [sub_name, sub] : m->named_modules())
      KERN_CHECK(!sub->is_training(), "reparameterize: ", sub->name(), " '",
                 name.empty() ? sub_name : (sub_name.empty() ? name : name + "." + sub_name),
                 "' is in training mode; call eval() first (BatchNorm must use its running ",
                 "statistics, which are what gets fused)");
    to_fuse.push_back(r);
  }
  for (auto* r : to_fuse) r->reparameterize();
  return static_cast<int64_t>(to_fuse.size());
}

// ---------------------------------------------------------------- ConvBN

ConvBN::ConvBN(const ConvBNOptions& options) {
  nn::Conv2dOptions co = options.conv;
  co.bias(false);
  conv = register_module("conv", std::make_shared<nn::Conv2d>(co));
  bn = register_module("bn", std::make_shared<nn::BatchNorm2d>(co.out_channels()));
  if (options.relu) nonlinear = register_module("nonlinear", std::make_shared<nn::ReLU>());
}

Tensor ConvBN::forward(const Tensor& x) {
  Tensor y = (*bn)((*conv)(x));
  return nonlinear ? (*nonlinear)(y) : y;
}

// ---------------------------------------------------------------- ReparamLargeKernelConv

ReparamLargeKernelConv::ReparamLargeKernelConv(const ReparamLargeKernelConvOptions& options)
    : options_(options) {
  const auto& o = options_;
  const int64_t k = o.kernel_size(), sk = o.small_kernel();
  KERN_CHECK(k >= 1 && k % 2 == 1, "ReparamLargeKernelConv: kernel_size = ", k,
             " must be odd and >= 1 (padding kernel_size / 2 keeps the size and the small ",
             "kernel is added at its center)");
  KERN_CHECK(sk >= 0 && (sk == 0 || sk % 2 == 1), "ReparamLargeKernelConv: small_kernel = ", sk,
             " must be odd (or 0 for no small-kernel branch)");
  KERN_CHECK(sk <= k, "ReparamLargeKernelConv: small_kernel = ", sk,
             " must be <= kernel_size = ", k, " (the small kernel is merged into the large one)");
  KERN_CHECK(o.stride() >= 1, "ReparamLargeKernelConv: stride = ", o.stride(), " must be >= 1");
  auto conv_options = [&](int64_t ks) {
    return nn::Conv2dOptions(o.in_channels(), o.out_channels(), ks)
        .stride(o.stride())
        .padding(ks / 2)
        .groups(o.groups());
  };
  if (o.small_kernel_merged()) {
    lkb_reparam = register_module("lkb_reparam",
                                  std::make_shared<nn::Conv2d>(conv_options(k).bias(true)));
    return;
  }
  lkb_origin = register_module("lkb_origin", std::make_shared<ConvBN>(ConvBNOptions{conv_options(k)}));
  if (sk > 0)
    small_conv = register_module("small_conv", std::make_shared<ConvBN>(ConvBNOptions{conv_options(sk)}));
}

Tensor ReparamLargeKernelConv::forward(const Tensor& x) {
  if (lkb_reparam) return (*lkb_reparam)(x);
  Tensor y = (*lkb_origin)(x);
  return small_conv ? y + (*small_conv)(x) : y;
}

ConvKernel ReparamLargeKernelConv::equivalent_kernel_bias() const {
  if (lkb_reparam) return {lkb_reparam->weight(), lkb_reparam->bias()};
  std::vector<ConvKernel> branches{fuse_conv_bn(*lkb_origin->conv, *lkb_origin->bn)};
  if (small_conv) branches.push_back(fuse_conv_bn(*small_conv->conv, *small_conv->bn));
  return sum_branches(branches);
}

bool ReparamLargeKernelConv::reparameterize() {
  if (is_reparameterized()) return false;
  KERN_CHECK(!is_training(), "ReparamLargeKernelConv::reparameterize: the module is in training ",
             "mode; call eval() first (BatchNorm must use its running statistics, which are what ",
             "gets fused)");
  const ConvKernel k = detached_kernel(*this);
  lkb_reparam = register_module("lkb_reparam", make_fused_conv(lkb_origin->conv->options(), k, is_training()));
  erase_child(children_, "lkb_origin");
  erase_child(children_, "small_conv");
  lkb_origin.reset();
  small_conv.reset();
  return true;
}

std::string ReparamLargeKernelConv::extra_repr() const {
  const auto& o = options_;
  std::string s = fmt::format("{}, {}, kernel_size={}, stride={}, groups={}, small_kernel={}",
                              o.in_channels(), o.out_channels(), o.kernel_size(), o.stride(),
                              o.groups(), o.small_kernel());
  if (is_reparameterized()) s += ", reparameterized";
  return s;
}

// ---------------------------------------------------------------- DilatedReparamBlock

DilatedReparamBlock::DilatedReparamBlock(const DilatedReparamBlockOptions& options)
    : options_(options) {
  const int64_t c = options.channels(), k = options.kernel_size();
  KERN_CHECK(c >= 1, "DilatedReparamBlock: channels = ", c, " must be >= 1");
  KERN_CHECK(k >= 1 && k % 2 == 1, "DilatedReparamBlock: kernel_size = ", k,
             " must be odd (the dilated branches are added at its center)");
  if (options.has_explicit_branches()) {
    kernel_sizes_ = options.kernel_sizes();
    dilations_ = options.dilations();
  } else {
    KERN_CHECK(default_branches(k, kernel_sizes_, dilations_), "DilatedReparamBlock: kernel_size = ",
               k, " has no default branch table (UniRepLKNet's covers 5, 7, 9, 11, 13, 15, 17); ",
               "set the branches explicitly with .branches(kernel_sizes, dilations)");
  }
  KERN_CHECK(kernel_sizes_.size() == dilations_.size(), "DilatedReparamBlock: kernel_sizes (",
             kernel_sizes_.size(), " entries) and dilations (", dilations_.size(),
             " entries) must have the same length");
  for (size_t i = 0; i < kernel_sizes_.size(); ++i) {
    const int64_t bk = kernel_sizes_[i], r = dilations_[i];
    KERN_CHECK(bk >= 1 && bk % 2 == 1 && r >= 1, "DilatedReparamBlock: branch ", i,
               " has kernel_sizes[", i, "] = ", bk, " and dilations[", i, "] = ", r,
               "; the kernel size must be odd and the dilation >= 1");
    KERN_CHECK(r * (bk - 1) + 1 <= k, "DilatedReparamBlock: branch ", i, " (kernel_sizes[", i,
               "] = ", bk, ", dilations[", i, "] = ", r, ") spans ", r * (bk - 1) + 1,
               " > kernel_size = ", k);
    for (size_t j = 0; j < i; ++j)
      KERN_CHECK(kernel_sizes_[j] != bk || dilations_[j] != r, "DilatedReparamBlock: branch (", bk,
                 ", ", r, ") appears twice in ", branch_list(kernel_sizes_, dilations_));
  }
  lk_origin = register_module(
      "lk_origin", std::make_shared<nn::Conv2d>(
                       nn::Conv2dOptions(c, c, k).padding(k / 2).groups(c).bias(options.deploy())));
  if (options.deploy()) return;
  origin_bn = register_module("origin_bn", std::make_shared<nn::BatchNorm2d>(c));
  for (size_t i = 0; i < kernel_sizes_.size(); ++i) {
    const int64_t bk = kernel_sizes_[i], r = dilations_[i];
    // Padding r*(k-1)/2 keeps the size; the taps sit at the large kernel's center offsets.
    dil_convs.push_back(register_module(
        fmt::format("dil_conv_k{}_{}", bk, r),
        std::make_shared<nn::Conv2d>(
            nn::Conv2dOptions(c, c, bk).padding(r * (bk - 1) / 2).dilation(r).groups(c).bias(false))));
    dil_bns.push_back(register_module(fmt::format("dil_bn_k{}_{}", bk, r),
                                      std::make_shared<nn::BatchNorm2d>(c)));
  }
}

Tensor DilatedReparamBlock::forward(const Tensor& x) {
  if (!origin_bn) return (*lk_origin)(x);
  Tensor y = (*origin_bn)((*lk_origin)(x));
  for (size_t i = 0; i < dil_convs.size(); ++i) y = y + (*dil_bns[i])((*dil_convs[i])(x));
  return y;
}

ConvKernel DilatedReparamBlock::equivalent_kernel_bias() const {
  if (!origin_bn) return {lk_origin->weight(), lk_origin->bias()};
  std::vector<ConvKernel> branches{fuse_conv_bn(*lk_origin, *origin_bn)};
  for (size_t i = 0; i < dil_convs.size(); ++i) {
    ConvKernel b = fuse_conv_bn(*dil_convs[i], *dil_bns[i]);
    b.weight = dilate_kernel(b.weight, dilations_[i]);  // [C, 1, r*(k-1)+1, r*(k-1)+1]
    branches.push_back(std::move(b));
  }
  return sum_branches(branches);
}

bool DilatedReparamBlock::reparameterize() {
  if (is_reparameterized()) return false;
  KERN_CHECK(!is_training(), "DilatedReparamBlock::reparameterize: the module is in training ",
             "mode; call eval() first (BatchNorm must use its running statistics, which are what ",
             "gets fused)");
  const ConvKernel k = detached_kernel(*this);
  // Registering under the same name replaces lk_origin in place (keeps its position).
  lk_origin = register_module("lk_origin", make_fused_conv(lk_origin->options(), k, is_training()));
  erase_child(children_, "origin_bn");
  for (size_t i = 0; i < kernel_sizes_.size(); ++i) {
    erase_child(children_, fmt::format("dil_conv_k{}_{}", kernel_sizes_[i], dilations_[i]));
    erase_child(children_, fmt::format("dil_bn_k{}_{}", kernel_sizes_[i], dilations_[i]));
  }
  origin_bn.reset();
  dil_convs.clear();
  dil_bns.clear();
  return true;
}

std::string DilatedReparamBlock::extra_repr() const {
  std::string s = fmt::format("{}, kernel_size={}, branches=[{}]", options_.channels(),
                              options_.kernel_size(), branch_list(kernel_sizes_, dilations_));
  if (is_reparameterized()) s += ", reparameterized";
  return s;
}

}  // namespace kern::models
