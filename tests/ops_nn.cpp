// OpInfo entries for the NN families: convolution (and its two backward kernels as ops of
// their own), pooling, normalization, softmax, losses, FFT and dropout. Samples are small
// (the whole table's gradcheck + gradgradcheck must stay fast); the "[fast path]" entries run
// the float32 fast kernels (oneDNN / kern's direct depthwise: conv2d has no size threshold)
// and skip the second-order check, which the small entries cover.
// Sizes of the fast conv entries: gradcheck runs the float64 reference forward twice per input
// element, so they stay below the reference kernels' OpenMP threshold (worth_threads in
// framework/ops/conv.cpp: 2^16 multiply-adds); on a loaded 2-core machine thousands of small
// parallel regions cost 30+ s. The depthwise sample [1, 4, 18, 18] (7x7, padding 3) still
// covers both the 4-row x 16-column register blocks and the row / column tails of
// framework/backend/depthwise.cpp.
#include "op_table.hpp"

using namespace kern;
using namespace kern::testing;

namespace {

using Ins = std::vector<Tensor>;
const DType F64 = DType::Float64;

Tensor rn(Generator& g, Shape s) { return randn(s, F64, &g); }
Tensor i64(std::vector<int64_t> v) {
  const int64_t n = static_cast<int64_t>(v.size());
  return from_vector<int64_t>(v, {n});
}

OpInfo op(std::string name, Fn f, std::function<Ins(Generator&)> make, std::function<void()> bad = {},
          std::string msg = "") {
  return {std::move(name), std::move(f), std::move(make), true, false, std::move(bad), std::move(msg)};
}
using backend::Primitive;

// A float32 fast-vs-reference entry (first order only) whose `kernel` must run its fast path.
OpInfo fast(OpInfo o, Primitive kernel) {
  o.name += " [fast path]";
  o.fast_path = true;
  o.gradgrad = false;
  o.fast_kernels = {kernel};
  return o;
}
// An entry the fast backend must hand to `kernel`'s reference loops (a dispatch rule).
OpInfo fast_fallback(OpInfo o, Primitive kernel) {
  o.name += " [fast backend, reference loops]";
  o.fast_path = true;
  o.gradgrad = false;
  o.falls_back = {kernel};
  return o;
}

Conv2dParams cp(std::array<int64_t, 2> stride, std::array<int64_t, 2> padding, std::array<int64_t, 2> dilation,
                int64_t groups) {
  Conv2dParams p;
  p.stride = stride;
  p.padding = padding;
  p.dilation = dilation;
  p.groups = groups;
  return p;
}

// ---- convolution

OpInfo conv(std::string name, Conv2dParams p, Shape xs, Shape ws, bool bias, std::function<void()> bad = {},
            std::string msg = "") {
  return op(
      std::move(name), [p](const Ins& x) { return conv2d(x[0], x[1], x.size() > 2 ? x[2] : Tensor(), p); },
      [=](Generator& g) {
        Ins in{rn(g, xs), rn(g, ws)};
        if (bias) in.push_back(rn(g, {ws[0]}));
        return in;
      },
      std::move(bad), std::move(msg));
}

// conv2d_backward_input(gy, w) for an input of shape xs; gy has the convolution's output shape.
OpInfo conv_bwd_input(std::string name, Conv2dParams p, Shape xs, Shape ws, std::function<void()> bad = {},
                      std::string msg = "") {
  const Shape ys{xs[0], ws[0], conv_output_size(xs[2], ws[2], p.stride[0], p.padding[0], p.dilation[0]),
                 conv_output_size(xs[3], ws[3], p.stride[1], p.padding[1], p.dilation[1])};
  return op(
      std::move(name), [p, xs](const Ins& x) { return conv2d_backward_input(x[0], x[1], xs, p); },
      [=](Generator& g) { return Ins{rn(g, ys), rn(g, ws)}; }, std::move(bad), std::move(msg));
}

// conv2d_backward_weight(gy, x) for a weight of shape ws.
OpInfo conv_bwd_weight(std::string name, Conv2dParams p, Shape xs, Shape ws, std::function<void()> bad = {},
                       std::string msg = "") {
  const Shape ys{xs[0], ws[0], conv_output_size(xs[2], ws[2], p.stride[0], p.padding[0], p.dilation[0]),
                 conv_output_size(xs[3], ws[3], p.stride[1], p.padding[1], p.dilation[1])};
  return op(
      std::move(name), [p, ws](const Ins& x) { return conv2d_backward_weight(x[0], x[1], ws, p); },
      [=](Generator& g) { return Ins{rn(g, ys), rn(g, xs)}; }, std::move(bad), std::move(msg));
}

const Conv2dParams kPlain{};
const Conv2dParams kStrided = cp({2, 2}, {1, 2}, {2, 1}, 1);  // x [1, 2, 7, 6], w [3, 2, 3, 2] -> [1, 3, 3, 5]
const Conv2dParams kGroups2 = cp({1, 1}, {1, 0}, {1, 1}, 2);
const Conv2dParams kPad1 = cp({1, 1}, {1, 1}, {1, 1}, 1);
Conv2dParams depthwise7(int64_t c) { return cp({1, 1}, {3, 3}, {1, 1}, c); }
const Conv2dParams kBwdMixed = cp({2, 1}, {1, 1}, {1, 2}, 2);  // groups 2, stride, dilation

OpRegistrar convolution({
    conv("conv2d", kPlain, {2, 3, 5, 5}, {4, 3, 3, 3}, true,
         [] { conv2d(zeros({1, 3, 5, 5}), zeros({4, 2, 3, 3})); },
         "conv2d: weight [4, 2, 3, 3] expects 2 input channels (C_in/groups = 2, groups = 1) but input [1, 3, 5, 5]"),
    conv("conv2d stride 2 padding dilation", kStrided, {1, 2, 7, 6}, {3, 2, 3, 2}, true,
         [] { conv2d(zeros({1, 2, 7, 6}), zeros({3, 2, 3, 3}), {}, cp({0, 1}, {0, 0}, {1, 1}, 1)); },
         "conv2d: stride and dilation must be >= 1 and padding >= 0, got stride (0, 1)"),
    conv("conv2d groups 2", kGroups2, {2, 4, 5, 4}, {6, 2, 3, 3}, true,
         [] { conv2d(zeros({1, 4, 5, 5}), zeros({6, 2, 3, 3}), {}, cp({1, 1}, {0, 0}, {1, 1}, 3)); },
         "conv2d: groups = 3 must divide C_in = 4 and C_out = 6 (input [1, 4, 5, 5], weight [6, 2, 3, 3])"),
    conv("conv2d depthwise 7x7 padding 3", depthwise7(2), {1, 2, 6, 5}, {2, 1, 7, 7}, true,
         [] { conv2d(zeros({1, 2, 4, 4}), zeros({2, 1, 7, 7}), {}, cp({1, 1}, {1, 1}, {1, 1}, 2)); },
         "conv2d: kernel [2, 1, 7, 7] (dilated extent 7x7) is larger than the padded input [1, 2, 4, 4]"),
    fast(conv("conv2d depthwise 7x7 padding 3", depthwise7(4), {1, 4, 18, 18}, {4, 1, 7, 7}, true,
              [] { conv2d(zeros({2, 8, 12, 12}), zeros({8, 1, 7, 7}), zeros({4}), depthwise7(8)); },
              "conv2d: bias [4] must be [C_out] = [8] for weight [8, 1, 7, 7]"),
         Primitive::DepthwiseConv2d),
    fast(conv("conv2d 3x3", kPad1, {1, 8, 10, 10}, {8, 8, 3, 3}, true,
              [] { conv2d(zeros({2, 8, 12, 12}), zeros({8, 8, 3, 3}, F64)); },
              "conv2d: input (float32 [2, 8, 12, 12]) and weight (float64 [8, 8, 3, 3]) must have the same"),
         Primitive::Conv2d),

    op(
        "conv2d non-contiguous input and weight",
        [](const Ins& x) { return conv2d(x[0].permute({0, 3, 1, 2}), x[1].transpose(0, 1), x[2], kStrided); },
        [](Generator& g) { return Ins{rn(g, {1, 7, 6, 2}), rn(g, {2, 3, 3, 2}), rn(g, {3})}; }),

    conv_bwd_input("conv2d_backward_input", kBwdMixed, {1, 4, 6, 7}, {4, 2, 3, 2},
                   [] { conv2d_backward_input(zeros({1, 3, 4, 4}), zeros({3, 2, 3, 3}), {1, 2, 5, 5}, kPlain); },
                   "conv2d_backward_input: grad_out [1, 3, 4, 4] does not match the convolution output [1, 3, 3, 3]"),
    conv_bwd_input("conv2d_backward_input stride 2 padding dilation", kStrided, {1, 2, 7, 6}, {3, 2, 3, 2}),
    fast(conv_bwd_input("conv2d_backward_input 3x3", kPad1, {1, 8, 10, 10}, {8, 8, 3, 3},
                        [] { conv2d_backward_input(zeros({2, 8, 12, 12}), zeros({8, 8, 3}), {2, 8, 12, 12}, kPad1); },
                        "conv2d_backward_input: weight must be 4-D [C_out, C_in/groups, kH, kW], got [8, 8, 3]"),
         Primitive::Conv2d),
    fast(conv_bwd_input("conv2d_backward_input depthwise 7x7", depthwise7(4), {1, 4, 18, 18}, {4, 1, 7, 7}),
         Primitive::DepthwiseConv2d),

    conv_bwd_weight("conv2d_backward_weight", kBwdMixed, {1, 4, 6, 7}, {4, 2, 3, 2},
                    [] { conv2d_backward_weight(zeros({1, 3, 4, 4}), zeros({1, 2, 5, 5}), {3, 2, 3, 3}, kPlain); },
                    "conv2d_backward_weight: grad_out [1, 3, 4, 4] does not match the convolution output [1, 3, 3, 3]"),
    conv_bwd_weight("conv2d_backward_weight stride 2 padding dilation", kStrided, {2, 2, 7, 6}, {3, 2, 3, 2}),
    fast(conv_bwd_weight("conv2d_backward_weight 3x3", kPad1, {1, 8, 10, 10}, {8, 8, 3, 3},
                         [] { conv2d_backward_weight(zeros({2, 8, 12, 12}), zeros({2, 8, 12}), {8, 8, 3, 3}, kPad1); },
                         "conv2d_backward_weight: input must be 4-D [N, C_in, H, W], got [2, 8, 12]"),
         Primitive::Conv2d),
    fast(conv_bwd_weight("conv2d_backward_weight depthwise 7x7", depthwise7(4), {1, 4, 18, 18}, {4, 1, 7, 7}),
         Primitive::DepthwiseConv2d),
});

// ---- pooling

Pool2dParams pp(std::array<int64_t, 2> k, std::array<int64_t, 2> s, std::array<int64_t, 2> p, bool ceil_mode,
                bool count_include_pad = true) {
  Pool2dParams q;
  q.kernel = k;
  q.stride = s;
  q.padding = p;
  q.ceil_mode = ceil_mode;
  q.count_include_pad = count_include_pad;
  return q;
}

OpInfo pool(std::string name, std::function<Tensor(const Tensor&)> f, Shape xs, std::function<void()> bad = {},
            std::string msg = "") {
  return op(
      std::move(name), [f](const Ins& x) { return f(x[0]); }, [xs](Generator& g) { return Ins{rn(g, xs)}; },
      std::move(bad), std::move(msg));
}
OpInfo maxp(std::string name, Pool2dParams p, Shape xs, std::function<void()> bad = {}, std::string msg = "") {
  return pool(std::move(name), [p](const Tensor& x) { return max_pool2d(x, p); }, xs, std::move(bad), std::move(msg));
}
OpInfo avgp(std::string name, Pool2dParams p, Shape xs, std::function<void()> bad = {}, std::string msg = "") {
  return pool(std::move(name), [p](const Tensor& x) { return avg_pool2d(x, p); }, xs, std::move(bad), std::move(msg));
}
OpInfo adaptive(std::string name, std::array<int64_t, 2> out, Shape xs, std::function<void()> bad = {},
                std::string msg = "") {
  return pool(std::move(name), [out](const Tensor& x) { return adaptive_avg_pool2d(x, out); }, xs, std::move(bad),
              std::move(msg));
}

OpRegistrar pooling({
    // randn samples have no ties (nor near-ties within the finite-difference step).
    maxp("max_pool2d 2x2", pp({2, 2}, {0, 0}, {0, 0}, false), {2, 3, 6, 5},
         [] { max_pool2d(zeros({2, 5, 5}), pp({2, 2}, {0, 0}, {0, 0}, false)); },
         "max_pool2d: input must be 4-D [N, C, H, W], got [2, 5, 5]"),
    maxp("max_pool2d 3x3 stride 2 padding 1 ceil_mode", pp({3, 3}, {2, 2}, {1, 1}, true), {1, 2, 8, 7},
         [] { max_pool2d(zeros({1, 1, 2, 2}), pp({5, 5}, {1, 1}, {3, 3}, false)); },
         "max_pool2d: padding must be at most half the kernel"),
    maxp("max_pool2d 3x2 overlapping", pp({3, 2}, {1, 1}, {1, 0}, false), {1, 2, 5, 4},
         [] { max_pool2d(zeros({1, 1, 2, 4}), pp({3, 3}, {1, 1}, {0, 0}, false)); },
         "max_pool2d: kernel (3) is larger than the padded input size 2 in dim 2 of input [1, 1, 2, 4]"),
    avgp("avg_pool2d count_include_pad", pp({3, 3}, {2, 2}, {1, 1}, false, true), {1, 2, 7, 6},
         [] { avg_pool2d(zeros({1, 2, 7, 6}), pp({3, 3}, {2, 2}, {2, 1}, false)); },
         "avg_pool2d: padding must be at most half the kernel, got kernel (3, 3), stride (2, 2), padding (2, 1)"),
    avgp("avg_pool2d exclude pad", pp({3, 3}, {2, 2}, {1, 1}, false, false), {1, 2, 7, 6},
         [] { avg_pool2d(zeros({1, 2, 7, 6}, DType::Int64), pp({3, 3}, {2, 2}, {1, 1}, false)); },
         "avg_pool2d: input must be float32 or float64, got int64 [1, 2, 7, 6]"),
    avgp("avg_pool2d ceil_mode", pp({3, 3}, {2, 2}, {0, 0}, true), {1, 2, 8, 6},
         [] { avg_pool2d(zeros({1, 2, 8, 6}), pp({0, 3}, {2, 2}, {0, 0}, true)); },
         "avg_pool2d: kernel and stride must be >= 1 and padding >= 0"),
    avgp("avg_pool2d ceil_mode padding exclude pad", pp({3, 2}, {2, 2}, {1, 1}, true, false), {2, 2, 6, 5}),
    avgp("avg_pool2d ceil_mode padding include pad", pp({3, 2}, {2, 2}, {1, 1}, true, true), {2, 2, 6, 5}),
    adaptive("adaptive_avg_pool2d 7x7 -> 3x3", {3, 3}, {2, 2, 7, 7},
             [] { adaptive_avg_pool2d(zeros({1, 2, 7, 7}), {0, 3}); },
             "adaptive_avg_pool2d: output size (0, 3) and input spatial size must be >= 1, input [1, 2, 7, 7]"),
    adaptive("adaptive_avg_pool2d 5x6 -> 4x4", {4, 4}, {1, 2, 5, 6},
             [] { adaptive_avg_pool2d(zeros({2, 7, 7}), {3, 3}); },
             "adaptive_avg_pool2d: input must be 4-D [N, C, H, W], got [2, 7, 7]"),
    adaptive("adaptive_avg_pool2d 3x4 -> 5x5 (overlapping windows)", {5, 5}, {1, 2, 3, 4}),
    op(
        "max_pool2d and avg_pool2d of a non-contiguous input",
        [](const Ins& x) {
          Tensor t = x[0].permute({0, 3, 1, 2});
          return max_pool2d(t, pp({2, 2}, {1, 1}, {1, 0}, false)) + avg_pool2d(t, pp({2, 2}, {1, 1}, {1, 0}, true, false));
        },
        [](Generator& g) { return Ins{rn(g, {1, 5, 4, 2})}; }),
});

// float32 forwards on oneDNN (framework/backend/dnnl_pool.cpp). The overhanging
// count_include_pad entry and the uneven adaptive one fall back to kern's loops on the fast
// backend (fast_fallback; oneDNN's divisor or windows differ there): they check that dispatch.
OpRegistrar pooling_fast({
    fast(maxp("max_pool2d 2x2", pp({2, 2}, {0, 0}, {0, 0}, false), {2, 8, 12, 12}), Primitive::MaxPool2d),
    fast(maxp("max_pool2d 3x3 stride 2 padding 1 ceil_mode", pp({3, 3}, {2, 2}, {1, 1}, true), {2, 4, 12, 11}),
         Primitive::MaxPool2d),
    fast(maxp("max_pool2d 3x2 stride 1 padding (1, 0)", pp({3, 2}, {1, 1}, {1, 0}, false), {2, 4, 9, 10}),
         Primitive::MaxPool2d),
    fast(avgp("avg_pool2d 2x2", pp({2, 2}, {0, 0}, {0, 0}, false), {2, 8, 12, 12}), Primitive::AvgPool2d),
    fast(avgp("avg_pool2d 3x3 stride 2 padding 1 count_include_pad", pp({3, 3}, {2, 2}, {1, 1}, false, true),
              {2, 4, 12, 11}),
         Primitive::AvgPool2d),
    fast(avgp("avg_pool2d 3x3 stride 2 padding 1 exclude pad ceil_mode", pp({3, 3}, {2, 2}, {1, 1}, true, false),
              {2, 4, 12, 11}),
         Primitive::AvgPool2d),
    fast(avgp("avg_pool2d 3x3 stride 2 ceil_mode no padding", pp({3, 3}, {2, 2}, {0, 0}, true, true), {2, 4, 12, 11}),
         Primitive::AvgPool2d),
    fast_fallback(avgp("avg_pool2d 3x3 stride 2 padding 1 count_include_pad ceil_mode (overhang)",
                       pp({3, 3}, {2, 2}, {1, 1}, true, true), {2, 4, 12, 11}),
                  Primitive::AvgPool2d),
    fast(adaptive("adaptive_avg_pool2d 12x12 -> 4x3 (uniform)", {4, 3}, {2, 8, 12, 12}), Primitive::AvgPool2d),
    fast_fallback(adaptive("adaptive_avg_pool2d 7x7 -> 3x3 (uneven)", {3, 3}, {2, 8, 7, 7}), Primitive::AvgPool2d),
});

// ---- normalization

OpInfo ln(std::string name, Shape xs, Shape ns, bool affine, std::function<void()> bad = {}, std::string msg = "") {
  return op(
      std::move(name),
      [ns, affine](const Ins& x) {
        return affine ? layer_norm(x[0], ns, x[1], x[2]) : layer_norm(x[0], ns);
      },
      [=](Generator& g) {
        Ins in{rn(g, xs) * 2.0 + 0.5};
        if (affine) {
          in.push_back(rn(g, ns));
          in.push_back(rn(g, ns));
        }
        return in;
      },
      std::move(bad), std::move(msg));
}

// Training mode; running stats (when `running`) are fresh constants made inside the function,
// so repeated calls see the same state. They do not affect the training-mode output.
OpInfo bn_train(std::string name, Shape xs, bool affine, bool running, std::function<void()> bad = {},
                std::string msg = "") {
  return op(
      std::move(name),
      [xs, affine, running](const Ins& x) {
        const int64_t C = xs[1];
        Tensor rm = running ? zeros({C}, x[0].dtype()) : Tensor();
        Tensor rv = running ? ones({C}, x[0].dtype()) : Tensor();
        return batch_norm(x[0], rm, rv, affine ? x[1] : Tensor(), affine ? x[2] : Tensor(), true, 0.1, 1e-5);
      },
      [=](Generator& g) {
        Ins in{rn(g, xs) * 1.5 - 0.3};
        if (affine) {
          in.push_back(rn(g, {xs[1]}));
          in.push_back(rn(g, {xs[1]}));
        }
        return in;
      },
      std::move(bad), std::move(msg));
}

OpRegistrar normalization({
    ln("layer_norm affine", {3, 2, 5}, {5}, true,
       [] { layer_norm(zeros({2, 4}), Shape{5}); },
       "layer_norm: normalized_shape [5] does not match the trailing dims of input [2, 4]"),
    ln("layer_norm no affine 2 dims", {2, 3, 4}, {3, 4}, false,
       [] { layer_norm(zeros({2, 4}), Shape{4}, zeros({3})); },
       "layer_norm: weight has shape [3], expected [4] for input [2, 4]"),
    fast(ln("layer_norm affine", {4, 6, 16}, {16}, true,
            [] { layer_norm(zeros({4, 16}), Shape{16}, zeros({16}), zeros({16}, F64)); },
            "layer_norm: bias is float64 but input is float32"),
         Primitive::LayerNorm),
    fast(ln("layer_norm no affine", {4, 6, 16}, {6, 16}, false), Primitive::LayerNorm),
    op("layer_norm_backward", [](const Ins& x) { return layer_norm_backward(x[0], x[1], Shape{5}, x[2], 1e-3); },
       [](Generator& g) { return Ins{rn(g, {3, 2, 5}), rn(g, {3, 2, 5}) * 2.0 + 0.5, rn(g, {5})}; },
       [] { layer_norm_backward(zeros({2, 4}), zeros({2, 5}), Shape{5}); },
       "layer_norm_backward: grad must be float32 [2, 5] like the input, got float32 [2, 4]"),
    op("layer_norm_backward no weight 2 dims", [](const Ins& x) { return layer_norm_backward(x[0], x[1], Shape{2, 5}); },
       [](Generator& g) { return Ins{rn(g, {3, 2, 5}), rn(g, {3, 2, 5}) * 2.0 + 0.5}; }),
    op(
        "layer_norm weight only, non-contiguous input", [](const Ins& x) { return layer_norm(x[0].t(), {3}, x[1]); },
        [](Generator& g) { return Ins{rn(g, {3, 4}), rn(g, {3})}; }),
    fast(op(
        "layer_norm weight only", [](const Ins& x) { return layer_norm(x[0], {16}, x[1]); },
        [](Generator& g) { return Ins{rn(g, {12, 16}), rn(g, {16})}; }),
         Primitive::LayerNorm),
    fast(op(
        "layer_norm bias only", [](const Ins& x) { return layer_norm(x[0], {16}, {}, x[1]); },
        [](Generator& g) { return Ins{rn(g, {12, 16}), rn(g, {16})}; }),
         Primitive::LayerNorm),
    bn_train("batch_norm train affine", {3, 2, 3, 2}, true, true,
             [] { batch_norm(zeros({1, 3}), {}, {}, {}, {}, true); },
             "batch_norm: expected more than 1 value per channel when training, got input [1, 3]"),
    bn_train("batch_norm train no affine [N, C]", {4, 3}, false, false,
             [] { batch_norm(zeros({4, 3, 2}), zeros({3}), {}, {}, {}, true); },
             "batch_norm: running_mean and running_var must both be given or both be omitted (input [4, 3, 2])"),
    bn_train("batch_norm train N=2 1-D spatial", {2, 3, 4}, true, false,
             [] { batch_norm(zeros({2, 3, 4}), {}, {}, zeros({2}), {}, true); },
             "batch_norm: weight has shape [2], expected [3] for input [2, 3, 4]"),
    op(
        "batch_norm train non-contiguous input",
        [](const Ins& x) { return batch_norm(x[0].permute({0, 3, 1, 2}), {}, {}, x[1], x[2], true); },
        [](Generator& g) { return Ins{rn(g, {2, 3, 2, 3}), rn(g, {3}), rn(g, {3})}; }),
    op(
        "batch_norm eval",
        [](const Ins& x) {
          Tensor rm = tensor({0.3, -0.2, 0.1}, x[0].dtype()), rv = tensor({0.5, 1.5, 2.0}, x[0].dtype());
          return batch_norm(x[0], rm, rv, x[1], x[2], false);
        },
        [](Generator& g) { return Ins{rn(g, {2, 3, 2, 2}), rn(g, {3}), rn(g, {3})}; },
        [] { batch_norm(zeros({2, 3, 2}), {}, {}, {}, {}, false); },
        "batch_norm: eval mode needs running_mean and running_var (input [2, 3, 2])"),
});

// ---- softmax

OpInfo sm(std::string name, bool log, int64_t dim, Shape xs, std::function<void()> bad = {}, std::string msg = "") {
  return op(
      std::move(name), [log, dim](const Ins& x) { return log ? log_softmax(x[0], dim) : softmax(x[0], dim); },
      [xs](Generator& g) { return Ins{rn(g, xs) * 2.0}; }, std::move(bad), std::move(msg));
}

OpRegistrar softmaxes({
    sm("softmax last dim", false, 1, {3, 4}, [] { softmax(zeros({3, 4}), 2); },
       "softmax: dim 2 out of range for a tensor with 2 dims"),
    sm("softmax dim 0 with inner dims", false, 0, {4, 3, 2},
       [] { softmax(zeros({3, 4}, DType::Int64), 1); }, "softmax: expected a floating-point tensor, got int64 [3, 4]"),
    sm("log_softmax last dim", true, -1, {3, 5}, [] { log_softmax(zeros({3, 4}), -3); },
       "log_softmax: dim -3 out of range for a tensor with 2 dims"),
    sm("log_softmax middle dim", true, 1, {2, 3, 4},
       [] { log_softmax(zeros({3}, DType::Int64), 0); }, "log_softmax: expected a floating-point tensor, got int64 [3]"),
    // The oneDNN (log)softmax forward runs for every non-empty float32 input on the fast backend.
    fast(sm("softmax rows", false, 1, {8, 40}), Primitive::Softmax),
    fast(sm("softmax middle dim", false, 1, {6, 10, 8}), Primitive::Softmax),
    fast(sm("log_softmax rows", true, -1, {8, 40}), Primitive::Softmax),
    fast(sm("log_softmax middle dim", true, 1, {6, 10, 8}), Primitive::Softmax),
});

// ---- losses (targets are constants captured by the function)

OpInfo ce(std::string name, double smoothing, std::string reduction, int64_t N, int64_t C,
          std::function<void()> bad = {}, std::string msg = "") {
  std::vector<int64_t> t(N);
  for (int64_t i = 0; i < N; ++i) t[i] = (3 * i + 1) % C;
  Tensor target = i64(t);
  return op(
      std::move(name),
      [target, smoothing, reduction](const Ins& x) { return cross_entropy(x[0], target, smoothing, reduction); },
      [N, C](Generator& g) { return Ins{rn(g, {N, C}) * 2.0}; }, std::move(bad), std::move(msg));
}

OpRegistrar losses({
    ce("cross_entropy mean", 0.0, "mean", 4, 5,
       [] { cross_entropy(zeros({2, 3}), i64({0, 5})); },
       "cross_entropy: target label 5 is out of range for C = 3 classes (logits [2, 3])"),
    ce("cross_entropy label_smoothing 0.1 mean", 0.1, "mean", 4, 5,
       [] { cross_entropy(zeros({2, 3}), i64({0, 1}), 1.5); }, "cross_entropy: label_smoothing must be in [0, 1]"),
    ce("cross_entropy label_smoothing 0.2 sum", 0.2, "sum", 3, 4,
       [] { cross_entropy(zeros({2, 3}), i64({0, 1}), 0.0, "avg"); },
       "cross_entropy: reduction must be \"mean\", \"sum\" or \"none\", got \"avg\""),
    ce("cross_entropy label_smoothing 0.3 none", 0.3, "none", 3, 4,
       [] { cross_entropy(zeros({2, 3}), i64({0, 1, 2})); },
       "cross_entropy: target must be [N] = [2], got shape [3] (logits [2, 3])"),
    ce("cross_entropy label_smoothing 1 none", 1.0, "none", 3, 4),
    fast(ce("cross_entropy label_smoothing 0.1", 0.1, "mean", 16, 10,
            [] { cross_entropy(zeros({2, 3, 4}), i64({0, 1})); }, "cross_entropy: logits must be [N, C], got shape [2, 3, 4]"),
         Primitive::Softmax),
    op(
        "nll_loss mean", [](const Ins& x) { return nll_loss(x[0], i64({2, 0, 1, 2})); },
        [](Generator& g) { return Ins{rn(g, {4, 3})}; },
        [] { nll_loss(zeros({2, 3}), zeros({2}, F64)); },
        "nll_loss: target must be int64 class indices, got float64 [2] (log_probs [2, 3])"),
    op(
        "nll_loss none of log_softmax", [](const Ins& x) { return nll_loss(log_softmax(x[0], 1), i64({1, 1, 0}), "none"); },
        [](Generator& g) { return Ins{rn(g, {3, 4})}; },
        [] { nll_loss(zeros({2, 3}), i64({0, -1}), "sum"); },
        "nll_loss: target label -1 is out of range for C = 3 classes (log_probs [2, 3])"),
    op(
        "mse_loss mean", [](const Ins& x) { return mse_loss(x[0], x[1]); },
        [](Generator& g) { return Ins{rn(g, {2, 3}), rn(g, {2, 3})}; },
        [] { mse_loss(zeros({2, 3}), zeros({3, 2})); }, "mse_loss: input [2, 3] and target [3, 2] must have the same shape"),
    op(
        "mse_loss sum", [](const Ins& x) { return mse_loss(x[0], x[1], "sum"); },
        [](Generator& g) { return Ins{rn(g, {4}), rn(g, {4})}; },
        [] { mse_loss(zeros({3}), zeros({3}, F64)); }, "mse_loss: input is float32 [3] but target is float64 [3]"),
    op(
        "mse_loss none", [](const Ins& x) { return mse_loss(x[0], x[1], "none"); },
        [](Generator& g) { return Ins{rn(g, {3, 2}), rn(g, {3, 2}).t().contiguous().t()}; },
        [] { mse_loss(zeros({3}), zeros({3}), "max"); }, "mse_loss: reduction must be"),
});

// ---- FFT: rfft / irfft lengths (even, odd, zero-padding n > L, truncation n < L)

OpInfo rf(std::string name, int64_t n, Shape xs, std::function<void()> bad = {}, std::string msg = "") {
  return op(
      std::move(name), [n](const Ins& x) { return rfft(x[0], n); }, [xs](Generator& g) { return Ins{rn(g, xs)}; },
      std::move(bad), std::move(msg));
}
OpInfo irf(std::string name, int64_t n, Shape xs, std::function<void()> bad = {}, std::string msg = "") {
  return op(
      std::move(name), [n](const Ins& x) { return irfft(x[0], n); }, [xs](Generator& g) { return Ins{rn(g, xs)}; },
      std::move(bad), std::move(msg));
}

OpRegistrar ffts({
    rf("rfft even", 0, {2, 8}, [] { rfft(zeros({2, 8}), -2); },
       "rfft: transform length n must be positive, got n = -2 for input [2, 8]"),
    rf("rfft odd", 0, {3, 7}, [] { rfft(zeros({}), 4); }, "rfft: input must have at least 1 dim"),
    rf("rfft n > L", 8, {2, 5}, [] { rfft(zeros({3}, DType::Int64)); }, "rfft: expected a floating-point tensor"),
    rf("rfft odd n > L", 9, {2, 1, 6}),
    rf("rfft n < L", 6, {2, 9}),
    rf("rfft n = 1", 1, {2, 3}),
    rf("rfft n = 2", 2, {3, 2}),
    op(
        "rfft non-contiguous", [](const Ins& x) { return rfft(x[0].t(), 0); },
        [](Generator& g) { return Ins{rn(g, {6, 3})}; }),
    irf("irfft even", 8, {2, 5, 2}, [] { irfft(zeros({2, 5, 3}), 8); },
        "irfft: input must be a complex spectrum [..., bins, 2] (trailing dim 2 = re, im), got shape [2, 5, 3]"),
    irf("irfft odd", 7, {2, 4, 2}, [] { irfft(zeros({2, 5, 2}), 0); },
        "irfft: output length n must be positive, got n = 0 for input [2, 5, 2]"),
    irf("irfft n > L (bins zero-padded)", 10, {3, 3, 2}, [] { irfft(zeros({2, 0, 2}), 4); },
        "irfft: input [2, 0, 2] has no frequency bins"),
    irf("irfft odd n > L", 11, {2, 3, 2}),
    irf("irfft bins truncated", 6, {2, 7, 2}),
    irf("irfft n = 1", 1, {2, 2, 2}),
    irf("irfft n = 2", 2, {2, 2, 2}),
    op(
        "irfft non-contiguous", [](const Ins& x) { return irfft(x[0].transpose(0, 1), 6); },
        [](Generator& g) { return Ins{rn(g, {4, 2, 2})}; }),
    op(
        "complex_mul broadcast", [](const Ins& x) { return complex_mul(x[0], x[1]); },
        [](Generator& g) { return Ins{rn(g, {3, 2}), rn(g, {2, 1, 2})}; },
        [] { complex_mul(zeros({3, 2}), zeros({3, 3})); },
        "complex_mul: operands must have a trailing dim of 2 (re, im), got [3, 2] and [3, 3]"),
    op(
        "complex_mul non-contiguous", [](const Ins& x) { return complex_mul(x[0].transpose(0, 1), x[1]); },
        [](Generator& g) { return Ins{rn(g, {4, 3, 2}), rn(g, {3, 4, 2})}; },
        [] { complex_mul(zeros({3, 2}), zeros({3, 2}, F64)); }, "complex_mul"),
    op(
        "fft convolution (rfft, complex_mul, irfft)",
        [](const Ins& x) { return irfft(complex_mul(rfft(x[0], 12), rfft(x[1], 12)), 12); },
        [](Generator& g) { return Ins{rn(g, {2, 7}), rn(g, {6})}; }),
});

// ---- dropout: a fixed Generator made inside the function makes the mask deterministic.

OpRegistrar random_ops({
    op(
        "dropout",
        [](const Ins& x) {
          Generator g(5);
          return dropout(x[0], 0.3, true, &g);
        },
        [](Generator& g) { return Ins{rn(g, {4, 5})}; }, [] { dropout(zeros({3}), 1.5, true); },
        "dropout: probability p must be in [0, 1], got 1.5 (input [3])"),
    op(
        "dropout non-contiguous",
        [](const Ins& x) {
          Generator g(9);
          return dropout(x[0].t(), 0.5, true, &g);
        },
        [](Generator& g) { return Ins{rn(g, {3, 4})}; }, [] { dropout(zeros({2}, DType::Int64), 0.5, true); },
        "dropout: expected a floating-point tensor, got int64 [2]"),
    op(
        "dropout p = 1",
        [](const Ins& x) {
          Generator g(5);
          return dropout(x[0], 1.0, true, &g);
        },
        [](Generator& g) { return Ins{rn(g, {3})}; }),
    op("dropout eval", [](const Ins& x) { return dropout(x[0], 0.3, false); },
       [](Generator& g) { return Ins{rn(g, {3})}; }),
});

}  // namespace
