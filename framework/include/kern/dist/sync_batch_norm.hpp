#pragma once
// nn::SyncBatchNorm: BatchNorm2d whose training-mode batch statistics span every rank
// (PyTorch's torch.nn.SyncBatchNorm), and convert_sync_batchnorm.
//
// Training mode, per channel c over all ranks' [N_r, C, H, W] inputs (M = sum_r N_r*H*W):
//   mean_c = (sum_r sum x) / M,  var_c = (sum_r sum (x - mean_c)^2) / M   (two all-reduces)
//   y = (x - mean_c) / sqrt(var_c + eps) * weight_c + bias_c
//   running_mean <- (1 - m) running_mean + m mean_c;  running_var <- ... + m var_c * M/(M-1)
// The sums go through dist::functional::all_reduce, whose backward all-reduces the
// gradient: the gradient is exactly that of BatchNorm2d on the concatenated batch.
// Eval mode (or no running stats and not training... i.e. whenever BatchNorm2d would use
// running statistics) is BatchNorm2d's own forward. Same parameters, buffers and names as
// BatchNorm2d, so state dicts are interchangeable.
#include <kern/nn/norm.hpp>

#include <memory>

namespace kern::nn {

class SyncBatchNorm : public BatchNorm2d {
 public:
  explicit SyncBatchNorm(const BatchNorm2dOptions& options) : BatchNorm2d(options) {}
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "SyncBatchNorm"; }
};

/// Replaces every BatchNorm2d in `module` by a SyncBatchNorm holding copies of its
/// parameters, buffers and mode (PyTorch's SyncBatchNorm.convert_sync_batchnorm); returns
/// the converted module (a new one when `module` itself is a BatchNorm2d). Create the
/// optimizer after converting. A BatchNorm2d can be replaced where its parent is a
/// Sequential or ModuleList (kern's modules keep typed members that a conversion cannot
/// re-point); elsewhere this throws, naming the module's path: build it as SyncBatchNorm.
std::shared_ptr<Module> convert_sync_batchnorm(std::shared_ptr<Module> module);

}  // namespace kern::nn
